"""Deploy latency: from `warren deploy` returning to the first request the new version serves.

Starts `warren control` and `warren serve` on a temporary SQLite store (loopback
only), creates an account, then deploys a small worker N times (default 50),
each time with a new body, and polls the edge every millisecond until it serves
that body. Prints p50/p99/max of that latency and of the `warren deploy`
command itself. A benchmark, not a test: it prints figures and asserts nothing
about time.

    python bench/deploy_latency.py [--deploys 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

DOMAIN = "workers.bench"


def start(args: list[str], cwd: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "warren.cli", *args, "--port", "0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"Ready on (http://\S+)", line)
        if match:
            return process, match.group(1)
    raise SystemExit(f"warren {args[0]} did not start")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def describe(label: str, seconds: list[float]) -> str:
    ms = [value * 1000 for value in seconds]
    return (
        f"{label:<34} p50 {statistics.median(ms):8.1f} ms  p99 {percentile(ms, 0.99):8.1f} ms  "
        f"max {max(ms):8.1f} ms  (n={len(ms)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploys", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="warren-bench-") as workdir:
        store = str(Path(workdir) / "warren.db")
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", store, "account", "create", "bench", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        account = json.loads(created.stdout)
        control, control_url = start(["control", "--store", store], workdir)
        edge, edge_url = start(["serve", "--store", store, "--workers-domain", DOMAIN], workdir)
        project = Path(workdir) / "project"
        project.mkdir()
        (project / "wrangler.toml").write_text('name = "latency"\nmain = "index.js"\n')
        env = dict(
            os.environ,
            WARREN_API_URL=control_url,
            WARREN_API_TOKEN=account["token"],
            WARREN_ACCOUNT_ID=account["account_id"],
            WARREN_CONFIG_DIR=str(Path(workdir) / "config"),
        )
        host = f"latency.bench.{DOMAIN}"
        command_times: list[float] = []
        live_times: list[float] = []
        failures = 0
        try:
            with httpx.Client(timeout=10) as client:
                for index in range(args.deploys):
                    body = f"version {index}"
                    (project / "index.js").write_text(
                        f"export default {{ fetch() {{ return new Response({body!r}); }} }};\n"
                    )
                    started = time.perf_counter()
                    result = subprocess.run(
                        [sys.executable, "-m", "warren.cli", "deploy", "--json"],
                        cwd=project,
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    returned = time.perf_counter()
                    if result.returncode != 0:
                        print(f"! deploy {index} failed: {result.stderr.strip()}")
                        failures += 1
                        continue
                    command_times.append(returned - started)
                    while True:
                        response = client.get(edge_url + "/", headers={"host": host})
                        if response.status_code == 200 and response.text == body:
                            live_times.append(time.perf_counter() - returned)
                            break
                        if time.perf_counter() - returned > 10:
                            print(f"! deploy {index} not live after 10 s: {response.status_code} {response.text!r}")
                            failures += 1
                            break
                        time.sleep(0.001)
        finally:
            for process in (edge, control):
                process.terminate()
                process.wait(10)
    print(f"{args.deploys} deploys of a small worker; control plane and edge on one machine, SQLite store")
    if command_times:
        print(describe("`warren deploy` command", command_times))
    if live_times:
        print(describe("deploy returned -> new version live", live_times))
    if failures:
        print(f"{failures} deploys failed or never went live")
    return 0


if __name__ == "__main__":
    sys.exit(main())
