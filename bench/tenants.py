"""Many tenants on one machine: memory per tenant, eviction, and the cold start of an evicted tenant.

    python bench/tenants.py                          # 10,000 tenants, or as many as fit; 5-15 minutes
    python bench/tenants.py --tenants 2000 --processes 1 --memory-budget-mb 2048

In this process it runs warren's Supervisor behind EdgeApp on uvicorn (127.0.0.1,
port 0, routed by the first path segment; bench/cold_start.py's Edge) with
``--processes`` runtime processes (default: one per core, as ``warren serve``)
and the default memory budget (70% of the machine's memory, shared by the
processes) unless ``--memory-budget-mb`` says otherwise. The idle timeout is an
hour (``--idle-timeout``; warren's default is 5 minutes, less than loading
10,000 tenants takes), so what is evicted is evicted for the budget. Then:

* registers ``--tenants`` distinct small module workers without starting them,
  and requests each once (``--concurrency`` at a time, a new TCP connection
  each): every first request is a true cold start. Every ``--report-every``
  tenants it prints each runtime process's RSS, its isolates and evictions, and
  the machine's MemAvailable. It stops early, saying so, when MemAvailable falls
  below ``--reserve-mb``: the machine is shared, and "as many as fit" is a result;
* prints where the memory goes: the processes' RSS with no tenant (Python, V8,
  the prepared-isolate pool), then per resident isolate its RSS growth, its JS
  heap as metered, and the rest (V8's per-isolate structures, malloc);
* waits ``--settle`` seconds (an isolate idle 10 s gets a full collection) and
  measures again;
* requests the ``--revisit`` oldest tenants again (evicted first, if anything
  was evicted) and the newest ones (still resident), one at a time, and prints
  the latency of each group and how many of them had to start an isolate
  (``cold`` in the metering): the cost of an evicted tenant's next request;
* last, makes a few isolates in this process, empty and with the runtime
  loaded, and prints their RSS and JS heap once collected: the anatomy of a
  tenant's cost.

The runtime processes get ``oom_score_adj`` 1000: if the machine runs out of
memory after all, the kernel kills them first, not someone else's work.

This is a benchmark, not a test: it prints figures and never asserts on time.
It exits non-zero only if the edge cannot start or no tenant answers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cold_start import Edge, get, percentile, rss_kib

SCRIPT = """\
export default {{
  async fetch(request, env, ctx) {{
    return new Response("tenant {index}\\n");
  }},
}};
"""
MIB = 1024 * 1024


def mem_available_mib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def mem_total_mib() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MIB


def shield_machine(pid: int) -> None:
    """Make this process the OOM killer's first choice (raising one's own score needs no privilege)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


def ms(values: list[float]) -> str:
    if not values:
        return "n=0"
    in_ms = [value * 1000 for value in values]
    return (
        f"p50 {percentile(in_ms, 0.5):7.2f} ms  p99 {percentile(in_ms, 0.99):7.2f} ms  "
        f"max {max(in_ms):8.2f} ms  (n={len(in_ms)})"
    )


class Census:
    """The runtime processes' RSS, isolates and evictions, as the supervisor last heard."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.baseline = {pid: rss_kib(pid) for pid in edge.runtime_pids}

    def take(self) -> list[tuple[int, int, int, int]]:
        """(pid, RSS KiB, isolates, evictions) per runtime process."""
        rows = []
        for process in self.edge.supervisor.processes():
            if process.process is None:
                continue
            pid = process.process.pid
            try:
                rss = rss_kib(pid)
            except (OSError, RuntimeError):
                rss = 0
            rows.append((pid, rss, process.isolates, process.evictions))
        return rows

    def line(self) -> str:
        rows = self.take()
        parts = [
            f"p{i} {rss / 1024:7.0f} MiB {isolates:5d} iso {evicted:5d} ev"
            for i, (_, rss, isolates, evicted) in enumerate(rows)
        ]
        return " | ".join(parts)

    def per_isolate_mib(self) -> tuple[float, int, float]:
        """(RSS of all runtime processes MiB, isolates, RSS growth per isolate MiB)."""
        rows = self.take()
        total = sum(rss for _, rss, _, _ in rows)
        base = sum(self.baseline.get(pid, 0) for pid, _, _, _ in rows)
        isolates = sum(isolates for _, _, isolates, _ in rows)
        return total / 1024, isolates, (total - base) / 1024 / isolates if isolates else 0.0


def anatomy(count: int = 40) -> None:
    """Where one isolate's memory goes, measured on isolates made here (compacted, as when idle)."""
    import gc

    from warren.engine import Isolate
    from warren.runtime.pool import prepare_isolate

    def rss() -> int:
        gc.collect()
        return rss_kib(os.getpid()) * 1024

    for _ in range(3):  # the process' one-off costs (V8's platform, the shared runtime source)
        prepare_isolate().isolate.dispose()
    print(f"\nanatomy of an isolate ({count} made in this process, each fully collected):")
    before = rss()
    empty = [Isolate() for _ in range(count)]
    for isolate in empty:
        isolate.compact()
    middle = rss()
    prepared = [prepare_isolate() for _ in range(count)]
    for each in prepared:
        each.isolate.compact()
    after = rss()
    heap_empty = statistics.mean(isolate.memory_bytes for isolate in empty)
    heap_prepared = statistics.mean(each.isolate.memory_bytes for each in prepared)
    print(
        f"  V8 isolate with one context, nothing loaded: {(middle - before) / count / MIB:.2f} MiB RSS "
        f"(JS heap {heap_empty / MIB:.2f} MiB; the rest is V8's per-isolate tables and malloc)"
    )
    print(
        f"  with warren's runtime loaded (Web APIs, bundle, bootstrap, warmed): {(after - middle) / count / MIB:.2f} "
        f"MiB RSS (JS heap {heap_prepared / MIB:.2f} MiB); a tenant adds its script, and garbage until compacted"
    )
    for isolate in empty:
        isolate.dispose()
    for each in prepared:
        each.isolate.dispose()


def request(edge: Edge, index: int) -> tuple[int, float, bool]:
    """(index, seconds, answered correctly) for one GET on a new connection."""
    try:
        elapsed, status, body = get(edge.port, f"/t{index}/")
    except OSError:
        return index, 0.0, False
    return index, elapsed, status == 200 and body == f"tenant {index}\n".encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=10_000, help="distinct tenants (default 10,000)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="runtime processes (default: cores)")
    parser.add_argument("--memory-budget-mb", type=int, default=0, help="per process; 0: warren's default")
    parser.add_argument(
        "--idle-timeout", type=float, default=3600.0,
        help="seconds before an idle isolate is evicted (warren's default is 300; loading 10,000 takes longer)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight while loading (default 4)")
    parser.add_argument("--report-every", type=int, default=1000, help="progress line every N tenants")
    parser.add_argument("--reserve-mb", type=int, default=2048, help="stop loading below this MemAvailable")
    parser.add_argument("--settle", type=float, default=16.0, help="seconds to wait before measuring again")
    parser.add_argument("--revisit", type=int, default=200, help="oldest and newest tenants requested again")
    args = parser.parse_args()

    from warren.server.runtime_process import default_memory_budget

    budget_mib = args.memory_budget_mb or default_memory_budget(args.processes) / MIB
    started = time.perf_counter()
    edge = Edge(processes=args.processes, memory_budget_mb=args.memory_budget_mb, idle_timeout=args.idle_timeout)
    try:
        return run(edge, args, budget_mib, started)
    finally:
        edge.stop()


def run(edge: Edge, args: argparse.Namespace, budget_mib: float, started: float) -> int:
    # A request to each process starts its pool and compiler; tenants come after.
    for index in range(args.processes * 4):
        edge.deploy(f"warm{index}", SCRIPT.format(index=f"warm{index}"))
    time.sleep(2.0)
    for pid in edge.runtime_pids:
        shield_machine(pid)
    print(
        f"{args.processes} runtime process(es), memory budget {budget_mib:,.0f} MiB each "
        f"({'default: 70% of' if not args.memory_budget_mb else 'set; machine has'} {mem_total_mib():,.0f} MiB), "
        f"MemAvailable {mem_available_mib():,.0f} MiB, {os.cpu_count()} CPUs"
    )
    census = Census(edge)
    base_total = sum(census.baseline.values()) / 1024
    print(f"runtime processes with no tenant (pool of prepared isolates, compiler): {base_total:,.0f} MiB")

    registered = time.perf_counter()
    for index in range(args.tenants):
        edge.register(f"t{index}", SCRIPT.format(index=index))
    print(f"{args.tenants:,} tenants registered (not started) in {time.perf_counter() - registered:.1f} s")

    latencies: list[float] = []
    wrong: list[int] = []
    served = 0
    stopped = ""
    loading = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for start in range(0, args.tenants, args.report_every):
            available = mem_available_mib()
            if available < args.reserve_mb:
                stopped = f"MemAvailable {available:,.0f} MiB < --reserve-mb {args.reserve_mb:,}"
                break
            chunk = range(start, min(args.tenants, start + args.report_every))
            chunk_latencies = []
            for index, elapsed, ok in pool.map(lambda i: request(edge, i), chunk):
                if ok:
                    chunk_latencies.append(elapsed)
                else:
                    wrong.append(index)
            served = chunk.stop
            latencies += chunk_latencies
            p50 = percentile([v * 1000 for v in chunk_latencies], 0.5) if chunk_latencies else 0.0
            print(
                f"{served:6,} tenants: {census.line()} | avail {mem_available_mib():6,.0f} MiB | "
                f"cold 1st req p50 {p50:.1f} ms"
            )
    elapsed = time.perf_counter() - loading
    if stopped:
        print(f"stopped after {served:,} tenants: {stopped}")
    print(f"\nloading {served:,} tenants (first request each) took {elapsed:.0f} s: {served / elapsed:.0f} tenants/s")
    print(f"  first request (a cold start): {ms(latencies)}")
    if wrong:
        print(f"  ! {len(wrong)} tenants did not answer their own text, e.g. t{wrong[0]}")
    if not latencies:
        return 1

    def memory_report(title: str) -> None:
        total, isolates, per_isolate = census.per_isolate_mib()
        heaps = [m["memory"] for m in dict(edge.metering).values() if m.get("memory")]
        heap = statistics.mean(heaps) / MIB if heaps else 0.0
        evicted = sum(row[3] for row in census.take())
        print(f"\n{title}")
        print(f"  runtime processes: {census.line()}")
        print(f"  RSS {total:,.0f} MiB in all, {isolates:,} isolates resident, {evicted:,} evicted so far")
        print(f"  where it goes: {base_total:,.0f} MiB with no tenant; {per_isolate:.2f} MiB RSS per resident isolate,")
        print(f"    of which JS heap and buffers {heap:.2f} MiB (metered after each tenant's last request)")
        print(f"    and {per_isolate - heap:.2f} MiB V8's own per-isolate structures, malloc and warren's objects")
        supervisor = rss_kib(os.getpid()) / 1024
        print(f"  supervisor (this process, {len(edge.supervisor.scripts):,} scripts known): {supervisor:,.0f} MiB")

    memory_report(f"just after serving {served:,} tenants once:")
    if args.settle > 0:
        time.sleep(args.settle)
        memory_report(f"{args.settle:.0f} s later (idle isolates compacted):")

    _, isolates, per_isolate = census.per_isolate_mib()
    evicted = sum(row[3] for row in census.take())
    total_budget = budget_mib * args.processes
    if evicted:
        print(f"\nunder the budget ({total_budget:,.0f} MiB over {args.processes} process(es)): "
              f"{isolates:,} tenants resident, {evicted:,} evictions")
    elif per_isolate:
        fits = int((total_budget - base_total) / per_isolate)
        print(f"\nno eviction: all {isolates:,} resident; at {per_isolate:.2f} MiB each the budget "
              f"({total_budget:,.0f} MiB) would hold about {fits:,} tenants")

    def revisit(title: str, indices: range) -> None:
        timings = []
        cold = 0
        for index in indices:
            seen = edge.finished.get(f"t{index}", 0)
            _, elapsed, ok = request(edge, index)
            if ok:
                timings.append(elapsed)
                cold += bool(edge.metering_after(f"t{index}", seen).get("cold"))
        print(f"  {title:34} {ms(timings)}, {cold} of {len(timings)} started an isolate")

    count = min(args.revisit, served // 2)
    if count:
        print("\nrequests again, one at a time (new connection each):")
        revisit(f"oldest {count} (evicted first)", range(count))
        revisit(f"newest {count} (resident)", range(served - count, served))
        if evicted:
            print("  evicted since:", sum(row[3] for row in census.take()) - evicted)
    errors = [entry for entry in edge.logs if entry[1] == "error"]
    if errors:
        print(f"\n{len(errors)} errors logged by the runtime, e.g.: {errors[0]}")
    anatomy()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
