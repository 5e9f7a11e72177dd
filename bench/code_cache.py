"""V8 code caches: what they save when an isolate is prepared, and when a large tenant starts again.

    python bench/code_cache.py [--isolates 40] [--bundles 8] [--bundle-mb 1]

Runs itself twice, in two processes: as warren runs (with code caches) and with them
switched off (the runtime's scripts compiled from their text in every isolate, no
tenant module cache kept). In each, in-process (the engine, JS threads, a Compiler
and Workers as a runtime process has them, no HTTP):

* prepares --isolates isolates one after another (Web APIs, vendored bundles,
  bootstrap, warm-up: what the pool does in the background and a burst of new
  tenants does inline) and times each, then reads the process's RSS growth per
  isolate once they are all fully collected;
* for --bundles distinct bundles of about --bundle-mb MB in the shape wrangler's
  esbuild writes (small functions; a fifth of them run by the top level, another
  tenth by the first request), times a worker's start plus its first request, then
  lets it go idle (a full collection, which is when a cache is made) and evicts it,
  and times the start plus first request of the worker started again in its place
  (each start takes an isolate the pool prepared ahead, as in a runtime process).

It prints medians and the ratios without/with. A benchmark, not a test: nothing is
asserted on time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from warren.engine import Isolate, configure
from warren.runtime import IncomingRequest, WorkerScript
from warren.runtime.pool import IsolatePool, prepare_isolate
from warren.runtime.script import CodeCaches, Compiler
from warren.runtime.threads import JsThreads
from warren.runtime.worker import Worker


def bundle(index: int, megabytes: float) -> str:
    functions: list[str] = []
    size = 0
    while size < megabytes * 1024 * 1024:
        n = len(functions)
        functions.append(
            f"function part{index}_{n}(value) {{\n  const text = `#{n}:` + String(value);\n"
            f"  return text.length > {n % 7 + 3} ? text.slice(0, {n % 5 + 2}) : text;\n}}\n"
        )
        size += len(functions[-1])
    count = len(functions)
    init = "".join(f"part{index}_{n}({n});\n" for n in range(0, count, 5))
    calls = " + ".join(f"part{index}_{n}(1)" for n in range(1, count, 10))
    return (
        'import { DurableObject } from "cloudflare:workers";\n// src/index.js\n'
        + "".join(functions)
        + init
        + "var src_default = {\n  async fetch(request) {\n"
        + f"    return new Response(String(({calls}).length));\n"
        + "  }\n};\nexport {\n  src_default as default\n};\n"
    )


class _Reply:
    def __init__(self) -> None:
        self.finished = asyncio.get_running_loop().create_future()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status

    def body(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def error(self, status: int, message: str) -> None:
        self.status = status

    def log(self, level: str, message: str) -> None: ...
    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.finished.set_result(outcome)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(isolates: int, bundles: int, megabytes: float, caches: bool) -> dict[str, Any]:
    configure()
    if not caches:
        # The switch this benchmark needs, not a setting of warren's: no process cache of the
        # runtime's scripts is ever made, and no tenant module's cache is ever kept.
        Isolate.cache_shared_scripts = lambda self: 0  # type: ignore[method-assign]
        CodeCaches.keep = lambda self, owner, module, cache: None  # type: ignore[method-assign]
    prepare_isolate().isolate.dispose()  # the process's first: makes the caches (with them on)
    prepare_ms = []
    kept = []
    gc.collect()
    before = rss_kib()
    for _ in range(isolates):
        started = time.perf_counter()
        kept.append(prepare_isolate())
        prepare_ms.append((time.perf_counter() - started) * 1000)
    for prepared in kept:
        prepared.isolate.compact()
    rss_per_isolate = (rss_kib() - before) / isolates / 1024
    for prepared in kept:
        prepared.isolate.dispose()

    async def restarts() -> tuple[list[float], list[float], int]:
        threads = JsThreads(1)
        compiler = Compiler()
        pool = IsolatePool(ThreadPoolExecutor(1), size=1)
        first_ms, again_ms, hits = [], [], 0
        try:
            for index in range(bundles):
                script = WorkerScript(name=f"b{index}", source=bundle(index, megabytes))
                compiler.compile(script)  # transformed ahead: the figures are the engine's
                for attempt in range(2):
                    pool.refill()
                    while not pool._ready:  # prepared ahead, as the pool of a runtime process has it
                        await asyncio.sleep(0.005)
                    started = time.perf_counter()
                    worker = Worker(script, threads.for_worker(), compiler, lambda *a: None, pool=pool)
                    await worker.start()
                    reply = _Reply()
                    worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[arg-type]
                    assert await reply.finished == "ok"
                    (first_ms if attempt == 0 else again_ms).append((time.perf_counter() - started) * 1000)
                    hits += worker.code_cache_hits
                    await worker.compact()
                    await worker.close(keep_code=True)
        finally:
            pool.close()
            compiler.close()
            threads.shutdown()
        return first_ms, again_ms, hits

    first_ms, again_ms, hits = asyncio.run(restarts())
    return {
        "prepare_ms": statistics.median(prepare_ms),
        "rss_mib": rss_per_isolate,
        "first_ms": statistics.median(first_ms),
        "again_ms": statistics.median(again_ms),
        "hits": hits,
        "bundle_chars": len(bundle(0, megabytes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isolates", type=int, default=40)
    parser.add_argument("--bundles", type=int, default=8)
    parser.add_argument("--bundle-mb", type=float, default=1.0)
    parser.add_argument("--one", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.isolates, args.bundles, args.bundle_mb, args.one == "with")))
        return
    results = {}
    for mode in ("with", "without"):
        command = [sys.executable, __file__, "--one", mode, "--isolates", str(args.isolates)]
        command += ["--bundles", str(args.bundles), "--bundle-mb", str(args.bundle_mb)]
        results[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    with_, without = results["with"], results["without"]
    size = with_["bundle_chars"] / 1024 / 1024
    print("code caches, with and without (each in a process of its own); medians")
    rows = [
        (f"prepare an isolate ({args.isolates})", "prepare_ms", "ms"),
        ("RSS per prepared isolate, collected", "rss_mib", "MiB"),
        (f"{size:.2f} MB bundle: start + first request, first time ({args.bundles})", "first_ms", "ms"),
        (f"{size:.2f} MB bundle: the same after its eviction", "again_ms", "ms"),
    ]
    for label, key, unit in rows:
        ratio = without[key] / with_[key] if with_[key] else float("nan")
        print(
            f"  {label:58s} with {with_[key]:8.2f} {unit:3s}  without {without[key]:8.2f} {unit:3s}"
            f"  without/with {ratio:5.2f}"
        )
    print(f"  modules compiled from a cache after an eviction: with {with_['hits']}, without {without['hits']}")


if __name__ == "__main__":
    main()
