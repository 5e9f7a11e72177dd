"""Metering: per-request log lines and Prometheus metrics on the admin port."""

from __future__ import annotations

import re
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
