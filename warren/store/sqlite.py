"""``SQLiteStore``: the store in one SQLite file, shared by ``warren control`` and ``warren serve``.

WAL mode lets the edge node read while the control plane writes. Each store
object has one connection, used by one call at a time (a lock) on a worker
thread, so a 10 MB upload or a wait for another process's write lock never
stalls the event loop. Every write is one ``BEGIN IMMEDIATE … COMMIT``
transaction that also bumps the revision; any exception rolls it back whole.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from warren.json_codec import dump_json_text, load_json
from warren.store import validation
from warren.store.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from warren.store.kv_data import KVChange, KVKeyInfo, KVRecord, key_bytes, prefix_end
from warren.store.model import (
    Account,
    Deployment,
    EdgeState,
    ExpectDeployment,
    KVNamespace,
    ModuleRef,
    OutgoingMessage,
    Queue,
    QueueConsumer,
    QueueMessage,
    Route,
    ScriptInfo,
    Token,
    Version,
    now,
)
from warren.store.routes import parse_route

T = TypeVar("T")

SCHEMA_VERSION = 1
TOKEN_PREFIX = "wrn_"
MAX_SECRET_BYTES = 64 * 1024
_NUMBER = re.compile(r"[1-9][0-9]{0,17}")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS accounts (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_on TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE, created_on TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS scripts (
        account_id TEXT NOT NULL REFERENCES accounts(id), name TEXT NOT NULL,
        created_on TEXT NOT NULL, modified_on TEXT NOT NULL, PRIMARY KEY (account_id, name))""",
    # Versions outlive their script (the archive), so they do not reference the scripts table.
    """CREATE TABLE IF NOT EXISTS versions (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), script TEXT NOT NULL,
        number INTEGER NOT NULL, main_module TEXT NOT NULL, modules TEXT NOT NULL,
        compatibility_date TEXT NOT NULL, bindings TEXT NOT NULL, limits TEXT NOT NULL,
        content_hash TEXT NOT NULL, created_on TEXT NOT NULL, author_token_id TEXT NOT NULL,
        message TEXT NOT NULL, UNIQUE (account_id, script, number))""",
    """CREATE TABLE IF NOT EXISTS deployments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL REFERENCES accounts(id), script TEXT NOT NULL, versions TEXT NOT NULL,
        created_on TEXT NOT NULL, author_token_id TEXT NOT NULL, message TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS deployments_by_script ON deployments (account_id, script, seq)",
    """CREATE TABLE IF NOT EXISTS secrets (
        account_id TEXT NOT NULL, script TEXT NOT NULL, name TEXT NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (account_id, script, name))""",
    """CREATE TABLE IF NOT EXISTS routes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL REFERENCES accounts(id), pattern TEXT NOT NULL UNIQUE, script TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS kv_namespaces (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), title TEXT NOT NULL,
        UNIQUE (account_id, title))""",
)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


# how often wait_for_change looks at the revision: the floor of an edge node's deploy latency
POLL_INTERVAL_S = 0.05

# Invocation events (warren.observability): the ring's bounds, and the per-minute counts'.
EVENTS_MAX_AGE_MS = 3600 * 1000
EVENTS_MAX_COUNT = 100_000  # events, not rows: a row holds up to EVENTS_PER_ROW of them
EVENTS_PER_ROW = 100
EVENTS_MAX_ROW_CHARS = 1024 * 1024  # a chunk encoding to more is split (a single event may exceed it)
EVENT_STATS_MAX_AGE_MS = 3 * 3600 * 1000
EVENTS_PRUNE_EVERY_MS = 1000
EVENTS_READ_BATCH = 20  # rows per read of a follower: at most 2,000 events, about 20 MB
# One row per chunk of up to EVENTS_PER_ROW events of one (account, script), as a JSON array:
# a row per event cost an edge node's supervisor ~12 us of CPU per request. A row's id is
# the number of its last event in the file's running count of events (sqlite_sequence keeps
# that count, even when the ring is empty), so the ring is bounded in events by id ranges.
# An older file's per-event ``events`` table is left as it is and no longer read or written
# (its rows, at most an hour of events, are not shown to tails).
_EVENT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS event_batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL, script TEXT NOT NULL,
        received INTEGER NOT NULL, events INTEGER NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS event_batches_by_account ON event_batches (account_id, id)",
    "CREATE INDEX IF NOT EXISTS event_batches_by_received ON event_batches (received)",
    """CREATE TABLE IF NOT EXISTS event_stats (
        account_id TEXT NOT NULL, script TEXT NOT NULL, minute INTEGER NOT NULL, requests INTEGER NOT NULL,
        errors INTEGER NOT NULL, cpu_ms REAL NOT NULL, PRIMARY KEY (account_id, script, minute))""",
)


# KV data (warren.bindings.kv): tables outside the schema version, created on first use.
KV_POLL_INTERVAL_S = 0.1  # how often a node looks for other nodes' KV writes: the floor of their staleness
KV_CHANGES_KEPT_MS = 10 * 60 * 1000
KV_TOMBSTONES_KEPT_MS = 24 * 3600 * 1000
KV_PRUNE_EVERY_MS = 60 * 1000
KV_CHANGES_BATCH = 1000
_KV_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv_data (
        namespace_id TEXT NOT NULL, key BLOB NOT NULL, value BLOB, metadata TEXT, expiration INTEGER,
        stamp INTEGER NOT NULL, writer TEXT NOT NULL, PRIMARY KEY (namespace_id, key))""",
    """CREATE TABLE IF NOT EXISTS kv_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace_id TEXT NOT NULL, key BLOB NOT NULL,
        stamp INTEGER NOT NULL, writer TEXT NOT NULL, at INTEGER NOT NULL)""",
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SQLiteStore:
    """The ``Store`` over one SQLite file (``":memory:"`` works for a single object)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000) -> None:
        self.path = os.fspath(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file and create the schema if needed; a no-op when already open."""
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                self._create_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0)")
            elif row["value"] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"the store's schema is version {row['value']}; this warren reads version {SCHEMA_VERSION}"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- transactions -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    def _in_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # One read transaction, so a method's several SELECTs see one snapshot.
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _in_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                result = fn(conn)
                # A delete that found nothing is not a write: edge nodes need not reload.
                if conn.total_changes != before:
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                    conn.execute("ROLLBACK")
                raise
            return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._in_read, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._in_write, fn)

    # -- accounts and tokens ----------------------------------------------------------------

    async def create_account(self, name: str) -> Account:
        name = validation.account_name(name)
        account = Account(id=uuid.uuid4().hex, name=name, created_on=now())

        def write(conn: sqlite3.Connection) -> Account:
            if conn.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"the account name {name!r} is taken")
            conn.execute(
                "INSERT INTO accounts (id, name, created_on) VALUES (?, ?, ?)",
                (account.id, account.name, account.created_on),
            )
            return account

        return await self._write(write)

    async def get_account(self, account_id: str) -> Account | None:
        return await self._read(lambda conn: _account(conn, account_id))

    async def account_by_name(self, name: str) -> Account | None:
        def read(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
            return _row_account(row) if row else None

        return await self._read(read)

    async def create_token(self, account_id: str, name: str) -> tuple[Token, str]:
        name = validation.token_name(name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(30)  # 30 bytes: 40 url-safe characters
        token = Token(id=uuid.uuid4().hex, account_id=account_id, name=name, created_on=now())

        def write(conn: sqlite3.Connection) -> Token:
            _require_account(conn, account_id)
            conn.execute(
                "INSERT INTO tokens (id, account_id, name, secret_sha256, created_on) VALUES (?, ?, ?, ?, ?)",
                (token.id, account_id, name, _hash_secret(secret), token.created_on),
            )
            return token

        return await self._write(write), secret

    async def authenticate(self, secret: str) -> Token | None:
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
            return None
        digest = _hash_secret(secret)

        def read(conn: sqlite3.Connection) -> Token | None:
            row = conn.execute("SELECT * FROM tokens WHERE secret_sha256 = ?", (digest,)).fetchone()
            if row is None or not hmac.compare_digest(row["secret_sha256"], digest):
                return None
            return Token(id=row["id"], account_id=row["account_id"], name=row["name"], created_on=row["created_on"])

        return await self._read(read)

    # -- versions and deployments -----------------------------------------------------------

    async def upload_version(
        self,
        account_id: str,
        script: str,
        main_module: str,
        modules: dict[str, tuple[str, bytes]],
        compatibility_date: str,
        bindings: Sequence[dict[str, Any]],
        limits: dict[str, Any],
        author_token_id: str,
        message: str,
        deploy: bool,
        expect: ExpectDeployment | None = None,
    ) -> tuple[Version, Deployment | None]:
        # Everything that needs no database is checked (and hashed) before the lock is taken.
        upload = validation.upload(script, main_module, modules, compatibility_date, bindings, limits, message)
        script, compatibility_date, message = upload.script, upload.compatibility_date, upload.message
        binding_list, limit_map, blobs, refs = upload.bindings, upload.limits, upload.blobs, upload.refs
        digest = upload.content_hash
        created_on = now()

        def write(conn: sqlite3.Connection) -> tuple[Version, Deployment | None]:
            _require_account(conn, account_id)
            if expect is not None:
                current = _current_deployment(conn, account_id, script)
                if (current.id if current else None) != expect.deployment_id:
                    raise PreconditionFailed(f"script {script!r} was deployed again meanwhile")
            for binding in binding_list:
                if (
                    binding["type"] == "kv_namespace"
                    and not conn.execute(
                        "SELECT 1 FROM kv_namespaces WHERE id = ? AND account_id = ?",
                        (binding["namespace_id"], account_id),
                    ).fetchone()
                ):
                    raise InvalidInput(
                        f"binding {binding['name']!r}: KV namespace {binding['namespace_id']!r} "
                        "does not exist in this account"
                    )
            conn.executemany(
                "INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)",
                [(sha, data) for _, data, sha in blobs.values()],
            )
            conn.execute(
                "INSERT INTO scripts (account_id, name, created_on, modified_on) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (account_id, name) DO UPDATE SET modified_on = excluded.modified_on",
                (account_id, script, created_on, created_on),
            )
            # Numbers continue across a delete: the archived versions keep theirs.
            number = conn.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE account_id = ? AND script = ?",
                (account_id, script),
            ).fetchone()[0]
            version = Version(
                id=str(uuid.uuid4()),
                account_id=account_id,
                script=script,
                number=number,
                main_module=main_module,
                modules=refs,
                compatibility_date=compatibility_date,
                bindings=binding_list,
                limits=limit_map,
                content_hash=digest,
                created_on=created_on,
                author_token_id=author_token_id,
                message=message,
            )
            conn.execute(
                "INSERT INTO versions (id, account_id, script, number, main_module, modules, compatibility_date,"
                " bindings, limits, content_hash, created_on, author_token_id, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.id,
                    account_id,
                    script,
                    number,
                    main_module,
                    json.dumps([[r.name, r.content_type, r.sha256, r.size] for r in refs]),
                    compatibility_date,
                    json.dumps(list(binding_list)),
                    json.dumps(limit_map),
                    digest,
                    created_on,
                    author_token_id,
                    message,
                ),
            )
            deployment = None
            if deploy:
                deployment = _insert_deployment(
                    conn, account_id, script, ((version.id, 100),), author_token_id, message, created_on
                )
            return version, deployment

        return await self._write(write)

    async def get_version(self, account_id: str, script: str, version_id: str) -> Version | None:
        return await self._read(lambda conn: _find_version(conn, account_id, script, version_id))

    async def list_versions(self, account_id: str, script: str) -> list[Version]:
        def read(conn: sqlite3.Connection) -> list[Version]:
            rows = conn.execute(
                "SELECT * FROM versions WHERE account_id = ? AND script = ? ORDER BY number DESC", (account_id, script)
            ).fetchall()
            return [_row_version(row) for row in rows]

        return await self._read(read)

    async def get_blob(self, sha256: str) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            return bytes(row["data"]) if row else None

        return await self._read(read)

    async def create_deployment(
        self,
        account_id: str,
        script: str,
        versions: Sequence[tuple[str, int]],
        author_token_id: str,
        message: str,
    ) -> Deployment:
        split = validation.split(versions)
        message = validation.message(message)
        created_on = now()

        def write(conn: sqlite3.Connection) -> Deployment:
            _require_script(conn, account_id, script)
            resolved: list[tuple[str, int]] = []
            for version_id, share in split:
                version = _find_version(conn, account_id, script, version_id)
                if version is None:
                    raise InvalidInput(f"{version_id!r} is not a version of script {script!r}")
                resolved.append((version.id, share))
            if len({version_id for version_id, _ in resolved}) != len(resolved):
                raise InvalidInput("a deployment names each version once")
            return _insert_deployment(conn, account_id, script, tuple(resolved), author_token_id, message, created_on)

        return await self._write(write)

    async def list_deployments(self, account_id: str, script: str) -> list[Deployment]:
        def read(conn: sqlite3.Connection) -> list[Deployment]:
            rows = conn.execute(
                "SELECT * FROM deployments WHERE account_id = ? AND script = ? ORDER BY seq DESC", (account_id, script)
            ).fetchall()
            return [_row_deployment(row) for row in rows]

        return await self._read(read)

    async def current_deployment(self, account_id: str, script: str) -> Deployment | None:
        return await self._read(lambda conn: _current_deployment(conn, account_id, script))

    # -- scripts ----------------------------------------------------------------------------

    async def get_script(self, account_id: str, script: str) -> ScriptInfo | None:
        def read(conn: sqlite3.Connection) -> ScriptInfo | None:
            row = conn.execute(
                "SELECT * FROM scripts WHERE account_id = ? AND name = ?", (account_id, script)
            ).fetchone()
            return _script_info(conn, row) if row else None

        return await self._read(read)

    async def list_scripts(self, account_id: str) -> list[ScriptInfo]:
        def read(conn: sqlite3.Connection) -> list[ScriptInfo]:
            rows = conn.execute("SELECT * FROM scripts WHERE account_id = ? ORDER BY name", (account_id,)).fetchall()
            return [_script_info(conn, row) for row in rows]

        return await self._read(read)

    async def delete_script(self, account_id: str, script: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute("DELETE FROM scripts WHERE account_id = ? AND name = ?", (account_id, script))
            if deleted.rowcount == 0:
                return False
            # Versions and blobs stay: they are the archive, and numbering continues from them.
            for table in ("deployments", "routes", "secrets"):
                conn.execute(f"DELETE FROM {table} WHERE account_id = ? AND script = ?", (account_id, script))
            return True

        return await self._write(write)

    # -- secrets ----------------------------------------------------------------------------

    async def put_secret(self, account_id: str, script: str, name: str, text: str) -> None:
        name = validation.identifier(name, "secret name")
        if not isinstance(text, str):
            raise InvalidInput("a secret's text must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
            raise InvalidInput(f"a secret is at most {MAX_SECRET_BYTES} bytes")
        modified_on = now()

        def write(conn: sqlite3.Connection) -> None:
            _require_script(conn, account_id, script)
            conn.execute(
                "INSERT INTO secrets (account_id, script, name, text) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (account_id, script, name) DO UPDATE SET text = excluded.text",
                (account_id, script, name, text),
            )
            _touch(conn, account_id, script, modified_on)

        await self._write(write)

    async def delete_secret(self, account_id: str, script: str, name: str) -> bool:
        modified_on = now()

        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                "DELETE FROM secrets WHERE account_id = ? AND script = ? AND name = ?", (account_id, script, name)
            )
            if deleted.rowcount == 0:
                return False
            _touch(conn, account_id, script, modified_on)
            return True

        return await self._write(write)

    async def list_secret_names(self, account_id: str, script: str) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM secrets WHERE account_id = ? AND script = ? ORDER BY name", (account_id, script)
            ).fetchall()
            return [row["name"] for row in rows]

        return await self._read(read)

    async def secrets_for(self, account_id: str, script: str) -> dict[str, str]:
        def read(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT name, text FROM secrets WHERE account_id = ? AND script = ? ORDER BY name", (account_id, script)
            ).fetchall()
            return {row["name"]: row["text"] for row in rows}

        return await self._read(read)

    # -- routes -----------------------------------------------------------------------------

    async def create_route(self, account_id: str, pattern: str, script: str) -> Route:
        try:
            normalised = str(parse_route(pattern))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from None
        route = Route(id=uuid.uuid4().hex, account_id=account_id, pattern=normalised, script=script)

        def write(conn: sqlite3.Connection) -> Route:
            _require_script(conn, account_id, script)
            # Hostnames are global: one pattern, one owner, whichever account that is.
            if conn.execute("SELECT 1 FROM routes WHERE pattern = ?", (normalised,)).fetchone():
                raise Conflict(f"the route {normalised!r} already exists")
            conn.execute(
                "INSERT INTO routes (id, account_id, pattern, script) VALUES (?, ?, ?, ?)",
                (route.id, account_id, normalised, script),
            )
            return route

        return await self._write(write)

    async def list_routes(self, account_id: str) -> list[Route]:
        def read(conn: sqlite3.Connection) -> list[Route]:
            rows = conn.execute("SELECT * FROM routes WHERE account_id = ? ORDER BY seq", (account_id,)).fetchall()
            return [_row_route(row) for row in rows]

        return await self._read(read)

    async def delete_route(self, account_id: str, route_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute("DELETE FROM routes WHERE account_id = ? AND id = ?", (account_id, route_id))
            return deleted.rowcount > 0

        return await self._write(write)

    # -- KV namespaces ----------------------------------------------------------------------

    async def create_kv_namespace(self, account_id: str, title: str) -> KVNamespace:
        title = validation.kv_title(title)
        namespace = KVNamespace(id=uuid.uuid4().hex, account_id=account_id, title=title)

        def write(conn: sqlite3.Connection) -> KVNamespace:
            _require_account(conn, account_id)
            if conn.execute(
                "SELECT 1 FROM kv_namespaces WHERE account_id = ? AND title = ?", (account_id, title)
            ).fetchone():
                raise Conflict(f"a namespace titled {title!r} already exists")
            conn.execute(
                "INSERT INTO kv_namespaces (id, account_id, title) VALUES (?, ?, ?)", (namespace.id, account_id, title)
            )
            return namespace

        return await self._write(write)

    async def list_kv_namespaces(self, account_id: str) -> list[KVNamespace]:
        def read(conn: sqlite3.Connection) -> list[KVNamespace]:
            rows = conn.execute(
                "SELECT * FROM kv_namespaces WHERE account_id = ? ORDER BY title, id", (account_id,)
            ).fetchall()
            return [KVNamespace(id=row["id"], account_id=row["account_id"], title=row["title"]) for row in rows]

        return await self._read(read)

    async def delete_kv_namespace(self, account_id: str, namespace_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                "DELETE FROM kv_namespaces WHERE account_id = ? AND id = ?", (account_id, namespace_id)
            )
            return deleted.rowcount > 0

        return await self._write(write)

    # -- edge -------------------------------------------------------------------------------

    async def revision(self) -> int:
        return await self._read(_revision)

    async def wait_for_change(self, after_revision: int, timeout: float) -> int:
        # SQLite has no change notification across processes: poll the revision.
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            current = await self.revision()
            remaining = deadline - asyncio.get_running_loop().time()
            if current != after_revision or remaining <= 0:
                return current
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))

    async def edge_state(self) -> EdgeState:
        def read(conn: sqlite3.Connection) -> EdgeState:
            accounts = {row["id"]: _row_account(row) for row in conn.execute("SELECT * FROM accounts")}
            routes = [_row_route(row) for row in conn.execute("SELECT * FROM routes ORDER BY seq")]
            deployments: dict[tuple[str, str], Deployment] = {}
            for row in conn.execute(
                "SELECT d.* FROM deployments d JOIN ("
                "  SELECT MAX(d2.seq) AS seq FROM deployments d2 JOIN scripts s"
                "  ON s.account_id = d2.account_id AND s.name = d2.script GROUP BY d2.account_id, d2.script"
                ") latest ON d.seq = latest.seq"
            ):
                deployment = _row_deployment(row)
                deployments[(deployment.account_id, deployment.script)] = deployment
            wanted = {version_id for d in deployments.values() for version_id, _ in d.versions}
            versions: dict[str, Version] = {}
            for version_id in sorted(wanted):
                row = conn.execute("SELECT * FROM versions WHERE id = ?", (version_id,)).fetchone()
                if row is not None:
                    versions[version_id] = _row_version(row)
            secret_map: dict[tuple[str, str], dict[str, str]] = {}
            for row in conn.execute("SELECT * FROM secrets ORDER BY account_id, script, name"):
                secret_map.setdefault((row["account_id"], row["script"]), {})[row["name"]] = row["text"]
            return EdgeState(
                revision=_revision(conn),
                routes=routes,
                accounts=accounts,
                deployments=deployments,
                versions=versions,
                secrets=secret_map,
            )

        return await self._read(read)


    # == sections outside the versioned schema ==================================================
    # Invocation events, KV data and queues create their tables on first use and run in
    # transactions of their own (writing them never moves the revision); this is how.

    def _ensure_tables(self, conn: sqlite3.Connection, statements: Sequence[str]) -> None:
        ready: dict[int, sqlite3.Connection] = self.__dict__.setdefault("_tables_ready", {})
        if ready.get(id(statements)) is conn:
            return
        for statement in statements:
            conn.execute(statement)
        ready[id(statements)] = conn

    def _in_section(self, statements: Sequence[str], fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                self._ensure_tables(conn, statements)
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    # == invocation events (warren.observability) ===========================================
    # A bounded ring, written by edge nodes and read by the control plane's tails and
    # analytics. It is not configuration: writing it never moves the revision (edge nodes
    # would reload on every request otherwise), so it has transactions of its own. The
    # tables are created on first use, outside the schema version.

    def _events_schema(self, conn: sqlite3.Connection) -> None:
        self._ensure_tables(conn, _EVENT_SCHEMA)

    def _in_events(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        return self._in_section(_EVENT_SCHEMA, fn, write)

    async def publish_events(self, account_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Append invocation events (warren.observability) to the ring, and count them per minute.

        An account's follower sees one call's events grouped by script, in order within each
        script (as in the NATS store)."""
        from warren.observability.analytics import count_events

        received = _now_ms()
        prune = received - getattr(self, "_events_pruned", 0) >= EVENTS_PRUNE_EVERY_MS

        def encoded(chunk: list[dict[str, Any]]) -> list[tuple[str, int]]:
            data = dump_json_text(chunk)  # the whole chunk through json if one event needs it
            if len(data) <= EVENTS_MAX_ROW_CHARS or len(chunk) == 1:
                return [(data, len(chunk))]
            half = len(chunk) // 2
            return encoded(chunk[:half]) + encoded(chunk[half:])

        def write(conn: sqlite3.Connection) -> None:
            # Grouped, counted and encoded here, on the store's thread: on the event loop, a
            # node's JSON per request was a fifth of its supervisor's time under load.
            counts = count_events(events)
            by_script: dict[str, list[dict[str, Any]]] = {}
            for event in events:
                by_script.setdefault(str(event.get("scriptName", "")), []).append(event)
            (count,) = conn.execute(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'event_batches'), 0)"
            ).fetchone()
            rows = []
            for script, items in by_script.items():
                for start in range(0, len(items), EVENTS_PER_ROW):
                    for data, n in encoded(items[start : start + EVENTS_PER_ROW]):
                        count += n
                        rows.append((count, account_id, script, received, n, data))
            conn.executemany(
                "INSERT INTO event_batches (id, account_id, script, received, events, data) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO event_stats (account_id, script, minute, requests, errors, cpu_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, script, minute)"
                " DO UPDATE SET requests = requests + excluded.requests,"
                " errors = errors + excluded.errors, cpu_ms = cpu_ms + excluded.cpu_ms",
                [(account_id, script, minute, int(n), int(e), c) for (script, minute), (n, e, c) in counts.items()],
            )
            if prune:
                conn.execute("DELETE FROM event_batches WHERE received < ?", (received - EVENTS_MAX_AGE_MS,))
                if count > EVENTS_MAX_COUNT:
                    # At most the newest EVENTS_MAX_COUNT events, in whole rows: those numbered up
                    # to ``gone``, and the one row (the next) that may hold ``gone`` and later ones.
                    gone = count - EVENTS_MAX_COUNT
                    conn.execute("DELETE FROM event_batches WHERE id <= ?", (gone,))
                    conn.execute(
                        "DELETE FROM event_batches WHERE id = (SELECT MIN(id) FROM event_batches WHERE id > ?1)"
                        " AND id - events < ?1",
                        (gone,),
                    )
                conn.execute("DELETE FROM event_stats WHERE minute < ?", (received - EVENT_STATS_MAX_AGE_MS,))

        await asyncio.to_thread(self._in_events, write, True)
        if prune:
            self._events_pruned = received

    async def follow_events(
        self, account_id: str, script: str | None = None, since_ms: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The account's events (of one script, or all) received from ``since_ms`` (default: now) on,
        as they arrive; polled every POLL_INTERVAL_S. Ends only when the caller closes it."""
        since = _now_ms() if since_ms is None else since_ms

        def start(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COALESCE((SELECT MIN(id) FROM event_batches WHERE received >= ?) - 1,"
                " (SELECT MAX(id) FROM event_batches), 0)",
                (since,),
            ).fetchone()
            return int(row[0])

        last = await asyncio.to_thread(self._in_events, start, False)
        query = "SELECT id, data FROM event_batches WHERE account_id = ? AND id > ? AND id <= ?"
        if script is not None:
            query += " AND script = ?"
        query += f" ORDER BY id LIMIT {EVENTS_READ_BATCH}"

        def read(after: int, conn: sqlite3.Connection) -> tuple[int, bool, list[dict[str, Any]]]:
            top = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM event_batches").fetchone()[0])
            parameters: tuple[Any, ...] = (account_id, after, top) + ((script,) if script is not None else ())
            rows = conn.execute(query, parameters).fetchall()
            found: list[dict[str, Any]] = []
            for row in rows:
                try:
                    batch = load_json(row[1])
                except ValueError:
                    continue
                if isinstance(batch, list):
                    found.extend(event for event in batch if isinstance(event, dict))
            if len(rows) < EVENTS_READ_BATCH:
                # Rows of other accounts and scripts are skipped by moving past them all at once.
                return max(after, top), False, found
            return int(rows[-1][0]), True, found

        while True:
            last, more, found = await asyncio.to_thread(self._in_events, functools.partial(read, last), False)
            for event in found:
                yield event
            if not more:
                await asyncio.sleep(POLL_INTERVAL_S)

    async def event_stats(self, account_id: str, since_ms: int) -> list[tuple[str, int, int, int, float]]:
        """(script, minute in ms, requests, errors, cpu ms) of the account's minutes from ``since_ms`` on."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, int, int, int, float]]:
            rows = conn.execute(
                "SELECT script, minute, requests, errors, cpu_ms FROM event_stats"
                " WHERE account_id = ? AND minute >= ? ORDER BY script, minute",
                (account_id, since_ms),
            ).fetchall()
            return [(row[0], int(row[1]), int(row[2]), int(row[3]), float(row[4])) for row in rows]

        return await asyncio.to_thread(self._in_events, read, False)

    # == end of invocation events ==============================================================

    # == KV data (warren.bindings.kv) ===========================================================
    # Namespace contents. Not configuration: writing them never moves the revision (edge nodes
    # would reload on every put), so they have transactions of their own, and tables created on
    # first use, outside the schema version. Keys are stored as their UTF-8 bytes (BLOBs compare
    # with memcmp), so ORDER BY key is the UTF-8 byte order Workers lists keys in. A row keeps
    # the stamp and writer of the write that made it (last write wins; a delete leaves a row
    # without a value); each stored write is also appended to kv_changes, which kv_changes()
    # polls: SQLite's change notification for the nodes that share the file.

    def _kv_schema(self, conn: sqlite3.Connection) -> None:
        self._ensure_tables(conn, _KV_SCHEMA)

    def _in_kv(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        return self._in_section(_KV_SCHEMA, fn, write)

    async def _kv(self, fn: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        return await asyncio.to_thread(self._in_kv, fn, write)

    async def kv_get(self, namespace_id: str, key: str) -> KVRecord | None:
        found = await self.kv_get_many(namespace_id, [key])
        return found.get(key)

    async def kv_get_many(self, namespace_id: str, keys: Sequence[str]) -> dict[str, KVRecord]:
        wanted = {key_bytes(key): key for key in keys}
        if not wanted:
            return {}

        def read(conn: sqlite3.Connection) -> dict[str, KVRecord]:
            found: dict[str, KVRecord] = {}
            names = list(wanted)
            for start in range(0, len(names), 500):
                batch = names[start : start + 500]
                rows = conn.execute(
                    "SELECT key, value, metadata, expiration, stamp, writer FROM kv_data"
                    f" WHERE namespace_id = ? AND key IN ({','.join('?' * len(batch))})",
                    (namespace_id, *batch),
                ).fetchall()
                for row in rows:
                    found[wanted[bytes(row[0])]] = _kv_record(row)
            return found

        return await self._kv(read)

    async def kv_put(self, namespace_id: str, key: str, record: KVRecord) -> bool:
        return await self.kv_put_many(namespace_id, [(key, record)]) == 1

    async def kv_put_many(self, namespace_id: str, items: Sequence[tuple[str, KVRecord]]) -> int:
        now_ms = _now_ms()
        prune = now_ms - getattr(self, "_kv_pruned", 0) >= KV_PRUNE_EVERY_MS

        def write(conn: sqlite3.Connection) -> int:
            stored = 0
            for key, record in items:
                name = key_bytes(key)
                row = conn.execute(
                    "SELECT stamp, writer FROM kv_data WHERE namespace_id = ? AND key = ?", (namespace_id, name)
                ).fetchone()
                if row is not None and (int(row[0]), str(row[1])) >= record.order:
                    continue  # a later write is already there: this one lost
                conn.execute(
                    "INSERT INTO kv_data (namespace_id, key, value, metadata, expiration, stamp, writer)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace_id, key) DO UPDATE SET"
                    " value = excluded.value, metadata = excluded.metadata, expiration = excluded.expiration,"
                    " stamp = excluded.stamp, writer = excluded.writer",
                    (namespace_id, name, record.value, record.metadata, record.expiration, record.stamp, record.writer),
                )
                conn.execute(
                    "INSERT INTO kv_changes (namespace_id, key, stamp, writer, at) VALUES (?, ?, ?, ?, ?)",
                    (namespace_id, name, record.stamp, record.writer, now_ms),
                )
                stored += 1
            if prune:
                # Notifications are only for the nodes polling now; tombstones only have to outlive
                # any write still on its way; expired values are gone for every reader.
                conn.execute("DELETE FROM kv_changes WHERE at < ?", (now_ms - KV_CHANGES_KEPT_MS,))
                conn.execute(
                    "DELETE FROM kv_data WHERE (value IS NULL AND stamp < ?) OR expiration <= ?",
                    ((now_ms - KV_TOMBSTONES_KEPT_MS) * 1000, now_ms // 1000),
                )
            return stored

        stored = await self._kv(write, write=True)
        if prune:
            self._kv_pruned = now_ms
        return stored

    async def kv_list(
        self, namespace_id: str, prefix: str, after: bytes | None, limit: int, now: float
    ) -> tuple[list[KVKeyInfo], bool]:
        low = key_bytes(prefix)
        high = prefix_end(low)
        query = (
            "SELECT key, metadata, expiration FROM kv_data WHERE namespace_id = ? AND key >= ?"
            " AND value IS NOT NULL AND (expiration IS NULL OR expiration > ?)"
        )
        parameters: list[Any] = [namespace_id, low, now]
        if high is not None:
            query += " AND key < ?"
            parameters.append(high)
        if after is not None:
            query += " AND key > ?"
            parameters.append(after)
        query += " ORDER BY key LIMIT ?"
        parameters.append(limit + 1)

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(query, parameters).fetchall()

        rows = await self._kv(read)
        keys = [
            KVKeyInfo(bytes(row[0]).decode("utf-8"), row[2], row[1])
            for row in rows[:limit]
        ]
        return keys, len(rows) > limit

    async def kv_purge(self, namespace_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM kv_data WHERE namespace_id = ?", (namespace_id,))
            # An empty key stands for the whole namespace (a real key is never empty).
            conn.execute(
                "INSERT INTO kv_changes (namespace_id, key, stamp, writer, at) VALUES (?, ?, 0, '', ?)",
                (namespace_id, b"", _now_ms()),
            )

        await self._kv(write, write=True)

    async def kv_changes(self) -> AsyncGenerator[KVChange, None]:
        """Polls kv_changes every KV_POLL_INTERVAL_S; notifications pruned before this reader saw
        them (it fell behind by KV_CHANGES_KEPT_MS) are reported as a change of anything."""

        def start(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM kv_changes").fetchone()[0])

        def read(after: int, conn: sqlite3.Connection) -> tuple[int, list[sqlite3.Row]]:
            first = int(conn.execute("SELECT COALESCE(MIN(seq), 0) FROM kv_changes").fetchone()[0])
            rows = conn.execute(
                "SELECT seq, namespace_id, key, stamp, writer FROM kv_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, KV_CHANGES_BATCH),
            ).fetchall()
            return first, rows

        last = await self._kv(start)
        while True:
            first, rows = await self._kv(functools.partial(read, last))
            if rows and first > last + 1:
                yield KVChange(None, None)
            for row in rows:
                last = int(row[0])
                name = bytes(row[2])
                yield KVChange(str(row[1]), name.decode("utf-8") if name else None, int(row[3]), str(row[4]))
            if len(rows) < KV_CHANGES_BATCH:
                await asyncio.sleep(KV_POLL_INTERVAL_S)

    # == end of KV data ============================================================================

    # == queues, cron schedules and cron claims (issue #10) =======================================
    # Queue records and schedules are configuration: written through _write, they move the
    # revision so edge nodes pick them up at once. Messages and cron claims are data: they have
    # transactions of their own that never move it. Tables are created on first use, outside
    # the schema version. A message is delivered to one node at a time: receiving it sets a
    # lease (a random token) and hides it until the lease runs out; only the holder of the
    # lease acks, retries or dead-letters it.

    def _queues_schema(self, conn: sqlite3.Connection) -> None:
        self._ensure_tables(conn, _QUEUE_SCHEMA)

    def _in_queues(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        return self._in_section(_QUEUE_SCHEMA, fn, write)

    async def _queue_data(self, fn: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        return await asyncio.to_thread(self._in_queues, fn, write)

    async def _queue_config(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def wrapped(conn: sqlite3.Connection) -> T:
            self._queues_schema(conn)
            return fn(conn)

        return await self._write(wrapped)

    async def create_queue(self, account_id: str, name: str) -> Queue:
        name = validation.queue_name(name)
        created = now()
        queue = Queue(id=uuid.uuid4().hex, account_id=account_id, name=name, created_on=created, modified_on=created)

        def write(conn: sqlite3.Connection) -> Queue:
            _require_account(conn, account_id)
            if conn.execute("SELECT 1 FROM queues WHERE account_id = ? AND name = ?", (account_id, name)).fetchone():
                raise Conflict(f"a queue named {name!r} already exists")
            conn.execute(
                "INSERT INTO queues (id, account_id, name, created_on, modified_on, consumers)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (queue.id, account_id, name, created, created, "[]"),
            )
            return queue

        return await self._queue_config(write)

    async def list_queues(self, account_id: str) -> list[Queue]:
        def read(conn: sqlite3.Connection) -> list[Queue]:
            rows = conn.execute("SELECT * FROM queues WHERE account_id = ? ORDER BY name", (account_id,)).fetchall()
            return [_row_queue(row) for row in rows]

        return await self._queue_data(read, write=False)

    async def get_queue(self, account_id: str, queue: str) -> Queue | None:
        """A queue by id or by name."""

        def read(conn: sqlite3.Connection) -> Queue | None:
            row = conn.execute(
                "SELECT * FROM queues WHERE account_id = ? AND (id = ? OR name = ?)", (account_id, queue, queue)
            ).fetchone()
            return _row_queue(row) if row else None

        return await self._queue_data(read, write=False)

    async def delete_queue(self, account_id: str, queue_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute("DELETE FROM queues WHERE account_id = ? AND id = ?", (account_id, queue_id))
            if deleted.rowcount:
                conn.execute("DELETE FROM queue_messages WHERE queue_id = ?", (queue_id,))
            return deleted.rowcount > 0

        return await self._queue_config(write)

    async def put_queue_consumer(self, account_id: str, queue_id: str, consumer: QueueConsumer) -> Queue:
        """Set the queue's consumer (one per queue: another script's is a Conflict; the same script's is updated)."""
        script = validation.script_name(consumer.script)
        settings = validation.consumer_settings(
            {key: getattr(consumer, key) for key in validation.CONSUMER_LIMITS}
        )
        dead_letter = validation.queue_name(consumer.dead_letter_queue) if consumer.dead_letter_queue else ""

        def write(conn: sqlite3.Connection) -> Queue:
            row = _queue_row(conn, account_id, queue_id)
            if row is None:
                raise NotFound(f"queue {queue_id!r} does not exist")
            queue = _row_queue(row)
            if dead_letter == queue.name:
                raise InvalidInput("a queue cannot be its own dead letter queue")
            others = [existing for existing in queue.consumers if existing.script != script]
            if others:
                raise Conflict(f"queue {queue.name!r} already has a consumer: {others[0].script}")
            previous = queue.consumers[0].created_on if queue.consumers else now()
            stored = QueueConsumer(script=script, dead_letter_queue=dead_letter, created_on=previous, **settings)
            modified = now()
            conn.execute(
                "UPDATE queues SET consumers = ?, modified_on = ? WHERE id = ?",
                (json.dumps([_consumer_json(stored)]), modified, queue_id),
            )
            return Queue(queue.id, account_id, queue.name, queue.created_on, modified, (stored,))

        return await self._queue_config(write)

    async def delete_queue_consumer(self, account_id: str, queue_id: str, script: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            row = _queue_row(conn, account_id, queue_id)
            if row is None:
                return False
            queue = _row_queue(row)
            kept = [consumer for consumer in queue.consumers if consumer.script != script]
            if len(kept) == len(queue.consumers):
                return False
            conn.execute(
                "UPDATE queues SET consumers = ?, modified_on = ? WHERE id = ?",
                (json.dumps([_consumer_json(consumer) for consumer in kept]), now(), queue_id),
            )
            return True

        return await self._queue_config(write)

    async def queue_consumers(self) -> list[tuple[Queue, QueueConsumer]]:
        """Every queue with a consumer, of every account: what edge nodes run."""

        def read(conn: sqlite3.Connection) -> list[tuple[Queue, QueueConsumer]]:
            rows = conn.execute("SELECT * FROM queues WHERE consumers != '[]' ORDER BY account_id, name").fetchall()
            return [(queue, consumer) for queue in map(_row_queue, rows) for consumer in queue.consumers]

        return await self._queue_data(read, write=False)

    async def queue_send(self, account_id: str, queue_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Append messages (all or none); their ids. NotFound if the queue is gone."""
        sent = _now_ms()
        rows = [
            (uuid.uuid4().hex, queue_id, message.body, message.content_type, sent, sent + message.delay_s * 1000)
            for message in messages
        ]

        def write(conn: sqlite3.Connection) -> list[str]:
            if _queue_row(conn, account_id, queue_id) is None:
                raise NotFound(f"queue {queue_id!r} does not exist")
            conn.executemany(
                "INSERT INTO queue_messages (id, queue_id, body, content_type, timestamp_ms, visible_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            return [row[0] for row in rows]

        return await self._queue_data(write)

    async def queue_receive(self, account_id: str, queue_id: str, limit: int, lease_s: float) -> list[QueueMessage]:
        """Up to ``limit`` visible messages, oldest first, leased to the caller for ``lease_s`` seconds."""
        lease = uuid.uuid4().hex

        def any_visible(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "SELECT 1 FROM queue_messages WHERE queue_id = ? AND visible_at <= ? LIMIT 1", (queue_id, _now_ms())
            ).fetchone() is not None

        # Consumers poll: an empty queue is answered by a read, without the file's write lock.
        if limit <= 0 or not await self._queue_data(any_visible, write=False):
            return []

        def write(conn: sqlite3.Connection) -> list[QueueMessage]:
            moment = _now_ms()
            rows = conn.execute(
                "SELECT id, body, content_type, timestamp_ms, attempts FROM queue_messages"
                " WHERE queue_id = ? AND visible_at <= ? ORDER BY seq LIMIT ?",
                (queue_id, moment, max(0, int(limit))),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE queue_messages SET attempts = attempts + 1, visible_at = ?, lease = ? WHERE id = ?",
                    [(moment + int(lease_s * 1000), lease, row["id"]) for row in rows],
                )
            return [
                QueueMessage(
                    row["id"], bytes(row["body"]), row["content_type"], row["timestamp_ms"], row["attempts"] + 1, lease
                )
                for row in rows
            ]

        return await self._queue_data(write)

    async def queue_extend(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], lease_s: float
    ) -> None:
        """Keep holding these messages for ``lease_s`` more seconds (a long batch)."""
        until = _now_ms() + int(lease_s * 1000)
        await self._queue_data(
            lambda conn: conn.executemany(
                "UPDATE queue_messages SET visible_at = ? WHERE id = ? AND lease = ?",
                [(until, message.id, message.lease) for message in messages],
            )
        )

    async def queue_ack(self, account_id: str, queue_id: str, messages: Sequence[QueueMessage]) -> None:
        await self._queue_data(
            lambda conn: conn.executemany(
                "DELETE FROM queue_messages WHERE id = ? AND lease = ?",
                [(message.id, message.lease) for message in messages],
            )
        )

    async def queue_retry(
        self, account_id: str, queue_id: str, retries: Sequence[tuple[QueueMessage, int]]
    ) -> None:
        """Give messages back, each visible again after its delay (seconds)."""
        moment = _now_ms()
        await self._queue_data(
            lambda conn: conn.executemany(
                "UPDATE queue_messages SET visible_at = ?, lease = NULL WHERE id = ? AND lease = ?",
                [(moment + delay * 1000, message.id, message.lease) for message, delay in retries],
            )
        )

    async def queue_dead_letter(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], dead_letter_queue_id: str
    ) -> None:
        """Move messages to another queue (its first delivery next), in one transaction."""
        moment = _now_ms()

        def write(conn: sqlite3.Connection) -> None:
            if not conn.execute(
                "SELECT 1 FROM queues WHERE account_id = ? AND id = ?", (account_id, dead_letter_queue_id)
            ).fetchone():
                raise NotFound(f"queue {dead_letter_queue_id!r} does not exist")
            conn.executemany(
                "UPDATE queue_messages SET queue_id = ?, attempts = 0, visible_at = ?, lease = NULL"
                " WHERE id = ? AND lease = ?",
                [(dead_letter_queue_id, moment, message.id, message.lease) for message in messages],
            )

        await self._queue_data(write)

    async def queue_backlog(self, account_id: str, queue_id: str) -> int:
        """Messages in the queue (delayed and leased ones included)."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COUNT(*) FROM queue_messages WHERE queue_id = ?", (queue_id,)).fetchone()
            return int(row[0])

        return await self._queue_data(read, write=False)

    async def put_schedules(self, account_id: str, script: str, crons: Sequence[str]) -> list[str]:
        """Replace a script's cron triggers (an empty list removes them)."""
        script = validation.script_name(script)
        checked = validation.crons(list(crons))

        def write(conn: sqlite3.Connection) -> list[str]:
            _require_account(conn, account_id)
            existing = conn.execute(
                "SELECT crons FROM schedules WHERE account_id = ? AND script = ?", (account_id, script)
            ).fetchone()
            if existing is not None and json.loads(existing["crons"]) == list(checked):
                return list(checked)  # unchanged: not a write, edge nodes need not reload
            if not checked:
                conn.execute("DELETE FROM schedules WHERE account_id = ? AND script = ?", (account_id, script))
            else:
                conn.execute(
                    "INSERT INTO schedules (account_id, script, crons, modified_on) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (account_id, script) DO UPDATE SET crons = excluded.crons,"
                    " modified_on = excluded.modified_on",
                    (account_id, script, json.dumps(list(checked)), now()),
                )
            return list(checked)

        return await self._queue_config(write)

    async def get_schedules(self, account_id: str, script: str) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute(
                "SELECT crons FROM schedules WHERE account_id = ? AND script = ?", (account_id, script)
            ).fetchone()
            return list(json.loads(row["crons"])) if row else []

        return await self._queue_data(read, write=False)

    async def all_schedules(self) -> list[tuple[str, str, list[str]]]:
        """(account id, script, crons) of every script with cron triggers."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str, list[str]]]:
            rows = conn.execute("SELECT * FROM schedules ORDER BY account_id, script").fetchall()
            return [(row["account_id"], row["script"], list(json.loads(row["crons"]))) for row in rows]

        return await self._queue_data(read, write=False)

    async def claim_cron(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> bool:
        """True for exactly one caller per (script, cron, scheduled time), across every node sharing the file."""

        def write(conn: sqlite3.Connection) -> bool:
            moment = _now_ms()
            claimed = conn.execute(
                "INSERT OR IGNORE INTO cron_claims (account_id, script, cron, scheduled_ms, claimed_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, script, cron, int(scheduled_ms), moment),
            ).rowcount
            if claimed and moment - getattr(self, "_claims_pruned", 0) > CRON_CLAIMS_PRUNE_EVERY_MS:
                conn.execute("DELETE FROM cron_claims WHERE claimed_ms < ?", (moment - CRON_CLAIMS_MAX_AGE_MS,))
                self._claims_pruned = moment
            return claimed > 0

        return await self._queue_data(write)

    # == end of queues, cron schedules and cron claims ============================================

# -- row helpers (called with the store's lock held, inside a transaction) --------------------


def _revision(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])


def _row_account(row: sqlite3.Row) -> Account:
    return Account(id=row["id"], name=row["name"], created_on=row["created_on"])


def _account(conn: sqlite3.Connection, account_id: str) -> Account | None:
    row = conn.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return _row_account(row) if row else None


def _require_account(conn: sqlite3.Connection, account_id: str) -> None:
    if _account(conn, account_id) is None:
        raise NotFound(f"account {account_id!r} does not exist")


def _require_script(conn: sqlite3.Connection, account_id: str, script: str) -> None:
    if not conn.execute("SELECT 1 FROM scripts WHERE account_id = ? AND name = ?", (account_id, script)).fetchone():
        raise NotFound(f"script {script!r} does not exist")


def _touch(conn: sqlite3.Connection, account_id: str, script: str, modified_on: str) -> None:
    conn.execute(
        "UPDATE scripts SET modified_on = ? WHERE account_id = ? AND name = ?", (modified_on, account_id, script)
    )


def _row_version(row: sqlite3.Row) -> Version:
    return Version(
        id=row["id"],
        account_id=row["account_id"],
        script=row["script"],
        number=row["number"],
        main_module=row["main_module"],
        modules=tuple(
            ModuleRef(name=name, content_type=media, sha256=sha, size=size)
            for name, media, sha, size in json.loads(row["modules"])
        ),
        compatibility_date=row["compatibility_date"],
        bindings=tuple(json.loads(row["bindings"])),
        limits=json.loads(row["limits"]),
        content_hash=row["content_hash"],
        created_on=row["created_on"],
        author_token_id=row["author_token_id"],
        message=row["message"],
    )


def _find_version(conn: sqlite3.Connection, account_id: str, script: str, version_id: str) -> Version | None:
    """By id, or by number when ``version_id`` is a positive decimal integer."""
    if _NUMBER.fullmatch(version_id):
        row = conn.execute(
            "SELECT * FROM versions WHERE account_id = ? AND script = ? AND number = ?",
            (account_id, script, int(version_id)),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT * FROM versions WHERE account_id = ? AND script = ? AND id = ?", (account_id, script, version_id)
        ).fetchone()
    return _row_version(row) if row else None


def _row_deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        id=row["id"],
        account_id=row["account_id"],
        script=row["script"],
        versions=tuple((str(version_id), int(share)) for version_id, share in json.loads(row["versions"])),
        created_on=row["created_on"],
        author_token_id=row["author_token_id"],
        message=row["message"],
    )


def _insert_deployment(
    conn: sqlite3.Connection,
    account_id: str,
    script: str,
    versions: tuple[tuple[str, int], ...],
    author_token_id: str,
    message: str,
    created_on: str,
) -> Deployment:
    deployment = Deployment(
        id=str(uuid.uuid4()),
        account_id=account_id,
        script=script,
        versions=versions,
        created_on=created_on,
        author_token_id=author_token_id,
        message=message,
    )
    conn.execute(
        "INSERT INTO deployments (id, account_id, script, versions, created_on, author_token_id, message)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (deployment.id, account_id, script, json.dumps(versions), created_on, author_token_id, message),
    )
    _touch(conn, account_id, script, created_on)
    return deployment


def _current_deployment(conn: sqlite3.Connection, account_id: str, script: str) -> Deployment | None:
    row = conn.execute(
        "SELECT * FROM deployments WHERE account_id = ? AND script = ? ORDER BY seq DESC LIMIT 1", (account_id, script)
    ).fetchone()
    return _row_deployment(row) if row else None


def _script_info(conn: sqlite3.Connection, row: sqlite3.Row) -> ScriptInfo:
    deployment = _current_deployment(conn, row["account_id"], row["name"])
    etag = None
    if deployment is not None:
        found = conn.execute("SELECT content_hash FROM versions WHERE id = ?", (deployment.main_version_id,)).fetchone()
        etag = found["content_hash"] if found else None
    return ScriptInfo(
        account_id=row["account_id"],
        name=row["name"],
        created_on=row["created_on"],
        modified_on=row["modified_on"],
        etag=etag,
    )


def _row_route(row: sqlite3.Row) -> Route:
    return Route(id=row["id"], account_id=row["account_id"], pattern=row["pattern"], script=row["script"])


def _kv_record(row: sqlite3.Row) -> KVRecord:
    value = row[1]
    return KVRecord(
        value=bytes(value) if value is not None else None,
        metadata=row[2],
        expiration=row[3],
        stamp=int(row[4]),
        writer=str(row[5]),
    )


# -- queues (issue #10) ---------------------------------------------------------------------------

CRON_CLAIMS_MAX_AGE_MS = 2 * 24 * 3600 * 1000
CRON_CLAIMS_PRUNE_EVERY_MS = 3600 * 1000
_QUEUE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queues (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT NOT NULL, created_on TEXT NOT NULL,
        modified_on TEXT NOT NULL, consumers TEXT NOT NULL, UNIQUE (account_id, name))""",
    """CREATE TABLE IF NOT EXISTS queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, queue_id TEXT NOT NULL,
        body BLOB NOT NULL, content_type TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, visible_at INTEGER NOT NULL, lease TEXT)""",
    "CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages (queue_id, visible_at, seq)",
    """CREATE TABLE IF NOT EXISTS schedules (
        account_id TEXT NOT NULL, script TEXT NOT NULL, crons TEXT NOT NULL, modified_on TEXT NOT NULL,
        PRIMARY KEY (account_id, script))""",
    """CREATE TABLE IF NOT EXISTS cron_claims (
        account_id TEXT NOT NULL, script TEXT NOT NULL, cron TEXT NOT NULL, scheduled_ms INTEGER NOT NULL,
        claimed_ms INTEGER NOT NULL, PRIMARY KEY (account_id, script, cron, scheduled_ms))""",
)


def _consumer_json(consumer: QueueConsumer) -> dict[str, Any]:
    return {
        "script": consumer.script,
        "batch_size": consumer.batch_size,
        "max_wait_ms": consumer.max_wait_ms,
        "max_retries": consumer.max_retries,
        "retry_delay": consumer.retry_delay,
        "dead_letter_queue": consumer.dead_letter_queue,
        "created_on": consumer.created_on,
    }


def _consumer(data: dict[str, Any]) -> QueueConsumer:
    return QueueConsumer(
        script=str(data["script"]),
        batch_size=int(data["batch_size"]),
        max_wait_ms=int(data["max_wait_ms"]),
        max_retries=int(data["max_retries"]),
        retry_delay=int(data["retry_delay"]),
        dead_letter_queue=str(data.get("dead_letter_queue", "")),
        created_on=str(data.get("created_on", "")),
    )


def _queue_row(conn: sqlite3.Connection, account_id: str, queue_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM queues WHERE account_id = ? AND id = ?", (account_id, queue_id)
    ).fetchone()
    return row


def _row_queue(row: sqlite3.Row) -> Queue:
    return Queue(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        created_on=row["created_on"],
        modified_on=row["modified_on"],
        consumers=tuple(_consumer(item) for item in json.loads(row["consumers"])),
    )
