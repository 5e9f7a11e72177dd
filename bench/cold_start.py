"""Cold start: how long a newly deployed script takes to load and to answer its first request.

    python bench/cold_start.py [--workers 50] [--big 5] [--big-mb 1] [--rss-workers 100] [--bound]

In one process it runs warren's Supervisor behind EdgeApp on uvicorn (port 0 on
127.0.0.1, routed by the first path segment, like tests/conftest.py's Edge), then:

* deploys --workers distinct small module scripts one after another (each returns
  a different string) and, for each, times
    - deploy: ``await supervisor.deploy(...)``, i.e. isolate created and script run;
    - first request: a GET on a new TCP connection right after the deploy;
    - second request: the same again (new connection), for comparison;
  and prints p50/p99 (and max) of each, plus deploy + first request;
* times true cold starts (scripts routable but never started, --gap-ms apart) on new
  connections and on one kept-alive connection, and with --bound also of scripts bound
  to a Durable Object namespace (their first request makes an id);
* does the same for --big scripts of about --big-mb MB each, each distinct: modules
  whose top level holds a big array of string literals, then modules whose top
  level holds one big string literal, then bundles of small functions (code);
* reports the runtime child process's RSS (/proc/PID/status VmRSS) before any
  worker, after the small ones and after --rss-workers loaded workers, and the
  growth per worker.

This is a benchmark, not a test: it prints figures and never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

import uvicorn
import uvloop

from warren.runtime import WorkerScript
from warren.server.app import EdgeApp
from warren.server.supervisor import Supervisor

SMALL = """\
export default {{
  async fetch(request, env, ctx) {{
    return new Response("hello from worker {index}\\n");
  }},
}};
"""


# A worker bound to a Durable Object namespace (its own class), using the binding as a front worker does.
BOUND = """\
import {{ DurableObject }} from "cloudflare:workers";
export class Counter extends DurableObject {{}}
export default {{
  async fetch(request, env, ctx) {{
    const id = env.COUNTER.idFromName("a");
    return new Response("bound worker {index} " + id.toString().length + "\\n");
  }},
}};
"""


def big_script(index: int, megabytes: float, kind: str) -> str:
    """A module of about ``megabytes`` MB: an array of distinct string literals, one string,
    or code (small functions, in the shape wrangler's esbuild writes a bundle)."""
    if kind == "code":
        functions = []
        size = 0
        while size < megabytes * 1024 * 1024:
            n = len(functions)
            functions.append(
                f"function helper{index}_{n}(value) {{\n  const text = `#{n}:` + String(value);\n"
                f"  return text.length > {n % 7 + 3} ? text.slice(0, {n % 5 + 2}) : text;\n}}\n"
            )
            size += len(functions[-1])
        return (
            'import { DurableObject } from "cloudflare:workers";\n// src/index.js\n'
            + "".join(functions)
            + "var src_default = {\n  async fetch(request) {\n"
            + f'    return new Response("big worker {index}: " + helper{index}_{len(functions) - 1}(7) + "\\n");\n'
            + "  }\n};\nexport {\n  src_default as default\n};\n"
        )
    item = 100  # characters per literal
    count = int(megabytes * 1024 * 1024 / (item + 4))
    filler = "x" * (item - 12)
    if kind == "array":
        rows = ",\n".join(f'  "{index:04d}-{n:07d}{filler}"' for n in range(count))
        data = f"const DATA = [\n{rows}\n];\n"
    else:
        text = "".join(f"{index:04d}-{n:07d}{filler}\\n" for n in range(count))
        data = f'const DATA = "{text}".split("\\n");\n'
    return data + (
        "export default {\n"
        "  async fetch(request) {\n"
        f'    return new Response("big worker {index}: " + DATA.length + " items\\n");\n'
        "  },\n"
        "};\n"
    )


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def get(port: int, path: str, timeout: float = 60) -> tuple[float, int, bytes]:
    """GET on a new loopback TCP connection: (seconds from connect to whole response, status, body)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    elapsed = time.perf_counter() - started
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return elapsed, status, body


class KeptAlive:
    """One loopback HTTP/1.1 connection kept open, as a front proxy keeps its connections to an edge."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str) -> tuple[float, int, bytes]:
        """(seconds from sending to the whole response, status, body); the body has a Content-Length."""
        started = time.perf_counter()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += self.sock.recv(65536)
        elapsed = time.perf_counter() - started
        return elapsed, int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))  # ceil(fraction * n)
    return ordered[min(rank, len(ordered)) - 1]


def summary(label: str, seconds: list[float]) -> str:
    ms = [value * 1000 for value in seconds]
    if not ms:
        return f"  {label:22} (n=0)"
    return (
        f"  {label:22} p50 {percentile(ms, 0.5):8.2f} ms  p99 {percentile(ms, 0.99):8.2f} ms  "
        f"max {max(ms):8.2f} ms  (n={len(ms)})"
    )


class Edge:
    """Supervisor + EdgeApp on uvicorn, on an event loop in a thread of its own.

    Keyword arguments go to the Supervisor (processes, memory_budget_mb, ...).
    ``metering`` holds, per worker name, the DONE metering of its last request.
    """

    def __init__(self, **supervisor: Any) -> None:
        self.logs: list[tuple[str, str, str]] = []
        self.metering: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, int] = {}  # per worker name, invocations whose metering arrived
        # uvloop, as `warren dev` and `warren serve` run the supervisor.
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.supervisor = Supervisor(
            on_log=lambda *entry: self.logs.append(entry),
            on_done=lambda name, exchange, *_: self._done(name, exchange.metering),
            **supervisor,
        )
        self._server: uvicorn.Server | None = None
        self.port = self.run(self._start())

    def _done(self, name: str, metering: dict[str, Any]) -> None:
        self.metering[name] = metering
        self.finished[name] = self.finished.get(name, 0) + 1

    def metering_after(self, name: str, count: int, timeout: float = 5.0) -> dict[str, Any]:
        """The metering of ``name``'s invocation number ``count`` + 1 (DONE may trail the response)."""
        deadline = time.monotonic() + timeout
        while self.finished.get(name, 0) <= count and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.metering.get(name, {})

    def run(self, coroutine: Any, timeout: float = 120) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _start(self) -> int:
        await self.supervisor.start()

        def resolve(host: str, path: str) -> str | None:
            return self.supervisor.deployments.get(path.split("/")[1])

        config = uvicorn.Config(
            EdgeApp(self.supervisor, resolve), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def _deploy(self, script: WorkerScript) -> float:
        started = time.perf_counter()
        await self.supervisor.deploy(script)
        return time.perf_counter() - started

    def deploy(self, name: str, source: str) -> float:
        """Seconds from the start of the deploy to its end, measured on the event loop."""
        return float(self.run(self._deploy(WorkerScript(name=name, source=source))))

    async def _register(self, script: WorkerScript) -> None:
        key = f"{script.name}@{script.version_id}"
        await self.supervisor.load(key, script, start=False)
        self.supervisor.deployments[script.name] = key

    def register(self, name: str, source: str, bindings: tuple[dict[str, Any], ...] = ()) -> None:
        """Make a script routable without starting it: its first request is a true cold start."""
        self.run(self._register(WorkerScript(name=name, source=source, bindings=bindings)))

    @property
    def runtime_pid(self) -> int:
        [pid] = self.runtime_pids
        return pid

    @property
    def runtime_pids(self) -> list[int]:
        """The runtime processes' pids, in the supervisor's order."""
        return [process.process.pid for process in self.supervisor.processes() if process.process is not None]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._serving
        await self.supervisor.stop()

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class Series:
    def __init__(self) -> None:
        self.deploy: list[float] = []
        self.first: list[float] = []
        self.second: list[float] = []
        self.totals: list[float] = []  # deploy + first request
        self.failures: list[str] = []

    def report(self, title: str) -> None:
        print(title)
        if not self.deploy:
            print("  nothing measured")
        else:
            print(summary("deploy", self.deploy))
            if self.first and self.second:
                print(summary("first request", self.first))
                print(summary("second request", self.second))
                print(summary("deploy + first request", self.totals))
                ratio = statistics.median(self.first) / statistics.median(self.second)
                print(f"  first/second request (medians): {ratio:.2f}x")
        for failure in self.failures[:10]:
            print(f"  ! {failure}")
        if len(self.failures) > 10:
            print(f"  ! ... and {len(self.failures) - 10} more")


def measure_lazy(
    edge: Edge,
    series: Series,
    name: str,
    source: str,
    expected: bytes,
    kept: KeptAlive | None = None,
    bindings: tuple[dict[str, Any], ...] = (),
) -> None:
    """First request to a script nobody has started: isolate, script and response together
    (on a new connection, or on ``kept``)."""
    edge.register(name, source, bindings)
    for attempt in ("first", "second"):
        elapsed, status, body = kept.get(f"/{name}/") if kept is not None else get(edge.port, f"/{name}/")
        if status != 200 or expected not in body:
            series.failures.append(f"{name}: {attempt} request -> {status} {body[:200]!r}")
        (series.first if attempt == "first" else series.second).append(elapsed)


def cold_starts(
    edge: Edge, args: argparse.Namespace, prefix: str, kept: KeptAlive | None, title: str, bound: bool = False
) -> None:
    """args.workers cold starts, args.gap_ms apart, each after a request to a long-loaded worker
    after the same pause; on new connections, or on ``kept``; ``bound``: of BOUND scripts, each
    bound to a Durable Object namespace. Prints the figures."""
    lazy = Series()
    floor: list[float] = []
    for index in range(args.workers):
        time.sleep(args.gap_ms / 1000)
        floor.append(kept.get("/w0/")[0] if kept is not None else get(edge.port, "/w0/")[0])
        time.sleep(args.gap_ms / 1000)
        tag = f"{prefix}{index}"
        if bound:
            binding = {"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}
            expected = f"bound worker {tag} 64\n".encode()  # 64: the id's hex digits
            measure_lazy(edge, lazy, tag, BOUND.format(index=tag), expected, kept, (binding,))
        else:
            measure_lazy(edge, lazy, tag, SMALL.format(index=tag), f"worker {tag}\n".encode(), kept)
    print(title)
    print(summary("first request (cold)", lazy.first))
    print(summary("second request (warm)", lazy.second))
    print(summary("warm, same pause", floor))
    print(
        f"  cold start's own cost (medians, first request - warm worker after the same pause): "
        f"{(statistics.median(lazy.first) - statistics.median(floor)) * 1000:.2f} ms"
    )
    for failure in lazy.failures[:10]:
        print(f"  ! {failure}")


def measure(edge: Edge, series: Series, name: str, source: str, expected: bytes) -> None:
    try:
        series.deploy.append(edge.deploy(name, source))
    except Exception as exc:  # a load error is a finding, not a crash of the benchmark
        series.failures.append(f"{name}: deploy failed: {type(exc).__name__}: {exc}")
        return
    for attempt in ("first", "second"):
        try:
            elapsed, status, body = get(edge.port, f"/{name}/")
        except OSError as exc:
            series.failures.append(f"{name}: {attempt} request failed: {type(exc).__name__}: {exc}")
            return
        if status != 200 or expected not in body:
            series.failures.append(f"{name}: {attempt} request -> {status} {body[:200]!r}")
        if attempt == "first":
            series.first.append(elapsed)
            series.totals.append(series.deploy[-1] + elapsed)
        else:
            series.second.append(elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=50, help="small scripts to deploy and time (default 50)")
    parser.add_argument("--big", type=int, default=5, help="big scripts to deploy and time (default 5)")
    parser.add_argument("--big-mb", type=float, default=1.0, help="size of each big script in MB (default 1)")
    parser.add_argument(
        "--rss-workers", type=int, default=100, help="total small workers loaded for the RSS figure (default 100)"
    )
    parser.add_argument(
        "--gap-ms", type=float, default=40, help="pause between cold starts, as tenants arrive (default 40)"
    )
    parser.add_argument(
        "--bound", action="store_true", help="also time cold starts of scripts bound to a Durable Object namespace"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    edge = Edge()
    ready = time.perf_counter() - started
    print(f"edge ready on 127.0.0.1:{edge.port} in {ready:.2f} s; runtime child pid {edge.runtime_pid}")
    try:
        # one throwaway worker, so the compiler isolate and the runtime's code paths are warm
        warm = Series()
        measure(edge, warm, "warmup", SMALL.format(index="warmup"), b"warmup")
        if warm.deploy:
            print(f"warm-up worker: deploy {warm.deploy[0] * 1000:.1f} ms")
        for failure in warm.failures:
            print(f"  ! warm-up: {failure}")
        time.sleep(0.5)
        gc.collect()
        rss = {0: rss_kib(edge.runtime_pid)}

        small = Series()
        for index in range(args.workers):
            measure(edge, small, f"w{index}", SMALL.format(index=index), f"worker {index}\n".encode())
        rss[args.workers] = rss_kib(edge.runtime_pid)
        small.report(f"\nsmall module scripts ({len(SMALL.format(index=0))} bytes), {args.workers} distinct:")

        # True cold starts: routable but never started; tenants arrive args.gap_ms apart,
        # so the runtime's pool of prepared isolates can refill between them.
        # The floor for the same pattern: a request to a worker loaded long ago, after the
        # same pause (an idle machine wakes up slower than a busy one answers).
        title = f"\ncold start: first request to a script not yet started, {args.workers} distinct, "
        cold_starts(edge, args, "cold", None, title + f"{args.gap_ms:g} ms apart:")
        # The same on one kept-alive connection: what the cold start costs without the new
        # TCP connection (a front proxy keeps its connections to the edge open).
        kept = KeptAlive(edge.port)
        cold_starts(edge, args, "kept", kept, f"\nthe same on one kept-alive connection ({args.workers} more scripts):")
        kept.close()
        if args.bound:
            title = f"\ncold start of scripts bound to a Durable Object namespace, {args.workers} distinct, "
            cold_starts(edge, args, "bound", None, title + f"{args.gap_ms:g} ms apart:", bound=True)

        # The cold-start series above loaded 2 (3 with --bound) * args.workers more; the RSS figure counts them.
        loaded = (4 if args.bound else 3) * args.workers
        extra = max(0, args.rss_workers - loaded)
        if extra:
            more = Series()
            for index in range(args.workers, args.workers + extra):
                measure(edge, more, f"w{index}", SMALL.format(index=index), f"worker {index}\n".encode())
            for failure in more.failures[:10]:
                print(f"  ! {failure}")
        rss[loaded + extra] = rss_kib(edge.runtime_pid)

        print("\nruntime child RSS (VmRSS) by loaded workers (plus one warm-up worker):")
        base = rss[0]
        for count, kib in rss.items():
            growth = f"  (+{(kib - base) / count / 1024:.2f} MiB per worker)" if count else ""
            print(f"  {count:5d} workers: {kib / 1024:8.1f} MiB{growth}")

        for kind, description in (
            ("array", "an array of 100-byte string literals"),
            ("string", "one string literal"),
            ("code", "functions, bundled as esbuild writes them"),
        ):
            if not args.big:
                break
            big = Series()
            sizes = []
            before = rss_kib(edge.runtime_pid)
            for index in range(args.big):
                source = big_script(index, args.big_mb, kind)
                sizes.append(len(source.encode()))
                measure(edge, big, f"big{kind}{index}", source, f"big worker {index}:".encode())
            growth = (rss_kib(edge.runtime_pid) - before) / args.big / 1024
            size = statistics.mean(sizes) / 1024 / 1024
            big.report(f"\nbig module scripts, {size:.2f} MiB of {description}, {args.big} distinct:")
            print(f"  runtime child RSS growth: +{growth:.1f} MiB per big worker")
        errors = [entry for entry in edge.logs if entry[1] == "error"]
        if errors:
            print("\nerrors logged by the runtime:")
            for name, _, message in errors[:10]:
                print(f"  [{name}] {message}")
        print(f"\ntotal {time.perf_counter() - started:.1f} s")
    finally:
        edge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
