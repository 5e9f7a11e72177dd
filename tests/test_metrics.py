"""Metering: per-request log lines and Prometheus metrics on the admin port."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

WORKER = """
export default {
  async fetch(request) {
    const body = await request.text();
    if (new URL(request.url).pathname === "/spin") { for (;;) {} }
    return new Response("echo:" + body);
  },
};
"""


def _metric(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` carrying these labels (and any others, such as ``node``)."""
    for line in text.splitlines():
        match = re.match("^" + re.escape(name) + r"(?:\{(.*)\})? (\S+)$", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                return float(match.group(2))
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_each_request_is_metered_and_exported(dev: Any) -> None:
    server = dev({"worker.js": WORKER}, "worker.js", "--admin-port", "0")
    metrics_url = re.search(r"Metrics on (http://\S+)", server.output).group(1)  # type: ignore[union-attr]
    assert server.request("POST", "/", content=b"12345").text == "echo:12345"
    assert server.request("POST", "/", content=b"abc").text == "echo:abc"
    assert server.get("/spin").status_code == 503
    server.wait_for(r"POST / 200 ok cpu=\d+\.\d+ms wall=\d+ms in=5B out=10B")
    server.wait_for(r"GET /spin 503 exceededCpu")
    text = httpx.get(metrics_url, timeout=10).text
    assert _metric(text, "warren_requests_total", outcome="ok", worker="worker") == 2
    assert _metric(text, "warren_requests_total", outcome="exceededCpu", worker="worker") == 1
    assert _metric(text, "warren_request_bytes_total", worker="worker") == 8
    assert _metric(text, "warren_response_bytes_total", worker="worker") == 18
    assert _metric(text, "warren_cpu_seconds_total", worker="worker") >= 0.05  # the spin used its 50 ms
    assert _metric(text, "warren_isolate_memory_bytes", worker="worker") > 100_000
    assert _metric(text, "warren_runtime_crashes_total") == 0
    # the spin discarded the isolate: the next request waits for a new one
    server.get("/")
    server.wait_for(r"GET / 200 ok .* cold")
    text = httpx.get(metrics_url, timeout=10).text
    assert _metric(text, "warren_cold_starts_total", worker="worker") >= 1


METERED_WORKER = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/plain") return new Response("plain");
    const origin = url.searchParams.get("origin");
    const first = await fetch(origin + "/echo?n=1");
    const second = await fetch(origin + "/echo?n=2");
    await env.KV.put("k", "v");
    const value = await env.KV.get("k");
    await env.KV.delete("k");
    return new Response(`${first.status} ${second.status} ${value}`);
  },
};
"""

METERED_CONFIG = """
name = "metered"
main = "worker.js"

[[kv_namespaces]]
binding = "KV"
"""


def test_subrequests_and_kv_operations_are_metered(dev: Any, origin: Any) -> None:
    server = dev({"worker.js": METERED_WORKER, "wrangler.toml": METERED_CONFIG}, ".", "--admin-port", "0")
    metrics_url = re.search(r"Metrics on (http://\S+)", server.output).group(1)  # type: ignore[union-attr]
    for _ in range(2):
        response = server.get("/", params={"origin": origin.url})
        assert response.text == "200 200 v"
    server.wait_for(r"GET /\S* 200 ok cpu=\S+ wall=\S+ in=0B out=9B subrequests=2 kv=3")
    text = httpx.get(metrics_url, timeout=10).text
    assert _metric(text, "warren_subrequests_total", worker="metered") == 4
    assert _metric(text, "warren_kv_operations_total", worker="metered") == 6
    # An invocation without any says nothing of them.
    assert server.get("/plain").text == "plain"
    line = server.wait_for(r"GET /plain 200 .*").group(0)
    assert "subrequests" not in line and "kv=" not in line


# Console output on both streams, then the request's own line: a reader of the merged output
# must see them in that order, however the lines are batched.
ORDERED_WORKER = """
export default {
  async fetch(request) {
    const path = new URL(request.url).pathname;
    console.log("before", path);
    console.error("between", path);
    console.log("after", path);
    return new Response("ok " + path);
  },
};
"""


def _in_order(lines: list[str], *patterns: str) -> None:
    """Each pattern matches a line, each after the previous one's."""
    position = -1
    for pattern in patterns:
        found = next((i for i in range(position + 1, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"no {pattern!r} after line {position} in:\n" + "\n".join(lines)
        position = found


def test_every_request_has_its_line_and_its_count_in_order(dev: Any) -> None:
    server = dev({"worker.js": ORDERED_WORKER}, "worker.js", "--admin-port", "0")
    metrics_url = re.search(r"Metrics on (http://\S+)", server.output).group(1)  # type: ignore[union-attr]
    paths = [f"/r{index}" for index in range(120)]
    with ThreadPoolExecutor(8) as pool:  # concurrent: lines of several requests go out together
        responses = list(pool.map(server.get, paths))
    assert [response.text for response in responses] == [f"ok {path}" for path in paths]
    for path in paths:
        server.wait_for(rf"^GET {path} 200 ok cpu=", timeout=15)
    lines = list(server.lines)
    for path in paths:
        _in_order(
            lines,
            rf"^\[worker\] before {path}$",
            rf"^\[worker\] error: between {path}$",
            rf"^\[worker\] after {path}$",
            rf"^GET {path} 200 ok ",
        )
    # A request is counted before its line is written: every line seen is in the metrics.
    text = httpx.get(metrics_url, timeout=10).text
    assert _metric(text, "warren_requests_total", outcome="ok", worker="worker") == len(paths)
    assert _metric(text, "warren_cpu_ms_count", worker="worker") == len(paths)
    assert _metric(text, "warren_wall_seconds_bucket", worker="worker", le="+Inf") == len(paths)
    assert _metric(text, "warren_response_bytes_total", worker="worker") == sum(len(r.content) for r in responses)
    # A lone request's line is written with nothing after it to push it out, and counted.
    assert server.get("/lone").text == "ok /lone"
    server.wait_for(r"^GET /lone 200 ok cpu=", timeout=5)
    text = httpx.get(metrics_url, timeout=10).text
    assert _metric(text, "warren_requests_total", outcome="ok", worker="worker") == len(paths) + 1


def test_warren_serve_logs_and_counts_every_request_in_order(tmp_path: Path, spawn: Any) -> None:
    from tests.test_tail import DOMAIN, Platform

    platform = Platform(tmp_path, spawn, edges=0)
    edge = spawn(["serve", "--store", platform.store, "--workers-domain", DOMAIN, "--processes", "1",
                  "--admin-port", "0", "--node-name", "edge-1"])  # fmt: skip
    platform.edges.append(edge)
    metrics_url = re.search(r"Metrics on (http://\S+)", edge.output).group(1)  # type: ignore[union-attr]
    try:
        platform.deploy("ordered", ORDERED_WORKER)
        paths = [f"/s{index}" for index in range(40)]
        for path in paths:
            assert platform.request("ordered", path).text == f"ok {path}"
        for path in paths:
            edge.wait_for(rf"^\[demo/ordered\] GET {path} 200 ok cpu=", timeout=15)
        lines = list(edge.lines)
        for path in paths:
            _in_order(
                lines,
                rf"^\[demo/ordered\] log: before {path}$",
                rf"^\[demo/ordered\] error: between {path}$",
                rf"^\[demo/ordered\] log: after {path}$",
                rf"^\[demo/ordered\] GET {path} 200 ok ",
            )
        # Every request line written (those of the deploy's readiness checks too) is counted.
        served = len([line for line in edge.lines if re.match(r"^\[demo/ordered\] GET \S+ 200 ok ", line)])
        text = httpx.get(metrics_url, timeout=10).text
        assert _metric(text, "warren_requests_total", outcome="ok", worker="demo/ordered", node="edge-1") == served
    finally:
        platform.api.close()


def test_exposition_is_prometheus_clients_own() -> None:
    """Metrics keeps its series itself; what it exposes is what prometheus_client's metrics would."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from warren.server.metrics import _CPU_MS_BUCKETS, _WALL_BUCKETS, Metrics
    from warren.server.supervisor import Exchange, Supervisor

    metrics = Metrics(Supervisor(), node="n1")
    registry = CollectorRegistry()
    labels = ["worker", "node"]
    requests = Counter("warren_requests", "Invocations, by outcome", ["worker", "node", "outcome"], registry=registry)
    errors = Counter("warren_errors", "Invocations that ended in an error (exception, exceededCpu, exceededMemory)",
                     labels, registry=registry)  # fmt: skip
    cpu = Counter("warren_cpu_seconds", "CPU time spent running the worker's JavaScript", labels, registry=registry)
    cpu_ms = Histogram("warren_cpu_ms", "CPU time of invocations, in ms", labels, buckets=_CPU_MS_BUCKETS,
                       registry=registry)  # fmt: skip
    wall = Histogram("warren_wall_seconds", "Wall time of invocations", labels, buckets=_WALL_BUCKETS,
                     registry=registry)  # fmt: skip
    bytes_in = Counter("warren_request_bytes", "Request body bytes", labels, registry=registry)
    bytes_out = Counter("warren_response_bytes", "Response body bytes", labels, registry=registry)
    cold = Counter("warren_cold_starts", "Requests that waited for their isolate to start", labels, registry=registry)
    memory = Gauge("warren_isolate_memory_bytes", "Isolate memory (JS heap and buffers) at the last invocation",
                   labels, registry=registry)  # fmt: skip
    subrequests = Counter("warren_subrequests", "Subrequests (fetch, service bindings) made by invocations", labels,
                          registry=registry)  # fmt: skip
    kv = Counter("warren_kv_operations", "KV operations made by invocations", labels, registry=registry)

    cases = [
        ("a", "ok", 0.31, 1.2, 0, {"bytes_out": 13, "memory": 2_000_000, "cold": True}),
        ("b", "exception", 0.1, 0.0, 5, {"bytes_out": 0, "subrequests": {"fetch": 2, "service": 1}}),
        ("a", "exceededCpu", 50.0, 51.0, 12, {"bytes_out": 0, "kv_ops": 3, "memory": 3_000_000}),
        ("a", "ok", 1e9, 1e7, 1, {"bytes_out": 7, "kv_ops": {"get": 1, "put": 0}}),
        ("c", "canceled", float("nan"), 30000.0, 0, {}),
        ("b", "something new", 0.0, 2.5, 0, {"bytes_out": 1, "cold": 0, "memory": 0}),
        ("a", "ok", 0.25, 0.001, 3, {"bytes_out": 2, "subrequests": 1}),
    ]
    for index, (worker, outcome, cpu_used, wall_used, sent, metering) in enumerate(cases):
        if index == 5:
            metrics.node = "n2"  # as `warren serve` names itself once it knows its port
        node = metrics.node
        exchange = Exchange(index, worker, "key", {"method": "GET", "url": "http://h/", "headers": []})
        exchange.bytes_in = sent
        exchange.metering = metering
        metrics.observe(worker, exchange, outcome, cpu_used, wall_used)
        # prometheus_client's own, as Metrics.observe called it before it kept its series itself
        requests.labels(worker, node, outcome).inc()
        if outcome not in ("ok", "canceled"):
            errors.labels(worker, node).inc()
        cpu.labels(worker, node).inc(cpu_used / 1000.0)
        cpu_ms.labels(worker, node).observe(cpu_used)
        wall.labels(worker, node).observe(wall_used / 1000.0)
        bytes_in.labels(worker, node).inc(sent)
        bytes_out.labels(worker, node).inc(int(metering.get("bytes_out", 0)))
        subrequests.labels(worker, node).inc(
            sum(metering["subrequests"].values()) if isinstance(metering.get("subrequests"), dict)
            else metering.get("subrequests", 0)
        )  # fmt: skip
        kv.labels(worker, node).inc(
            sum(metering["kv_ops"].values()) if isinstance(metering.get("kv_ops"), dict) else metering.get("kv_ops", 0)
        )
        if metering.get("cold"):
            cold.labels(worker, node).inc()
        if metering.get("memory"):
            memory.labels(worker, node).set(int(metering["memory"]))

    def invocations(text: str) -> tuple[list[str], list[str]]:
        """The invocation metrics' lines (not the supervisor's), and the series of their _created lines."""
        kept, created = [], []
        for line in text.splitlines():
            if "warren_runtime" in line or "warren_isolates_loaded" in line or "warren_isolate_evictions" in line:
                continue
            if "warren_quarantined" in line or line.startswith("# EOF"):
                continue
            if re.match(r"warren_\w+_created\{", line):
                created.append(line.rsplit(" ", 1)[0])  # when each began differs by microseconds
            else:
                kept.append(line)
        return kept, created

    for generate in (generate_latest, generate_openmetrics):
        ours, theirs = invocations(generate(metrics.registry).decode()), invocations(generate(registry).decode())
        assert ours == theirs
        assert len(ours[1]) > 10 and any('le="+Inf"' in line for line in ours[0])
    # Asked for by name (``/metrics?name[]=…``), they are still found.
    restricted = generate_latest(metrics.registry.restricted_registry(["warren_requests_total"])).decode()
    assert 'warren_requests_total{node="n1",outcome="exceededCpu",worker="a"} 1.0' in restricted
