"""Metering: what each invocation cost, as Prometheus metrics and as a log line.

CPU is the isolate's CPU time while JavaScript ran (what billing would read);
wall time, bytes in and out, cold starts and isolate memory come with it. The
supervisor's crash and quarantine state is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from warren.server.supervisor import Exchange, Supervisor

_WALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        crashes = CounterMetricFamily("warren_runtime_crashes", "Runtime process deaths")
        crashes.add_metric([], len(self._supervisor.crashes))
        yield crashes
        quarantined = GaugeMetricFamily("warren_quarantined_versions", "Script versions refused after crashes")
        quarantined.add_metric([], len(self._supervisor.quarantined))
        yield quarantined


class Metrics:
    """Prometheus metrics of one supervisor, per worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry()
        labels = ["worker"]
        self.requests = Counter(
            "warren_requests", "Invocations, by outcome", ["worker", "outcome"], registry=self.registry
        )
        self.cpu = Counter(
            "warren_cpu_seconds", "CPU time spent running the worker's JavaScript", labels, registry=self.registry
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
        self.registry.register(_SupervisorCollector(supervisor))

    def observe(self, worker: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        metering = exchange.metering
        self.requests.labels(worker, outcome).inc()
        self.cpu.labels(worker).inc(cpu_ms / 1000.0)
        self.wall.labels(worker).observe(wall_ms / 1000.0)
        self.bytes_in.labels(worker).inc(exchange.bytes_in)
        self.bytes_out.labels(worker).inc(int(metering.get("bytes_out", 0)))
        if metering.get("cold"):
            self.cold.labels(worker).inc()
        if metering.get("memory"):
            self.memory.labels(worker).set(int(metering["memory"]))

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
    if metering.get("cold"):
        parts.append("cold")
    if metering.get("memory"):
        parts.append(f"mem={int(metering['memory']) / 1048576:.1f}MB")
    return " ".join(parts)
