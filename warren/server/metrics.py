"""Metering: what each invocation cost, as Prometheus metrics and as a log line.

CPU is the isolate's CPU time while JavaScript ran (what billing would read);
wall time, bytes in and out, cold starts, isolate memory, subrequests and KV
operations come with it, per worker (label ``worker``) and node (``node``).
The supervisor's state is read at scrape time: crashes, quarantined versions,
and per runtime process (``process``) its isolates, evictions and memory; and,
on an edge node, the invocation events published and dropped.

The invocation metrics are kept as plain series updated in place (a request costs a
few additions) and exposed at scrape time exactly as prometheus_client's own Counter,
Histogram and Gauge would expose them. ``LineWriter`` writes log lines to standard
output in batches, a few milliseconds late, in order.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import socket
import sys
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Series:
    """One labelled series of a counter or gauge: its value, and when it began (its ``_created``)."""

    __slots__ = ("created", "labels", "value")

    def __init__(self, labels: dict[str, str], created: float) -> None:
        self.labels = labels
        self.value = 0.0
        self.created = created


class _HistogramSeries(_Series):
    """One labelled series of a histogram: ``value`` is its sum; ``buckets`` count each bucket alone."""

    __slots__ = ("buckets",)

    def __init__(self, labels: dict[str, str], created: float, size: int) -> None:
        super().__init__(labels, created)
        self.buckets = [0.0] * size


class _Family:
    """A labelled metric, exposed sample for sample as prometheus_client's Counter, Gauge or Histogram.

    Its series are plain objects updated in place by ``Metrics.observe``: a request
    costs a few additions instead of a ``labels()`` look-up, a lock and a validation
    per metric. Series are kept in the order they began, as prometheus_client keeps
    its children, and, as there, never removed.
    """

    def __init__(self, name: str, documentation: str, kind: str, buckets: tuple[float, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.bounds = (*(float(bound) for bound in buckets), math.inf) if kind == "histogram" else ()
        self._le = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        self.series: list[_Series] = []

    def add(self, labels: dict[str, str], created: float) -> _Series:
        series = _Series(labels, created)
        self.series.append(series)
        return series

    def add_histogram(self, labels: dict[str, str], created: float) -> _HistogramSeries:
        series = _HistogramSeries(labels, created, len(self.bounds))
        self.series.append(series)
        return series

    def describe(self) -> Metric:
        return Metric(self.name, self.documentation, self.kind)

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        name = self.name
        # PROMETHEUS_DISABLE_CREATED_SERIES (or disable_created_metrics()), as prometheus_client reads it
        created = getattr(prometheus_metrics, "_use_created", True)
        for series in list(self.series):  # a copy: a scrape from another thread may meet a new series
            labels = series.labels
            if self.kind == "counter":
                metric.add_sample(name + "_total", labels, series.value)
            elif self.kind == "gauge":
                metric.add_sample(name, labels, series.value)
                continue
            else:
                assert isinstance(series, _HistogramSeries)
                count = 0.0
                for le, bucket in zip(self._le, series.buckets, strict=True):
                    count += bucket
                    metric.add_sample(name + "_bucket", {**labels, "le": le}, count)
                metric.add_sample(name + "_count", labels, count)
                if self.bounds[0] >= 0:
                    metric.add_sample(name + "_sum", labels, series.value)
            if created:
                metric.add_sample(name + "_created", labels, series.created)
        return metric


class _Usage:
    """What one worker has cost on one node: its series in each family (the optional ones once used)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cold",
        "cpu",
        "cpu_ms",
        "errors",
        "kv_operations",
        "memory",
        "node",
        "outcomes",
        "subrequests",
        "wall",
        "worker",
    )

    def __init__(self, metrics: Metrics, worker: str, node: str) -> None:
        self.worker = worker
        self.node = node
        labels = {"worker": worker, "node": node}
        created = time.time()
        self.outcomes: dict[str, _Series] = {}
        self.errors: _Series | None = None
        self.cold: _Series | None = None
        self.memory: _Series | None = None
        self.cpu = metrics.cpu.add(labels, created)
        self.cpu_ms = metrics.cpu_ms.add_histogram(labels, created)
        self.wall = metrics.wall.add_histogram(labels, created)
        self.bytes_in = metrics.bytes_in.add(labels, created)
        self.bytes_out = metrics.bytes_out.add(labels, created)
        self.subrequests = metrics.subrequests.add(labels, created)
        self.kv_operations = metrics.kv_operations.add(labels, created)


class _Invocations:
    """The invocation metrics, a collector of their own: Metrics.observe's series, read at scrape time."""

    def __init__(self, families: list[_Family]) -> None:
        self._families = families

    def describe(self) -> Iterator[Metric]:  # the registry's names, for ``/metrics?name[]=…``
        for family in self._families:
            yield family.describe()

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


def _negative() -> ValueError:
    return ValueError("Counters can only be incremented by non-negative amounts.")


class Metrics:
    """Prometheus metrics of one supervisor, per worker and node."""

    def __init__(self, supervisor: Supervisor, node: str | None = None) -> None:
        self.node = node or socket.gethostname()
        self.publisher: EventCounts | None = None
        self.registry = CollectorRegistry()
        self.requests = _Family("warren_requests", "Invocations, by outcome", "counter")
        self.errors = _Family(
            "warren_errors", "Invocations that ended in an error (exception, exceededCpu, exceededMemory)", "counter"
        )
        self.cpu = _Family("warren_cpu_seconds", "CPU time spent running the worker's JavaScript", "counter")
        self.cpu_ms = _Family("warren_cpu_ms", "CPU time of invocations, in ms", "histogram", _CPU_MS_BUCKETS)
        self.wall = _Family("warren_wall_seconds", "Wall time of invocations", "histogram", _WALL_BUCKETS)
        self.bytes_in = _Family("warren_request_bytes", "Request body bytes", "counter")
        self.bytes_out = _Family("warren_response_bytes", "Response body bytes", "counter")
        self.cold = _Family("warren_cold_starts", "Requests that waited for their isolate to start", "counter")
        self.memory = _Family(
            "warren_isolate_memory_bytes", "Isolate memory (JS heap and buffers) at the last invocation", "gauge"
        )
        self.subrequests = _Family(
            "warren_subrequests", "Subrequests (fetch, service bindings) made by invocations", "counter"
        )
        self.kv_operations = _Family("warren_kv_operations", "KV operations made by invocations", "counter")
        # In the order prometheus_client would expose them had each been registered alone.
        families = [
            self.requests,
            self.errors,
            self.cpu,
            self.cpu_ms,
            self.wall,
            self.bytes_in,
            self.bytes_out,
            self.cold,
            self.memory,
            self.subrequests,
            self.kv_operations,
        ]
        self.registry.register(_Invocations(families))
        self.registry.register(_SupervisorCollector(self, supervisor))
        # Per node, then per worker. ``node`` changes at most once (``warren serve`` learns its port).
        self._nodes: dict[str, dict[str, _Usage]] = {}
        self._usage_node = ""
        self._usage: dict[str, _Usage] = {}

    def _usage_of(self, worker: str) -> _Usage:
        node = self.node
        if node != self._usage_node:
            self._usage_node = node
            self._usage = self._nodes.setdefault(node, {})
        usage = self._usage.get(worker)
        if usage is None:
            usage = self._usage[worker] = _Usage(self, worker, node)
        return usage

    def observe(self, worker: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        metering = exchange.metering
        bytes_in = exchange.bytes_in
        bytes_out = int(metering.get("bytes_out", 0))
        if cpu_ms < 0 or bytes_in < 0 or bytes_out < 0:
            raise _negative()
        usage = self._usage_of(worker)
        requests = usage.outcomes.get(outcome)
        if requests is None:
            requests = usage.outcomes[outcome] = self.requests.add(
                {"worker": usage.worker, "node": usage.node, "outcome": outcome}, time.time()
            )
        requests.value += 1.0
        if is_error(outcome):
            if usage.errors is None:
                usage.errors = self.errors.add({"worker": usage.worker, "node": usage.node}, time.time())
            usage.errors.value += 1.0
        usage.cpu.value += cpu_ms / 1000.0
        _histogram(usage.cpu_ms, _CPU_MS_BOUNDS, cpu_ms)
        _histogram(usage.wall, _WALL_BOUNDS, wall_ms / 1000.0)
        usage.bytes_in.value += bytes_in
        usage.bytes_out.value += bytes_out
        # Reported by the runtime once it meters them: absent keys count nothing.
        subrequests = metering.get("subrequests")
        if subrequests:
            usage.subrequests.value += _count(subrequests)
        kv_operations = metering.get("kv_ops")
        if kv_operations:
            usage.kv_operations.value += _count(kv_operations)
        if metering.get("cold"):
            if usage.cold is None:
                usage.cold = self.cold.add({"worker": usage.worker, "node": usage.node}, time.time())
            usage.cold.value += 1.0
        memory = metering.get("memory")
        if memory:
            if usage.memory is None:
                usage.memory = self.memory.add({"worker": usage.worker, "node": usage.node}, time.time())
            usage.memory.value = float(int(memory))

    def asgi_app(self) -> Any:
        """``/metrics`` in Prometheus' text format, for an admin port."""
        return make_asgi_app(registry=self.registry)


_CPU_MS_BOUNDS = (*_CPU_MS_BUCKETS, math.inf)
_WALL_BOUNDS = (*_WALL_BUCKETS, math.inf)


def _histogram(series: _HistogramSeries, bounds: tuple[float, ...], amount: float) -> None:
    """One observation, as prometheus_client's Histogram.observe counts it (``amount <= bound``)."""
    series.value += amount
    index = bisect_left(bounds, amount)
    if index < len(bounds) and amount <= bounds[index]:  # NaN falls in no bucket
        series.buckets[index] += 1.0


def log_line(exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> str:
    """One request's log line: what was asked, what it cost."""
    head = exchange.head
    url = str(head["url"])
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else url
    metering = exchange.metering
    line = (
        f"{head['method']} {path} {exchange.status} {outcome} cpu={cpu_ms:.2f}ms wall={wall_ms:.0f}ms "
        f"in={exchange.bytes_in}B out={metering.get('bytes_out', 0)}B"
    )
    # Metered operations, when the invocation made any (a number, or counts per kind).
    subrequests = metering.get("subrequests")
    if subrequests and (count := _count(subrequests)):
        line += f" subrequests={count}"
    kv_operations = metering.get("kv_ops")
    if kv_operations and (count := _count(kv_operations)):
        line += f" kv={count}"
    if metering.get("cold"):
        line += " cold"
    if metering.get("memory"):
        line += f" mem={int(metering['memory']) / 1048576:.1f}MB"
    return line


class LineWriter:
    """Log lines for standard output, written together a few milliseconds after the first of them.

    Under load a line per request written (and flushed) alone cost a system call and a
    wake-up of whoever reads the pipe, per request; together they cost one per batch. A
    line still shows within ``delay`` seconds: the running loop's timer writes it. Called
    where no event loop runs (another thread, or after the loop ended), it writes what
    waits and the line at once. ``flush`` before writing elsewhere (standard error) keeps
    the order a reader sees; ``close`` when the loop ends (and at exit, whatever is left).
    """

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self._lines: list[str] = []
        self._lock = threading.RLock()  # other threads' lines too; re-entered by a signal handler, no deadlock
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer will write them
        self._closed = False
        _writers.add(self)

    def __call__(self, line: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._lines.append(line)
            if loop is not None and not self._closed:
                # Never cancelled (not safe from another thread): a timer finding nothing costs nothing.
                if self._timer_loop is not loop:
                    self._timer_loop = loop
                    loop.call_later(self.delay, self._on_timer)
                return
            self._write()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_loop = None
            self._write()

    def flush(self) -> None:
        """Write what is waiting now."""
        with self._lock:
            self._write()

    def close(self) -> None:
        """Write what is waiting; from now on each line is written as it comes."""
        with self._lock:
            self._closed = True
            self._write()

    def _write(self) -> None:
        """Under the lock: what is written goes out in the order it came, whichever thread writes it."""
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines = []
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):  # nobody reads the output any more (a closed pipe): never the server's end
            pass


_writers: weakref.WeakSet[LineWriter] = weakref.WeakSet()


@atexit.register
def _close_writers() -> None:
    """Lines still waiting when the interpreter exits (the loop ended without ``close``) are written."""
    for writer in list(_writers):
        writer.close()
