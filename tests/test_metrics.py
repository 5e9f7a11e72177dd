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
