"""The store on NATS JetStream, against a real ``nats-server -js`` on a loopback port of its own.

The contract both stores keep (SQLite and NATS alike) is tested in tests/test_store.py,
on both; here is what only a store shared over the network needs: two store objects
seeing each other's writes, ``wait_for_change`` woken by a KV watch, secrets sealed in
the bucket, a NATS restart (SIGKILL) losing nothing, an edge following back-to-back
deploys, leftovers of a cut-short operation staying invisible, and a control plane with
two edge nodes, through a NATS outage. ``NatsServer`` and the ``nats_server`` fixture are
shared with other test modules. Skipped (with the reason) where ``nats-server`` is not
installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from nats.aio.client import Client as NATS

from warren.store import Conflict, InvalidInput, SQLiteStore, Store, Version
from warren.store.nats import SECRETS_KEY_ENV, NATSStore, SecretsKeyError, generate_secrets_key
from warren.store.open import describe, open_store

T = TypeVar("T")

NATS_SERVER = shutil.which("nats-server") or next(
    (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(path, os.X_OK)), None
)
NO_NATS = "nats-server is not installed (apt-get install nats-server): the NATS store needs a real server to test"
KEY = generate_secrets_key()
JS = "application/javascript+module"
MAIN = b"export default { fetch() { return new Response('v1') } }"


# -- a real nats-server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServer:
    """``nats-server -js`` on a free loopback port, its JetStream files in ``store_dir``."""

    def __init__(self, store_dir: Path) -> None:
        assert NATS_SERVER is not None
        self.binary = NATS_SERVER
        self.store_dir = store_dir
        self.port = free_port()
        self.log_path = store_dir.parent / f"nats-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while b"Server is ready" not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("nats-server did not start:\n" + self.log_path.read_text(errors="replace"))
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


async def raw_messages(url: str) -> list[bytes]:
    """Every message (subject, headers and data) of every stream on the server, read with a plain client."""
    nc = NATS()
    await nc.connect(url)
    try:
        js = nc.jetstream()
        found = []
        for info in await js.streams_info():
            name = info.config.name or ""
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(name, seq=seq)
                except Exception:  # deleted or purged message
                    continue
                found.append(json.dumps([msg.subject, msg.headers]).encode() + (msg.data or b""))
        return found
    finally:
        await nc.close()


async def object_count(url: str) -> int:
    nc = NATS()
    await nc.connect(url)
    try:
        info = await nc.jetstream().stream_info("OBJ_warren_modules", subjects_filter="$O.warren_modules.M.>")
        return len(info.state.subjects or {})
    finally:
        await nc.close()


async def raw_publish(url: str, subject: str, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
    """Write to a bucket behind the store's back, as a half-finished operation would have."""
    nc = NATS()
    await nc.connect(url)
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    finally:
        await nc.close()


# -- what a store shared over the network needs ---------------------------------------------------


async def upload(
    store: Store, account_id: str, script: str = "hello", source: bytes = MAIN, deploy: bool = False, **overrides: Any
) -> Version:
    arguments: dict[str, Any] = {
        "main_module": "index.js",
        "modules": {"index.js": (JS, source)},
        "compatibility_date": "2024-09-23",
        "bindings": [],
        "limits": {},
        "author_token_id": "tok",
        "message": "",
    }
    arguments.update(overrides)
    version, _ = await store.upload_version(account_id, script, deploy=deploy, **arguments)
    return version


def test_two_store_objects_see_each_others_writes(nats_server: NatsServer) -> None:
    async def body() -> None:
        async with (
            NATSStore(nats_server.url, secrets_key=KEY) as control,
            NATSStore(nats_server.url, secrets_key=KEY) as edge,
        ):
            assert await edge.revision() == 0
            account = await control.create_account("acme")
            assert await edge.get_account(account.id) == account
            version = await upload(control, account.id, deploy=True)
            assert await edge.revision() == await control.revision()
            assert (await edge.edge_state()).versions == {version.id: version}
            await edge.put_secret(account.id, "hello", "KEY", "x")  # and the other way round
            assert await control.list_secret_names(account.id, "hello") == ["KEY"]
            # Concurrent writers on both objects: compare-and-set loses nothing.
            stores = [control, edge] * 10
            await asyncio.gather(*(store.create_kv_namespace(account.id, f"ns{i}") for i, store in enumerate(stores)))
            assert len(await edge.list_kv_namespaces(account.id)) == 20
            versions = await asyncio.gather(*(upload(store, account.id, script="busy") for store in stores))
            assert sorted(version.number for version in versions) == list(range(1, 21))
            results = await asyncio.gather(
                *(store.create_route(account.id, "race.example/*", "hello") for store in stores), return_exceptions=True
            )
            assert sum(not isinstance(result, BaseException) for result in results) == 1
            assert all(isinstance(result, Conflict) for result in results if isinstance(result, BaseException))
            deployed = await asyncio.gather(
                *(
                    store.create_deployment(account.id, "busy", [(str(n), 100)], "tok", "")
                    for n, store in enumerate(stores, 1)
                )
            )
            history = await control.list_deployments(account.id, "busy")
            assert sorted(d.id for d in history) == sorted(d.id for d in deployed)
            assert await edge.current_deployment(account.id, "busy") == history[0]

    asyncio.run(body())


def test_a_scan_is_complete_only_once_it_has_seen_the_leaders_newest_message(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-replica consumer on a follower replica that is behind says "nothing pending" while the
    leader holds a newer write. Played here on one server: the leader's newest sequence is reported one
    ahead of the stream, as a lagging replica would see it. The scan must wait for that message
    (written meanwhile by another store object), and give up with a clear error if it never comes."""
    async def body() -> None:
        async with (
            NATSStore(nats_server.url, secrets_key=KEY) as control,
            NATSStore(nats_server.url, secrets_key=KEY) as edge,
        ):
            account = await control.create_account("acme")
            await control.create_kv_namespace(account.id, "first")
            read_sequence = NATSStore._last_sequence

            async def one_ahead(store: NATSStore, kind: str, pattern: str) -> int:
                return await read_sequence(store, kind, pattern) + 1

            monkeypatch.setattr(NATSStore, "_last_sequence", one_ahead)
            scan = asyncio.create_task(edge.list_kv_namespaces(account.id))
            await asyncio.sleep(0.3)
            assert not scan.done()  # the consumer has delivered all it has, and says so
            await control.create_kv_namespace(account.id, "second")
            assert sorted(ns.title for ns in await asyncio.wait_for(scan, 10)) == ["first", "second"]

            edge.timeout = 0.5
            with pytest.raises(TimeoutError, match="replica is behind the leader's sequence"):
                await edge.list_kv_namespaces(account.id)

    asyncio.run(body())


def test_wait_for_change_wakes_on_a_write_from_another_store(nats_server: NatsServer) -> None:
    async def body() -> list[float]:
        async with (
            NATSStore(nats_server.url, secrets_key=KEY) as control,
            NATSStore(nats_server.url, secrets_key=KEY) as edge,
        ):
            account = await control.create_account("acme")
            revision = await edge.revision()
            started = time.monotonic()
            assert await edge.wait_for_change(revision, timeout=0.3) == revision  # nothing changed: the timeout
            assert time.monotonic() - started >= 0.29
            latencies = []
            for i in range(20):
                revision = await edge.revision()
                waiter = asyncio.create_task(edge.wait_for_change(revision, timeout=5))
                await asyncio.sleep(0.02)
                assert not waiter.done()
                await control.create_kv_namespace(account.id, f"ns{i}")
                written = time.monotonic()
                changed = await waiter
                latencies.append(time.monotonic() - written)
                assert changed > revision
            return latencies

    latencies = asyncio.run(body())
    print(
        f"wait_for_change woke after a write: p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    # Each wait had 5 s: woken by the write, not by its timeout (how fast is the benchmarks' question).
    assert max(latencies) < 2.5


def test_secrets_are_sealed_in_the_bucket(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with NATSStore(nats_server.url, secrets_key=KEY) as store:
            account = await store.create_account("acme")
            await upload(store, account.id, deploy=True)
            await store.put_secret(account.id, "hello", "API_KEY", "plaintext-s3cr3t")
            assert await store.secrets_for(account.id, "hello") == {"API_KEY": "plaintext-s3cr3t"}
        # Another node with another key can read everything but the secrets, and says why.
        async with NATSStore(nats_server.url, secrets_key=generate_secrets_key()) as stranger:
            assert await stranger.list_secret_names(account.id, "hello") == ["API_KEY"]
            with pytest.raises(SecretsKeyError, match="sealed under key"):
                await stranger.edge_state()

    asyncio.run(body())
    stored = asyncio.run(raw_messages(nats_server.url))
    assert any(b"API_KEY" in message for message in stored)  # the name is visible, the value is not
    assert not any(b"s3cr3t" in message for message in stored)
    assert not any(b"s3cr3t" in path.read_bytes() for path in nats_server.store_dir.rglob("*") if path.is_file())

    monkeypatch.delenv(SECRETS_KEY_ENV, raising=False)
    with pytest.raises(SecretsKeyError, match=SECRETS_KEY_ENV):
        NATSStore(nats_server.url)
    monkeypatch.setenv(SECRETS_KEY_ENV, "too short")
    with pytest.raises(SecretsKeyError, match="32 bytes"):
        NATSStore(nats_server.url)
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)
    assert isinstance(open_store(nats_server.url), NATSStore)


def test_a_nats_restart_keeps_everything(nats_server: NatsServer) -> None:
    async def body() -> None:
        async with (
            NATSStore(nats_server.url, secrets_key=KEY) as control,
            NATSStore(nats_server.url, secrets_key=KEY) as edge,
        ):
            account = await control.create_account("acme")
            _, secret = await control.create_token(account.id, "ci")
            version = await upload(control, account.id, deploy=True)
            await control.put_secret(account.id, "hello", "API_KEY", "x")
            await control.create_route(account.id, "example.com/*", "hello")
            await control.create_kv_namespace(account.id, "sessions")
            before = await edge.edge_state()
            revision = await edge.wait_for_change(-1, timeout=1)  # starts the edge's watch

            nats_server.kill()  # SIGKILL right after the acknowledged writes
            deadline = time.monotonic() + 10
            while control.connected or edge.connected:
                assert time.monotonic() < deadline, "the stores never noticed NATS going away"
                await asyncio.sleep(0.01)
            # While NATS is away, calls fail at once (nothing is queued to land later), and a waiting
            # edge hears so when its wait is over.
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="unreachable"):
                await control.create_kv_namespace(account.id, "late")
            with pytest.raises(ConnectionError, match="unreachable"):
                await edge.wait_for_change(revision, timeout=0.2)
            assert time.monotonic() - started < 1
            nats_server.start()

            # The same objects reconnect by themselves (within a second), and the edge's watch comes back.
            while not (control.connected and edge.connected):
                assert time.monotonic() < deadline, "the stores did not reconnect"
                await asyncio.sleep(0.01)
            assert await control.revision() == revision
            assert await edge.edge_state() == before
            waiter = asyncio.create_task(edge.wait_for_change(revision, timeout=10))
            await asyncio.sleep(0.05)
            await control.put_secret(account.id, "hello", "API_KEY", "y")
            written = time.monotonic()
            assert await asyncio.wait_for(waiter, 10) > revision
            assert time.monotonic() - written < 1.0  # the watch, not the timeout, woke it

        async with NATSStore(nats_server.url, secrets_key=KEY) as fresh:  # and a new node sees it all
            assert await fresh.authenticate(secret) is not None
            assert await fresh.get_version(account.id, "hello", version.id) == version
            assert await fresh.get_blob(version.modules[0].sha256) == MAIN
            assert await fresh.secrets_for(account.id, "hello") == {"API_KEY": "y"}
            assert [ns.title for ns in await fresh.list_kv_namespaces(account.id)] == ["sessions"]
            state = await fresh.edge_state()
            assert (state.routes, state.accounts, state.deployments) == (
                before.routes,
                before.accounts,
                before.deployments,
            )

    asyncio.run(body())


def test_leftovers_of_cut_short_operations_stay_invisible(nats_server: NatsServer) -> None:
    """What a process killed half-way through would leave: none of it shows."""

    async def body() -> None:
        async with NATSStore(nats_server.url, secrets_key=KEY) as store:
            acme = await store.create_account("acme")
            other = await store.create_account("other")
            await upload(store, acme.id, deploy=True)
            await store.put_secret(acme.id, "hello", "API_KEY", "x")
            await store.create_route(acme.id, "example.com/*", "hello")
            # delete_script killed right after its one visible write: the script record is gone,
            # its deployment, secret and route are not.
            await raw_publish(nats_server.url, f"$KV.warren_scripts.{acme.id}.hello", headers={"KV-Operation": "DEL"})
            # upload_version of a new script killed before it created the script: a deployment exists.
            await upload(store, acme.id, script="ghost")
            ghost = await store.get_script(acme.id, "ghost")
            assert ghost is not None
            await raw_publish(nats_server.url, f"$KV.warren_scripts.{acme.id}.ghost", headers={"KV-Operation": "DEL"})
            stray = {
                "id": "d",
                "account_id": acme.id,
                "script": "ghost",
                "versions": [["x", 100]],
                "created_on": "",
                "author_token_id": "",
                "message": "",
                "incarnation": "never-created",
            }
            await raw_publish(nats_server.url, f"$KV.warren_deployments.{acme.id}.ghost", json.dumps(stray).encode())

            state = await store.edge_state()
            assert state.deployments == {} and state.routes == [] and state.secrets == {}
            assert await store.list_scripts(acme.id) == []
            assert await store.list_routes(acme.id) == [] and await store.secrets_for(acme.id, "hello") == {}
            # The dead route's pattern is free for anyone; the old secrets do not come back.
            await upload(store, other.id, deploy=True)
            await store.create_route(other.id, "example.com/*", "hello")
            await upload(store, acme.id, deploy=True)
            assert await store.list_secret_names(acme.id, "hello") == []
            assert len(await store.list_deployments(acme.id, "hello")) == 1
            assert (await store.edge_state()).routes[0].account_id == other.id

    asyncio.run(body())


def test_open_store_and_an_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)
    assert isinstance(open_store(str(tmp_path / "warren.db")), SQLiteStore)
    store = open_store("nats://127.0.0.1:1,nats://127.0.0.1:2?replicas=3&prefix=blue")
    assert isinstance(store, NATSStore)
    assert (store.servers, store.replicas, store.prefix) == (["nats://127.0.0.1:1", "nats://127.0.0.1:2"], 3, "blue")
    for bad in ("nats://h:4222?colour=red", "nats://h:4222?replicas=x", "nats://h:4222,http://x"):
        with pytest.raises(ValueError):
            open_store(bad)
    assert describe("nats://user:pw@h:4222,nats://h2:4222?replicas=3") == "nats://h:4222,nats://h2:4222?replicas=3"

    async def unreachable() -> float:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="cannot reach NATS"):
            await NATSStore(f"nats://127.0.0.1:{free_port()}", secrets_key=KEY, connect_timeout=1).open()
        return time.monotonic() - started

    assert asyncio.run(unreachable()) < 10


def test_an_edge_following_back_to_back_deploys_sees_each_promptly(nats_server: NatsServer) -> None:
    """The loop an edge node runs (wait_for_change, then edge_state) against a control plane deploying
    as fast as it can: every read completes, and each deployment is seen at once."""

    async def body() -> list[float]:
        async with (
            NATSStore(nats_server.url, secrets_key=KEY) as control,
            NATSStore(nats_server.url, secrets_key=KEY) as edge,
        ):
            account = await control.create_account("acme")
            seen: dict[str, float] = {}

            async def follow() -> None:
                revision = -1
                while True:
                    if await edge.wait_for_change(revision, timeout=1) != revision:
                        state = await edge.edge_state()
                        revision = state.revision
                        deployment = state.deployments.get((account.id, "hello"))
                        if deployment is not None:
                            seen.setdefault(deployment.id, time.monotonic())

            follower = asyncio.create_task(follow())
            latencies = []
            try:
                for i in range(60):
                    source = MAIN.replace(b"v1", f"v{i}".encode())
                    _, deployment = await control.upload_version(
                        account.id, "hello", "index.js", {"index.js": (JS, source)}, "", [], {}, "tok", "", deploy=True
                    )
                    assert deployment is not None
                    acknowledged = time.monotonic()
                    while deployment.id not in seen:
                        assert not follower.done(), follower
                        assert time.monotonic() - acknowledged < 2, f"deploy {i} not seen after 2 s"
                        await asyncio.sleep(0.001)
                    latencies.append(seen[deployment.id] - acknowledged)
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            return latencies

    latencies = asyncio.run(body())
    print(
        f"deploy acknowledged -> in an edge's state: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert max(latencies) < 1


def test_what_cannot_be_one_message_is_refused_before_writing(nats_server: NatsServer) -> None:
    async def body() -> None:
        async with NATSStore(nats_server.url, secrets_key=KEY) as store:
            account = await store.create_account("acme")
            revision = await store.revision()
            huge = [{"type": "json", "name": "BIG", "json": "x" * (2 * 1024 * 1024)}]
            with pytest.raises(InvalidInput, match="exceeds"):
                await upload(store, account.id, bindings=huge, deploy=True)
            assert await store.revision() == revision
            assert await store.list_scripts(account.id) == []

    asyncio.run(body())
    assert asyncio.run(object_count(nats_server.url)) == 0


# -- end to end: a control plane and two edge nodes on one NATS -----------------------------------


def test_control_and_two_edges_over_nats(nats_server: NatsServer, spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)
    domain = "workers.test"
    store = nats_server.url
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", store, "account", "create", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    account = json.loads(created.stdout)
    control = spawn(["control", "--store", store])
    edges = [
        spawn(["serve", "--store", store, "--workers-domain", domain, "--processes", "1", "--state-dir", f"node{n}"])
        for n in range(2)
    ]
    host = f"hello.demo.{domain}"
    scripts = f"/client/v4/accounts/{account['account_id']}/workers/scripts"

    def deploy(label: str) -> None:
        source = f"export default {{ fetch(request, env) {{ return new Response('{label}' + (env.SUFFIX ?? '')); }} }};"
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
            "index.js": ("index.js", source, JS),
        }
        response = api.put(f"{scripts}/hello", files=files)
        assert response.status_code == 200, response.text

    def all_serve(text: str, timeout: float) -> float:
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            pending = list(edges)
            while pending:
                pending = [edge for edge in pending if client.get(edge.url, headers={"host": host}).text != text]
                if pending and time.monotonic() - started > timeout:
                    told = [line for line in pending[0].lines if " GET / " not in line]  # not the request log
                    raise AssertionError(f"not serving {text!r} after {timeout} s:\n" + "\n".join(told[-30:]))
                time.sleep(0.01)
        return time.monotonic() - started

    with httpx.Client(base_url=control.url, headers={"authorization": f"Bearer {account['token']}"}, timeout=30) as api:
        deploy("v1")
        first = all_serve("v1", timeout=10)  # the first load also starts each edge's runtime
        timings = []
        for label in ("v2", "v3", "v4"):
            deploy(label)
            timings.append(all_serve(label, timeout=1.0))
        put = api.put(f"{scripts}/hello/secrets", json={"name": "SUFFIX", "text": "-s3cr3t", "type": "secret_text"})
        assert put.status_code == 200
        timings.append(all_serve("v4-s3cr3t", timeout=1.0))

        # NATS goes away: the edges keep serving what they have; when it is back, deploys flow again.
        nats_server.kill()
        time.sleep(0.5)
        assert all_serve("v4-s3cr3t", timeout=1.0) < 0.5
        nats_server.start()
        deadline = time.monotonic() + 10
        while api.get(scripts).status_code != 200:  # the control plane reconnects (about a second)
            assert time.monotonic() < deadline, "the control plane did not reconnect to NATS"
            time.sleep(0.05)
        deploy("v5")
        after_outage = all_serve("v5-s3cr3t", timeout=5.0)
    print(
        f"deploy -> both edges serving over NATS: first {first * 1000:.0f} ms, then {[round(t * 1000) for t in timings]} ms"
        f", after a NATS restart {after_outage * 1000:.0f} ms"
    )
    for edge in edges:
        edge.wait_for(re.escape("serving demo/hello@v5"))
        assert "s3cr3t" not in edge.output
