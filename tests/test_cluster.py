"""Many nodes on NATS JetStream, and what happens when parts of it fail.

Everything is a real process: a 3-server JetStream cluster (``nats_cluster``),
``warren control`` and several ``warren serve`` subprocesses, talking real HTTP
on loopback. The tests deploy through the control plane and watch the edge
nodes: five of them serving each deploy; an edge SIGKILLed during a deploy
catching up when restarted; a NATS server SIGKILLed during a stream of deploys
losing none the control plane acknowledged; an edge cut off from NATS by a
paused proxy serving its last state, saying it is stale (``/healthz`` and
metrics), and converging once the partition heals. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import ServiceProcess
from nats.aio.client import Client as NATS
from nats_cluster import NatsCluster, TcpProxy, nats_cluster_fixture, tcp_proxy_fixture  # noqa: F401  (fixtures)

from warren.store.nats import SECRETS_KEY_ENV, NATSStore, generate_secrets_key

KEY = generate_secrets_key()
DOMAIN = "workers.test"
JS = "application/javascript+module"
STREAMS = [
    f"KV_warren_{kind}"
    for kind in ("accounts", "tokens", "scripts", "versions", "deployments", "routes", "secrets", "kv_namespaces")
]


@pytest.fixture(autouse=True)
def secrets_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)  # inherited by every warren process the test starts


def source(label: str) -> str:
    return f"export default {{ fetch() {{ return new Response({json.dumps(label)}); }} }};"


def host(script: str) -> str:
    return f"{script}.demo.{DOMAIN}"


class Fleet:
    """An account, a control plane and edge nodes, all on one store URL (each process may get its own)."""

    def __init__(self, spawn: Callable[[list[str]], ServiceProcess], store: str) -> None:
        self.spawn = spawn
        self.store = store
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", store, "account", "create", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        account = json.loads(created.stdout)
        self.control = spawn(["control", "--store", store])
        self.api = httpx.Client(
            base_url=f"{self.control.url}/client/v4/accounts/{account['account_id']}/workers",
            headers={"authorization": f"Bearer {account['token']}"},
            timeout=60,
        )
        self.http = httpx.Client(timeout=10)
        self.started = 0  # edge nodes, each with its state directory nodeN

    def edge_args(self, state_dir: str, store: str | None = None) -> list[str]:
        return [
            "serve",
            "--store",
            store or self.store,
            "--workers-domain",
            DOMAIN,
            "--processes",
            "1",
            "--admin-port",
            "0",
            "--state-dir",
            state_dir,  # a node's own: two nodes never share one
        ]

    def edges(self, count: int, store: str | None = None) -> list[ServiceProcess]:
        """Start ``count`` edge nodes at once (each takes a second or two to come up)."""
        first = self.started
        self.started += count
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda n: self.spawn(self.edge_args(f"node{n}", store)), range(first, self.started)))

    def deploy(self, script: str, label: str) -> httpx.Response:
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
            "index.js": ("index.js", source(label), JS),
        }
        return self.api.put(f"/scripts/{script}", files=files)

    def served(self, edge: ServiceProcess, script: str) -> str | None:
        try:
            response = self.http.get(edge.url, headers={"host": host(script)})
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    def wait_served(self, edges: list[ServiceProcess], script: str, label: str, timeout: float) -> float:
        started = time.monotonic()
        pending = list(edges)
        while pending:
            pending = [edge for edge in pending if self.served(edge, script) != label]
            if pending and time.monotonic() - started > timeout:
                told = [line for line in pending[0].lines if " GET / " not in line]  # not the request log
                try:
                    health: Any = self.health(pending[0])
                except Exception as exc:  # what it can tell, not the failure itself
                    health = repr(exc)
                raise AssertionError(
                    f"{len(pending)} edge(s) not serving {label!r} after {timeout} s; one's health: {health}; it said:\n"
                    + "\n".join(told[-40:])
                )
            time.sleep(0.01)
        return time.monotonic() - started

    def health(self, edge: ServiceProcess) -> tuple[int, dict[str, Any]]:
        url = edge.wait_for(r"health on (http://\S+)").group(1)
        response = self.http.get(url)
        return response.status_code, response.json()

    def metrics(self, edge: ServiceProcess) -> dict[str, float]:
        url = edge.wait_for(r"Metrics on (http://\S+/metrics)").group(1)
        text = self.http.get(url).text
        return {name: float(value) for name, value in re.findall(r"^(warren_store_\w+) (\S+)$", text, re.M)}

    def wait_health(self, edge: ServiceProcess, status: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            code, body = self.health(edge)
            assert code == 200, body  # a node that has loaded state answers 200, stale or not
            if body["status"] == status:
                return body
            assert time.monotonic() < deadline, f"health never said {status!r}: {body}"
            time.sleep(0.05)

    def close(self) -> None:
        self.api.close()
        self.http.close()


@pytest.fixture
def fleet(spawn: Callable[[list[str]], ServiceProcess]) -> Iterator[Callable[[str], Fleet]]:
    made: list[Fleet] = []

    def make(store: str) -> Fleet:
        made.append(Fleet(spawn, store))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


async def replicas_of(url: str, streams: list[str]) -> dict[str, int]:
    nc = NATS()
    await nc.connect(url)
    try:
        js = nc.jetstream()
        return {stream: (await js.stream_info(stream)).config.num_replicas or 1 for stream in streams}
    finally:
        await nc.close()


# -- the store on a cluster -------------------------------------------------------------------------


def test_the_store_replicates_on_a_cluster_and_reconnects_across_servers(nats_cluster: NatsCluster) -> None:
    urls = nats_cluster.urls

    async def body() -> None:
        # Several servers in one string: buckets get min(3, cluster size) = 3 replicas, detected.
        async with NATSStore(",".join(urls), secrets_key=KEY) as store:
            assert (store.servers, store.replicas, store.bucket_replicas) == (urls, None, 3)
            replicas = await replicas_of(urls[0], [*STREAMS, "OBJ_warren_modules"])
            assert set(replicas.values()) == {3}, replicas
            # An explicit replicas wins; a list works as well as commas; one server known finds the others.
            async with NATSStore(urls[-1:], secrets_key=KEY, prefix="two", replicas=2) as other:
                assert other.bucket_replicas == 2
                assert len(other._nc.servers) == 3  # type: ignore[union-attr]
                assert (await replicas_of(urls[0], ["KV_two_deployments"])) == {"KV_two_deployments": 2}
                assert await other.account_by_name("acme") is None  # another prefix, other buckets

            account = await store.create_account("acme")
            # The server this store talks to dies: it moves to another and goes on, having lost nothing.
            connected = store._nc.connected_url  # type: ignore[union-attr]
            assert connected is not None
            victim = next(node for node in nats_cluster.nodes if node.port == connected.port)
            victim.kill()
            deadline = time.monotonic() + 30
            while True:
                try:
                    await store.create_account("after")
                    break
                except Exception as exc:  # unreachable, or a timeout while the streams it led elect a leader
                    assert time.monotonic() < deadline, f"no service after losing {victim.name}: {exc!r}"
                    await asyncio.sleep(0.1)
            assert store._nc.connected_url.port != victim.port  # type: ignore[union-attr]
            assert await store.get_account(account.id) == account

    asyncio.run(body())


def test_a_single_server_keeps_one_replica(tmp_path: Any) -> None:
    single = NatsCluster(tmp_path / "single", size=1)
    try:

        async def body() -> None:
            async with NATSStore(single.urls[0], secrets_key=KEY) as store:
                assert store.bucket_replicas == 1
                assert set((await replicas_of(single.urls[0], STREAMS)).values()) == {1}

        asyncio.run(body())
    finally:
        single.stop()


# -- many edge nodes --------------------------------------------------------------------------------


def test_five_edges_serve_each_deploy_and_a_killed_edge_catches_up(nats_cluster: NatsCluster, fleet: Any) -> None:
    platform: Fleet = fleet(nats_cluster.store_url())
    edges = platform.edges(5)
    assert platform.deploy("hello", "v1").status_code == 200
    platform.wait_served(edges, "hello", "v1", timeout=20)  # the first load also starts each runtime
    assert platform.deploy("hello", "v2").status_code == 200
    platform.wait_served(edges, "hello", "v2", timeout=5)

    # SIGKILL one edge while a deploy is on its way, deploy again while it is down, then restart it.
    victim = edges[2]
    deploying = ThreadPoolExecutor(1)
    pending = deploying.submit(platform.deploy, "hello", "v3")
    victim.process.kill()
    assert pending.result(60).status_code == 200
    deploying.shutdown()
    assert platform.deploy("hello", "v4").status_code == 200
    survivors = [edge for edge in edges if edge is not victim]
    platform.wait_served(survivors, "hello", "v4", timeout=5)
    victim.process.wait(10)
    restarted = platform.spawn(platform.edge_args("node2"))  # its state, which SIGKILL left unlocked
    platform.wait_served([restarted, *survivors], "hello", "v4", timeout=10)
    code, health = platform.health(restarted)
    assert code == 200 and health["status"] == "ok" and health["store"]["kind"] == "nats", health
    restarted.wait_for(r"serving demo/hello@v4-")  # the latest only, not the deploy it was killed in
    assert not any("@v3-" in line for line in restarted.lines)


def test_no_acknowledged_deploy_is_lost_when_a_nats_server_dies(nats_cluster: NatsCluster, fleet: Any) -> None:
    """Deploys stream in (a new script each) while the server leading the deployments bucket is SIGKILLed;
    every deploy answered 200 is served by every edge afterwards, with that server still dead."""
    platform: Fleet = fleet(nats_cluster.store_url())
    edges = platform.edges(2)
    assert platform.deploy("s0", "s0").status_code == 200
    platform.wait_served(edges, "s0", "s0", timeout=20)

    acknowledged: list[str] = ["s0"]
    refused: list[str] = []
    stop = threading.Event()
    killed_at: list[int] = []

    def stream_of_deploys() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            script = f"s{index}"
            try:
                response = platform.deploy(script, script)
            except httpx.HTTPError as exc:
                refused.append(f"{script}: {exc!r}")
                continue
            if response.status_code == 200:
                acknowledged.append(script)
            else:
                refused.append(f"{script}: {response.status_code}")
                stop.wait(0.05)  # not hammering a cluster in the middle of an election

    deployer = threading.Thread(target=stream_of_deploys, daemon=True)
    deployer.start()
    try:
        deadline = time.monotonic() + 20
        while len(acknowledged) < 6:
            assert time.monotonic() < deadline and deployer.is_alive(), f"deploys stalled: {refused}"
            time.sleep(0.01)
        leader = nats_cluster.stream_leader("KV_warren_deployments")
        nats_cluster.node(leader).kill()
        killed_at.append(len(acknowledged))
        deadline = time.monotonic() + 45
        while len(acknowledged) < killed_at[0] + 6:  # deploys flow again on the two servers left
            assert time.monotonic() < deadline and deployer.is_alive(), (
                f"deploys did not resume after killing {leader}: {refused[-5:]}"
            )
            time.sleep(0.01)
    finally:
        stop.set()
        deployer.join(90)
    assert not deployer.is_alive()

    for script in acknowledged:
        platform.wait_served(edges, script, script, timeout=20)
    listed = {entry["id"] for entry in platform.api.get("/scripts").json()["result"]}
    assert set(acknowledged) <= listed
    print(
        f"{len(acknowledged)} deploys acknowledged ({killed_at[0]} before killing {leader}), all served by both "
        f"edges; {len(refused)} refused meanwhile"
    )


def test_a_partitioned_edge_serves_its_last_state_says_stale_and_converges(
    tmp_path: Any, fleet: Any, tcp_proxy: Callable[[tuple[str, int]], TcpProxy]
) -> None:
    single = NatsCluster(tmp_path / "single", size=1)  # one server: nothing announced to route around the proxy
    try:
        proxy = tcp_proxy(("127.0.0.1", single.nodes[0].port))
        platform: Fleet = fleet(single.urls[0])
        cut_off, connected = platform.edges(1, store=proxy.url)[0], platform.edges(1)[0]
        both = [cut_off, connected]
        assert platform.deploy("hello", "v1").status_code == 200
        platform.wait_served(both, "hello", "v1", timeout=20)
        assert platform.wait_health(cut_off, "ok", timeout=5)["revision"] >= 0
        assert platform.metrics(cut_off)["warren_store_stale"] == 0

        # A silent partition: the connection stays up, no byte gets through either way.
        proxy.pause()
        assert platform.deploy("hello", "v2").status_code == 200
        platform.wait_served([connected], "hello", "v2", timeout=5)
        deadline = time.monotonic() + 15
        while (health := platform.health(cut_off)[1])["status"] != "stale":
            assert platform.served(cut_off, "hello") == "v1"  # all the while, serving what it had
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["last_sync_age_s"] > health["stale_after_s"]
        metrics = platform.metrics(cut_off)
        assert metrics["warren_store_stale"] == 1 and metrics["warren_store_last_sync_seconds"] > 3, metrics
        assert platform.served(cut_off, "hello") == "v1"
        proxy.resume()
        platform.wait_served([cut_off], "hello", "v2", timeout=15)
        platform.wait_health(cut_off, "ok", timeout=5)
        cut_off.wait_for("in step with the store again")

        # A partition that drops the connection: the node knows at once, and reconnects once it can.
        proxy.pause()
        proxy.cut()
        health = platform.wait_health(cut_off, "stale", timeout=5)
        assert health["store"]["connected"] is False, health
        assert platform.deploy("hello", "v3").status_code == 200
        platform.wait_served([connected], "hello", "v3", timeout=5)
        assert platform.served(cut_off, "hello") == "v2"
        proxy.resume()
        platform.wait_served([cut_off], "hello", "v3", timeout=15)
        assert platform.wait_health(cut_off, "ok", timeout=5)["store"]["connected"] is True
        assert platform.metrics(cut_off)["warren_store_stale"] == 0
    finally:
        single.stop()
