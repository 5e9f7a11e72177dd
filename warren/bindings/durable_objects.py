"""Durable Objects: placement of their events, their storage, their alarms (on one node, or across nodes).

A worker exports a class; a ``durable_object_namespace`` binding
(``{"type", "name", "class_name", "script_name"}``) names it. Ids are computed
in the caller's isolate (``durable_objects.js``): 32 bytes, the second half an
HMAC of the first keyed by the namespace, so ``object_id_valid`` can refuse an
id that is not the namespace's. A stub's ``fetch()`` or RPC call arrives here
as a binding call; the object's events (fetch, rpc, alarm) then go, as
"object" invocations, to the version of the class's script that the node
serves (``Resolver``), so they run in that worker's isolate, where
``durable_objects.js`` keeps one instance per id and its input and output
gates. A version's events always reach the same runtime process (the
supervisor's rendezvous hashing), so there is one live instance per id on the
node; an object whose script is redeployed gets a new *generation*, and
storage calls of an older generation are refused (fencing).

Storage: one SQLite file per object under ``<state dir>/durable_objects/``
(the KV API in the reserved table ``_cf_KV``, the SQL API in the rest of the
file), reached only from here: every ``ctx.storage`` operation is a call of the
runtime facility ``__objects`` (``ctx.storage.sql.exec()`` a synchronous one).
Each write is committed (``synchronous=FULL``) before its call returns, and
the isolate holds an object's answer until its writes have returned, so a
response never gets ahead of the writes before it. Alarms are kept in the
object's file and in a node-wide index, re-armed when the node starts;
delivery is at least once, retried with exponential backoff.

Across nodes (a NATS store; ``placement`` set, see ``warren.bindings.object_placement``):
an object lives on the node holding its lease. A stub call goes through
``_route``: delivered here if this node holds the lease (or takes it, the
lease being free or expired: the file is then brought up to date from the
object's log and a takeover marker appended), else forwarded to the holder's
internal endpoint. Each write call is appended to the object's log with a
sequence check before it is kept in the file and before the call returns, so
a former owner's write fails (the call errors, the file is rolled back); a
storage call first makes sure the lease is still this node's (renewing it if
its time is up, as after a pause). SQL writes are logged as the tenant's
statements and bindings, so a write that would not replay alike (random(),
the time now, changes()) is refused; temporary tables are refused too.
transactionSync() is logged at its outermost commit. Alarms: the owner arms
them from the object's state; a shared index lets another node fire those of
an owner that is gone. SQLite stores (``warren dev``, a single ``warren
serve``) keep the one-node behaviour above, unchanged.

Owns: object ids, the object registry, per-object SQLite files, the alarm
index and scheduler, and (across nodes) when an object is taken, logged,
forwarded or let go. Must not touch: isolates (they live in runtime
processes), the HTTP front, the control-plane store's records (placement has
buckets of its own, reached through ``object_placement``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from warren.bindings import BindingCall, BindingError, BindingHost, BindingResult
from warren.bindings.object_placement import MAX_HOPS, LogGap, Placement, Unreachable
from warren.bindings.service import collect, is_upgrade

if TYPE_CHECKING:
    from warren.server.supervisor import Exchange, Supervisor

STORAGE_BINDING = "__objects"  # the runtime facility every worker has (warren.runtime.script.RUNTIME_BINDINGS)
ERROR_STATUS = 999  # an object's answer that is an exception (durable_objects.js)
MAX_KEYS = 128
MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024
MAX_RESULT_BYTES = 32 * 1024 * 1024  # one call's answer must fit a frame
MAX_METHOD_NAME = 256
DEFAULT_IDLE_TIMEOUT_S = 70.0  # an object without events this long is evicted (Workers: 70-140 s)
DEFAULT_ALARM_RETRY_BASE_S = 2.0
DEFAULT_ALARM_RETRIES = 6
DEFAULT_MAX_OBJECT_BYTES = 1024 * 1024 * 1024
DEFAULT_STATEMENT_TIMEOUT_S = 5.0
MAX_OPEN_FILES = 256  # object files kept open; idle ones beyond are closed (and reopened on demand)
MAX_PENDING_EVICTIONS = 10_000
WAIT_FOR_WORKER_S = 1.0  # a due alarm whose worker is not deployed here looks again this often
# deleteAll() deletes the alarm too from this compatibility date on, as on Workers.
DELETE_ALL_DELETES_ALARM = "2026-02-24"
RESET = (
    "This Durable Object was reset (its script was redeployed, or it was evicted): "
    "the storage operation was not applied."
)
MOVED = "This Durable Object moved to another node: the storage operation was not applied."
NO_STORE = "The Durable Object's placement store (NATS) did not answer; please retry."
ROUTE_GRACE_S = 5.0  # a call waits this long past a lease's TTL for its owner to answer or the lease to free
RENEW_BATCH = 64  # leases renewed at once
_ID = re.compile(r"[0-9a-f]{64}")
_HEADER_TEXT = re.compile(r"[^\r\n\0]*")
_RESERVED_TABLE = "_cf_"
# PRAGMAs the SQL API may run (read-only ones, and the few Workers allows).
_PRAGMAS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
        "foreign_key_list", "foreign_key_check", "foreign_keys", "defer_foreign_keys",
        "quick_check", "integrity_check", "optimize", "case_sensitive_like", "legacy_alter_table",
    }
)
_DENIED_ACTIONS = frozenset({sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_TRANSACTION})
# Actions that change the file: a statement doing any of them is logged (objects placed across nodes).
_WRITE_ACTIONS = frozenset(
    getattr(sqlite3, name)
    for name in (
        "SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_CREATE_INDEX", "SQLITE_CREATE_TABLE",
        "SQLITE_CREATE_TRIGGER", "SQLITE_CREATE_VIEW", "SQLITE_DROP_INDEX", "SQLITE_DROP_TABLE",
        "SQLITE_DROP_TRIGGER", "SQLITE_DROP_VIEW", "SQLITE_ALTER_TABLE", "SQLITE_REINDEX", "SQLITE_ANALYZE",
        "SQLITE_CREATE_VTABLE", "SQLITE_DROP_VTABLE",
    )
)
# Temporary objects live in one connection, not in the file: a new owner replaying the log has none.
_TEMP_ACTIONS = frozenset(
    getattr(sqlite3, name)
    for name in (
        "SQLITE_CREATE_TEMP_INDEX", "SQLITE_CREATE_TEMP_TABLE", "SQLITE_CREATE_TEMP_TRIGGER",
        "SQLITE_CREATE_TEMP_VIEW", "SQLITE_DROP_TEMP_INDEX", "SQLITE_DROP_TEMP_TABLE",
        "SQLITE_DROP_TEMP_TRIGGER", "SQLITE_DROP_TEMP_VIEW",
    )
)
# Functions whose result a replay of the statement on another node would not reproduce.
_NONDETERMINISTIC = frozenset({"random", "randomblob", "changes", "total_changes", "last_insert_rowid"})
# The time now: 'now', CURRENT_TIMESTAMP and friends, and the date functions called with no argument.
_NOW = re.compile(
    r"'\s*now\s*'|\bcurrent_(?:date|time|timestamp)\b|\b(?:date|time|datetime|julianday|unixepoch)\s*\(\s*\)", re.I
)
_NON_TABLE_ACTIONS = frozenset({sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_SAVEPOINT})

class _Transient(BindingError):
    """Placed across nodes: NATS did not answer in time (a cluster electing a leader, a blip); the
    call waits and tries again while its time allows."""


# (account id, script name) -> the version key serving that script on this node, or None
Resolver = Callable[[str, str], str | None]
LogHandler = Callable[[str, str, str], None]


# --- ids ------------------------------------------------------------------------------------


def namespace_key(script: str, class_name: str) -> bytes:
    return hashlib.sha256(f"warren durable objects\0{script}\0{class_name}".encode()).digest()


def object_id_valid(script: str, class_name: str, object_id: str) -> bool:
    """Whether ``object_id`` is an id the namespace's ``idFromName``/``newUniqueId`` could have made."""
    if not isinstance(object_id, str) or not _ID.fullmatch(object_id):
        return False
    body = bytes.fromhex(object_id[:32])
    check = hmac.new(namespace_key(script, class_name), body, hashlib.sha256).digest()[:16]
    return hmac.compare_digest(check.hex(), object_id[32:])


def id_from_name(script: str, class_name: str, name: str) -> str:
    """What ``idFromName(name)`` gives in the isolate (for tools and tests)."""
    key = namespace_key(script, class_name)
    body = bytearray(hmac.new(key, b"name\0" + name.encode(), hashlib.sha256).digest()[:16])
    body[0] &= 0x7F
    return bytes(body).hex() + hmac.new(key, bytes(body), hashlib.sha256).digest()[:16].hex()


def rekeyed_id(script: str, class_name: str, object_id: str, name: str | None) -> str | None:
    """The id that the object ``object_id`` of another class of ``script`` has in ``class_name``'s namespace
    (ids are keyed by the class's name: a renamed class gives its objects new ids). A named object is
    found by its name; a unique one keeps its body; None for a named id whose name is not known."""
    if name is not None:
        return id_from_name(script, class_name, name)
    if not _ID.fullmatch(object_id):
        return None
    body = bytes.fromhex(object_id[:32])
    if not body[0] & 0x80:
        return None
    return body.hex() + hmac.new(namespace_key(script, class_name), body, hashlib.sha256).digest()[:16].hex()


@dataclass(frozen=True)
class Namespace:
    """A Durable Object class of one script of one account."""

    account_id: str
    script: str
    class_name: str

    @property
    def directory(self) -> str:
        identity = json.dumps([self.account_id, self.script, self.class_name])
        return hashlib.sha256(identity.encode()).hexdigest()[:32]


# --- one object's SQLite file (used from a worker thread, one call at a time) ------------------


class _Unchanged:
    pass


UNCHANGED = _Unchanged()  # an operation that left the alarm as it was


def _prefix_end(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (code point order)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _split_statements(query: str) -> list[str]:
    statements = []
    start = 0
    for index, char in enumerate(query):
        if char == ";" and sqlite3.complete_statement(query[start : index + 1]):
            statements.append(query[start : index + 1])
            start = index + 1
    if query[start:].strip():
        statements.append(query[start:])
    # A piece with nothing but comments or semicolons is not a statement.
    return [s for s in statements if sqlite3.complete_statement(s.strip() + ";") and _has_code(s)]


def _has_code(statement: str) -> bool:
    text = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)
    return bool(text.strip().strip(";").strip())


def _sql_in(value: Any) -> Any:
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("$b"), str):
            return value["$b"].encode("latin-1")
        if isinstance(value.get("$f"), str):
            return float(value["$f"])
    raise BindingError("SQL bindings must be strings, numbers, null or ArrayBuffers.", "TypeError")


def _sql_out(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": value.decode("latin-1")}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None if value != value else {"$f": "Infinity" if value > 0 else "-Infinity"}
    return value


class ObjectStore:
    """One object's SQLite file: the KV API's table, the alarm, and the tenant's own SQL."""

    def __init__(
        self, path: Path, max_bytes: int, statement_timeout: float, durable: bool = True, replicated: bool = False
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # No statement cache: the authorizer runs when a statement is prepared, so a
        # tenant's query must never reuse a statement prepared for the runtime.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._db.execute(f"PRAGMA max_page_count={max(16, max_bytes // page_size)}")
        self._db.execute("CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        self._db.execute("CREATE TABLE IF NOT EXISTS _cf_METADATA (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        self._tenant = False  # the statement being prepared is the tenant's (the authorizer applies)
        self._deadline: float | None = None
        self._timeout = statement_timeout
        self.sync_depth = 0  # transactionSync() savepoints open
        # Placed across nodes, every write is logged and replayed elsewhere: SQL must be deterministic.
        self.replicated = replicated
        self._wrote = False  # the tenant's statements prepared since the flag was cleared change the file
        self._functions: set[str] = set()  # functions they call
        self.last_wrote = False  # the last sql_exec() changed the file
        self._db.set_authorizer(self._authorize)
        self._db.set_progress_handler(self._progress, 10_000)

    def close(self) -> None:
        self.rollback_all()
        self._db.close()

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        if not self._tenant:
            return sqlite3.SQLITE_OK
        if action in _DENIED_ACTIONS or action == sqlite3.SQLITE_SAVEPOINT:
            return sqlite3.SQLITE_DENY
        if action in _WRITE_ACTIONS:
            self._wrote = True
        elif action == sqlite3.SQLITE_FUNCTION:
            self._functions.add((arg2 or "").lower())
        elif action in _TEMP_ACTIONS and self.replicated:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA:
            if (arg1 or "").lower() not in _PRAGMAS:
                return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if (arg2 or "").lower() == "load_extension" else sqlite3.SQLITE_OK
        for name in (arg1, arg2) if action not in _NON_TABLE_ACTIONS or action == sqlite3.SQLITE_PRAGMA else ():
            if name and name.lower().startswith(_RESERVED_TABLE):
                return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _progress(self) -> int:
        return 1 if self._deadline is not None and time.monotonic() > self._deadline else 0

    def _atomic(self, work: Callable[[], Any]) -> Any:
        self._db.execute("SAVEPOINT warren_write")
        try:
            result = work()
        except BaseException:
            self._db.execute("ROLLBACK TO warren_write")
            self._db.execute("RELEASE warren_write")
            raise
        self._db.execute("RELEASE warren_write")
        return result

    # -- the KV API --

    def get(self, keys: list[str]) -> list[list[str]]:
        found = []
        for key in sorted(set(keys), key=lambda k: k.encode("utf-8", "surrogatepass")):
            row = self._db.execute("SELECT value FROM _cf_KV WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found.append([key, row[0]])
        return found

    def put(self, entries: list[tuple[str, str]]) -> None:
        self._atomic(lambda: self._db.executemany("INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)", entries))

    def delete(self, keys: list[str]) -> int:
        def work() -> int:
            return sum(self._db.execute("DELETE FROM _cf_KV WHERE key = ?", (key,)).rowcount for key in set(keys))

        return int(self._atomic(work))

    def list_range(self, start: str | None, start_after: str | None, end: str | None, prefix: str | None,
             reverse: bool, limit: int | None) -> list[list[str]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("key >= ?", start), ("key > ?", start_after), ("key < ?", end), ("key >= ?", prefix)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if prefix is not None and (upper := _prefix_end(prefix)) is not None:
            clauses.append("key < ?")
            params.append(upper)
        sql = "SELECT key, value FROM _cf_KV"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY key" + (" DESC" if reverse else "")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows, size = [], 0
        for key, value in self._db.execute(sql, params):
            size += len(key) + len(value)
            if size > MAX_RESULT_BYTES:
                raise BindingError(
                    f"list() would return more than {MAX_RESULT_BYTES} bytes; use its limit option.", "RangeError"
                )
            rows.append([key, value])
        return rows

    def delete_all(self, alarm: bool) -> None:
        def work() -> None:
            self._db.execute("DELETE FROM _cf_KV")
            if alarm:
                self._db.execute("DELETE FROM _cf_METADATA WHERE key = 'alarm'")
            schema = self._db.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\'"
            ).fetchall()
            for kind, name in sorted(schema, key=lambda row: row[0] != "view"):  # views first
                quoted = '"' + name.replace('"', '""') + '"'
                self._db.execute(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {quoted}")

        self._atomic(work)

    def batch(self, ops: list[list[Any]]) -> Any:
        """A transaction()'s writes, all or none; returns the alarm it sets (or UNCHANGED)."""
        alarm: Any = UNCHANGED

        def work() -> None:
            nonlocal alarm
            for op in ops:
                if op[0] == "put":
                    self._db.execute("INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)", (op[1], op[2]))
                elif op[0] == "delete":
                    self._db.execute("DELETE FROM _cf_KV WHERE key = ?", (op[1],))
                elif op[0] == "alarm":
                    alarm = op[1]
                    self._write_alarm(op[1])

        self._atomic(work)
        return alarm

    # -- the alarm --

    def alarm(self) -> int | None:
        row = self._db.execute("SELECT value FROM _cf_METADATA WHERE key = 'alarm'").fetchone()
        return int(row[0]) if row is not None and row[0] is not None else None

    def _write_alarm(self, time_ms: int | None) -> None:
        if time_ms is None:
            self._db.execute("DELETE FROM _cf_METADATA WHERE key = 'alarm'")
        else:
            self._db.execute("INSERT OR REPLACE INTO _cf_METADATA (key, value) VALUES ('alarm', ?)", (int(time_ms),))

    def set_alarm(self, time_ms: int | None) -> None:
        self._atomic(lambda: self._write_alarm(time_ms))

    # -- the SQL API --

    def sql_exec(self, query: str, bindings: list[Any], replay: bool = False) -> dict[str, Any]:
        """Run the tenant's statements. Replicated, the call is all or nothing and ``last_wrote`` says
        whether it must be logged; a write that could not be replayed alike elsewhere is refused.
        ``replay``: a logged call applied again (no time limit, no checks: it passed them once)."""
        self.last_wrote = False
        statements = _split_statements(query)
        if not statements:
            return {"columns": [], "rows": [], "rowsRead": 0, "rowsWritten": 0}
        if len(statements) > 1 and bindings:
            raise BindingError("A query with several statements cannot take bindings.", "TypeError")
        values = [_sql_in(value) for value in bindings]
        if not self.replicated or replay:
            return self._sql_run(statements, values, None if replay else self._timeout)
        self._wrote, self._functions = False, set()
        self._db.execute("SAVEPOINT warren_exec")
        try:
            result = self._sql_run(statements, values, self._timeout)
            if self._wrote and (self._functions & _NONDETERMINISTIC or _NOW.search(query) or any(
                isinstance(value, str) and value.strip().lower() == "now" for value in values
            )):
                raise BindingError(
                    "This Durable Object's storage is replicated across nodes, so a statement that writes must "
                    "give the same result when replayed: random(), randomblob(), changes(), last_insert_rowid(), "
                    "'now' and CURRENT_TIMESTAMP are not allowed in it (pass such values as bindings)."
                )
        except BaseException:
            self._db.execute("ROLLBACK TO warren_exec")
            self._db.execute("RELEASE warren_exec")
            raise
        self._db.execute("RELEASE warren_exec")
        self.last_wrote = self._wrote
        return result

    def _sql_run(self, statements: list[str], values: list[Any], timeout: float | None) -> dict[str, Any]:
        before = self._db.total_changes
        columns: list[str] = []
        rows: list[list[Any]] = []
        read = 0
        self._tenant = True
        self._deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            for statement in statements:
                cursor = self._db.execute(statement, values)
                columns, rows, size = [], [], 0
                if cursor.description is not None:
                    columns = [str(column[0]) for column in cursor.description]
                    for row in cursor:
                        out = [_sql_out(value) for value in row]
                        size += sum(len(v) if isinstance(v, str) else len(v["$b"]) if isinstance(v, dict) and "$b" in v
                                    else 8 for v in out)
                        if size > MAX_RESULT_BYTES:
                            raise BindingError(f"The query's result is over {MAX_RESULT_BYTES} bytes.", "RangeError")
                        rows.append(out)
                read += len(rows)
        except sqlite3.Error as exc:
            raise _sql_error(exc, self._deadline) from None
        finally:
            self._tenant = False
            self._deadline = None
        written = self._db.total_changes - before
        return {"columns": columns, "rows": rows, "rowsRead": read + written, "rowsWritten": written}

    def size(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return pages * int(self._db.execute("PRAGMA page_size").fetchone()[0])

    def begin(self) -> None:
        self.sync_depth += 1
        self._db.execute(f"SAVEPOINT warren_sync_{self.sync_depth}")

    def commit(self) -> None:
        if self.sync_depth:
            self._db.execute(f"RELEASE warren_sync_{self.sync_depth}")
            self.sync_depth -= 1

    def rollback(self) -> None:
        if self.sync_depth:
            self._db.execute(f"ROLLBACK TO warren_sync_{self.sync_depth}")
            self._db.execute(f"RELEASE warren_sync_{self.sync_depth}")
            self.sync_depth -= 1

    def rollback_all(self) -> None:
        """Undo transactionSync() calls an isolate left open (it was stopped half-way)."""
        while self.sync_depth:
            self.rollback()

    # -- placed across nodes: the file is a cache of the object's log (warren.bindings.object_placement) --

    def log_seq(self) -> int:
        """The log sequence this file has applied up to (0: none)."""
        row = self._db.execute("SELECT value FROM _cf_METADATA WHERE key = 'log_seq'").fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _write_log_seq(self, seq: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO _cf_METADATA (key, value) VALUES ('log_seq', ?)", (int(seq),))

    def set_log_seq(self, seq: int) -> None:
        self._atomic(lambda: self._write_log_seq(seq))

    def copy_to(self, path: str) -> None:
        """A consistent copy of the file (no transaction may be open)."""
        self._db.execute("VACUUM INTO ?", (path,))

    def open_call(self) -> None:
        """A storage call's writes stay pending until its log entry is appended (then ``close_call``)."""
        self._db.execute("SAVEPOINT warren_call")

    def close_call(self, seq: int | None) -> None:
        if seq is not None:
            self._write_log_seq(seq)
        self._db.execute("RELEASE warren_call")

    def undo_call(self) -> None:
        self._db.execute("ROLLBACK TO warren_call")
        self._db.execute("RELEASE warren_call")

    def commit_logged(self, seq: int | None) -> None:
        """The outermost transactionSync() commit, its statements logged at ``seq``."""
        if seq is not None and self.sync_depth == 1:
            self._write_log_seq(seq)
        self.commit()

    def apply_logged(self, ops: list[Any], seq: int) -> None:
        """A logged write applied again (a new owner catching up); ``seq`` is its place in the log."""

        def work() -> None:
            for op in ops:
                self._replay(op)
            self._write_log_seq(seq)

        self._atomic(work)

    def _replay(self, op: list[Any]) -> None:
        kind = op[0]
        if kind == "put":
            self.put([(str(key), str(value)) for key, value in op[1]])
        elif kind == "delete":
            self.delete([str(key) for key in op[1]])
        elif kind == "deleteAll":
            self.delete_all(bool(op[1]))
        elif kind == "batch":
            self.batch(op[1])
        elif kind == "alarm":
            self.set_alarm(None if op[1] is None else int(op[1]))
        elif kind == "sql":
            self.sql_exec(str(op[1]), list(op[2]), replay=True)
        else:
            raise ValueError(f"unknown logged operation {kind!r}")


def _sql_error(exc: sqlite3.Error, deadline: float | None) -> BindingError:
    name = getattr(exc, "sqlite_errorname", "SQLITE_ERROR")
    if name == "SQLITE_INTERRUPT":
        return BindingError("The SQL query took too long and was interrupted.")
    if name == "SQLITE_AUTH":
        return BindingError(f"{exc}: SQLITE_AUTH (tables starting with _cf_, transactions and most PRAGMAs are "
                            "not allowed; use ctx.storage.transactionSync())")
    if name == "SQLITE_FULL":
        return BindingError("The Durable Object's storage is full: SQLITE_FULL")
    return BindingError(f"{exc}: {name}")


class AlarmIndex:
    """Every object's alarm, node-wide, so the node re-arms them when it starts.

    Written before an object's own file and cleared after it, so it holds at
    least every alarm that is set; a stale row is dropped when it comes due.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS alarms (namespace TEXT, object TEXT, name TEXT, time INTEGER, "
            "PRIMARY KEY (namespace, object)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()

    @staticmethod
    def _ns(namespace: Namespace) -> str:
        return json.dumps([namespace.account_id, namespace.script, namespace.class_name])

    def set(self, namespace: Namespace, object_id: str, name: str | None, time_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO alarms VALUES (?, ?, ?, ?)", (self._ns(namespace), object_id, name, time_ms)
            )

    def remove(self, namespace: Namespace, object_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM alarms WHERE namespace = ? AND object = ?", (self._ns(namespace), object_id))

    def all(self) -> list[tuple[Namespace, str, str | None, int]]:
        with self._lock:
            rows = self._db.execute("SELECT namespace, object, name, time FROM alarms").fetchall()
        return [(Namespace(*json.loads(ns)), str(obj), name, int(when)) for ns, obj, name, when in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- the node's objects ------------------------------------------------------------------------


@dataclass(eq=False)
class _Object:
    namespace: Namespace
    id: str
    name: str | None
    generation: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    store: ObjectStore | None = None
    key: str | None = None  # the version hosting its instance
    sql: bool = True
    active: int = 0  # events sent and not yet finished
    last_used: float = field(default_factory=time.monotonic)
    sync_owner: int = 0  # the invocation (stream) with transactionSync() open
    alarm_running: int | None = None
    # Placed across nodes (warren.bindings.object_placement):
    lease: int = 0  # the revision of the lease this node holds (0: not this node's)
    epoch: int = 0  # the revision the lease was taken with
    lease_until: float = 0.0  # monotonic time until which the lease is surely this node's
    rebuilt: bool = False  # its file has caught up with the log since the lease was taken
    since_snapshot: int = 0  # log entries appended since its last snapshot
    snapshotting: bool = False
    log_seq: int = 0  # the last log message applied to the object's file
    lease_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sync_log: list[list[list[Any]]] = field(default_factory=list)  # open transactionSync() levels' statements

    @property
    def label(self) -> str:
        return f"{self.namespace.class_name}/{self.id}"


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    socket: str | None = None  # a 101's WebSocket, held by the node (warren.server.websockets.HeldSockets)


class DurableObjects:
    """The node's Durable Objects: handlers for ``durable_object_namespace`` and ``__objects``."""

    def __init__(
        self,
        supervisor: Supervisor,
        state_dir: str | Path,
        resolve: Resolver,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        alarm_retry_base: float = DEFAULT_ALARM_RETRY_BASE_S,
        alarm_retries: int = DEFAULT_ALARM_RETRIES,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_S,
        durable: bool = True,
        log: LogHandler | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.supervisor = supervisor
        # Set (before start) when nodes share a NATS store: objects are leased, logged and forwarded.
        self.placement = placement
        self.root = Path(state_dir) / "durable_objects"
        self.resolve = resolve
        self.idle_timeout = idle_timeout
        self.alarm_retry_base = alarm_retry_base
        self.alarm_retries = alarm_retries
        self.max_object_bytes = max_object_bytes
        self.statement_timeout = statement_timeout
        self.durable = durable
        self.log = log or supervisor.on_log
        self._objects: dict[tuple[Namespace, str], _Object] = {}
        # (hosting version key, class, id) -> object: how an instance's storage calls find it
        self._hosted: dict[tuple[str, str, str], _Object] = {}
        self._generation = 0
        self._evicted: dict[str, list[str]] = {}  # version key -> objects its isolate may drop
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="warren-objects")
        self._alarms: AlarmIndex | None = None
        self._timers: dict[tuple[Namespace, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._claims: dict[tuple[Namespace, str], tuple[asyncio.Lock, int]] = {}
        self.alarms_delivered = 0
        # (account id, script) -> its class state after migrations (set_classes; warren.control.migrations)
        self._classes: dict[tuple[str, str], dict[str, Any]] = {}
        self._rekeyed: set[tuple[str, str, str, str]] = set()  # renames whose alarms were moved

    def register(self, bindings: BindingHost) -> None:
        bindings.register("durable_object_namespace", self._namespace_call_of_live_class)
        bindings.register("durable_object_storage", self.storage_call)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the alarm index and re-arm every alarm it holds (past ones fire now). Placed across
        nodes, the alarms to fire come from the shared index instead, and leases are renewed."""
        loop = asyncio.get_running_loop()
        if self.placement is not None:
            await self.placement.start()
            self._loops = [loop.create_task(self._renew_forever()), loop.create_task(self._scan_alarms_forever())]
        else:
            self._alarms = await loop.run_in_executor(self._executor, AlarmIndex, self.root / "alarms.sqlite")
            for namespace, object_id, name, when in await loop.run_in_executor(self._executor, self._alarms.all):
                self._arm(namespace, object_id, name, when, 0)
        self._sweeper = loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        held = []
        for obj in list(self._objects.values()):
            if obj.store is not None:
                store, obj.store = obj.store, None
                await loop.run_in_executor(self._executor, store.close)
            if obj.lease:
                held.append(self._lease_key(obj))
                obj.lease = 0
        self._objects.clear()
        self._hosted.clear()
        if self.placement is not None:
            # Released, the objects move at once to the next node that is asked for them.
            placement = self.placement
            await asyncio.gather(*(placement.release(key) for key in held))
            await placement.stop()
        if self._alarms is not None:
            await loop.run_in_executor(self._executor, self._alarms.close)
            self._alarms = None
        self._executor.shutdown(wait=False)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- objects -----------------------------------------------------------------------

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _object(self, namespace: Namespace, object_id: str, name: str | None) -> _Object:
        obj = self._objects.get((namespace, object_id))
        if obj is None:
            obj = self._objects[(namespace, object_id)] = _Object(namespace, object_id, name, self._next_generation())
        elif name is not None and obj.name is None:
            obj.name = name
        return obj

    async def _store(self, obj: _Object) -> ObjectStore:
        """The object's file, opened if need be. Called holding ``obj.lock``."""
        if obj.store is None:
            path = self._path(obj)
            loop = asyncio.get_running_loop()
            # Placed across nodes the file is a cache of the replicated log: it need not be synced.
            replicated = self.placement is not None
            obj.store = await loop.run_in_executor(
                self._executor, ObjectStore, path, self.max_object_bytes, self.statement_timeout,
                self.durable and not replicated, replicated,
            )
            await self._close_spare_files()
        return obj.store

    async def _close_spare_files(self) -> None:
        open_objects = [obj for obj in self._objects.values() if obj.store is not None]
        if len(open_objects) <= MAX_OPEN_FILES:
            return
        idle = sorted(
            (obj for obj in open_objects if obj.active == 0 and not obj.lock.locked()), key=lambda obj: obj.last_used
        )
        for obj in idle[: len(open_objects) - MAX_OPEN_FILES]:
            store, obj.store = obj.store, None
            if store is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, store.close)

    # --- a stub's calls: events delivered to the object ----------------------------------

    async def namespace_call(self, call: BindingCall) -> BindingResult:
        spec = call.binding
        namespace = Namespace(
            call.caller.account_id, str(spec.get("script_name") or call.caller.name), str(spec.get("class_name", ""))
        )
        args = call.args if isinstance(call.args, dict) else {}
        object_id = str(args.get("id", ""))
        if not object_id_valid(namespace.script, namespace.class_name, object_id):
            raise BindingError("Invalid Durable Object ID for this namespace.", "TypeError")
        name = args.get("name") if isinstance(args.get("name"), str) else None
        sql = spec.get("sqlite") is not False
        if call.method == "fetch":
            method, url, raw_headers = args.get("method"), args.get("url"), args.get("headers")
            if not isinstance(method, str) or not isinstance(url, str) or not isinstance(raw_headers, list):
                raise BindingError("malformed Durable Object request", "TypeError")
            headers = []
            for pair in raw_headers:
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                    raise BindingError("malformed Durable Object request headers", "TypeError")
                if not all(_HEADER_TEXT.fullmatch(part) for part in pair):
                    raise BindingError("malformed Durable Object request headers", "TypeError")
                headers.append((pair[0], pair[1]))
            event: dict[str, Any] = {"kind": "fetch", "method": method, "url": url, "headers": headers}
            if is_upgrade(headers):
                event["websocket"] = True
            answer = await self._route(namespace, object_id, name, sql, event, call.data, call.depth + 1,
                                       owner=call.stream)
            if answer.status == ERROR_STATUS:
                return BindingResult({"error": True}, answer.body)
            value = {"status": answer.status, "statusText": "", "headers": [list(pair) for pair in answer.headers]}
            if answer.socket is not None:
                value["webSocket"] = answer.socket
                return BindingResult(value, None)
            return BindingResult(value, answer.body)
        if call.method == "rpc":
            method = args.get("method")
            if not isinstance(method, str) or not method or len(method) > MAX_METHOD_NAME or not method.isprintable():
                raise BindingError("malformed RPC method name", "TypeError")
            if call.data is None:
                raise BindingError("malformed RPC call: no arguments", "TypeError")
            event = {"kind": "rpc", "method": method}
            answer = await self._route(namespace, object_id, name, sql, event, call.data, call.depth + 1)
            return BindingResult(None, answer.body)
        raise BindingError(f"A Durable Object stub has no operation {call.method!r}.", "TypeError")

    async def _deliver(
        self,
        namespace: Namespace,
        object_id: str,
        name: str | None,
        sql: bool | None,
        event: dict[str, Any],
        body: bytes | None,
        depth: int,
        owned: _Object | None = None,
        owner: int = 0,
    ) -> _Answer:
        """Send one event to the object's instance (in its class's worker) and wait for its answer.
        Placed across nodes, ``owned`` is the object as this node holds it (``_claim``). A WebSocket
        the object accepts is held for the exchange ``owner`` (the stub's caller; 0: another node)."""
        key = self.resolve(namespace.account_id, namespace.script)
        if key is None or key not in self.supervisor.scripts:
            raise BindingError(
                f'The Durable Object class "{namespace.class_name}" is not available: '
                f'the worker "{namespace.script}" is not deployed on this node.'
            )
        refused = self.supervisor.quarantine_message(key)
        if refused is not None:
            raise BindingError(refused)
        obj = owned if owned is not None else self._object(namespace, object_id, name)
        if sql is not None:
            obj.sql = sql
        if obj.key != key:
            if obj.key is not None:
                # A new version hosts it from now on: the old instance is fenced off.
                obj.generation = self._next_generation()
                self._hosted.pop((obj.key, namespace.class_name, object_id), None)
            obj.key = key
            self._hosted[(key, namespace.class_name, object_id)] = obj
        evict = self._evicted.pop(key, [])
        upgrade = bool(event.get("websocket"))
        description = {
            **{name: value for name, value in event.items() if name != "websocket"},
            "class": namespace.class_name,
            "script": namespace.script,
            "id": object_id,
            "name": obj.name,
            "gen": obj.generation,
            "sql": obj.sql,
            "evict": evict,
        }
        method = str(event.get("method", "POST")) if event["kind"] == "fetch" else "POST"
        if event["kind"] == "fetch":
            url, headers = str(event["url"]), list(event["headers"])
        else:
            target = quote(str(event.get("method", event["kind"])), safe="")
            url, headers = f"http://{quote(namespace.class_name, safe='')}.durable-object.invalid/{target}", []
        obj.active += 1
        obj.last_used = time.monotonic()
        try:
            exchange = await self.supervisor.open_exchange(
                key, method, url, headers, has_body=body is not None, depth=depth,
                extra={"event": "object", "name": json.dumps(description), **({"websocket": True} if upgrade else {})},
            )
        except KeyError:  # retired between resolve and open
            obj.active -= 1
            raise BindingError("The Durable Object's worker was redeployed during the call; please retry.") from None
        except BaseException:
            obj.active -= 1
            raise
        # Never replayed after a crash: an event may have written before it.
        exchange.replay = None
        self._spawn(self._finished(obj, exchange))
        if body is not None:
            await exchange.send_body(body)
            exchange.end_body()
        sockets = self.supervisor.held_sockets if upgrade else None
        answer = await collect(exchange, MAX_RESULT_BYTES, sockets, owner)
        if answer.error is not None:
            raise BindingError(f"The Durable Object was reset: {answer.error}")
        return _Answer(answer.status, answer.headers, answer.body, answer.socket)

    async def _finished(self, obj: _Object, exchange: Exchange) -> None:
        await exchange.completed.wait()
        obj.active -= 1
        obj.last_used = time.monotonic()
        if obj.sync_owner == exchange.stream:
            async with obj.lock:
                if obj.sync_owner == exchange.stream and obj.store is not None:
                    obj.sync_owner = 0
                    obj.sync_log.clear()
                    await asyncio.get_running_loop().run_in_executor(self._executor, obj.store.rollback_all)

    # --- across nodes (a NATS store): ownership, the log, forwarding ---------------------------
    # See warren.bindings.object_placement for the design; here is what it means for an object.

    def _lease_key(self, obj: _Object | None = None, namespace: Namespace | None = None, object_id: str = "") -> str:
        if obj is not None:
            namespace, object_id = obj.namespace, obj.id
        assert namespace is not None
        return Placement.key(namespace.directory, object_id)

    async def _route(
        self,
        namespace: Namespace,
        object_id: str,
        name: str | None,
        sql: bool | None,
        event: dict[str, Any],
        body: bytes | None,
        depth: int,
        hops: int = 0,
        owner: int = 0,
    ) -> _Answer:
        """Deliver a stub's event where the object lives: here (taking it if nobody holds it), or by
        forwarding it to the node holding its lease."""
        placement = self.placement
        if placement is None:
            return await self._deliver(namespace, object_id, name, sql, event, body, depth, owner=owner)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + placement.lease_s + ROUTE_GRACE_S
        pause = 0.05
        while True:
            try:
                holder = await self._claim(namespace, object_id, name)
            except _Transient as exc:
                if loop.time() > deadline:
                    raise BindingError(exc.message) from None
                holder = ""
            if isinstance(holder, _Object):
                return await self._deliver(namespace, object_id, name, sql, event, body, depth, holder, owner)
            url = await self._node_url(holder) if holder and hops < MAX_HOPS else None
            if url is not None:
                call = {
                    "account": namespace.account_id, "script": namespace.script, "class": namespace.class_name,
                    "id": object_id, "name": name, "sql": sql, "event": event, "depth": depth, "hops": hops + 1,
                }
                try:
                    header, data = await placement.forward(url, call, body)
                except Unreachable:
                    placement.forget_node(holder)
                else:
                    error = header.get("error")
                    if isinstance(error, dict):
                        raise BindingError(str(error.get("message", "")), str(error.get("name", "Error")))
                    headers = [(str(k), str(v)) for k, v in header.get("headers", [])]
                    socket = header.get("socket")
                    if isinstance(socket, str) and event.get("websocket"):
                        # Held by the owner's node: this node's edge bridges its client there.
                        local = self.supervisor.held_sockets.hold_remote(
                            placement.socket_url(url, socket), placement.authorization, owner
                        )
                        return _Answer(101, headers, b"", local)
                    return _Answer(int(header.get("status", 500)), headers, data or b"")
            if loop.time() > deadline:
                raise BindingError("The Durable Object's node cannot be reached; please retry.")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _node_url(self, node: str) -> str | None:
        assert self.placement is not None
        try:
            return await self.placement.node_url(node)
        except Exception:  # NATS unreachable: the caller waits and asks again
            return None

    async def serve_forwarded(self, call: dict[str, Any], body: bytes | None) -> tuple[dict[str, Any], bytes | None]:
        """A stub call another node forwarded here (the internal endpoint): delivered as if made here."""
        try:
            namespace = Namespace(str(call["account"]), str(call["script"]), str(call["class"]))
            object_id, event, depth, hops = str(call["id"]), call["event"], int(call["depth"]), int(call["hops"])
        except (KeyError, TypeError, ValueError):
            raise BindingError("malformed forwarded call", "TypeError") from None
        if not object_id_valid(namespace.script, namespace.class_name, object_id):
            raise BindingError("Invalid Durable Object ID for this namespace.", "TypeError")
        if not isinstance(event, dict) or event.get("kind") not in ("fetch", "rpc"):
            raise BindingError("malformed forwarded call", "TypeError")
        name = call.get("name") if isinstance(call.get("name"), str) else None
        sql = call.get("sql") if isinstance(call.get("sql"), bool) else None
        answer = await self._route(namespace, object_id, name, sql, event, body, depth, hops)
        header: dict[str, Any] = {"status": answer.status, "headers": [list(pair) for pair in answer.headers]}
        if answer.socket is not None:  # claimed by the caller's node through the internal endpoint
            header["socket"] = answer.socket
        return header, answer.body

    async def serve_forwarded_socket(self, token: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Another node's edge claims a socket one of this node's objects accepted for its client."""
        from warren.server.websockets import serve_held  # the HTTP front's relay, run for the other node

        await serve_held(self.supervisor, token, scope, receive, send)

    async def _claim(self, namespace: Namespace, object_id: str, name: str | None) -> _Object | str:
        """The object, held by this node (taken, and rebuilt from its log, if its lease was free or
        expired), or the id of the node holding it ("" if that could not be read: ask again)."""
        placement = self.placement
        assert placement is not None
        ident = (namespace, object_id)
        obj = self._objects.get(ident)
        if obj is not None and obj.lease and obj.rebuilt and time.monotonic() < obj.lease_until:
            return obj
        if not await placement.ready(placement.lease_s):
            raise _Transient(NO_STORE)
        lock, users = self._claims.get(ident) or (asyncio.Lock(), 0)
        self._claims[ident] = (lock, users + 1)
        try:
            async with lock:
                return await self._claim_locked(namespace, object_id, name)
        finally:
            lock, users = self._claims[ident]
            if users <= 1:
                del self._claims[ident]
            else:
                self._claims[ident] = (lock, users - 1)

    async def _claim_locked(self, namespace: Namespace, object_id: str, name: str | None) -> _Object | str:
        placement = self.placement
        assert placement is not None
        obj = self._objects.get((namespace, object_id))
        if obj is not None:
            if obj.lease and (time.monotonic() < obj.lease_until or await self._renew(obj)):
                return obj
            if obj.lease:
                raise _Transient(NO_STORE)  # whether it is still this node's is unknown
            self._forget(obj)
        key = self._lease_key(namespace=namespace, object_id=object_id)
        try:
            lease, revision = await placement.lease(key)
            if lease is not None and lease.node != placement.node_id and lease.live():
                return lease.node
            if self.resolve(namespace.account_id, namespace.script) is None:
                # Not a node that can host it (its worker is not deployed here, or not yet).
                raise BindingError(
                    f'The Durable Object class "{namespace.class_name}" is not available: '
                    f'the worker "{namespace.script}" is not deployed on this node.'
                )
            taken = await placement.take(key, revision)
            if taken is None:  # another node took it in the meantime
                lease, _ = await placement.lease(key)
                return lease.node if lease is not None and lease.node != placement.node_id else ""
        except BindingError:
            raise
        except Exception as exc:
            self.log("warren", "warn", f"Durable Object lease of {namespace.class_name} {object_id}: {exc!r}")
            raise _Transient(NO_STORE) from None
        revision, sent = taken
        obj = self._object(namespace, object_id, name)
        obj.lease = obj.epoch = revision
        obj.lease_until = sent + placement.valid_for
        try:
            async with obj.lock:
                await self._rebuild(obj)
            obj.rebuilt = True
        except BaseException as exc:
            held = obj.lease
            self._forget(obj)
            await placement.release(key, held)
            if isinstance(exc, BindingError | asyncio.CancelledError):
                raise
            # Imported here: nats (with aiohttp) is a tenth of a second that `warren dev` never needs.
            from nats.errors import Error as NATSError

            if isinstance(exc, TimeoutError | ConnectionError | NATSError):
                self.log("warren", "warn", f"loading Durable Object {obj.label} from its log: {exc!r}; retrying")
                raise _Transient(NO_STORE) from None
            self.log("warren", "error", f"rebuilding Durable Object {obj.label} from its log failed: {exc!r}")
            raise BindingError(f"The Durable Object could not be loaded from its log: {exc}") from None
        return obj

    async def _rebuild(self, obj: _Object) -> None:
        """Bring the object's file up to date with its log (from the newest snapshot if the file is new
        or too far behind), then append the takeover marker, which fences off any former owner.
        Called holding ``obj.lock``, just after taking the lease."""
        placement = self.placement
        assert placement is not None
        loop = asyncio.get_running_loop()
        key = self._lease_key(obj)
        for _ in range(20):  # each lost race (a former owner appending, a snapshot replacing) starts again
            store = await self._store(obj)
            anchor = await loop.run_in_executor(self._executor, store.log_seq)
            if anchor == 0 or not await placement.nats.has(key, anchor):
                # A file that never followed the log, or one the log has moved past: the newest snapshot.
                if not await self._restore(obj, key):
                    continue
                store = await self._store(obj)
                anchor = await loop.run_in_executor(self._executor, store.log_seq)
            try:
                async for seq, ops in placement.replay(key, anchor):
                    if ops is None:
                        await loop.run_in_executor(self._executor, store.set_log_seq, seq)
                    else:
                        await loop.run_in_executor(self._executor, store.apply_logged, ops, seq)
                    anchor = seq
            except LogGap:
                await self._reset_file(obj)
                continue
            marked = await placement.mark(key, obj.epoch, anchor)
            if marked is not None:
                await loop.run_in_executor(self._executor, store.set_log_seq, marked)
                obj.log_seq = marked
                break
        else:
            raise BindingError("The Durable Object's log kept moving while it was being taken over; please retry.")
        alarm = await loop.run_in_executor(self._executor, store.alarm)
        if alarm is not None:
            self._arm(obj.namespace, obj.id, obj.name, alarm, 0)

    async def _restore(self, obj: _Object, key: str) -> bool:
        """Replace the object's file with its newest snapshot (or nothing, if it has none); False if
        that snapshot was replaced while being read."""
        placement = self.placement
        assert placement is not None
        await self._reset_file(obj)
        found = await placement.nats.snapshot(key)
        if found is None:
            return True
        path = self.root / obj.namespace.directory / f"{obj.id}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        if await placement.nats.fetch_snapshot(found[1], str(path)):
            return True
        path.unlink(missing_ok=True)
        return False

    def _snapshot_soon(self, obj: _Object) -> None:
        assert self.placement is not None
        obj.since_snapshot += 1
        if obj.since_snapshot >= self.placement.snapshot_every and not obj.snapshotting:
            obj.snapshotting = True
            self._spawn(self._snapshot(obj))

    async def _snapshot(self, obj: _Object) -> None:
        """Store a copy of the object's file as of its last log message, and let the log before it go."""
        placement = self.placement
        assert placement is not None
        loop = asyncio.get_running_loop()
        copy = self.root / obj.namespace.directory / f"{obj.id}.snapshot-{time.monotonic_ns()}"
        try:
            async with obj.lock:
                if not obj.lease or self._objects.get((obj.namespace, obj.id)) is not obj:
                    return
                store = await self._store(obj)
                if store.sync_depth:
                    return  # inside transactionSync(): not a point the log has; the next entry tries again
                seq = obj.log_seq
                await loop.run_in_executor(self._executor, store.copy_to, str(copy))
                obj.since_snapshot = 0
            await placement.nats.save_snapshot(self._lease_key(obj), seq, str(copy))
        except Exception as exc:  # the log still has everything: only the next takeover is slower
            self.log(obj.namespace.script, "warn", f"snapshot of Durable Object {obj.label} failed: {exc!r}")
        finally:
            obj.snapshotting = False
            copy.unlink(missing_ok=True)

    async def _reset_file(self, obj: _Object) -> None:
        path = self.root / obj.namespace.directory / f"{obj.id}.sqlite"
        if obj.store is not None:
            store, obj.store = obj.store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    async def _renew(self, obj: _Object) -> bool:
        """Extend the object's lease: False if it is lost (then forgotten here) or NATS did not answer."""
        placement = self.placement
        assert placement is not None
        async with obj.lease_lock:
            if not obj.lease:
                return False
            try:
                taken = await placement.take(self._lease_key(obj), obj.lease)
            except Exception:  # unknown: the lease lapses here unless a renewal gets through in time
                return False
            if taken is None:
                self.log("warren", "warn", f"Durable Object {obj.label} was taken over by another node")
                self._forget(obj)
                return False
            obj.lease, sent = taken
            obj.lease_until = sent + placement.valid_for
            return True

    async def _check_lease(self, obj: _Object) -> None:
        """Before a storage call: the lease must be surely this node's (renewed now if in doubt)."""
        if not obj.lease or self._objects.get((obj.namespace, obj.id)) is not obj:
            raise BindingError(MOVED)
        if time.monotonic() >= obj.lease_until and not await self._renew(obj):
            if obj.lease:
                raise BindingError(NO_STORE)
            raise BindingError(MOVED)

    def _forget(self, obj: _Object) -> None:
        """The object is no longer this node's: its instance may not write, its file closes."""
        obj.lease = 0
        obj.generation = self._next_generation()
        ident = (obj.namespace, obj.id)
        if self._objects.get(ident) is obj:
            del self._objects[ident]
        if obj.key is not None:
            if self._hosted.get((obj.key, obj.namespace.class_name, obj.id)) is obj:
                del self._hosted[(obj.key, obj.namespace.class_name, obj.id)]
            pending = self._evicted.setdefault(obj.key, [])
            if len(pending) < MAX_PENDING_EVICTIONS:
                pending.append(obj.label)
        self._disarm(obj.namespace, obj.id)
        self._spawn(self._close_lost(obj))

    async def _close_lost(self, obj: _Object) -> None:
        async with obj.lock:
            obj.sync_log.clear()
            if obj.store is not None and obj.lease == 0:
                store, obj.store = obj.store, None
                await asyncio.get_running_loop().run_in_executor(self._executor, store.close)

    async def _append(self, obj: _Object, ops: list[list[Any]]) -> int:
        """Log one write call (called holding ``obj.lock``); its sequence. A refused append means
        another node has taken the object: it is forgotten here and the write fails."""
        placement = self.placement
        assert placement is not None
        try:
            seq = await placement.append(self._lease_key(obj), ops, obj.epoch, obj.log_seq)
        except BaseException as exc:
            # Landed or not is unknown: the file may be behind the log, so it is rebuilt before next use.
            self._forget(obj)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BindingError(
                f"The Durable Object's write could not be confirmed ({type(exc).__name__}); it may have been applied."
            ) from None
        if seq is None:
            self._forget(obj)
            raise BindingError(MOVED)
        self._snapshot_soon(obj)  # taken once this call's writes are kept (it waits for the object's lock)
        return seq

    async def _index_alarm(self, obj: _Object, when: int | None) -> None:
        """Keep the shared alarm index in step (best effort: the object's own state is the truth)."""
        placement = self.placement
        assert placement is not None
        key = self._lease_key(obj)
        namespace = obj.namespace
        try:
            if when is None:
                await placement.clear_alarm(key)
            else:
                record = {"ns": [namespace.account_id, namespace.script, namespace.class_name], "id": obj.id,
                          "name": obj.name, "time": when}
                await placement.set_alarm(key, record)
        except Exception as exc:
            self.log(namespace.script, "warn", f"alarm index of {obj.label} not updated: {exc!r}")

    async def _renew_forever(self) -> None:
        placement = self.placement
        assert placement is not None
        while True:
            await asyncio.sleep(placement.renew_every)
            held = [obj for obj in self._objects.values() if obj.lease]
            try:
                for start in range(0, len(held), RENEW_BATCH):
                    await asyncio.gather(*(self._renew(obj) for obj in held[start : start + RENEW_BATCH]))
            except Exception as exc:  # the loop must outlive one bad round: leases lapse without it
                self.log("warren", "error", f"renewing Durable Object leases failed: {exc!r}")

    async def _scan_alarms_forever(self) -> None:
        """Arm the alarms of objects nobody holds (their owner is gone), so they are still delivered."""
        placement = self.placement
        assert placement is not None
        while not await placement.ready(60.0):
            pass
        while True:
            try:
                horizon = time.time() * 1000 + placement.lease_s * 2000
                for key, record in await placement.alarms():
                    try:
                        namespace = Namespace(*(str(part) for part in record["ns"]))
                        object_id, when = str(record["id"]), int(record["time"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    ident = (namespace, object_id)
                    if when > horizon or ident in self._timers or ident in self._objects:
                        continue
                    lease, _ = await placement.lease(key)
                    if lease is not None and lease.node != placement.node_id and lease.live():
                        continue
                    name = record.get("name") if isinstance(record.get("name"), str) else None
                    self._arm(namespace, object_id, name, when, 0)
            except Exception as exc:
                self.log("warren", "warn", f"reading the Durable Object alarm index failed: {exc!r}")
            await asyncio.sleep(placement.lease_s)

    # --- ctx.storage: the object's own calls ----------------------------------------------------

    async def storage_call(self, call: BindingCall) -> BindingResult:
        args = call.args if isinstance(call.args, dict) else {}
        class_name, object_id, generation = str(args.get("class", "")), str(args.get("id", "")), args.get("gen")
        # Only the instance the node last sent events to, in the version hosting it, may write.
        obj = self._hosted.get((call.key, class_name, object_id))
        if obj is None or obj.generation != generation:
            raise BindingError(RESET)
        namespace = obj.namespace
        async with obj.lock:
            if obj.generation != generation or self._hosted.get((call.key, class_name, object_id)) is not obj:
                raise BindingError(RESET)
            store = await self._store(obj)
            loop = asyncio.get_running_loop()
            method = call.method
            synchronous = method.startswith("sql")
            if self.placement is not None:
                await self._check_lease(obj)
            if not synchronous and store.sync_depth:
                # transactionSync() is synchronous: an asynchronous call while one is open
                # means the isolate was stopped inside it.
                await loop.run_in_executor(self._executor, store.rollback_all)
                obj.sync_owner = 0
                obj.sync_log.clear()
            if method == "sqlBegin":
                obj.sync_owner = call.stream
            alarm_delete_all = call.caller.compatibility_date >= DELETE_ALL_DELETES_ALARM
            try:
                if self.placement is None:
                    value, alarm, _ = await loop.run_in_executor(
                        self._executor, self._apply, obj, store, method, args, alarm_delete_all
                    )
                else:
                    value, alarm = await self._apply_logged(obj, store, method, args, alarm_delete_all)
            except sqlite3.Error as exc:
                raise _sql_error(exc, None) from None
            if method in ("sqlCommit", "sqlRollback") and store.sync_depth == 0:
                obj.sync_owner = 0
            if alarm is not UNCHANGED:
                if alarm is None:
                    self._disarm(namespace, object_id)
                    if self.placement is not None:
                        self._spawn(self._index_alarm(obj, None))
                else:
                    self._arm(namespace, object_id, obj.name, int(alarm), 0)
        return BindingResult(value)

    async def _apply_logged(
        self, obj: _Object, store: ObjectStore, method: str, args: dict[str, Any], delete_all_alarm: bool
    ) -> tuple[Any, Any]:
        """``_apply`` for an object placed across nodes: what it writes is kept only once appended
        to the object's log (a call inside transactionSync() is logged with the outermost commit)."""
        loop = asyncio.get_running_loop()

        async def run(work: Callable[..., Any], *args: Any) -> Any:
            return await loop.run_in_executor(self._executor, work, *args)

        if method in ("sqlBegin", "sqlRollback") or (method == "sqlCommit" and store.sync_depth != 1):
            inner = obj.sync_log.pop() if method != "sqlBegin" and obj.sync_log else []
            value, alarm, _ = await run(self._apply, obj, store, method, args, delete_all_alarm)
            if method == "sqlBegin":
                obj.sync_log.append([])
            elif method == "sqlCommit" and obj.sync_log:
                obj.sync_log[-1].extend(inner)  # an inner level's statements join the outer one
            return value, alarm
        if method == "sqlCommit":  # the outermost: its statements are logged, then committed
            ops = obj.sync_log.pop() if obj.sync_log else []
            seq: int | None = None
            if ops:
                try:
                    seq = await self._append(obj, ops)
                except BaseException:
                    await run(store.rollback)
                    raise
            await run(store.commit_logged, seq)
            obj.log_seq = seq or obj.log_seq
            return None, UNCHANGED
        if store.sync_depth or method in ("get", "list", "getAlarm", "sqlSize"):
            value, alarm, ops = await run(self._apply, obj, store, method, args, delete_all_alarm)
            if ops and obj.sync_log:
                obj.sync_log[-1].extend(ops)
            return value, alarm
        await run(store.open_call)
        try:
            value, alarm, ops = await run(self._apply, obj, store, method, args, delete_all_alarm)
            if isinstance(alarm, int):
                await self._index_alarm(obj, alarm)  # the index first: it may only hold more
            seq = await self._append(obj, ops) if ops else None
        except BaseException:
            await run(store.undo_call)
            raise
        await run(store.close_call, seq)
        obj.log_seq = seq or obj.log_seq
        return value, alarm

    def _apply(
        self, obj: _Object, store: ObjectStore, method: str, args: dict[str, Any], delete_all_alarm: bool
    ) -> tuple[Any, Any, list[list[Any]]]:
        """One storage operation, on a worker thread: (the JSON answer, the alarm it set or UNCHANGED,
        what it wrote as log operations: see ``ObjectStore.apply_logged``)."""
        if method == "get":
            return store.get(_keys(args.get("keys"))), UNCHANGED, []
        if method == "put":
            entries = args.get("entries")
            if not isinstance(entries, list) or len(entries) > MAX_KEYS:
                raise BindingError(f"put() takes at most {MAX_KEYS} entries.", "RangeError")
            checked = [(_key(entry[0]), _value(entry[1])) for entry in entries if _pair(entry)]
            if len(checked) != len(entries):
                raise BindingError("malformed put()", "TypeError")
            store.put(checked)
            return None, UNCHANGED, [["put", [list(pair) for pair in checked]]]
        if method == "delete":
            keys = _keys(args.get("keys"))
            return store.delete(keys), UNCHANGED, [["delete", keys]]
        if method == "list":
            limit = args.get("limit")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
                raise BindingError("list() limit must be a positive integer.", "RangeError")
            bounds = [_optional_key(args.get(name)) for name in ("start", "startAfter", "end", "prefix")]
            start, start_after, end, prefix = bounds
            return store.list_range(start, start_after, end, prefix, bool(args.get("reverse")), limit), UNCHANGED, []
        if method == "deleteAll":
            alarm: Any = UNCHANGED
            if delete_all_alarm and store.alarm() is not None:
                alarm = None
            store.delete_all(delete_all_alarm)
            if alarm is None and self._alarms is not None:
                self._alarms.remove(obj.namespace, obj.id)
            return None, alarm, [["deleteAll", delete_all_alarm]]
        if method == "batch":
            ops = args.get("ops")
            if not isinstance(ops, list):
                raise BindingError("malformed transaction", "TypeError")
            checked_ops: list[list[Any]] = []
            for op in ops:
                if isinstance(op, list) and len(op) == 3 and op[0] == "put":
                    checked_ops.append(["put", _key(op[1]), _value(op[2])])
                elif isinstance(op, list) and len(op) == 2 and op[0] == "delete":
                    checked_ops.append(["delete", _key(op[1])])
                elif isinstance(op, list) and len(op) == 2 and op[0] == "alarm":
                    checked_ops.append(["alarm", _alarm_time(op[1])])
                else:
                    raise BindingError("malformed transaction", "TypeError")
            new_alarm = next((op[1] for op in reversed(checked_ops) if op[0] == "alarm"), UNCHANGED)
            if isinstance(new_alarm, int) and self._alarms is not None:
                self._alarms.set(obj.namespace, obj.id, obj.name, new_alarm)  # the index first: it may only hold more
            alarm = store.batch(checked_ops)
            if alarm is None and self._alarms is not None:
                self._alarms.remove(obj.namespace, obj.id)
            return None, alarm, [["batch", checked_ops]]
        if method == "getAlarm":
            current = store.alarm()
            # While its handler runs, an alarm is not "set" (unless the handler set a new one).
            return (None if current is not None and current == obj.alarm_running else current), UNCHANGED, []
        if method == "setAlarm":
            when = _alarm_time(args.get("time"))
            if when is not None and self._alarms is not None:
                self._alarms.set(obj.namespace, obj.id, obj.name, when)
            store.set_alarm(when)
            if when is None and self._alarms is not None:
                self._alarms.remove(obj.namespace, obj.id)
            return None, when, [["alarm", when]]
        if method == "sqlExec":
            query, bindings = args.get("query"), args.get("bindings", [])
            if not isinstance(query, str) or not isinstance(bindings, list):
                raise BindingError("malformed SQL call", "TypeError")
            result = store.sql_exec(query, bindings)
            return result, UNCHANGED, [["sql", query, bindings]] if store.last_wrote else []
        if method == "sqlSize":
            return store.size(), UNCHANGED, []
        if method == "sqlBegin":
            store.begin()
            return None, UNCHANGED, []
        if method == "sqlCommit":
            store.commit()
            return None, UNCHANGED, []
        if method == "sqlRollback":
            store.rollback()
            return None, UNCHANGED, []
        raise BindingError(f"Durable Object storage has no operation {method!r}.", "TypeError")

    # --- alarms ------------------------------------------------------------------------------

    def _arm(self, namespace: Namespace, object_id: str, name: str | None, when_ms: int, retry: int,
             delay: float | None = None) -> None:
        self._disarm(namespace, object_id)
        if delay is None:
            delay = max(0.0, when_ms / 1000.0 - time.time())
        self._timers[(namespace, object_id)] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._fire(namespace, object_id, name, when_ms, retry))
        )

    def _disarm(self, namespace: Namespace, object_id: str) -> None:
        timer = self._timers.pop((namespace, object_id), None)
        if timer is not None:
            timer.cancel()

    async def _alarm_now(self, obj: _Object) -> int | None:
        async with obj.lock:
            store = await self._store(obj)
            return await asyncio.get_running_loop().run_in_executor(self._executor, store.alarm)

    async def _fire(self, namespace: Namespace, object_id: str, name: str | None, when_ms: int, retry: int) -> None:
        try:
            await self._fire_once(namespace, object_id, name, when_ms, retry)
        except BindingError as exc:  # placed across nodes: the store or the log failed; try again later
            self.log(namespace.script, "warn", f"alarm of {namespace.class_name} {object_id} not delivered: "
                     f"{exc.message}")
            if (namespace, object_id) not in self._timers:
                self._arm(namespace, object_id, name, when_ms, retry, self.alarm_retry_base)

    async def _fire_once(
        self, namespace: Namespace, object_id: str, name: str | None, when_ms: int, retry: int
    ) -> None:
        self._timers.pop((namespace, object_id), None)
        loop = asyncio.get_running_loop()
        if self.placement is not None and self.resolve(namespace.account_id, namespace.script) is None:
            if (namespace, object_id) not in self._timers:
                self._arm(namespace, object_id, name, when_ms, retry, WAIT_FOR_WORKER_S)
            return
        if self.placement is not None:
            claimed = await self._claim(namespace, object_id, name)
            if not isinstance(claimed, _Object):
                return  # another node holds it, and fires its alarm
            obj = claimed
            self._disarm(namespace, object_id)  # taking it over armed its alarm again: this call delivers it
        else:
            obj = self._object(namespace, object_id, name)
        current = await self._alarm_now(obj)
        if current != when_ms and current is not None and self.placement is not None:
            self._arm(namespace, object_id, obj.name, current, 0)  # the shared index was behind
            return
        if current != when_ms:
            if current is None and self._alarms is not None:
                await loop.run_in_executor(self._executor, self._alarms.remove, namespace, object_id)
            if current is None and self.placement is not None:
                await self._index_alarm(obj, None)
            return  # deleted, or moved (and armed again when it was)
        if self.resolve(namespace.account_id, namespace.script) is None:
            # The class's worker is not (yet) running here, as when the node starts: not an attempt.
            if (namespace, object_id) not in self._timers:
                self._arm(namespace, object_id, obj.name, when_ms, retry, WAIT_FOR_WORKER_S)
            return
        obj.alarm_running = when_ms
        error: str | None = None
        try:
            answer = await self._deliver(
                namespace, object_id, None, None, {"kind": "alarm", "retryCount": retry, "isRetry": retry > 0}, None, 0,
                obj if self.placement is not None else None,
            )
            if answer.status != 200:
                error = _answer_message(answer.body)
        except BindingError as exc:
            error = exc.message
        self.alarms_delivered += 1
        if error is None:
            try:
                await self._clear_alarm(obj, when_ms)
            finally:
                obj.alarm_running = None  # only now: getAlarm() must not show a delivered alarm meanwhile
            return
        obj.alarm_running = None
        if retry < self.alarm_retries:
            delay = self.alarm_retry_base * (2**retry)
            self.log(namespace.script, "warn",
                     f"alarm of {namespace.class_name} {object_id} failed ({error}); retry {retry + 1} in {delay:g} s")
            if (namespace, object_id) not in self._timers:  # the handler may have set a new alarm
                self._arm(namespace, object_id, obj.name, when_ms, retry + 1, delay)
            return
        self.log(namespace.script, "error",
                 f"alarm of {namespace.class_name} {object_id} failed {retry + 1} times ({error}); giving up")
        await self._clear_alarm(obj, when_ms)

    async def _clear_alarm(self, obj: _Object, when_ms: int) -> None:
        """Delete the object's alarm if it is still ``when_ms`` (it was delivered, or given up)."""
        loop = asyncio.get_running_loop()
        namespace, object_id = obj.namespace, obj.id
        async with obj.lock:
            if self.placement is not None and (not obj.lease or self._objects.get((namespace, object_id)) is not obj):
                return  # it moved: its new owner has the alarm
            store = await self._store(obj)
            if await loop.run_in_executor(self._executor, store.alarm) != when_ms:
                return
            if self.placement is None:
                await loop.run_in_executor(self._executor, store.set_alarm, None)
                if self._alarms is not None:
                    await loop.run_in_executor(self._executor, self._alarms.remove, namespace, object_id)
                return
            await loop.run_in_executor(self._executor, store.open_call)
            try:
                await loop.run_in_executor(self._executor, store.set_alarm, None)
                seq = await self._append(obj, [["alarm", None]])
            except BaseException:
                await loop.run_in_executor(self._executor, store.undo_call)
                raise
            await loop.run_in_executor(self._executor, store.close_call, seq)
            obj.log_seq = seq
        await self._index_alarm(obj, None)

    # --- eviction ----------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(5.0, self.idle_timeout / 2)))
            try:
                await self.sweep()
            except Exception as exc:  # the sweep must outlive a bad file
                self.log("warren", "error", f"evicting idle Durable Objects failed: {exc!r}")

    async def sweep(self) -> list[str]:
        """Evict objects idle past the timeout: their files close, their instances may go."""
        now = time.monotonic()
        evicted = []
        for (namespace, object_id), obj in list(self._objects.items()):
            busy = obj.active or obj.alarm_running is not None or obj.lock.locked()
            if busy or now - obj.last_used <= self.idle_timeout:
                continue
            async with obj.lock:
                if obj.active or self._objects.get((namespace, object_id)) is not obj:
                    continue
                del self._objects[(namespace, object_id)]
                if obj.key is not None:
                    self._hosted.pop((obj.key, namespace.class_name, object_id), None)
                if obj.key is not None:
                    pending = self._evicted.setdefault(obj.key, [])
                    if len(pending) < MAX_PENDING_EVICTIONS:
                        pending.append(obj.label)
                if obj.store is not None:
                    store, obj.store = obj.store, None
                    await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
                if obj.lease and self.placement is not None:
                    async with obj.lease_lock:  # not while a renewal is in flight
                        revision, obj.lease = obj.lease, 0
                    await self.placement.release(self._lease_key(obj), revision)
                evicted.append(obj.label)
        return evicted

    def active_objects(self) -> int:
        return len(self._objects)

    # --- class migrations (warren.control.migrations): renamed and deleted classes ---------------

    def set_classes(self, states: dict[tuple[str, str], dict[str, Any]]) -> None:
        """The class state of each deployed script ((account id, script) -> state, from its main version).

        A deleted class is refused from now on; on one node (no placement) its objects' files and
        alarms are removed. A renamed class keeps its objects where its first name put them
        (``_path``): alarms set under an earlier name are moved to the new name."""
        self._classes = states
        if self.placement is None:
            deleted = [Namespace(account, script, name)
                       for (account, script), state in states.items() for name in state.get("deleted", ())]
            if deleted:
                self._spawn(self._delete_classes(deleted))
        renames = {
            (account, script, name, earlier)
            for (account, script), state in states.items()
            for name, info in state.get("classes", {}).items()
            for earlier in info.get("renamed_from", ())
        }
        if self._alarms is not None and renames - self._rekeyed:
            self._rekeyed |= renames
            self._spawn(self._move_alarms(renames))

    def _origin(self, namespace: Namespace) -> str | None:
        """The first name of a renamed class, or None."""
        state = self._classes.get((namespace.account_id, namespace.script))
        info = state.get("classes", {}).get(namespace.class_name) if state else None
        earlier = info.get("renamed_from") if isinstance(info, dict) else None
        return str(earlier[-1]) if earlier else None

    def _path(self, obj: _Object) -> Path:
        """The object's file. A renamed class's objects stay in its first name's directory, under the id
        they have there, so a rename moves nothing and a rollback past it finds them where they were."""
        namespace, object_id = obj.namespace, obj.id
        origin = self._origin(namespace) if self.placement is None else None
        if origin is not None:
            earlier_id = rekeyed_id(namespace.script, origin, object_id, obj.name)
            if earlier_id is not None:
                namespace, object_id = Namespace(namespace.account_id, namespace.script, origin), earlier_id
        return self.root / namespace.directory / f"{object_id}.sqlite"

    def deleted_message(self, namespace: Namespace) -> str | None:
        state = self._classes.get((namespace.account_id, namespace.script))
        if state is None or namespace.class_name not in state.get("deleted", ()):
            return None
        return (
            f'The Durable Object class "{namespace.class_name}" of the worker "{namespace.script}" was deleted '
            "by a migration (deleted_classes): its objects and their storage are gone."
        )

    async def _namespace_call_of_live_class(self, call: BindingCall) -> BindingResult:
        spec = call.binding
        namespace = Namespace(
            call.caller.account_id, str(spec.get("script_name") or call.caller.name), str(spec.get("class_name", ""))
        )
        refused = self.deleted_message(namespace)
        if refused is not None:
            raise BindingError(refused)
        return await self.namespace_call(call)

    async def _delete_classes(self, namespaces: list[Namespace]) -> None:
        loop = asyncio.get_running_loop()
        for namespace in namespaces:
            directory = self.root / namespace.directory
            held = [obj for (ns, _), obj in list(self._objects.items()) if ns == namespace]
            if not held and not await loop.run_in_executor(self._executor, directory.exists):
                continue
            for obj in held:
                async with obj.lock:
                    self._forget(obj)
                    store, obj.store = obj.store, None
                    if store is not None:
                        await loop.run_in_executor(self._executor, store.close)
            if self._alarms is not None:
                alarms = self._alarms
                for found, object_id, _, _ in await loop.run_in_executor(self._executor, alarms.all):
                    if found == namespace:
                        self._disarm(found, object_id)
                        await loop.run_in_executor(self._executor, alarms.remove, found, object_id)
            await loop.run_in_executor(self._executor, functools.partial(shutil.rmtree, directory, True))
            self.log("warren", "info", f"deleted the storage of Durable Object class {namespace.class_name} "
                     f"of {namespace.script} (deleted_classes)")

    async def _move_alarms(self, renames: set[tuple[str, str, str, str]]) -> None:
        alarms = self._alarms
        if alarms is None:
            return
        loop = asyncio.get_running_loop()
        targets = {(account, script, earlier): name for account, script, name, earlier in renames}
        for namespace, object_id, name, when in await loop.run_in_executor(self._executor, alarms.all):
            target = targets.get((namespace.account_id, namespace.script, namespace.class_name))
            new_id = rekeyed_id(namespace.script, target, object_id, name) if target is not None else None
            if target is None or new_id is None:
                continue
            moved = Namespace(namespace.account_id, namespace.script, target)
            await loop.run_in_executor(self._executor, alarms.set, moved, new_id, name, when)
            await loop.run_in_executor(self._executor, alarms.remove, namespace, object_id)
            self._disarm(namespace, object_id)
            self._arm(moved, new_id, name, when, 0)


def _answer_message(body: bytes) -> str:
    try:
        answer = json.loads(body)
        return f"{answer['error']['name']}: {answer['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return "the handler failed"


def _pair(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2


def _key(value: Any) -> str:
    if not isinstance(value, str):
        raise BindingError("A key must be a string.", "TypeError")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BindingError("A key must be valid Unicode (no lone surrogates).", "TypeError") from None
    if size > MAX_KEY_BYTES:
        raise BindingError(f"Keys cannot be larger than {MAX_KEY_BYTES} bytes.", "RangeError")
    return value


def _optional_key(value: Any) -> str | None:
    return None if value is None else _key(value)


def _keys(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise BindingError(f"At most {MAX_KEYS} keys per call.", "RangeError")
    return [_key(key) for key in value]


def _value(value: Any) -> str:
    if not isinstance(value, str):
        raise BindingError("malformed value", "TypeError")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BindingError("malformed value", "TypeError") from None
    if size > MAX_VALUE_BYTES:
        raise BindingError(f"Values cannot be larger than {MAX_VALUE_BYTES} bytes.", "RangeError")
    return value


def _alarm_time(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BindingError("setAlarm() needs a time in milliseconds since the epoch.", "TypeError")
    return int(value)


def node_binding(spec: dict[str, Any], script: str) -> dict[str, Any]:
    """A binding as a node runs it: a Durable Object namespace's ``script_name`` defaults to ``script``."""
    if spec.get("type") == "durable_object_namespace" and not spec.get("script_name"):
        return {**spec, "script_name": script}
    return spec


def install(
    supervisor: Supervisor, state_dir: str | Path, resolve: Resolver, **options: Any
) -> DurableObjects:
    """Register the node's Durable Objects with its supervisor's bindings; start() it once the supervisor runs."""
    objects = DurableObjects(supervisor, state_dir, resolve, **options)
    objects.register(supervisor.bindings)
    return objects


__all__ = [
    "STORAGE_BINDING",
    "AlarmIndex",
    "DurableObjects",
    "Namespace",
    "ObjectStore",
    "Resolver",
    "id_from_name",
    "install",
    "namespace_key",
    "node_binding",
    "object_id_valid",
    "rekeyed_id",
]
