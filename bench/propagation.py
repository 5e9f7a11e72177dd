"""Propagation: from a deploy acknowledged by the control plane to every edge node serving it.

Starts a store (one `nats-server -js`, a 3-server JetStream cluster with
`--nats-cluster 3`, or a SQLite file with `--store sqlite`), `warren control`
and N `warren serve` processes (default 10) on this machine, loopback only.
Then it deploys a small worker D times (default 50), each time with a new body.
For each deploy it times the PUT until its HTTP 200 (the acknowledgement), and
from that moment polls every node at once (one keep-alive connection per node,
a distinct path per request, 1 ms between polls) until each serves the new body.
It prints p50/p99/max of: the deploy request itself, acknowledged -> first node
serving, acknowledged -> every node serving, and of each node's own latency.

`--nats-delay-ms N` puts a TCP proxy between each edge node and NATS that
delays every byte by N ms each way (in user space, in this process): a slow
link between the edges and the store. `--netem-ms N` would do the same with
network namespaces and `tc netem`; it checks that the kernel can, and says why
not if it cannot (see bench/README.md).

A benchmark, not a test: it prints figures and asserts nothing about time.

    python bench/propagation.py [--nodes 10] [--deploys 50] [--store nats|sqlite] [--nats-cluster 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from nats_cluster import NATS_SERVER, NatsCluster, TcpProxy  # the tests' helper, reused

from warren.store.nats import SECRETS_KEY_ENV, generate_secrets_key

DOMAIN = "workers.bench"
HOST = f"bench.demo.{DOMAIN}"


class Service:
    """A `warren` subprocess whose output goes to a file (a pipe nobody drains would block it)."""

    def __init__(self, args: list[str], workdir: Path, name: str, env: dict[str, str]) -> None:
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "warren.cli", *args, "--port", "0"],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.url = ""

    def wait_ready(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(r"Ready on (http://\S+)", self.log.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return self.url
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.log.name} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def describe(label: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{label:<40} (no samples)"
    ms = [value * 1000 for value in seconds]
    return (
        f"{label:<40} p50 {statistics.median(ms):8.1f} ms  p99 {percentile(ms, 0.99):8.1f} ms  "
        f"max {max(ms):8.1f} ms  (n={len(ms)})"
    )


def netem_problem() -> str | None:
    """Why `tc netem` in a network namespace cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2)"
    namespace = f"warren-probe-{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], capture_output=True)
        qdisc = subprocess.run(
            ["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True,
            text=True,
        )
        if qdisc.returncode != 0:
            return f"the kernel has no netem queueing discipline (sch_netem): tc says {qdisc.stderr.strip()!r}"
        return None
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


async def wait_all(clients: list[httpx.AsyncClient], label: str, index: int, acked: float, limit: float) -> list[float]:
    """Each node's latency (from ``acked``) to serving ``label``; inf for a node that never did within ``limit``."""

    async def one(node: int, client: httpx.AsyncClient) -> float:
        polls = 0
        while True:
            polls += 1
            try:
                response = await client.get(f"/d{index}/n{node}/{polls}", headers={"host": HOST})
                if response.status_code == 200 and response.text == label:
                    return max(0.0, time.perf_counter() - acked)
            except httpx.HTTPError:
                pass
            if time.perf_counter() - acked > limit:
                return float("inf")
            await asyncio.sleep(0.001)

    return list(await asyncio.gather(*(one(node, client) for node, client in enumerate(clients))))


def source(label: str) -> str:
    return f"export default {{ fetch() {{ return new Response({json.dumps(label)}); }} }};"


async def measure(control_url: str, account: dict[str, Any], edges: list[str], deploys: int) -> dict[str, Any]:
    api = httpx.AsyncClient(
        base_url=f"{control_url}/client/v4/accounts/{account['account_id']}/workers",
        headers={"authorization": f"Bearer {account['token']}"},
        timeout=60,
    )
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in edges]
    results: dict[str, Any] = {"request": [], "first": [], "all": [], "each": [], "failures": []}
    try:
        for index in range(deploys + 1):  # deploy 0 warms up: each node's runtime starts on its first load
            label = f"version {index}"
            files = {
                "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
                "index.js": ("index.js", source(label), "application/javascript+module"),
            }
            started = time.perf_counter()
            response = await api.put("/scripts/bench", files=files)
            acked = time.perf_counter()
            if response.status_code != 200:
                results["failures"].append(f"deploy {index}: {response.status_code} {response.text[:200]}")
                continue
            latencies = await wait_all(clients, label, index, acked, limit=60 if index == 0 else 20)
            missing = sum(1 for value in latencies if value == float("inf"))
            if missing:
                results["failures"].append(f"deploy {index}: {missing} node(s) never served it")
            if index == 0:
                continue
            served = [value for value in latencies if value != float("inf")]
            results["request"].append(acked - started)
            if served:
                results["first"].append(min(served))
                results["each"] += served
            if not missing:
                results["all"].append(max(latencies))
    finally:
        await api.aclose()
        for client in clients:
            await client.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10, help="edge nodes (`warren serve` processes)")
    parser.add_argument("--deploys", type=int, default=50)
    parser.add_argument("--store", choices=("nats", "sqlite"), default="nats")
    parser.add_argument("--nats-cluster", type=int, default=1, metavar="N", help="NATS servers (1, or 3 for R3)")
    parser.add_argument("--nats-delay-ms", type=float, default=0.0, help="delay edge<->NATS bytes (user space)")
    parser.add_argument("--netem-ms", type=float, default=0.0, help="delay with tc netem (needs root and sch_netem)")
    args = parser.parse_args()

    if args.netem_ms:
        problem = netem_problem()
        if problem is not None:
            print(f"--netem-ms cannot run here: {problem}. --nats-delay-ms delays the edge<->NATS link in user space.")
            return 2
        print("--netem-ms: this kernel has netem, but the namespace set-up is not written yet; use --nats-delay-ms.")
        return 2
    if args.store == "nats" and NATS_SERVER is None:
        print("nats-server is not installed (apt-get install nats-server); --store sqlite needs nothing")
        return 2
    if args.store == "sqlite" and (args.nats_delay_ms or args.nats_cluster != 1):
        print("--nats-delay-ms and --nats-cluster apply to --store nats only")
        return 2

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{SECRETS_KEY_ENV: generate_secrets_key()})
    with tempfile.TemporaryDirectory(prefix="warren-propagation-") as tmp:
        workdir = Path(tmp)
        cluster: NatsCluster | None = None
        proxies: list[TcpProxy] = []
        services: list[Service] = []
        try:
            if args.store == "nats":
                cluster = NatsCluster(workdir / "nats", size=args.nats_cluster)
                store = cluster.store_url()
                if args.nats_delay_ms:
                    proxies = [
                        TcpProxy(("127.0.0.1", node.port), delay=args.nats_delay_ms / 1000) for node in cluster.nodes
                    ]
                    edge_store = ",".join(proxy.url for proxy in proxies)
                else:
                    edge_store = store
            else:
                store = edge_store = str(workdir / "warren.db")
            command = ["control", "--store", store, "account", "create", "demo", "--json"]
            created = subprocess.run(
                [sys.executable, "-m", "warren.cli", *command],
                capture_output=True,
                text=True,
                env=env,
                cwd=workdir,
            )
            if created.returncode != 0:
                raise SystemExit(f"account create failed: {created.stderr}")
            account = json.loads(created.stdout)
            control = Service(["control", "--store", store], workdir, "control", env)
            services.append(control)
            edge_args = ["serve", "--store", edge_store, "--workers-domain", DOMAIN, "--processes", "1"]
            edges = [
                Service([*edge_args, "--state-dir", f"state-{index}"], workdir, f"edge-{index}", env)  # one node each
                for index in range(args.nodes)
            ]
            services += edges
            started = time.monotonic()
            control_url = control.wait_ready()
            edge_urls = [edge.wait_ready() for edge in edges]
            print(f"{args.nodes} edge nodes up in {time.monotonic() - started:.1f} s")
            results = asyncio.run(measure(control_url, account, edge_urls, args.deploys))
        finally:
            for service in services:
                service.stop()
            for proxy in proxies:
                proxy.close()
            if cluster is not None:
                cluster.stop()

    if args.store == "nats":
        where = f"NATS JetStream ({args.nats_cluster} server{'s' if args.nats_cluster > 1 else ''})"
        if args.nats_delay_ms:
            where += f", edge<->NATS delayed {args.nats_delay_ms:g} ms each way"
    else:
        where = "one SQLite file"
    print(f"{args.deploys} deploys of a small worker; control plane and {args.nodes} edge nodes on one machine")
    print(f"store: {where}")
    print(describe("deploy request -> acknowledged (200)", results["request"]))
    print(describe("acknowledged -> first node serving", results["first"]))
    print(describe("acknowledged -> every node serving", results["all"]))
    print(describe("acknowledged -> one node serving (each)", results["each"]))
    for failure in results["failures"]:
        print(f"! {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
