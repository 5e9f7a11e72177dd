"""warren against Cloudflare's workerd, side by side in one run, on one machine, loopback only.

    python bench/compare_workerd.py                 # about 3.5 minutes
    python bench/compare_workerd.py --quick         # about 70 s, smaller counts
    python bench/compare_workerd.py --only 1,6      # hello only: one process, then all cores (about 65 s)
    python bench/compare_workerd.py --workerd bench/.workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd

Without --workerd it installs workerd from npm into a temporary directory
(``npm install --no-save --no-package-lock workerd``) and removes it at the end; if
npm is missing or the install fails it says so and exits 0 (nothing measured).
wrk (Debian's package) must be on PATH.

It runs the same worker scripts on both and prints a table of warren/workerd ratios:

1. hello req/s: ``wrk -t2 -c64 -d10s`` against ``warren dev examples/hello/worker.js``
   and against workerd serving the same file;
2. JSON + SHA-256 req/s: a worker that parses a JSON body (POST) and returns
   ``crypto.subtle.digest("SHA-256", url)``; a probe request first, and if warren
   answers 500 (no ``crypto.subtle`` yet) the row says so. A JSON-only variant
   (no digest) is measured on both so the row has a comparable neighbour;
3. first request of a new script: warren deploys distinct small scripts into a
   running edge (bench/cold_start.py's Supervisor + EdgeApp) and times the first
   request after each deploy; workerd cannot add a script to a running process,
   so it is started with N distinct workers and the first request to each
   already-loaded worker is timed, and separately process start -> first 200.
   warren's "deploy + first request" and workerd's "process start -> first 200"
   are printed side by side but are NOT the same measurement;
4. RSS per tenant at 100 and 1,000 tenants (``--tenants``): distinct small workers,
   each served once; warren's runtime child VmRSS against workerd's process VmRSS;
5. a CPU hog's effect on a neighbour: a worker spinning a bounded loop (~200 ms of
   CPU; warren's limit is raised for it so both do the same work) hit back to back
   by one wrk connection, while a paced client (its own process, one keep-alive
   connection, ``--rate`` req/s) measures a hello worker in the same process:
   p50/p99 with and without the hog. warren is also run with ``while(true){}`` at
   its default 50 ms CPU limit;
6. hello req/s using all cores: ``warren serve --processes N`` (N = the CPU count),
   fed through its control API like tests/test_edge.py, with (a) one hello worker and
   (b) 4N copies of it on distinct hostnames, wrk rotating the Host header per request
   (a worker's requests always go to one runtime process, so only (b) can keep all
   of them busy), against one ``workerd serve`` process with one hello worker (a
   workerd socket names one service: K workers would need K ports or a router
   worker). warren's CPU is the supervisor's plus every runtime process's.

This is a benchmark, not a test: it prints figures and never asserts on time. It
exits non-zero only when it cannot measure at all (wrk missing, a server not
starting).
"""

from __future__ import annotations

import argparse
import gc
import glob
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HELLO = ROOT / "examples" / "hello" / "worker.js"
INSTALLED = BENCH / ".workerd" / "node_modules" / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd"
COMPAT_DATE = "2024-09-23"

# -- the worker scripts (the same text runs on both) --------------------------------

JSON_SHA = """\
export default {
  async fetch(request) {
    const data = await request.json();
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(request.url));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    return Response.json({ sha256: hex, user: data.user, items: data.items.length });
  },
};
"""

JSON_ONLY = """\
export default {
  async fetch(request) {
    const data = await request.json();
    return Response.json({ url: request.url, user: data.user, items: data.items.length });
  },
};
"""

JSON_BODY = json.dumps(
    {"user": "tenant-42", "items": list(range(60)), "tags": ["a", "bb", "ccc"], "meta": {"ok": True, "n": 3.5}}
)

HOG_BOUNDED = """\
export default {
  async fetch(request) {
    let x = 0;
    for (let i = 0; i < %d; i++) { x = (x * 31 + i) %% 1000003; }
    return new Response("spun " + x + "\\n");
  },
};
"""

HOG_FOREVER = """\
export default {
  async fetch(request) {
    while (true) {}
  },
};
"""

# --------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (as bench/cold_start.py)."""
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def neighbour_client(url: str, rate: float, seconds: float) -> int:
    """The paced client, run in a process of its own: one keep-alive connection, GET every 1/rate s.

    Prints JSON: latencies in ms (send to whole body), statuses, errors. A late
    request is sent at once (no catching up), so this under-counts queueing delay
    slightly (coordinated omission), the same way for both servers.
    """
    parsed = urllib.parse.urlsplit(url)
    host, port, path = parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path or "/"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    connection: http.client.HTTPConnection | None = None
    interval = 1.0 / rate
    started = time.perf_counter()
    next_at = started
    for _ in range(round(rate * seconds)):
        if time.perf_counter() - started > seconds:
            break  # the server (or this client) fell behind: fewer samples, reported as n
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=30)
                connection.connect()
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            latencies.append((time.perf_counter() - sent) * 1000)
            statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
            if response.will_close:
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if connection is not None:
                connection.close()
            connection = None
        next_at = max(next_at, time.perf_counter())
    print(json.dumps({"latencies": latencies, "statuses": statuses, "errors": errors[:20], "n_errors": len(errors)}))
    return 0


# The rest imports warren (through bench/hello.py and bench/cold_start.py) lazily, so the
# neighbour client above starts quickly and skipping (no npm) costs nothing.


@dataclass
class Row:
    figure: str
    warren: str
    workerd: str
    ratio: str
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    odd: list[str] = field(default_factory=list)  # anything odd seen in warren
    details: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.details.append(line)


def ratio(ours: float, theirs: float, unit: str = "") -> str:
    if not theirs or ours != ours or theirs != theirs:
        return "n/a"
    return f"{ours / theirs:.3g}{unit}"


# -- workerd ---------------------------------------------------------------------------


def install_workerd(directory: Path) -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        print("npm is not on PATH, so workerd cannot be installed: skipping the comparison (nothing measured).")
        print("Install Node.js/npm, or pass --workerd PATH to an installed workerd binary.")
        return None
    print(f"installing workerd from npm into {directory} ...", flush=True)
    started = time.perf_counter()
    result = subprocess.run(
        [npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund", "workerd"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        print(f"npm install workerd failed ({result.returncode}): skipping the comparison (nothing measured).")
        print((result.stdout + result.stderr)[-2000:])
        return None
    found = sorted(glob.glob(str(directory / "node_modules" / "@cloudflare" / "workerd-*" / "bin" / "workerd")))
    if not found:
        print("npm installed workerd but no binary for this platform was found: skipping (nothing measured).")
        return None
    print(f"installed in {time.perf_counter() - started:.1f} s: {found[0]}")
    return Path(found[0])


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while choosing, then released)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(int(sock.getsockname()[1]))
    finally:
        for sock in sockets:
            sock.close()
    return ports


def workerd_config(names: list[str], ports: list[int]) -> str:
    services = ",\n    ".join(
        f'(name = "{name}", worker = (modules = [(name = "worker", esModule = embed "{name}.js")], '
        f'compatibilityDate = "{COMPAT_DATE}"))'
        for name in names
    )
    sockets = ",\n    ".join(
        f'(name = "s-{name}", address = "127.0.0.1:{port}", http = (), service = "{name}")'
        for name, port in zip(names, ports, strict=True)
    )
    return (
        'using Workerd = import "/workerd/workerd.capnp";\n\n'
        "const config :Workerd.Config = (\n"
        f"  services = [\n    {services}\n  ],\n"
        f"  sockets = [\n    {sockets}\n  ]\n);\n"
    )


class WorkerdProcess:
    """``workerd serve`` with one worker per listening socket (a port per worker, so no router runs)."""

    def __init__(self, binary: Path, workers: dict[str, str]) -> None:
        from hello import Server

        self.directory = tempfile.TemporaryDirectory(prefix="warren-vs-workerd-")
        directory = Path(self.directory.name)
        names = list(workers)
        for name, source in workers.items():
            (directory / f"{name}.js").write_text(source)
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        (directory / "config.capnp").write_text(workerd_config(names, list(self.ports.values())))
        self.started = time.perf_counter()
        self.server = Server([str(binary), "serve", str(directory / "config.capnp")], directory)
        self.server.label = "workerd"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def first_200(self, name: str, timeout: float = 120) -> float:
        """Poll GET / on the worker until 200; seconds since the process was started."""
        from hello import http_get

        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = http_get(self.url(name) + "/", timeout=10)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            self._check(deadline)
            time.sleep(0.002)

    def wait_listening(self, timeout: float = 120) -> float:
        """Wait until every worker's port accepts a connection (no request is sent)."""
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    self._check(deadline)
                    time.sleep(0.005)
        return time.perf_counter() - self.started

    def _check(self, deadline: float) -> None:
        if self.server.process.poll() is not None or time.monotonic() > deadline:
            self.stop()
            raise SystemExit("workerd did not start; it printed:\n" + "\n".join(self.server.lines))

    def rss_kib(self) -> int:
        from cold_start import rss_kib
        from hello import descendants

        return sum(rss_kib(pid) for pid in descendants(self.server.process.pid))

    def stop(self) -> None:
        self.server.stop()
        self.directory.cleanup()


# -- warren dev ------------------------------------------------------------------------


def start_warren_dev(script: Path) -> Any:
    """``warren dev SCRIPT --port 0 --no-watch``; returns (server, seconds from spawn to first 200 or None)."""
    from hello import Server

    started = time.perf_counter()
    server = Server([sys.executable, "-m", "warren.cli", "dev", str(script), "--port", "0", "--no-watch"], ROOT)
    server.label = "warren"
    server.wait_ready(60)
    return server, started


# -- wrk -------------------------------------------------------------------------------


def load(
    server: Any,
    url: str,
    args: argparse.Namespace,
    duration: float,
    lua: Path | None = None,
    split: dict[int, float] | None = None,
) -> Any:
    """wrk -t2 -c64 against url (with an optional Lua script); a hello.Run with CPU per request.

    Also fills the Run's wrk_cores (wrk's own CPU), other_cores (the rest of the machine
    busy meanwhile) and root_us_per_request (the process started: warren's supervisor),
    and ``split`` (if given) with each server process's CPU seconds.
    """
    from hello import Run, cpu_seconds, parse_wrk, system_busy_seconds

    run = Run(server.label)
    pids = server.pids()
    before = cpu_seconds(pids)
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--latency"]
    if lua is not None:
        command += ["-s", str(lua)]
    times_before, busy_before = os.times(), system_busy_seconds()
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 60)
    busy, times_after = system_busy_seconds() - busy_before, os.times()
    if result.returncode != 0:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    after = cpu_seconds(server.pids())
    run.wrk_cpu_s = (times_after.children_user - times_before.children_user) + (
        times_after.children_system - times_before.children_system
    )
    run.processes = len(pids)
    if set(after) != set(before):
        run.note = f"process set changed: {sorted(before)} -> {sorted(after)}"
    run.cpu_s = sum(after[pid] - before[pid] for pid in before if pid in after)
    run.cpu_s += sum(after[pid] for pid in after if pid not in before)
    parse_wrk(result.stdout, run)
    run.cpu_us_per_request = run.cpu_s / run.requests * 1e6 if run.requests else float("nan")
    run.cores = run.cpu_s / run.seconds
    run.wrk_cores = run.wrk_cpu_s / run.seconds
    run.other_cores = max(0.0, busy - run.cpu_s - run.wrk_cpu_s) / run.seconds
    root = server.process.pid
    root_cpu = after.get(root, 0.0) - before.get(root, 0.0)
    run.root_us_per_request = root_cpu / run.requests * 1e6 if run.requests else float("nan")
    if split is not None:
        split.update({pid: after[pid] - before.get(pid, 0.0) for pid in after})
    return run


def describe_run(run: Any) -> str:
    problems = []
    if run.errors:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in run.socket_errors.items()))
    if run.non_2xx:
        problems.append(f"non-2xx {run.non_2xx}")
    if run.note:
        problems.append(run.note)
    return (
        f"{run.rps:8.0f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
        f"cpu {run.cpu_us_per_request:4.0f} us/req ({run.cores:.2f} cores, {run.processes} procs)"
        + (f"  [{'; '.join(problems)}]" if problems else "")
    )


def wrk_problems(run: Any, what: str, report: Report) -> None:
    if run.errors or run.non_2xx or run.note:
        report.odd.append(f"{what}: {describe_run(run)}")


def warren_dev_lines(
    server: Any, what: str, report: Report, expected: tuple[str, ...] = (), expected_500s: int = 0
) -> None:
    """Non-200 statuses and unexpected output of a warren dev process, as findings."""
    # warren dev's request log: "GET / 200 ..." or, newer, "GET / 200 ok ..." (status, then outcome)
    bad = {key: count for key, count in server.statuses.items() if key not in ("200", "200 ok")}
    if bad.get("500 exception") == expected_500s:
        del bad["500 exception"]
    if bad:
        report.odd.append(f"{what}: warren dev logged non-200 statuses {bad} (of {sum(server.statuses.values())})")
    expected = (*expected, "info: started ")  # the runtime names the code it starts: not a finding
    lines = [line for line in server.other_lines if line.strip() and not any(e in line for e in expected)]
    if lines:
        report.odd.append(f"{what}: warren dev printed:\n      " + "\n      ".join(lines[:12]))
    if server.process.poll() is not None:
        report.odd.append(f"{what}: warren dev exited with {server.process.returncode}")


# -- 1. hello, 2. JSON + SHA-256 --------------------------------------------------------


def bench_hello(binary: Path, args: argparse.Namespace, report: Report) -> None:
    from hello import http_get

    report.say(f"\n== 1. hello req/s (wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s) ==")
    warren, spawned = start_warren_dev(HELLO)
    workerd: WorkerdProcess | None = None
    try:
        status, body = http_get(warren.url + "/")
        warren_start = time.perf_counter() - spawned
        report.say(f"warren dev: spawn -> Ready -> first GET / {status} in {warren_start * 1000:.0f} ms")
        if status != 200:
            raise SystemExit(f"warren dev answered {status} {body!r} for the hello worker")
        workerd = WorkerdProcess(binary, {"hello": HELLO.read_text()})
        workerd_start = workerd.first_200("hello")
        report.say(f"workerd: spawn -> first 200 in {workerd_start * 1000:.0f} ms")
        report.rows.append(
            Row(
                "process spawn -> first 200 (hello)",
                f"{warren_start * 1000:.0f} ms",
                f"{workerd_start * 1000:.0f} ms",
                ratio(warren_start, workerd_start, "x"),
                "warren dev: Python start-up, runtime child, deploy",
            )
        )
        targets = [(warren, warren.url + "/"), (workerd.server, workerd.url("hello") + "/")]
        for server, url in targets:
            load(server, url, args, args.warmup)
        runs: dict[str, list[Any]] = {"warren": [], "workerd": []}
        for index in range(args.runs):
            for server, url in targets:  # alternate, so drift in the machine's load hits both alike
                run = load(server, url, args, args.duration)
                runs[server.label].append(run)
                report.say(f"  run {index + 1} {server.label:8} {describe_run(run)}")
                if server.label == "warren":
                    wrk_problems(run, "hello (warren dev)", report)
        ours = statistics.median(run.rps for run in runs["warren"])
        theirs = statistics.median(run.rps for run in runs["workerd"])
        cpu_ours = statistics.median(run.cpu_us_per_request for run in runs["warren"])
        cpu_theirs = statistics.median(run.cpu_us_per_request for run in runs["workerd"])
        report.rows.append(Row("hello req/s", f"{ours:,.0f}", f"{theirs:,.0f}", ratio(ours, theirs)))
        report.rows.append(
            Row("hello CPU per request", f"{cpu_ours:.0f} us", f"{cpu_theirs:.0f} us", ratio(cpu_ours, cpu_theirs, "x"))
        )
        warren_dev_lines(warren, "hello (warren dev)", report)
    finally:
        warren.stop()
        if workerd is not None:
            workerd.stop()


def bench_json(binary: Path, args: argparse.Namespace, report: Report, workdir: Path) -> None:
    report.say(f"\n== 2. JSON body + SHA-256 req/s (POST, {len(JSON_BODY)}-byte JSON body) ==")
    lua = workdir / "post.lua"
    lua.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(JSON_BODY)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    for label, source in (("JSON + SHA-256", JSON_SHA), ("JSON only (no digest)", JSON_ONLY)):
        script = workdir / ("json_sha.js" if source is JSON_SHA else "json_only.js")
        script.write_text(source)
        warren, _ = start_warren_dev(script)
        workerd = None
        try:
            status, body = post(warren.url + "/", JSON_BODY)
            report.say(f"{label}: warren probe POST -> {status} {body[:120]!r}")
            workerd = WorkerdProcess(binary, {"json": source})
            workerd.wait_listening()
            w_status, w_body = post(workerd.url("json") + "/", JSON_BODY)
            report.say(f"{label}: workerd probe POST -> {w_status} {w_body[:120]!r}")
            theirs = (
                load(workerd.server, workerd.url("json") + "/", args, args.duration, lua) if w_status == 200 else None
            )
            if theirs is not None:
                report.say(f"  workerd  {describe_run(theirs)}")
            if status == 500 and source is JSON_SHA:
                time.sleep(0.2)  # let warren dev print the error
                reason = next((line for line in warren.other_lines if "crypto" in line), "")
                report.say(f"  warren: n/a (warren lacks crypto.subtle){': ' + reason if reason else ''}")
                report.rows.append(
                    Row(
                        f"{label} req/s",
                        "n/a (warren lacks crypto.subtle)",
                        f"{theirs.rps:,.0f}" if theirs else f"probe {w_status}",
                        "n/a",
                    )
                )
                warren_dev_lines(warren, label, report, expected=("crypto", "    at "), expected_500s=1)
                continue
            if status != 200:
                report.odd.append(f"{label}: warren probe POST answered {status} {body[:200]!r}")
                report.rows.append(
                    Row(f"{label} req/s", f"probe {status}", f"{theirs.rps:,.0f}" if theirs else "-", "n/a")
                )
                warren_dev_lines(warren, label, report)
                continue
            ours = load(warren, warren.url + "/", args, args.duration, lua)
            report.say(f"  warren   {describe_run(ours)}")
            wrk_problems(ours, f"{label} (warren dev)", report)
            report.rows.append(
                Row(
                    f"{label} req/s",
                    f"{ours.rps:,.0f}",
                    f"{theirs.rps:,.0f}" if theirs else "-",
                    ratio(ours.rps, theirs.rps) if theirs else "n/a",
                )
            )
            warren_dev_lines(warren, label, report)
        finally:
            warren.stop()
            if workerd is not None:
                workerd.stop()


def post(url: str, body: str) -> tuple[int, bytes]:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=10)
    try:
        connection.request("POST", "/", body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- 3. first request of a new script, 4. RSS per tenant ----------------------------------


def ms_summary(seconds: list[float]) -> str:
    ms = [value * 1000 for value in seconds]
    if not ms:
        return "n=0"
    return f"p50 {percentile(ms, 0.5):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms (n={len(ms)})"


def bench_cold_and_rss(binary: Path, args: argparse.Namespace, report: Report) -> None:
    from cold_start import SMALL, Edge, Series, get, measure, rss_kib

    tenants = sorted(args.tenants)
    report.say(
        f"\n== 3. first request of a new script ({args.cold} distinct small modules) "
        f"and 4. RSS per tenant at {', '.join(map(str, tenants))} =="
    )
    # warren: one edge (Supervisor + EdgeApp on uvicorn, in this process), deploys one by one
    started = time.perf_counter()
    edge = Edge()
    report.say(f"warren edge ready in {time.perf_counter() - started:.2f} s; runtime child pid {edge.runtime_pid}")
    warren_rss: dict[int, int] = {}
    deploy_times: dict[int, list[float]] = {}
    try:
        warm = Series()
        measure(edge, warm, "warmup", SMALL.format(index="warmup"), b"warmup")
        for failure in warm.failures:
            report.odd.append(f"cold start warm-up: {failure}")
        time.sleep(0.5)
        gc.collect()
        warren_rss[0] = rss_kib(edge.runtime_pid)
        cold = Series()
        for index in range(args.cold):
            measure(edge, cold, f"w{index}", SMALL.format(index=index), f"worker {index}\n".encode())
        loaded = args.cold
        bulk = Series()
        for count in tenants:
            phase_started = time.perf_counter()
            first = len(bulk.deploy)
            for index in range(loaded, count):
                measure(edge, bulk, f"w{index}", SMALL.format(index=index), f"worker {index}\n".encode())
            loaded = max(loaded, count)
            time.sleep(0.3)
            warren_rss[count] = rss_kib(edge.runtime_pid)
            deploy_times[count] = bulk.deploy[first:]
            report.say(
                f"warren: {count} tenants loaded (+{time.perf_counter() - phase_started:.1f} s), "
                f"runtime child VmRSS {warren_rss[count] / 1024:.0f} MiB"
            )
        for failure in (cold.failures + bulk.failures)[:10]:
            report.odd.append(f"cold start / tenants: {failure}")
        errors = [entry for entry in edge.logs if entry[1] == "error"]
        for name, _, message in errors[:5]:
            report.odd.append(f"cold start / tenants: runtime logged [{name}] {message}")
        if edge.supervisor.crashes:
            report.odd.append(f"cold start / tenants: runtime crashed: {edge.supervisor.crashes}")
    finally:
        edge.stop()
    report.say(f"warren deploy (isolate created, script run): {ms_summary(cold.deploy)}")
    report.say(f"warren first request after deploy:          {ms_summary(cold.first)}")
    report.say(f"warren second request:                      {ms_summary(cold.second)}")
    report.say(f"warren deploy + first request:              {ms_summary(cold.totals)}")
    for count, seconds in deploy_times.items():
        if seconds:
            report.say(f"warren deploys up to {count} tenants: {ms_summary(seconds)}")
    blocks = [bulk.deploy[start : start + 100] for start in range(0, len(bulk.deploy), 100)]
    if len(blocks) > 1:
        first_index = args.cold
        medians = [
            f"{first_index + 100 * n}+: {statistics.median(block) * 1000:.1f}"
            for n, block in enumerate(blocks)
            if block
        ]
        report.say("warren deploy p50 (ms) by tenants already loaded: " + ", ".join(medians))

    # workerd: N workers configured; first request to each already-loaded worker
    names = [f"w{index}" for index in range(args.cold)]
    workerd = WorkerdProcess(binary, {name: SMALL.format(index=index) for index, name in enumerate(names)})
    first: list[float] = []
    second: list[float] = []
    try:
        listening = workerd.wait_listening()
        time.sleep(0.5)
        for index, name in enumerate(names):
            for bucket in (first, second):
                elapsed, status, body = get(workerd.ports[name], "/")
                if status != 200 or f"worker {index}".encode() not in body:
                    report.say(f"  ! workerd {name}: {status} {body[:100]!r}")
                bucket.append(elapsed)
    finally:
        workerd.stop()
    report.say(f"workerd with {args.cold} workers: spawn -> all ports listening {listening * 1000:.0f} ms")
    report.say(f"workerd first request to a loaded worker:   {ms_summary(first)}")
    report.say(f"workerd second request:                     {ms_summary(second)}")
    spawn_first: list[float] = []
    for _ in range(args.spawns):
        one = WorkerdProcess(binary, {"w0": SMALL.format(index=0)})
        try:
            spawn_first.append(one.first_200("w0"))
        finally:
            one.stop()
    report.say(f"workerd spawn -> first 200 (1 worker):      {ms_summary(spawn_first)}")

    for label, ours, theirs in (("p50", 0.5, 0.5), ("p99", 0.99, 0.99)):
        o, t = percentile(cold.first, ours) * 1000, percentile(first, theirs) * 1000
        report.rows.append(
            Row(
                f"first request, loaded new script, {label}",
                f"{o:.2f} ms",
                f"{t:.2f} ms",
                ratio(o, t, "x"),
                "warren: right after deploy; workerd: loaded at start-up",
            )
        )
    o, t = percentile(cold.totals, 0.5) * 1000, statistics.median(spawn_first) * 1000
    report.rows.append(
        Row(
            "new script -> first response, p50",
            f"{o:.1f} ms (deploy + 1st req)",
            f"{t:.0f} ms (spawn -> 1st 200)",
            "not comparable",
            "NOT the same measurement: workerd cannot add a script to a running process",
        )
    )

    # workerd RSS: a 1-worker baseline, then one process per tenant count
    def workerd_rss(count: int) -> tuple[int, float]:
        names = [f"w{index}" for index in range(count)]
        process = WorkerdProcess(binary, {name: SMALL.format(index=index) for index, name in enumerate(names)})
        try:
            ready = process.wait_listening(timeout=600)
            for index, name in enumerate(names):
                _, status, body = get(process.ports[name], "/")
                if status != 200 or f"worker {index}".encode() not in body:
                    report.say(f"  ! workerd {name}: {status} {body[:100]!r}")
            time.sleep(0.3)
            return process.rss_kib(), ready
        finally:
            process.stop()

    base, _ = workerd_rss(1)
    report.say(f"workerd VmRSS with 1 worker served once: {base / 1024:.0f} MiB")
    report.say(f"warren runtime child VmRSS with 1 (warm-up) worker: {warren_rss[0] / 1024:.0f} MiB")
    for count in tenants:
        rss, ready = workerd_rss(count)
        theirs = (rss - base) / (count - 1) / 1024
        ours = (warren_rss[count] - warren_rss[0]) / count / 1024
        report.say(
            f"{count} tenants: warren {warren_rss[count] / 1024:.0f} MiB (+{ours:.2f} MiB/tenant); "
            f"workerd {rss / 1024:.0f} MiB (+{theirs:.2f} MiB/tenant; spawn -> listening {ready * 1000:.0f} ms)"
        )
        report.rows.append(
            Row(
                f"RSS per tenant at {count:,} tenants",
                f"{ours:.2f} MiB",
                f"{theirs:.2f} MiB",
                ratio(ours, theirs, "x"),
                f"growth over 1 worker; totals {warren_rss[count] / 1024:.0f} / {rss / 1024:.0f} MiB",
            )
        )


# -- 5. a CPU hog beside a neighbour ----------------------------------------------------


@dataclass
class Phase:
    neighbour: dict[str, Any]
    expected: int
    hog: Any = None  # hello.Run of the hog's wrk, if any

    @property
    def latencies(self) -> list[float]:
        return list(self.neighbour["latencies"])

    def describe(self) -> str:
        values = self.latencies
        text = (
            f"neighbour p50 {percentile(values, 0.5):7.2f} ms  p99 {percentile(values, 0.99):7.2f} ms  "
            f"max {max(values):7.2f} ms  (n={len(values)} of {self.expected}, statuses {self.neighbour['statuses']}"
            + (f", errors {self.neighbour['n_errors']}" if self.neighbour["n_errors"] else "")
            + ")"
            if values
            else f"neighbour: no answers ({self.neighbour})"
        )
        if self.hog is not None:
            hog = self.hog
            text += f"\n      hog: {hog.requests} requests, p50 {hog.p50_ms:.0f} ms" + (
                f", non-2xx {hog.non_2xx}" if hog.non_2xx else ""
            )
        return text


def run_neighbour(url: str, hog_url: str | None, args: argparse.Namespace) -> Phase:
    from hello import Run, parse_wrk

    hog = None
    if hog_url is not None:
        hog = subprocess.Popen(
            ["wrk", "-t1", "-c1", f"-d{args.hog_seconds + 2:g}s", "--latency", "--timeout", "10s", hog_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1)
    client = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--neighbour-client",
            url,
            "--rate",
            str(args.rate),
            "--hog-seconds",
            str(args.hog_seconds),
        ],
        capture_output=True,
        text=True,
        timeout=args.hog_seconds + 60,
    )
    if client.returncode != 0:
        raise SystemExit(f"neighbour client failed:\n{client.stdout}{client.stderr}")
    phase = Phase(json.loads(client.stdout), round(args.rate * args.hog_seconds))
    if hog is not None:
        output, _ = hog.communicate(timeout=args.hog_seconds + 60)
        phase.hog = Run("hog")
        try:
            parse_wrk(output, phase.hog)
        except (AssertionError, KeyError, AttributeError):
            phase.hog.note = output[-300:]
    return phase


def bench_neighbour(binary: Path, args: argparse.Namespace, report: Report) -> None:
    from cold_start import SMALL, Edge

    from warren.runtime import WorkerScript

    hog_source = HOG_BOUNDED % args.hog_iterations
    report.say(
        f"\n== 5. a CPU hog beside a neighbour: hog = {args.hog_iterations:,} loop iterations, one wrk connection "
        f"back to back; neighbour = hello at {args.rate:g} req/s, {args.hog_seconds:g} s per phase =="
    )
    neighbour_source = SMALL.format(index="neighbour")
    phases: dict[tuple[str, str], Phase] = {}

    edge = Edge()
    try:
        edge.run(edge.supervisor.deploy(WorkerScript(name="hello", source=neighbour_source)))
        # the bounded hog needs more than the default 50 ms: [limits] cpu_ms = 5000
        edge.run(edge.supervisor.deploy(WorkerScript(name="hog", source=hog_source, cpu_ms=5000)))
        edge.run(edge.supervisor.deploy(WorkerScript(name="forever", source=HOG_FOREVER)))
        base = f"http://127.0.0.1:{edge.port}"
        from cold_start import get

        elapsed, status, body = get(edge.port, "/hog/")
        report.say(f"warren: one hog request took {elapsed * 1000:.0f} ms -> {status} {body[:40]!r}")
        get(edge.port, "/hello/")
        for label, hog_url in (
            ("no hog", None),
            ("bounded hog", base + "/hog/"),
            ("while(true){} at 50 ms limit", base + "/forever/"),
        ):
            phase = run_neighbour(base + "/hello/", hog_url, args)
            phases[("warren", label)] = phase
            report.say(f"  warren  {label:29} {phase.describe()}")
            bad = {k: v for k, v in phase.neighbour["statuses"].items() if k != "200"}
            if bad or phase.neighbour["n_errors"]:
                report.odd.append(
                    f"neighbour ({label}): non-200 {bad}, errors {phase.neighbour['n_errors']} "
                    f"{phase.neighbour['errors'][:3]}"
                )
            if phase.hog is not None and label == "bounded hog" and (phase.hog.non_2xx or phase.hog.errors):
                report.odd.append(f"bounded hog on warren: {describe_run(phase.hog)}")
        kills = [entry for entry in edge.logs if entry[0] == "forever"]
        levels: dict[str, int] = {}
        for _, level, _ in kills:
            levels[level] = levels.get(level, 0) + 1
        messages = sorted({message[:120] for _, level, message in kills if level == "error"})
        report.say(f"  warren logged for the while(true) hog: {levels}; distinct errors: {messages}")
        others = [entry for entry in edge.logs if entry[0] != "forever" and entry[1] == "error"]
        for name, _, message in others[:5]:
            report.odd.append(f"neighbour test: runtime logged [{name}] {message}")
        if edge.supervisor.crashes:
            report.odd.append(f"neighbour test: runtime process crashed: {edge.supervisor.crashes}")
    finally:
        edge.stop()

    workerd = WorkerdProcess(binary, {"hello": neighbour_source, "hog": hog_source})
    try:
        workerd.wait_listening()
        from cold_start import get

        elapsed, status, body = get(workerd.ports["hog"], "/")
        report.say(f"workerd: one hog request took {elapsed * 1000:.0f} ms -> {status} {body[:40]!r}")
        get(workerd.ports["hello"], "/")
        for label, hog_url in (("no hog", None), ("bounded hog", workerd.url("hog") + "/")):
            phase = run_neighbour(workerd.url("hello") + "/", hog_url, args)
            phases[("workerd", label)] = phase
            report.say(f"  workerd {label:29} {phase.describe()}")
    finally:
        workerd.stop()

    def p99(runtime: str, label: str) -> float:
        values = phases[(runtime, label)].latencies
        return percentile(values, 0.99) if values else float("nan")

    for label in ("no hog", "bounded hog"):
        ours, theirs = p99("warren", label), p99("workerd", label)
        report.rows.append(
            Row(f"neighbour p99, {label}", f"{ours:.2f} ms", f"{theirs:.2f} ms", ratio(ours, theirs, "x"))
        )
    forever = p99("warren", "while(true){} at 50 ms limit")
    report.rows.append(
        Row("neighbour p99, while(true){} hog", f"{forever:.2f} ms", "- (no CPU limit)", "n/a", "warren's 50 ms limit")
    )


# -- 6. hello on all cores: warren serve --processes N ----------------------------------

WARREN = [sys.executable, "-m", "warren.cli"]
SERVE_ACCOUNT = "bench"
SERVE_DOMAIN = "workers.bench"
SERVE_REQUEST_LINE = re.compile(r"^\[([^\]]+)\] [A-Z]+ /\S* (\d{3})(?: (\w+))?")
SERVE_EXPECTED = ("Ready on ", "Control-plane API on ", "⎔ serving ", "info: started ")


class WarrenServe:
    """``warren serve --processes N`` on a fresh SQLite store, fed through its own control API.

    The deploy path of tests/test_edge.py (test_serve_can_host_the_control_api_itself):
    ``warren control --store DB account create bench``, ``warren serve --store DB
    --control-port 0``, then a multipart ``PUT /client/v4/accounts/A/workers/scripts/NAME``
    per worker, which answers on ``NAME.bench.workers.bench``. Its output goes to a file:
    a pipe drained by this process would cost CPU on the machine being measured.
    """

    label = "warren"

    def __init__(self, workdir: Path, processes: int) -> None:
        self.store = workdir / "serve.db"
        self.log = workdir / "serve.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        created = subprocess.run(
            [*WARREN, "control", "--store", str(self.store), "account", "create", SERVE_ACCOUNT, "--json"],
            capture_output=True,
            text=True,
            cwd=workdir,
            env=env,
            timeout=120,
        )
        if created.returncode != 0:
            raise SystemExit(f"warren control account create failed:\n{created.stdout}{created.stderr}")
        self.account = json.loads(created.stdout)
        options = ["--processes", str(processes), "--control-port", "0", "--port", "0"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*WARREN, "serve", "--store", str(self.store), "--workers-domain", SERVE_DOMAIN, *options],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.seen: set[int] = set()  # every process of its tree seen, to find any left behind
        self.url = self._wait_for(r"Ready on (http://\S+)")
        self.api = self._wait_for(r"Control-plane API on (http://\S+)")

    def _wait_for(self, pattern: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise SystemExit(f"warren serve did not start; it printed:\n{text}")
            time.sleep(0.05)

    def deploy(self, name: str, source: str) -> None:
        import httpx

        metadata = {"main_module": "index.js", "compatibility_date": COMPAT_DATE}
        files = {
            "metadata": (None, json.dumps(metadata), "application/json"),
            "index.js": ("index.js", source, "application/javascript+module"),
        }
        response = httpx.put(
            f"{self.api}/client/v4/accounts/{self.account['account_id']}/workers/scripts/{name}",
            files=files,
            headers={"authorization": f"Bearer {self.account['token']}"},
            timeout=60,
        )
        if response.status_code != 200:
            raise SystemExit(f"deploying {name} to warren serve: {response.status_code} {response.text[:500]}")

    def wait_serving(self, hosts: list[str], expected: bytes, timeout: float = 60) -> None:
        """Poll each hostname until it answers 200 with the expected body (deploys propagate through the store)."""
        port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        for host in hosts:
            while True:
                status, body = 0, b""
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                        data = b""
                        while chunk := sock.recv(65536):
                            data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                except (OSError, ValueError, IndexError):
                    pass
                if status == 200 and expected in body:
                    break
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"warren serve never served {host}: last answer {status} {body[:200]!r}")
                time.sleep(0.02)

    def pids(self) -> list[int]:
        from hello import descendants

        found = descendants(self.process.pid)
        self.seen.update(found)
        return found

    def output(self) -> tuple[dict[str, int], list[str]]:
        """Statuses of the request log lines (``"200 ok": n``), and any line that is not a request or start-up line."""
        statuses: dict[str, int] = {}
        other: list[str] = []
        with self.log.open(errors="replace") as file:
            for line in file:
                match = SERVE_REQUEST_LINE.match(line)
                if match:
                    status = match.group(2) + (f" {match.group(3)}" if match.group(3) else "")
                    statuses[status] = statuses.get(status, 0) + 1
                elif line.strip() and not any(text in line for text in SERVE_EXPECTED) and len(other) < 20:
                    other.append(line.rstrip("\n"))
        return statuses, other

    def stop(self) -> list[int]:
        """SIGTERM the supervisor and wait; returns the pids of its tree still alive after (then killed)."""
        if self.process.poll() is None:
            self.pids()
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        left = []
        for pid in sorted(self.seen - {self.process.pid}):
            for _ in range(50):  # the runtime processes end once their supervisor has gone
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                left.append(pid)
                os.kill(pid, 9)
        return left


def host_rotation(path: Path, hosts: list[str]) -> Path:
    """A wrk script sending each thread's requests to the hostnames in turn (requests formatted once)."""
    quoted = ", ".join(json.dumps(host) for host in hosts)
    path.write_text(
        f"local hosts = {{{quoted}}}\n"
        "local requests, n = {}, 0\n"
        "init = function(args)\n"
        "  for i, host in ipairs(hosts) do requests[i] = wrk.format(nil, nil, {Host = host}) end\n"
        "end\n"
        "request = function()\n"
        "  n = n % #requests + 1\n"
        "  return requests[n]\n"
        "end\n"
    )
    return path


def describe_cores(run: Any, split: dict[int, float], supervisor: int | None) -> str:
    """Where the CPU went: the supervisor, each runtime process, wrk, and the rest of the machine."""
    parts = []
    if supervisor is not None:
        runtimes = sorted((seconds for pid, seconds in split.items() if pid != supervisor), reverse=True)
        parts.append(f"supervisor {split.get(supervisor, 0.0) / run.seconds:.2f}")
        parts.append("runtimes " + " + ".join(f"{seconds / run.seconds:.2f}" for seconds in runtimes))
        child_us = run.cpu_us_per_request - run.root_us_per_request
        parts[-1] += f" (sup {run.root_us_per_request:.0f} + runtimes {child_us:.0f} us/req)"
    parts.append(f"wrk {run.wrk_cores:.2f}")
    parts.append(f"rest of machine {run.other_cores:.2f}")
    busy = run.cores + run.wrk_cores + run.other_cores
    return f"cores: {', '.join(parts)}; machine busy {busy:.2f} of {os.cpu_count()}"


def bench_all_cores(binary: Path, args: argparse.Namespace, report: Report, workdir: Path) -> None:
    cpus = os.cpu_count() or 1
    processes = cpus
    copies = 4 * processes
    report.say(
        f"\n== 6. hello req/s using all cores: warren serve --processes {processes} with 1 and {copies} hello workers; "
        f"one workerd process (wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s) =="
    )
    report.say(
        f"this machine has {cpus} vCPUs, shared by wrk (-t{args.threads}) and the server under test: "
        "'all cores' includes the ones wrk uses"
    )
    report.say(
        "workerd: one `workerd serve` process (requests run on one thread per process) with one hello worker: "
        f"a workerd socket names one service, so {copies} workers would need {copies} ports (or a router worker)"
    )
    report.say(
        f"wrk runs the same Lua script for all three (Host header rotated over 1 or {copies} hostnames; "
        "workerd ignores it); warren's CPU = supervisor + every runtime process"
    )
    names = [f"h{index}" for index in range(copies)]
    hosts = [f"{name}.{SERVE_ACCOUNT}.{SERVE_DOMAIN}" for name in names]
    one = host_rotation(workdir / "one-host.lua", hosts[:1])
    many = host_rotation(workdir / "many-hosts.lua", hosts)
    source = HELLO.read_text()
    started = time.perf_counter()
    warren = WarrenServe(workdir, processes)
    workerd: WorkerdProcess | None = None
    try:
        report.say(f"warren serve ready in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        for name in names:
            warren.deploy(name, source)
        warren.wait_serving(hosts, b"hello from an isolate")
        pids = warren.pids()
        report.say(
            f"warren serve: {copies} copies deployed through the control API and each answering in "
            f"{time.perf_counter() - started:.1f} s; supervisor pid {warren.process.pid}, "
            f"runtime pids {[pid for pid in pids if pid != warren.process.pid]}"
        )
        if len(pids) != processes + 1:
            report.odd.append(f"all cores: warren serve --processes {processes} runs {len(pids)} processes: {pids}")
        workerd = WorkerdProcess(binary, {"hello": source})
        workerd.first_200("hello")
        targets = [
            ("warren, 1 worker", warren, warren.url + "/", one),
            (f"warren, {copies} workers", warren, warren.url + "/", many),
            ("workerd, 1 worker", workerd.server, workerd.url("hello") + "/", one),
        ]
        for _, server, url, lua in targets:
            load(server, url, args, args.warmup, lua)
        runs: dict[str, list[Any]] = {label: [] for label, *_ in targets}
        for index in range(args.runs):
            for label, server, url, lua in targets:  # alternate, so drift in the machine's load hits all alike
                split: dict[int, float] = {}
                run = load(server, url, args, args.duration, lua, split)
                runs[label].append(run)
                report.say(f"  run {index + 1} {label:18} {describe_run(run)}")
                supervisor = warren.process.pid if server is warren else None
                report.say(f"        {describe_cores(run, split, supervisor)}")
                if server is warren:
                    wrk_problems(run, f"all cores ({label})", report)
        statuses, other = warren.output()
        bad = {key: count for key, count in statuses.items() if key not in ("200", "200 ok")}
        if bad:
            report.odd.append(f"all cores: warren serve logged non-200 statuses {bad} (of {sum(statuses.values())})")
        if other:
            report.odd.append("all cores: warren serve printed:\n      " + "\n      ".join(other[:12]))
        if warren.process.poll() is not None:
            report.odd.append(f"all cores: warren serve exited with {warren.process.returncode}")
    finally:
        left = warren.stop()
        if left:
            report.odd.append(f"all cores: runtime processes {left} outlived warren serve's SIGTERM by 5 s (killed)")
        if workerd is not None:
            workerd.stop()

    def median(label: str, name: str) -> float:
        return statistics.median(getattr(run, name) for run in runs[label])

    theirs, their_cpu, their_cores = (
        median("workerd, 1 worker", name) for name in ("rps", "cpu_us_per_request", "cores")
    )
    for label in ("warren, 1 worker", f"warren, {copies} workers"):
        workers = label.split(", ")[1]
        ours, cpu, cores = (median(label, name) for name in ("rps", "cpu_us_per_request", "cores"))
        report.rows.append(
            Row(
                f"hello req/s, all cores, {workers}",
                f"{ours:,.0f}",
                f"{theirs:,.0f}",
                ratio(ours, theirs),
                f"warren serve --processes {processes} busy {cores:.2f} cores, workerd (1 process, 1 worker) "
                f"{their_cores:.2f}; {cpus} vCPUs shared with wrk",
            )
        )
        report.rows.append(
            Row(
                f"hello CPU per request, all cores, {workers}",
                f"{cpu:.0f} us",
                f"{their_cpu:.0f} us",
                ratio(cpu, their_cpu, "x"),
            )
        )


# -- main ------------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as file:
        return " ".join(file.read().split()[:3])


def commit() -> str:
    """The commit measured, "+changes" if the tree differs from it (other people's edits included)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "an unknown commit (no git)"
    return head.stdout.strip() + (" +changes" if dirty.stdout.strip() else "") if head.returncode == 0 else "?"


def print_table(report: Report) -> None:
    headers = ("figure", "warren", "workerd", "warren/workerd")
    rows = [(row.figure, row.warren, row.workerd, row.ratio) for row in report.rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    notes = [f"  {row.figure}: {row.note}" for row in report.rows if row.note]
    if notes:
        print("notes:\n" + "\n".join(notes))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--neighbour-client":
        client = argparse.ArgumentParser()
        client.add_argument("--neighbour-client")
        client.add_argument("--rate", type=float)
        client.add_argument("--hog-seconds", type=float)
        values = client.parse_args()
        return neighbour_client(values.neighbour_client, values.rate, values.hog_seconds)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workerd",
        type=Path,
        help=f"use this workerd binary instead of installing one (e.g. {INSTALLED.relative_to(ROOT)})",
    )
    parser.add_argument("--quick", action="store_true", help="short runs and small counts (about 70 s)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10; quick 3)")
    parser.add_argument("--runs", type=int, default=1, help="wrk runs per server for hello (default 1)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up load for hello (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--cold", type=int, help="new scripts whose first request is timed (default 50; quick 20)")
    parser.add_argument("--spawns", type=int, default=3, help="workerd spawn -> first 200 repetitions (default 3)")
    parser.add_argument(
        "--tenants", type=str, help="tenant counts for RSS, comma-separated (default 100,1000; quick 100)"
    )
    parser.add_argument("--hog-seconds", type=float, help="seconds per neighbour phase (default 8; quick 3)")
    parser.add_argument("--hog-iterations", type=int, default=55_000_000, help="hog loop length (~200 ms)")
    parser.add_argument("--rate", type=float, default=100, help="neighbour requests per second (default 100)")
    parser.add_argument(
        "--only",
        type=str,
        default="1,2,3,5,6",
        help="which parts to run: 1 hello, 2 JSON, 3 cold start + RSS, 5 hog, 6 hello on all cores (warren serve)",
    )
    args = parser.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)
    args.cold = args.cold or (20 if args.quick else 50)
    args.hog_seconds = args.hog_seconds or (3 if args.quick else 8)
    args.tenants = [int(n) for n in (args.tenants or ("100" if args.quick else "100,1000")).split(",") if n]
    if any(count < 2 for count in args.tenants) or max(args.tenants) < args.cold:
        parser.error("--tenants must each be at least 2, and the largest at least --cold")
    parts = set(args.only.replace("4", "3").split(","))

    if shutil.which("wrk") is None:
        print(
            "bench/compare_workerd.py needs the load tool wrk, which is not on PATH.\n"
            "Install it (Debian/Ubuntu): apt-get update && apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2

    sys.path.insert(0, str(BENCH))  # bench/hello.py and bench/cold_start.py
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="warren-workerd-npm-") as npm_dir:
        if args.workerd is not None:
            binary = args.workerd.resolve()
            if not binary.exists():
                print(f"--workerd {args.workerd}: no such file", file=sys.stderr)
                return 2
        else:
            found = install_workerd(Path(npm_dir))
            if found is None:
                return 0
            binary = found
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
        print(
            f"{version} ({binary}); warren {ROOT} at {commit()}; {os.cpu_count()} CPUs, {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}"
        )
        print("load tools (wrk, the neighbour client) run on the same CPUs as the servers")
        print(f"load average before: {loadavg()} (anything else running on the machine is noise)")
        report = Report()
        with tempfile.TemporaryDirectory(prefix="warren-vs-workerd-") as work:
            if "1" in parts:
                bench_hello(binary, args, report)
            if "2" in parts:
                bench_json(binary, args, report, Path(work))
            if "3" in parts:
                bench_cold_and_rss(binary, args, report)
            if "5" in parts:
                bench_neighbour(binary, args, report)
            if "6" in parts:
                bench_all_cores(binary, args, report, Path(work))

    print(
        f"\n== summary ({version}, {os.cpu_count()} CPUs, total {time.perf_counter() - total:.0f} s, "
        f"load average now {loadavg()}) =="
    )
    print_table(report)
    print("\nodd things seen in warren (errors, crashes, non-200s):")
    print("  " + "\n  ".join(report.odd) if report.odd else "  none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
