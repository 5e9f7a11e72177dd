"""Many workers in one runtime process: throughput and CPU per request, light and heavy.

    python bench/many_workers.py                       # 1 and 8 workers, light and heavy: ~1 min
    python bench/many_workers.py --workers 1,8,32 --kinds light --duration 8 --runs 2

One hello worker under load runs in big batches on one JS thread; many tenants with a
little traffic each (the common case) mean small batches, more trips to the JS threads
and more isolates in the caches. This measures that case. In one process (as
``cold_start.py``: warren's Supervisor behind EdgeApp on uvicorn and uvloop, on
127.0.0.1, routed by the first path segment, one runtime process) it deploys N
distinct workers and runs ``wrk -t2 -c64`` with a Lua script sending request i to
worker i mod N. Two kinds of worker:

* ``light``: answers a short string (a hello);
* ``heavy``: spins a loop of ~1 ms of CPU first (batches then stay under the 2 ms cap,
  and the JS threads' spares only help if work piles up).

For each (kind, N) it prints req/s, p99 and the runtime process's CPU per request and
cores (from /proc/PID/stat). The bench process itself hosts the supervisor, so only the
runtime's CPU is reported. This is a benchmark, not a test: it prints figures and never
asserts on time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from cold_start import Edge  # noqa: E402  (bench/ is not a package)

CLK_TCK = os.sysconf("SC_CLK_TCK")
LIGHT = 'export default {{ fetch() {{ return new Response("hello from worker {index}"); }} }};'
HEAVY = (
    "export default {{ fetch() {{ let s = 0; for (let i = 0; i < 400000; i++) s = (s + i * 7) % 1000003;"
    ' return new Response("worker {index} " + s); }} }};'
)
ROTATE = """\
counter = 0
request = function()
  counter = (counter + 1) % {count}
  return wrk.format(nil, "/w" .. counter .. "/")
end
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wrk(port: int, script: Path, seconds: float, connections: int) -> tuple[int, float, str]:
    """(requests, req/s, p99 as wrk prints it)."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    )
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", done.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        print(f"    ! {errors.group(1)} non-2xx responses")
    return requests, rate, p99.group(1) if p99 else "?"


def measure(kind: str, count: int, args: argparse.Namespace, workdir: Path) -> None:
    edge = Edge()
    try:
        source = LIGHT if kind == "light" else HEAVY
        for index in range(count):
            edge.deploy(f"w{index}", source.format(index=index))
        script = workdir / f"rotate{count}.lua"
        script.write_text(ROTATE.format(count=count))
        wrk(edge.port, script, args.warmup, args.connections)
        for run in range(args.runs):
            before = cpu_seconds(edge.runtime_pid)
            requests, rate, p99 = wrk(edge.port, script, args.duration, args.connections)
            used = cpu_seconds(edge.runtime_pid) - before
            print(
                f"  {kind:5} {count:3d} workers, run {run + 1}: {rate:8.0f} req/s  p99 {p99:>8}  "
                f"runtime {used / max(1, requests) * 1e6:6.1f} us/req ({used / args.duration:.2f} cores)"
            )
    finally:
        edge.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,8", help="comma-separated worker counts (default 1,8)")
    parser.add_argument("--kinds", default="light,heavy", help="light, heavy or both (default both)")
    parser.add_argument("--duration", type=float, default=6, help="seconds per wrk run (default 6)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up load (default 2)")
    parser.add_argument("--runs", type=int, default=1, help="measured runs per case (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian: apt install wrk)", file=sys.stderr)
        return 2
    print(f"{os.cpu_count()} CPUs; wrk -t2 -c{args.connections} shares them with the edge and its runtime process")
    with tempfile.TemporaryDirectory() as directory:
        for kind in [kind.strip() for kind in args.kinds.split(",") if kind.strip()]:
            for count in [int(part) for part in args.workers.split(",")]:
                measure(kind, count, args, Path(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
