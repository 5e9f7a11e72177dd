"""KV data in the stores: the same contract on SQLite and on NATS JetStream (a real
``nats-server -js`` per test), then what only NATS has: values over 1 MiB in the object
store, change notifications by watch reaching another edge node, a 20 MiB value streamed
through a worker, a namespace purged, and notifications surviving a NATS restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.test_kv import Clock, KVNode
from tests.test_store_nats import NATS_SERVER, NO_NATS, NatsServer
from warren.store import SQLiteStore, Store
from warren.store.kv_data import KVChange, KVRecord, encode_cursor
from warren.store.nats import KV_INLINE_MAX, NATSStore, generate_secrets_key

MiB = 1024 * 1024
KEY = generate_secrets_key()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


def nats_store(server: NatsServer) -> NATSStore:
    return NATSStore(server.url, secrets_key=KEY)


@pytest.fixture(params=["sqlite", "nats"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "kv.db")
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    request.addfinalizer(server.stop)
    return lambda: nats_store(server)


def record(value: bytes | None, stamp: int, writer: str = "n1", **fields: Any) -> KVRecord:
    return KVRecord(value=value, metadata=fields.get("metadata"), expiration=fields.get("expiration"), stamp=stamp,
                    writer=writer)


async def opened(factory: Any) -> Store:
    store: Store = factory()
    await store.open()
    return store


# -- the contract, on both stores ---------------------------------------------------------------------


def test_put_get_and_last_write_wins(store_factory: Any) -> None:
    async def run() -> None:
        store = await opened(store_factory)
        try:
            assert await store.kv_get("ns", "k") is None
            assert await store.kv_put("ns", "k", record(b"v1", 100, metadata='{"a":1}', expiration=2_000_000_000))
            assert await store.kv_get("ns", "k") == record(b"v1", 100, metadata='{"a":1}', expiration=2_000_000_000)
            # An older stamp loses; an equal stamp loses to the greater writer, wins over a smaller one.
            assert not await store.kv_put("ns", "k", record(b"older", 99))
            assert not await store.kv_put("ns", "k", record(b"same stamp, smaller writer", 100, "n0"))
            assert await store.kv_put("ns", "k", record(b"same stamp, greater writer", 100, "n2"))
            assert (await store.kv_get("ns", "k")).value == b"same stamp, greater writer"  # type: ignore[union-attr]
            # A delete is a tombstone: a late older write cannot bring the key back.
            assert await store.kv_put("ns", "k", record(None, 200))
            assert (await store.kv_get("ns", "k")) == record(None, 200)
            assert not await store.kv_put("ns", "k", record(b"late", 150))
            assert (await store.kv_get("ns", "k")).value is None  # type: ignore[union-attr]
            # Namespaces are separate; keys are bytes (case, unicode).
            await store.kv_put("other", "k", record(b"elsewhere", 1))
            await store.kv_put("ns", "K", record(b"upper", 1))
            await store.kv_put("ns", "ké☃\U0001f600", record(b"unicode", 1))
            assert (await store.kv_get("other", "k")).value == b"elsewhere"  # type: ignore[union-attr]
            assert (await store.kv_get("ns", "K")).value == b"upper"  # type: ignore[union-attr]
            assert (await store.kv_get("ns", "ké☃\U0001f600")).value == b"unicode"  # type: ignore[union-attr]
            many = await store.kv_get_many("ns", ["K", "k", "missing", "K"])
            assert set(many) == {"K", "k"} and many["k"].value is None
            assert await store.kv_put_many("ns", [("b1", record(b"1", 5)), ("b2", record(b"2", 5)), ("K", record(b"x", 0))]) == 2
        finally:
            await store.close()

    asyncio.run(run())


def test_list_order_prefix_pages_and_expiry(store_factory: Any) -> None:
    async def run() -> None:
        store = await opened(store_factory)
        try:
            names = ["b", "a", "\uff61", "\U0001f600", "Z", "é", "aa", "a/b", "ab\xff", "a\x00"]
            for index, name in enumerate(names):
                await store.kv_put("ns", name, record(b"v", 10, metadata=f'{{"i":{index}}}'))
            await store.kv_put("ns", "expired", record(b"v", 10, expiration=1000))
            await store.kv_put("ns", "expires-later", record(b"v", 10, expiration=5000))
            await store.kv_put("ns", "deleted", record(None, 10))
            await store.kv_put("elsewhere", "a", record(b"v", 10))
            now = 2000.0
            expected = sorted([*names, "expires-later"], key=lambda name: name.encode("utf-8"))
            keys, more = await store.kv_list("ns", "", None, 1000, now)
            assert [key.name for key in keys] == expected and not more
            info = {key.name: key for key in keys}
            assert info["b"].metadata == '{"i":0}' and info["expires-later"].expiration == 5000
            keys, _ = await store.kv_list("ns", "", None, 1000, 6000.0)
            assert "expires-later" not in [key.name for key in keys]
            keys, more = await store.kv_list("ns", "a", None, 1000, now)
            assert [key.name for key in keys] == ["a", "a\x00", "a/b", "aa", "ab\xff"] and not more
            # Pages: after a cursor's key, at most limit, and whether more follow.
            page, more = await store.kv_list("ns", "", None, 4, now)
            assert [key.name for key in page] == expected[:4] and more
            page, more = await store.kv_list("ns", "", expected[3].encode("utf-8"), 4, now)
            assert [key.name for key in page] == expected[4:8] and more
            page, more = await store.kv_list("ns", "", expected[7].encode("utf-8"), 4, now)
            assert [key.name for key in page] == expected[8:] and not more
            assert encode_cursor(expected[3])  # cursors are the key's bytes, opaque to callers
        finally:
            await store.close()

    asyncio.run(run())


def test_changes_and_purge(store_factory: Any) -> None:
    async def run() -> None:
        store = await opened(store_factory)
        writer = await opened(store_factory)  # another node's store object
        changes = store.kv_changes()
        try:
            first = asyncio.ensure_future(changes.__anext__())
            await asyncio.sleep(0.5)  # the watcher is listening
            await writer.kv_put("ns", "k", record(b"v", 7, "node-x"))
            assert await asyncio.wait_for(first, 5) == KVChange("ns", "k", 7, "node-x")
            assert not await writer.kv_put("ns", "k", record(b"old", 6))  # a lost write announces nothing
            await writer.kv_put("ns", "k2", record(b"v", 8))
            assert await asyncio.wait_for(changes.__anext__(), 5) == KVChange("ns", "k2", 8, "n1")
            big = os.urandom(2 * MiB)
            await writer.kv_put("ns", "big", record(big, 9))
            assert (await asyncio.wait_for(changes.__anext__(), 5)).key == "big"
            assert (await store.kv_get("ns", "big")).value == big  # type: ignore[union-attr]
            await writer.kv_purge("ns")
            assert await asyncio.wait_for(changes.__anext__(), 5) == KVChange("ns", None)
            assert await store.kv_get("ns", "k") is None and await store.kv_get("ns", "big") is None
            assert await store.kv_list("ns", "", None, 10, time.time()) == ([], False)
        finally:
            await changes.aclose()
            await writer.close()
            await store.close()

    asyncio.run(run())


# -- NATS only -----------------------------------------------------------------------------------------


async def raw_kv(url: str, subject: str) -> Any:
    nc = NATS()
    await nc.connect(url)
    try:
        return await nc.jetstream().get_msg("KV_warren_kv_data", subject=subject)
    finally:
        await nc.close()


async def object_names(url: str) -> list[str]:
    nc = NATS()
    await nc.connect(url)
    try:
        objects = await nc.jetstream().object_store("warren_kv_values")
        try:
            return sorted(info.name for info in await objects.list(ignore_deletes=True))
        except Exception:  # nats-py raises NotFoundError for an empty store
            return []
    finally:
        await nc.close()


def test_one_bucket_with_hex_keys_and_large_values_in_the_object_store(nats_server: NatsServer) -> None:
    async def run() -> None:
        store = nats_store(nats_server)
        await store.open()
        try:
            small = os.urandom(KV_INLINE_MAX - 8192)
            await store.kv_put("ns1", "small", record(small, 1, metadata='{"m":"☃"}', expiration=2_000_000_000))
            message = await raw_kv(nats_server.url, "$KV.warren_kv_data.ns1." + b"small".hex())
            assert message.data == small and "Warren-KV-Object" not in (message.headers or {})
            assert message.headers["Warren-KV-Stamp"] == "1" and message.headers["Warren-KV-Expiration"] == "2000000000"
            large = os.urandom(3 * MiB)
            await store.kv_put("ns1", "large", record(large, 1))
            message = await raw_kv(nats_server.url, "$KV.warren_kv_data.ns1." + b"large".hex())
            assert not message.data
            first_object = message.headers["Warren-KV-Object"]
            assert await object_names(nats_server.url) == [first_object]
            assert (await store.kv_get("ns1", "large")).value == large  # type: ignore[union-attr]
            # Replaced: the old object goes; a lost write leaves none behind.
            larger = os.urandom(4 * MiB)
            await store.kv_put("ns1", "large", record(larger, 2))
            assert not await store.kv_put("ns1", "large", record(os.urandom(2 * MiB), 1))
            names = await object_names(nats_server.url)
            assert len(names) == 1 and names[0] != first_object
            assert (await store.kv_get("ns1", "large")).value == larger  # type: ignore[union-attr]
            await store.kv_put("ns1", "large", record(None, 3))
            assert await object_names(nats_server.url) == []
            # Every namespace in one stream; KV data never moves the control plane's revision.
            revision = await store.revision()
            await store.kv_put("ns2", "k", record(b"v", 1))
            assert await store.revision() == revision
        finally:
            await store.close()

    asyncio.run(run())


@pytest.fixture
def nats_nodes(nats_server: NatsServer) -> Iterator[Any]:
    started: list[KVNode] = []

    def start(name: str, clock: Clock, notifications: bool = True) -> KVNode:
        node = KVNode(nats_store(nats_server), name, clock, notifications)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def wait_until(check: Any, timeout: float = 10) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_watch_invalidates_the_other_nodes_cache(nats_nodes: Any) -> None:
    a = nats_nodes("node-a", Clock())
    b = nats_nodes("node-b", Clock())  # its clock never moves: only the watch can refresh it
    a.call("put", "k", "v1")
    assert b.value("k") == "v1"
    a.call("put", "k", "v2")
    assert a.value("k") == "v2"
    took = wait_until(lambda: b.value("k") == "v2")
    print(f"a write on node a reached node b's reads in {took * 1000:.0f} ms")
    assert b.kv.invalidations >= 1
    a.call("delete", "k")
    wait_until(lambda: b.value("k") is None)


def test_without_notifications_nats_nodes_are_bounded_by_cache_ttl(nats_nodes: Any) -> None:
    clock_b = Clock()
    a = nats_nodes("node-a", Clock())
    b = nats_nodes("node-b", clock_b, notifications=False)
    a.call("put", "k", "v1")
    assert b.value("k") == "v1"
    a.call("put", "k", "v2")
    time.sleep(0.3)
    assert b.value("k") == "v1"
    clock_b.advance(60)
    assert b.value("k") == "v2"


def test_twenty_mib_value_through_a_worker_on_nats(nats_nodes: Any, nats_server: NatsServer) -> None:
    import hashlib

    import httpx

    a = nats_nodes("node-a", Clock())
    b = nats_nodes("node-b", Clock())
    value = os.urandom(20 * MiB)
    put = httpx.post(a.edge.url + "/w/put-body", params={"key": "huge"}, content=value, timeout=120)
    assert put.json() == {"ok": True}
    with httpx.stream("GET", b.edge.url + "/w/stream", params={"key": "huge"}, timeout=120) as response:
        digest = hashlib.sha256()
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(value).hexdigest()
    assert len(asyncio.run(object_names(nats_server.url))) == 1
    print(f"20 MiB on NATS: worker cpu {a.cpu[-1][1]:.1f} ms (put), {b.cpu[-1][1]:.1f} ms (get as a response)")
    assert a.cpu[-1][1] < 15 and b.cpu[-1][1] < 15


def test_notifications_resume_after_a_nats_restart(nats_nodes: Any, nats_server: NatsServer) -> None:
    a = nats_nodes("node-a", Clock())
    b = nats_nodes("node-b", Clock())
    a.call("put", "k", "before")
    assert b.value("k") == "before"
    nats_server.kill()
    nats_server.start()
    # Both nodes reconnect; b's watch is started afresh and its cache flushed.
    wait_until(lambda: "error" not in a.call("put", "k", "after"), timeout=30)
    wait_until(lambda: b.value("k") == "after", timeout=30)


def test_changes_async_iterator_is_closed_cleanly(nats_server: NatsServer) -> None:
    async def run() -> None:
        store = nats_store(nats_server)
        await store.open()
        changes: AsyncIterator[KVChange] = store.kv_changes()
        pending = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0.3)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await changes.aclose()  # type: ignore[attr-defined]
        await store.close()

    asyncio.run(run())
