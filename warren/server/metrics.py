"""Metering: what each invocation cost, as Prometheus metrics and as a log line.

CPU is the isolate's CPU time while JavaScript ran (what billing would read);
wall time, bytes in and out, cold starts, isolate memory, subrequests and KV
operations come with it, per worker (label ``worker``) and node (``node``).
The supervisor's state is read at scrape time: crashes, quarantined versions,
and per runtime process (``process``) its isolates, evictions and memory; and,
on an edge node, the invocation events published and dropped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from warren.observability.events import is_error
from warren.server.supervisor import Exchange, Supervisor

_WALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# in milliseconds, as CPU limits are set (limits.cpu_ms: 50 by default)
_CPU_MS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0, 30000.0)


class EventCounts(Protocol):
    """What the metrics read of an edge node's event publisher (warren.observability.EventPublisher)."""

    published: int
    dropped: int


def _rss_of(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _count(value: Any) -> int:
    """A metered count: a number, or a mapping of numbers (per operation) added up."""
    if isinstance(value, dict):
        return sum(_count(item) for item in value.values())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


class _SupervisorCollector(Collector):
    def __init__(self, metrics: Metrics, supervisor: Supervisor) -> None:
        self._metrics = metrics
        self._supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        node = self._metrics.node
        crashes = CounterMetricFamily("warren_runtime_crashes", "Runtime process deaths", labels=["node"])
        crashes.add_metric([node], len(self._supervisor.crashes))
        yield crashes
        quarantined = GaugeMetricFamily(
            "warren_quarantined_versions", "Script versions refused after crashes", labels=["node"]
        )
        quarantined.add_metric([node], len(self._supervisor.quarantined))
        yield quarantined
        labels = ["node", "process"]
        isolates = GaugeMetricFamily("warren_isolates_loaded", "Isolates running in a runtime process", labels=labels)
        evictions = CounterMetricFamily(
            "warren_isolate_evictions", "Idle isolates evicted by a runtime process (since it started)", labels=labels
        )
        memory = GaugeMetricFamily("warren_runtime_memory_bytes", "Resident memory of a runtime process", labels=labels)
        for process in self._supervisor.processes():
            name = f"{process.cordon}-{process.index}"
            isolates.add_metric([node, name], process.isolates)
            evictions.add_metric([node, name], process.evictions)
            rss = _rss_of(process.process.pid if process.process is not None else None)
            if rss is not None:
                memory.add_metric([node, name], rss)
        yield isolates
        yield evictions
        yield memory
        publisher = self._metrics.publisher
        if publisher is not None:
            published = CounterMetricFamily(
                "warren_events_published", "Invocation events handed to the store", labels=["node"]
            )
            published.add_metric([node], publisher.published)
            yield published
            dropped = CounterMetricFamily(
                "warren_events_dropped", "Invocation events dropped: the store was slow or down", labels=["node"]
            )
            dropped.add_metric([node], publisher.dropped)
            yield dropped


class Metrics:
    """Prometheus metrics of one supervisor, per worker and node."""

    def __init__(self, supervisor: Supervisor, node: str | None = None) -> None:
        self.node = node or socket.gethostname()
        self.publisher: EventCounts | None = None
        self.registry = CollectorRegistry()
        labels = ["worker", "node"]
        self.requests = Counter(
            "warren_requests", "Invocations, by outcome", ["worker", "node", "outcome"], registry=self.registry
        )
        self.errors = Counter(
            "warren_errors",
            "Invocations that ended in an error (exception, exceededCpu, exceededMemory)",
            labels,
            registry=self.registry,
        )
        self.cpu = Counter(
            "warren_cpu_seconds", "CPU time spent running the worker's JavaScript", labels, registry=self.registry
        )
        self.cpu_ms = Histogram(
            "warren_cpu_ms", "CPU time of invocations, in ms", labels, buckets=_CPU_MS_BUCKETS, registry=self.registry
        )
        self.wall = Histogram(
            "warren_wall_seconds", "Wall time of invocations", labels, buckets=_WALL_BUCKETS, registry=self.registry
        )
        self.bytes_in = Counter("warren_request_bytes", "Request body bytes", labels, registry=self.registry)
        self.bytes_out = Counter("warren_response_bytes", "Response body bytes", labels, registry=self.registry)
        self.cold = Counter(
            "warren_cold_starts", "Requests that waited for their isolate to start", labels, registry=self.registry
        )
        self.memory = Gauge(
            "warren_isolate_memory_bytes",
            "Isolate memory (JS heap and buffers) at the last invocation",
            labels,
            registry=self.registry,
        )
        self.subrequests = Counter(
            "warren_subrequests",
            "Subrequests (fetch, service bindings) made by invocations",
            labels,
            registry=self.registry,
        )
        self.kv_operations = Counter(
            "warren_kv_operations", "KV operations made by invocations", labels, registry=self.registry
        )
        self.registry.register(_SupervisorCollector(self, supervisor))

    def observe(self, worker: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        metering = exchange.metering
        node = self.node
        self.requests.labels(worker, node, outcome).inc()
        if is_error(outcome):
            self.errors.labels(worker, node).inc()
        self.cpu.labels(worker, node).inc(cpu_ms / 1000.0)
        self.cpu_ms.labels(worker, node).observe(cpu_ms)
        self.wall.labels(worker, node).observe(wall_ms / 1000.0)
        self.bytes_in.labels(worker, node).inc(exchange.bytes_in)
        self.bytes_out.labels(worker, node).inc(int(metering.get("bytes_out", 0)))
        # Reported by the runtime once it meters them: absent keys count nothing.
        self.subrequests.labels(worker, node).inc(_count(metering.get("subrequests", 0)))
        self.kv_operations.labels(worker, node).inc(_count(metering.get("kv_ops", 0)))
        if metering.get("cold"):
            self.cold.labels(worker, node).inc()
        if metering.get("memory"):
            self.memory.labels(worker, node).set(int(metering["memory"]))

    def asgi_app(self) -> Any:
        """``/metrics`` in Prometheus' text format, for an admin port."""
        return make_asgi_app(registry=self.registry)


def log_line(exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> str:
    """One request's log line: what was asked, what it cost."""
    head = exchange.head
    url = str(head["url"])
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else url
    metering = exchange.metering
    parts = [
        f"{head['method']} {path} {exchange.status}",
        outcome,
        f"cpu={cpu_ms:.2f}ms",
        f"wall={wall_ms:.0f}ms",
        f"in={exchange.bytes_in}B",
        f"out={metering.get('bytes_out', 0)}B",
    ]
    # Metered operations, when the invocation made any (a number, or counts per kind).
    subrequests = _count(metering.get("subrequests", 0))
    if subrequests:
        parts.append(f"subrequests={subrequests}")
    kv_operations = _count(metering.get("kv_ops", 0))
    if kv_operations:
        parts.append(f"kv={kv_operations}")
    if metering.get("cold"):
        parts.append("cold")
    if metering.get("memory"):
        parts.append(f"mem={int(metering['memory']) / 1048576:.1f}MB")
    return " ".join(parts)
