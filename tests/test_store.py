"""The control plane's store: one contract suite run on both stores, and route matching.

Every contract test runs on a real SQLiteStore (a file in tmp_path) and on a real
NATSStore (a ``nats-server -js`` of the test's own, see tests/test_store_nats.py),
so the two behave alike; the NATS case is skipped, saying why, where ``nats-server``
is not installed. Then what only the SQLite file has (one transaction undone whole,
two store objects sharing the file, its schema), and route patterns and matching.
What only a store shared over the network needs is in tests/test_store_nats.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.test_store_nats import KEY, NatsServer, nats_server, object_count, raw_messages  # noqa: F401  (a fixture)
from warren.store import (
    Conflict,
    InvalidInput,
    NotFound,
    Route,
    RouteTable,
    SQLiteStore,
    Store,
    Version,
    match_route,
    parse_route,
)
from warren.store.nats import NATSStore

T = TypeVar("T")

JS = "application/javascript+module"
MAIN = b"export default { fetch() { return new Response('v1') } }"


class Backend:
    """One store under test: ``sqlite`` (a file in tmp_path) or ``nats`` (a server of the test's own)."""

    def __init__(self, kind: str, tmp_path: Path, server: NatsServer | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.server = server

    @property
    def sqlite(self) -> bool:
        return self.server is None

    @property
    def path(self) -> Path:
        return self.tmp_path / "store.db"

    def make(self) -> Store:
        if self.server is not None:
            return NATSStore(self.server.url, secrets_key=KEY)
        return SQLiteStore(self.path)

    def run(self, body: Callable[[Store], Awaitable[T]]) -> T:
        async def main() -> T:
            store = self.make()
            await store.open()
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())

    def stored_bytes(self) -> list[bytes]:
        """Everything the store keeps, as raw bytes: every message on the server, or every file."""
        if self.server is not None:
            return asyncio.run(raw_messages(self.server.url))
        return [path.read_bytes() for path in self.tmp_path.iterdir() if path.is_file()]

    def blob_count(self) -> int:
        if self.server is not None:
            return asyncio.run(object_count(self.server.url))
        return table_counts(self.path)["blobs"]


@pytest.fixture(params=["sqlite", "nats"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    server = request.getfixturevalue("nats_server") if request.param == "nats" else None
    return Backend(request.param, tmp_path, server)


def run(path: Path, body: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with SQLiteStore(path) as store:
            return await body(store)

    return asyncio.run(main())


async def upload(
    store: Store,
    account_id: str,
    script: str = "hello",
    source: bytes = MAIN,
    deploy: bool = False,
    **overrides: Any,
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


def table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}
    finally:
        conn.close()


def add_trigger(path: Path, table: str) -> None:
    """Make every insert into ``table`` fail, as a disk or constraint error late in a transaction would."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'boom'); END")
        conn.commit()
    finally:
        conn.close()


# -- accounts and tokens ------------------------------------------------------------------------


def test_accounts(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.revision() == 0
        account = await store.create_account("acme")
        assert re.fullmatch(r"[0-9a-f]{32}", account.id)
        assert account.created_on.endswith("Z")
        first = await store.revision()
        assert first > 0
        if backend.sqlite:
            assert first == 1  # one write, one revision
        assert await store.get_account(account.id) == account
        assert await store.account_by_name("acme") == account
        assert await store.get_account("0" * 32) is None
        assert await store.get_account("a.*") is None and await store.get_account("x" * 5000) is None
        assert await store.account_by_name("nobody") is None
        with pytest.raises(Conflict, match="taken"):
            await store.create_account("acme")
        assert await store.revision() == first  # a refused write changes nothing
        for bad in ["", "Acme", "-acme", "acme-", "a_b", "a" * 64, "a.b"]:
            with pytest.raises(ValueError, match="account name"):
                await store.create_account(bad)
        assert await store.revision() == first
        assert await store.create_account("a" * 63)
        assert await store.revision() > first
        if backend.sqlite:
            assert await store.revision() == 2

    backend.run(body)


def test_tokens_store_only_a_hash(backend: Backend) -> None:
    async def body(store: Store) -> str:
        account = await store.create_account("acme")
        token, secret = await store.create_token(account.id, "ci")
        assert re.fullmatch(r"wrn_[A-Za-z0-9_-]{40}", secret)
        assert (token.account_id, token.name) == (account.id, "ci")
        assert await store.authenticate(secret) == token
        assert await store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
        assert await store.authenticate("") is None
        assert await store.authenticate("wrn_") is None
        with pytest.raises(NotFound):
            await store.create_token("f" * 32, "x")
        _, other = await store.create_token(account.id, "second")
        assert other != secret
        return secret

    secret = backend.run(body)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    stored = b"".join(backend.stored_bytes())
    assert digest.encode() in stored
    assert secret.encode() not in stored
    if backend.sqlite:
        conn = sqlite3.connect(backend.path)
        try:
            assert digest in [row[0] for row in conn.execute("SELECT secret_sha256 FROM tokens")]
        finally:
            conn.close()


# -- versions, blobs, deployments ---------------------------------------------------------------


def test_versions_are_numbered_and_content_addressed(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        wasm = b"\x00asm\x01\x00\x00\x00\xff\xfe"
        binding = {"type": "plain_text", "name": "GREETING", "text": "hi"}
        v1 = await upload(
            store,
            account.id,
            modules={"index.js": (JS, MAIN), "lib/add.wasm": ("application/wasm", wasm)},
            bindings=[{**binding, "ignored": 1}],
            limits={"cpu_ms": 100},
            message="first",
        )
        v2 = await upload(store, account.id, source=MAIN.replace(b"v1", b"v2"))
        again = await upload(
            store,
            account.id,
            modules={"lib/add.wasm": ("application/wasm", wasm), "index.js": (JS, MAIN)},
            bindings=[binding],
            limits={"cpu_ms": 100},
        )
        assert (v1.number, v2.number, again.number) == (1, 2, 3)
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", v1.id)
        assert [ref.name for ref in v1.modules] == ["index.js", "lib/add.wasm"]
        assert v1.bindings == (binding,)
        assert v1.limits == {"cpu_ms": 100} and v1.message == "first" and v1.author_token_id == "tok"
        # Same code, bindings and limits: same content hash whatever the order of upload.
        assert again.content_hash == v1.content_hash != v2.content_hash
        expected = [
            "index.js",
            [[ref.name, ref.content_type, ref.sha256] for ref in v1.modules],
            "2024-09-23",
            [binding],
            {"cpu_ms": 100},
        ]
        canonical = json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
        assert v1.content_hash == hashlib.sha256(canonical).hexdigest()

        listed = await store.list_versions(account.id, "hello")
        assert [version.number for version in listed] == [3, 2, 1]
        assert await store.get_version(account.id, "hello", v1.id) == v1
        assert await store.get_version(account.id, "hello", "1") == v1
        assert await store.get_version(account.id, "hello", "4") is None
        assert await store.get_version(account.id, "other", v1.id) is None
        assert await store.get_version(account.id, "hello", "*") is None
        wasm_ref = v1.module("lib/add.wasm")
        assert wasm_ref is not None and wasm_ref.size == len(wasm)
        assert wasm_ref.sha256 == hashlib.sha256(wasm).hexdigest()
        assert await store.get_blob(wasm_ref.sha256) == wasm
        assert await store.get_blob("0" * 64) is None and await store.get_blob("../x") is None
        # An upload without deploy makes the script but serves nothing yet.
        [info] = await store.list_scripts(account.id)
        assert (info.name, info.etag) == ("hello", None)
        assert await store.current_deployment(account.id, "hello") is None
        big = bytes(range(256)) * 20_000  # 5 MB: many object-store chunks on NATS
        large = await upload(
            store,
            account.id,
            script="big",
            modules={"index.js": (JS, MAIN), "data.bin": ("application/octet-stream", big)},
        )
        large_ref = large.module("data.bin")
        assert large_ref is not None and await store.get_blob(large_ref.sha256) == big

    backend.run(body)
    assert backend.blob_count() == 4  # MAIN, the v2 source, the wasm and the big one: shared, not copied


def test_upload_validation_writes_nothing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        other = await store.create_account("other")
        foreign = await store.create_kv_namespace(other.id, "theirs")
        revision = await store.revision()
        bad: list[dict[str, Any]] = [
            {"main_module": "missing.js"},
            {"modules": {}},
            {"modules": {"../index.js": (JS, MAIN)}, "main_module": "../index.js"},
            {"modules": {"/index.js": (JS, MAIN)}, "main_module": "/index.js"},
            {"modules": {"a b.js": (JS, MAIN)}, "main_module": "a b.js"},
            {"modules": {"x" * 257: (JS, MAIN)}, "main_module": "x" * 257},
            {"modules": {"index.js": ("application/javascript", MAIN)}},
            {"modules": {"index.js": ("text/plain", MAIN)}},
            {"modules": {"index.js": (JS, b"x" * (10 * 1024 * 1024 + 1))}},
            {"compatibility_date": "2024-13-01"},
            {"bindings": [{"type": "plain_text", "name": "not-an-identifier", "text": ""}]},
            {"bindings": [{"type": "plain_text", "name": "A", "text": ""}, {"type": "json", "name": "A", "json": 1}]},
            {"bindings": [{"type": "secret_text", "name": "A", "text": "x"}]},
            {"bindings": [{"type": "service", "name": "A"}]},
            {"bindings": [{"type": "kv_namespace", "name": "KV", "namespace_id": "0" * 32}]},
            {"bindings": [{"type": "kv_namespace", "name": "KV", "namespace_id": foreign.id}]},
            {"limits": {"cpu_ms": 0}},
            {"limits": {"cpu_ms": 300_001}},
            {"limits": {"cpu_ms": True}},
            {"limits": {"memory_mb": 1}},
        ]
        for overrides in bad:
            with pytest.raises(InvalidInput):
                await upload(store, account.id, deploy=True, **overrides)
        with pytest.raises(InvalidInput, match="script name"):
            await upload(store, account.id, script="Hello")
        with pytest.raises(NotFound):
            await upload(store, "f" * 32)
        assert await store.list_scripts(account.id) == []
        assert await store.list_versions(account.id, "hello") == []
        assert await store.revision() == revision

    backend.run(body)
    assert backend.blob_count() == 0
    if backend.sqlite:
        counts = table_counts(backend.path)
        assert counts["versions"] == counts["scripts"] == 0


def test_a_late_failure_in_the_upload_transaction_undoes_all_of_it(tmp_path: Path) -> None:
    """SQLite: a failure after the blobs, script and version rows are written leaves none of them."""
    path = tmp_path / "store.db"

    async def setup(store: SQLiteStore) -> tuple[str, int]:
        account = await store.create_account("acme")
        return account.id, await store.revision()

    account_id, revision = run(path, setup)
    before = table_counts(path)
    add_trigger(path, "deployments")

    async def late_failure(store: SQLiteStore) -> None:
        with pytest.raises(sqlite3.IntegrityError, match="boom"):
            await upload(store, account_id, deploy=True)
        assert await store.revision() == revision
        assert await store.list_versions(account_id, "hello") == []

    run(path, late_failure)
    assert table_counts(path) == before
    assert before["versions"] == before["blobs"] == before["scripts"] == 0


def test_deploy_in_the_same_call(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        revision = await store.revision()
        version, deployment = await store.upload_version(
            account.id, "hello", "index.js", {"index.js": (JS, MAIN)}, "", [], {}, "tok", "go", deploy=True
        )
        assert await store.revision() > revision
        if backend.sqlite:
            assert await store.revision() == revision + 1  # one transaction, one revision
        assert deployment is not None and deployment.versions == ((version.id, 100),)
        assert (deployment.author_token_id, deployment.message) == ("tok", "go")
        assert await store.current_deployment(account.id, "hello") == deployment
        info = await store.get_script(account.id, "hello")
        assert info is not None and info.etag == version.content_hash
        assert await store.list_scripts(account.id) == [info]

    backend.run(body)


def test_deployments(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        v1 = await upload(store, account.id, deploy=True)
        v2 = await upload(store, account.id, source=MAIN.replace(b"v1", b"v2"))
        elsewhere = await upload(store, account.id, script="other")
        revision = await store.revision()
        bad: list[list[tuple[str, Any]]] = [
            [],
            [(v1.id, 50)],
            [(v1.id, 50), (v2.id, 60)],
            [(v1.id, 100), (v2.id, 0)],
            [(v1.id, 50.5), (v2.id, 49.5)],
            [(v1.id, 40), (v2.id, 40), (v1.id, 20)],
            [(v1.id, 50), (v1.id, 50)],
            [(v1.id, 50), ("1", 50)],  # the same version, by id and by number
            [("0" * 32, 100)],
            [(elsewhere.id, 100)],
            [(v1.id, True)],
        ]
        for versions in bad:
            with pytest.raises(InvalidInput):
                await store.create_deployment(account.id, "hello", versions, "tok", "")
        with pytest.raises(NotFound):
            await store.create_deployment(account.id, "nope", [(v1.id, 100)], "tok", "")
        assert await store.revision() == revision

        split = await store.create_deployment(account.id, "hello", [(v1.id, 30), ("2", 70)], "tok", "canary")
        assert split.versions == ((v1.id, 30), (v2.id, 70))
        assert split.main_version_id == v2.id
        info = await store.get_script(account.id, "hello")
        assert info is not None and info.etag == v2.content_hash

        half = await store.create_deployment(account.id, "hello", [(v2.id, 50.0), (v1.id, 50)], "tok", "")
        assert half.versions == ((v2.id, 50), (v1.id, 50))
        assert half.main_version_id == v2.id  # a tie goes to the first listed

        # Rollback is deploying an old version again.
        rollback = await store.create_deployment(account.id, "hello", [(v1.id, 100)], "tok", "rollback")
        assert await store.current_deployment(account.id, "hello") == rollback
        history = await store.list_deployments(account.id, "hello")
        assert [d.id for d in history][:3] == [rollback.id, half.id, split.id]
        assert len(history) == 4
        info = await store.get_script(account.id, "hello")
        assert info is not None and info.etag == v1.content_hash

    backend.run(body)


# -- secrets, deletion --------------------------------------------------------------------------


def test_secrets_are_listed_by_name_only(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        await upload(store, account.id, deploy=True)
        await store.put_secret(account.id, "hello", "API_KEY", "s3cr3t-value")
        await store.put_secret(account.id, "hello", "OTHER", "x")
        await store.put_secret(account.id, "hello", "$other", "x ✓ \U0001f600")
        await store.put_secret(account.id, "hello", "API_KEY", "rotated")
        assert await store.list_secret_names(account.id, "hello") == ["$other", "API_KEY", "OTHER"]
        assert await store.secrets_for(account.id, "hello") == {
            "API_KEY": "rotated",
            "OTHER": "x",
            "$other": "x ✓ \U0001f600",
        }
        with pytest.raises(NotFound):
            await store.put_secret(account.id, "nope", "A", "x")
        with pytest.raises(InvalidInput):
            await store.put_secret(account.id, "hello", "not-valid", "x")
        assert await store.delete_secret(account.id, "hello", "OTHER")
        assert await store.delete_secret(account.id, "hello", "$other")
        revision = await store.revision()
        assert not await store.delete_secret(account.id, "hello", "OTHER")
        assert not await store.delete_secret(account.id, "hello", "$other")
        assert await store.revision() == revision  # nothing changed, nothing for edges to reload
        assert await store.list_secret_names(account.id, "hello") == ["API_KEY"]

    backend.run(body)


def test_delete_script_keeps_the_archive(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        v1 = await upload(store, account.id, deploy=True)
        await store.put_secret(account.id, "hello", "API_KEY", "x")
        await store.create_route(account.id, "example.com/*", "hello")
        await upload(store, account.id, script="keep", deploy=True)
        await store.create_route(account.id, "keep.example.com/*", "keep")

        assert await store.delete_script(account.id, "hello")
        assert not await store.delete_script(account.id, "hello")
        assert [info.name for info in await store.list_scripts(account.id)] == ["keep"]
        assert await store.get_script(account.id, "hello") is None
        assert await store.current_deployment(account.id, "hello") is None
        assert await store.list_deployments(account.id, "hello") == []
        assert await store.secrets_for(account.id, "hello") == {}
        assert [route.pattern for route in await store.list_routes(account.id)] == ["keep.example.com/*"]
        # The archive: versions and their bytes stay readable.
        assert await store.get_version(account.id, "hello", v1.id) == v1
        assert await store.get_blob(v1.modules[0].sha256) == MAIN
        state = await store.edge_state()
        assert set(state.deployments) == {(account.id, "keep")}
        assert v1.id not in state.versions
        # A new script of the same name starts from scratch, numbering after the archive.
        again = await upload(store, account.id)
        assert again.number == 2
        assert await store.list_secret_names(account.id, "hello") == []
        assert await store.list_deployments(account.id, "hello") == []
        assert await store.create_route(account.id, "example.com/*", "hello")  # the old route is gone

    backend.run(body)


# -- routes and KV namespaces -------------------------------------------------------------------


def test_routes_in_the_store(backend: Backend) -> None:
    async def body(store: Store) -> None:
        acme = await store.create_account("acme")
        other = await store.create_account("other")
        await upload(store, acme.id, deploy=True)
        await upload(store, other.id, deploy=True)
        route = await store.create_route(acme.id, "*.Example.COM/api/*", "hello")
        assert route.pattern == "*.example.com/api/*"
        second = await store.create_route(acme.id, "example.com/a.b/*", "hello")
        revision = await store.revision()
        with pytest.raises(Conflict):
            await store.create_route(acme.id, "*.example.com/api/*", "hello")
        with pytest.raises(Conflict):  # hostnames are global: another account cannot take it either
            await store.create_route(other.id, "*.EXAMPLE.com/api/*", "hello")
        with pytest.raises(InvalidInput):
            await store.create_route(acme.id, "https://example.com/*", "hello")
        with pytest.raises(NotFound):
            await store.create_route(acme.id, "example.org/*", "missing")
        assert await store.revision() == revision
        assert await store.list_routes(acme.id) == [route, second]
        assert await store.list_routes(other.id) == []
        assert not await store.delete_route(other.id, route.id)  # not theirs
        assert await store.delete_route(acme.id, route.id)
        assert await store.list_routes(acme.id) == [second]

    backend.run(body)


def test_kv_namespaces(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        other = await store.create_account("other")
        namespace = await store.create_kv_namespace(account.id, "sessions")
        assert re.fullmatch(r"[0-9a-f]{32}", namespace.id)
        with pytest.raises(Conflict):
            await store.create_kv_namespace(account.id, "sessions")
        assert await store.create_kv_namespace(other.id, "sessions")  # titles are per account
        odd = await store.create_kv_namespace(account.id, "a.b * > é" * 50)
        with pytest.raises(InvalidInput):
            await store.create_kv_namespace(account.id, "")
        assert await store.list_kv_namespaces(account.id) == sorted([namespace, odd], key=lambda ns: ns.title)
        binding = {"type": "kv_namespace", "name": "SESSIONS", "namespace_id": namespace.id}
        assert (await upload(store, account.id, bindings=[binding])).bindings == (binding,)
        assert not await store.delete_kv_namespace(other.id, namespace.id)
        assert await store.delete_kv_namespace(account.id, namespace.id)
        assert await store.list_kv_namespaces(account.id) == [odd]
        assert await store.create_kv_namespace(account.id, "sessions")  # the title is free again

    backend.run(body)


# -- edge state, closing ------------------------------------------------------------------------


def test_edge_state(backend: Backend) -> None:
    async def body(store: Store) -> None:
        account = await store.create_account("acme")
        config = {"type": "json", "name": "CONFIG", "json": {"a": [1, 2]}}
        v1 = await upload(store, account.id, bindings=[config], deploy=True)
        v2 = await upload(store, account.id, source=MAIN.replace(b"v1", b"v2"))
        await upload(store, account.id, script="draft")  # uploaded, never deployed
        await store.create_deployment(account.id, "hello", [(v1.id, 50), (v2.id, 50)], "tok", "")
        await store.put_secret(account.id, "hello", "API_KEY", "x")
        route = await store.create_route(account.id, "example.com/*", "hello")

        state = await store.edge_state()
        assert state.revision == await store.revision()
        assert state.accounts == {account.id: account}
        assert state.routes == [route]
        assert set(state.deployments) == {(account.id, "hello")}
        assert state.deployments[(account.id, "hello")].versions == ((v1.id, 50), (v2.id, 50))
        assert state.versions == {v1.id: v1, v2.id: v2}
        assert state.versions[v1.id].bindings == (config,)
        assert state.secrets == {(account.id, "hello"): {"API_KEY": "x"}}

    backend.run(body)


def test_closed_store_refuses_calls(backend: Backend) -> None:
    async def body() -> None:
        store = backend.make()
        with pytest.raises(RuntimeError, match="not open"):
            await store.revision()
        await store.open()
        await store.open()  # idempotent
        await store.close()
        with pytest.raises(RuntimeError, match="not open"):
            await store.create_account("acme")

    asyncio.run(body())


# -- SQLite: two store objects on one file ------------------------------------------------------


def test_two_sqlite_store_objects_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"

    async def body() -> None:
        async with SQLiteStore(path) as control, SQLiteStore(path) as edge:
            assert await edge.revision() == 0
            account = await control.create_account("acme")
            assert await edge.get_account(account.id) == account
            version = await upload(control, account.id, deploy=True)
            assert await edge.revision() == await control.revision() == 2
            state = await edge.edge_state()
            assert state.versions == {version.id: version}
            # And the other way round.
            await edge.put_secret(account.id, "hello", "KEY", "x")
            assert await control.list_secret_names(account.id, "hello") == ["KEY"]
            # Concurrent writers from both objects serialise on SQLite's lock; none is lost.
            await asyncio.gather(
                *(store.create_kv_namespace(account.id, f"ns{i}") for i, store in enumerate([control, edge] * 10))
            )
            assert len(await edge.list_kv_namespaces(account.id)) == 20
            assert await control.revision() == 3 + 20

    asyncio.run(body())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1
    finally:
        conn.close()
    # Reopening an existing file keeps everything.
    assert run(path, lambda store: store.revision()) == 23


# -- route patterns -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "normalised"),
    [
        ("example.com/*", "example.com/*"),
        ("Example.COM/", "example.com/"),
        ("*example.com/*", "*example.com/*"),
        ("*.example.com/api/*", "*.example.com/api/*"),
        ("api.example.com/v1/users", "api.example.com/v1/users"),
        ("localhost/*", "localhost/*"),
        ("127.0.0.1/x", "127.0.0.1/x"),
    ],
)
def test_parse_route_accepts(pattern: str, normalised: str) -> None:
    assert str(parse_route(pattern)) == normalised


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "non-empty"),
        ("example.com", "no path"),
        ("https://example.com/*", "no scheme"),
        ("example.com:8080/*", "no port"),
        ("www.*.example.com/*", "only allowed at the start of the host"),
        ("example.*/*", "only allowed at the start of the host"),
        ("example.com/*/x", "only allowed at the end of the path"),
        ("example.com/a*b", "only allowed at the end of the path"),
        ("*/*", "needs a hostname"),
        ("/*", "needs a hostname"),
        ("*./*", "needs a hostname"),
        ("exa mple.com/*", "not a hostname"),
        ("-example.com/*", "bad label"),
        ("example..com/*", "bad label"),
        ("example.com./*", "bad label"),
        ("example.com/a b", "printable ASCII"),
        ("example.com/a?b=1", "printable ASCII"),
        ("example.com/é", "printable ASCII"),
    ],
)
def test_parse_route_rejects(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_route(pattern)


def _routes(*patterns: str) -> list[Route]:
    return [Route(id=f"r{i}", account_id="a", pattern=pattern, script=pattern) for i, pattern in enumerate(patterns)]


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # An exact host beats a wildcard one, even with a shorter path.
        ("www.example.com", "/api/users", "www.example.com/*"),
        ("WWW.Example.com:8443", "/", "www.example.com/*"),
        ("www.example.com.", "/", "www.example.com/*"),
        # Among wildcards, the longer host literal wins, then the longer path.
        ("shop.example.com", "/api/users", "*.example.com/api/*"),
        ("shop.example.com", "/about", "*.example.com/*"),
        ("example.com", "/", "*example.com/*"),  # "*example.com" covers the apex too
        ("myexample.com", "/x", "*example.com/*"),
        ("a.b.example.org", "/", "*.b.example.org/*"),
        ("c.example.org", "/", "*.example.org/*"),
        # An exact path needs the exact path; it beats a prefix of the same length.
        ("exact.test", "/health", "exact.test/health"),
        ("exact.test", "/healthz", "exact.test/health*"),
        ("exact.test", "/", None),
        ("nothing.test", "/", None),
        ("", "/", None),
    ],
)
def test_match_route_specificity(host: str, path: str, expected: str | None) -> None:
    routes = _routes(
        "*example.com/*",
        "*.example.com/*",
        "*.example.com/api/*",
        "www.example.com/*",
        "*.example.org/*",
        "*.b.example.org/*",
        "exact.test/health",
        "exact.test/health*",
    )
    for order in (routes, list(reversed(routes))):
        found = match_route(order, host, path)
        assert (found.pattern if found else None) == expected
        table_found = RouteTable(order).match(host, path)
        assert (table_found.pattern if table_found else None) == expected


def test_match_route_skips_garbage() -> None:
    routes = _routes("not a pattern", "example.com/*")
    found = match_route(routes, "example.com", "/")
    assert found is not None and found.pattern == "example.com/*"
    assert len(RouteTable(routes)) == 1
