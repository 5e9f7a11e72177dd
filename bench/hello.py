"""Throughput and latency of ``warren dev`` serving examples/hello/worker.js, measured with wrk.

    python bench/hello.py [--runs 3] [--duration 10] [--connections 64] [--threads 2] [--compare-workerd]

Starts ``warren dev examples/hello/worker.js --port 0`` as a subprocess, waits for
its "Ready on" line, warms it up for 3 s, then runs
``wrk -t2 -c64 -d10s --latency`` ``--runs`` times. For each run and for the median
it prints requests/s, p50 and p99 latency, errors and non-2xx responses, and the CPU
time the server processes (supervisor + runtime child, from /proc/PID/stat
utime+stime) spent per request.

With --compare-workerd it also serves the same worker with Cloudflare's workerd
(installed into bench/.workerd by ``npm install --prefix bench/.workerd workerd``),
runs alternately against both servers, and prints the ratio warren/workerd.

This is a benchmark, not a test: it prints figures and never asserts on time.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "worker.js"
WORKERD = ROOT / "bench" / ".workerd" / "node_modules" / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd"
READY = re.compile(r"Ready on (http://\S+)")
# warren dev logs one line per request: "GET / 200 (cpu 0.3 ms, wall 1 ms)"
REQUEST_LINE = re.compile(r"^[A-Z]+ /\S* (\d{3})(?: (\w+))?")
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORKERD_CONFIG = """\
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .mainWorker) ],
  sockets = [ ( name = "http", address = "127.0.0.1:{port}", http = (), service = "main" ) ]
);

const mainWorker :Workerd.Worker = (
  modules = [ (name = "worker", esModule = embed "worker.js") ],
  compatibilityDate = "2024-09-23"
);
"""


# -- processes -----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it, found through the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return sorted(found)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live process, in seconds."""
    times = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the ")" field 0 is state (stat field 3); utime, stime are stat fields 14, 15
        times[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def system_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET on a fresh connection: (status, body)."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    assert match, url
    host, port, path = match.group(1), int(match.group(2)), match.group(3) or "/"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return int(head.split(b" ", 2)[1]), body


class Server:
    """A server process under test and the lines it prints."""

    label = ""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.lines: deque[str] = deque(maxlen=200)
        self.statuses: dict[str, int] = {}
        self.other_lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            match = REQUEST_LINE.match(line)
            if match:
                status = match.group(1) + (f" {match.group(2)}" if match.group(2) else "")
                self.statuses[status] = self.statuses.get(status, 0) + 1
            elif not self.url and READY.search(line):
                self.url = READY.search(line).group(1)  # type: ignore[union-attr]
                self._ready.set()
            elif len(self.other_lines) < 50:
                self.other_lines.append(line)  # errors, crashes, warnings: anything but a request log
        self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            raise SystemExit(f"{self.label} did not become ready; it printed:\n" + "\n".join(self.lines))

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Warren(Server):
    label = "warren"

    def __init__(self) -> None:
        command = [sys.executable, "-m", "warren.cli", "dev", str(HELLO), "--port", "0", "--no-watch"]
        super().__init__(command, ROOT)
        self.wait_ready(60)


class Workerd(Server):
    label = "workerd"

    def __init__(self, directory: Path) -> None:
        port = free_port()
        shutil.copy(HELLO, directory / "worker.js")
        (directory / "config.capnp").write_text(WORKERD_CONFIG.format(port=port))
        super().__init__([str(WORKERD), "serve", str(directory / "config.capnp")], directory)
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("workerd did not start; it printed:\n" + "\n".join(self.lines))
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}"


# -- wrk -----------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Run:
    server: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    processes: int = 0
    note: str = ""

    cpu_us_per_request: float = 0.0
    root_us_per_request: float = 0.0  # the part spent by the process we started (warren: the supervisor)
    cores: float = 0.0  # server CPU seconds per wall second
    wrk_cores: float = 0.0
    other_cores: float = 0.0  # everything else busy on the machine meanwhile: the noise

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def parse_wrk(output: str, run: Run) -> None:
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M))
    run.p50_ms = _ms(latency["50"])
    run.p99_ms = _ms(latency["99"])
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    assert match, output
    run.requests = int(match.group(1))
    run.seconds = _ms(match.group(2) + match.group(3)) / 1000
    run.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors:
        run.socket_errors = {
            name: int(value)
            for name, value in zip(("connect", "read", "write", "timeout"), errors.groups(), strict=False)
            if int(value)
        }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    run.non_2xx = int(non_2xx.group(1)) if non_2xx else 0


def wrk(url: str, threads: int, connections: int, duration: float) -> tuple[str, float]:
    """Run wrk; its output and the CPU seconds wrk itself used."""
    before = os.times()
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url + "/"],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    after = os.times()
    if result.returncode != 0:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    wrk_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return result.stdout, wrk_cpu


def measure(server: Server, args: argparse.Namespace) -> Run:
    run = Run(server.label)
    pids = server.pids()
    before = cpu_seconds(pids)
    busy_before = system_busy_seconds()
    output, run.wrk_cpu_s = wrk(server.url, args.threads, args.connections, args.duration)
    busy = system_busy_seconds() - busy_before
    after = cpu_seconds(server.pids())
    run.processes = len(pids)
    if set(after) != set(before):
        run.note = f"process set changed: {sorted(before)} -> {sorted(after)}"
    run.cpu_s = sum(after[pid] - before[pid] for pid in before if pid in after)
    run.cpu_s += sum(after[pid] for pid in after if pid not in before)
    parse_wrk(output, run)
    run.cpu_us_per_request = run.cpu_s / run.requests * 1e6 if run.requests else float("nan")
    root = server.process.pid
    root_cpu = after.get(root, 0.0) - before.get(root, 0.0)
    run.root_us_per_request = root_cpu / run.requests * 1e6 if run.requests else float("nan")
    run.cores = run.cpu_s / run.seconds
    run.wrk_cores = run.wrk_cpu_s / run.seconds
    run.other_cores = max(0.0, busy - run.cpu_s - run.wrk_cpu_s) / run.seconds
    if args.verbose:
        print(output)
    return run


# -- report --------------------------------------------------------------------


def describe(run: Run, scope: str = "") -> str:
    problems = [scope] if scope and (run.errors or run.non_2xx) else []
    if run.errors:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in run.socket_errors.items()))
    if run.non_2xx:
        problems.append(f"non-2xx {run.non_2xx}")
    if run.note:
        problems.append(run.note)
    split = ""
    if run.processes > 1:
        split = f" = {run.root_us_per_request:.0f} sup + {run.cpu_us_per_request - run.root_us_per_request:.0f} child"
    return (
        f"{run.rps:9.0f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
        f"cpu {run.cpu_us_per_request:5.0f} us/req{split} ({run.cores:.2f} cores, "
        f"{run.processes} procs; wrk {run.wrk_cores:.2f}, other {run.other_cores:.2f} cores)"
        + (f"  [{'; '.join(problems)}]" if problems else "")
    )


def median_run(runs: list[Run]) -> Run:
    median = Run(runs[0].server)
    names = ("rps", "p50_ms", "p99_ms", "requests", "seconds", "cpu_s", "wrk_cpu_s", "processes")
    for name in (*names, "cpu_us_per_request", "root_us_per_request", "cores", "wrk_cores", "other_cores"):
        setattr(median, name, statistics.median(getattr(run, name) for run in runs))
    median.requests = int(median.requests)
    median.processes = int(median.processes)
    median.non_2xx = sum(run.non_2xx for run in runs)
    for run in runs:
        for key, value in run.socket_errors.items():
            median.socket_errors[key] = median.socket_errors.get(key, 0) + value
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured wrk runs per server (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up load (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--compare-workerd", action="store_true", help="also measure workerd, alternating runs")
    parser.add_argument("--verbose", action="store_true", help="print wrk's full output for each run")
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=20,
        help="newly loaded scripts whose first request is timed, via bench/cold_start.py (default 20; 0 skips)",
    )
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print(
            "bench/hello.py needs the load tool wrk, which is not on PATH.\n"
            "Install it (Debian/Ubuntu): apt-get update && apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    if args.compare_workerd and not WORKERD.exists():
        print(
            f"--compare-workerd needs {WORKERD.relative_to(ROOT)}.\n"
            "Install it with: npm install --prefix bench/.workerd workerd",
            file=sys.stderr,
        )
        return 2

    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, {args.runs} run(s) each, "
        f"{os.cpu_count()} CPUs (wrk shares them with the server)"
    )
    print("cpu = server processes' utime+stime per request; cores = CPU seconds per second of wrk's run")
    print("(server, wrk, and 'other': everything else busy on the machine meanwhile, i.e. noise)")
    servers: list[Server] = []
    workdir = tempfile.TemporaryDirectory(prefix="warren-bench-")
    try:
        started = time.perf_counter()
        servers.append(Warren())
        print(f"warren dev ready at {servers[0].url} in {time.perf_counter() - started:.1f} s")
        if args.compare_workerd:
            started = time.perf_counter()
            servers.append(Workerd(Path(workdir.name)))
            version = subprocess.run([str(WORKERD), "--version"], capture_output=True, text=True).stdout.strip()
            print(f"{version} ready at {servers[1].url} in {time.perf_counter() - started:.1f} s")

        for server in servers:
            status, body = http_get(server.url + "/")
            print(f"{server.label}: GET / -> {status} {body.decode(errors='replace').strip()!r}")
            if status != 200:
                print(f"{server.label} does not answer 200; last lines:\n" + "\n".join(server.lines))
                return 1
            if args.warmup > 0:
                wrk(server.url, args.threads, args.connections, args.warmup)

        results: dict[str, list[Run]] = {server.label: [] for server in servers}
        for index in range(args.runs):
            for server in servers:  # alternate, so drift in the machine's load hits both alike
                run = measure(server, args)
                results[server.label].append(run)
                print(f"run {index + 1} {server.label:8} {describe(run)}")
                if server.process.poll() is not None:
                    print(f"{server.label} exited with {server.process.returncode}; last lines:")
                    print("\n".join(server.lines))
                    return 1

        print()
        medians = {label: median_run(runs) for label, runs in results.items()}
        for label, median in medians.items():
            print(f"median {label:8}  {describe(median, 'all runs:')}")
        if "workerd" in medians:
            ours, theirs = medians["warren"], medians["workerd"]
            print(
                f"ratio warren/workerd: req/s {ours.rps / theirs.rps:.3f}  "
                f"p50 {ours.p50_ms / theirs.p50_ms:.2f}x  p99 {ours.p99_ms / theirs.p99_ms:.2f}x  "
                f"cpu/req {ours.cpu_us_per_request / theirs.cpu_us_per_request:.2f}x"
            )
        warren = servers[0]
        if isinstance(warren, Warren):
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(warren.statuses.items()))
            print(f"warren dev logged {sum(warren.statuses.values())} requests ({statuses})")
            if warren.other_lines:
                print("warren also printed:\n  " + "\n  ".join(warren.other_lines[:20]))
    finally:
        for server in servers:
            server.stop()
        workdir.cleanup()
    if args.cold_starts:
        print(f"\nfirst request of a newly loaded script ({args.cold_starts} distinct, bench/cold_start.py):")
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("cold_start.py")),
                "--workers",
                str(args.cold_starts),
                "--big",
                "0",
                "--rss-workers",
                str(args.cold_starts),
            ],
            check=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
