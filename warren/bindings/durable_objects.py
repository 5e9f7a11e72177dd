"""Durable Objects on one node: placement of their events, their storage, their alarms.

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

Across nodes (not built yet; today an object lives on whichever node serves
its class, and two nodes would each have their own copy). The design:
ownership is a lease in a NATS KV bucket (key: namespace directory and id;
value: owner node, expiry), taken with create / update-if-revision (CAS)
once the previous lease has expired and renewed at a third of its TTL; the
lease's revision replaces the generation as the fencing token. A node that
receives a stub call for an object leased elsewhere forwards it to the owner
(nodes advertise an internal address in a bucket); with no live lease it takes
the lease and hosts the object. Every write batch is appended to a JetStream
stream replicated R=3 (subject per object) with an expected-last-sequence
check, so a fenced owner's append fails, before the call returns (the output
gate then covers it); the SQLite file becomes a cache rebuilt from the newest
snapshot (object store) plus the stream after it, which is what a new owner
does on takeover. SQL writes are logged as statements with bindings, refused
where not deterministic. Alarms move to a KV bucket, armed by the owner.
The test to pass: kill the owning node mid-load; requests resume on another
node, no acknowledged increment lost, none applied twice.

Owns: object ids, the object registry, per-object SQLite files, the alarm
index and scheduler. Must not touch: isolates (they live in runtime
processes), the HTTP front, the control-plane store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
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
from warren.bindings.service import collect

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
_NON_TABLE_ACTIONS = frozenset({sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_SAVEPOINT})

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

    def __init__(self, path: Path, max_bytes: int, statement_timeout: float, durable: bool = True) -> None:
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

    def sql_exec(self, query: str, bindings: list[Any]) -> dict[str, Any]:
        statements = _split_statements(query)
        if not statements:
            return {"columns": [], "rows": [], "rowsRead": 0, "rowsWritten": 0}
        if len(statements) > 1 and bindings:
            raise BindingError("A query with several statements cannot take bindings.", "TypeError")
        values = [_sql_in(value) for value in bindings]
        before = self._db.total_changes
        columns: list[str] = []
        rows: list[list[Any]] = []
        read = 0
        self._tenant = True
        self._deadline = time.monotonic() + self._timeout
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

    @property
    def label(self) -> str:
        return f"{self.namespace.class_name}/{self.id}"


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


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
    ) -> None:
        self.supervisor = supervisor
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
        self.alarms_delivered = 0

    def register(self, bindings: BindingHost) -> None:
        bindings.register("durable_object_namespace", self.namespace_call)
        bindings.register("durable_object_storage", self.storage_call)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the alarm index and re-arm every alarm it holds (past ones fire now)."""
        loop = asyncio.get_running_loop()
        self._alarms = await loop.run_in_executor(self._executor, AlarmIndex, self.root / "alarms.sqlite")
        for namespace, object_id, name, when in await loop.run_in_executor(self._executor, self._alarms.all):
            self._arm(namespace, object_id, name, when, 0)
        self._sweeper = loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        for obj in list(self._objects.values()):
            if obj.store is not None:
                store, obj.store = obj.store, None
                await loop.run_in_executor(self._executor, store.close)
        self._objects.clear()
        self._hosted.clear()
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
            path = self.root / obj.namespace.directory / f"{obj.id}.sqlite"
            loop = asyncio.get_running_loop()
            obj.store = await loop.run_in_executor(
                self._executor, ObjectStore, path, self.max_object_bytes, self.statement_timeout, self.durable
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
            event = {"kind": "fetch", "method": method, "url": url, "headers": headers}
            answer = await self._deliver(namespace, object_id, name, sql, event, call.data, call.depth + 1)
            if answer.status == ERROR_STATUS:
                return BindingResult({"error": True}, answer.body)
            value = {"status": answer.status, "statusText": "", "headers": [list(pair) for pair in answer.headers]}
            return BindingResult(value, answer.body)
        if call.method == "rpc":
            method = args.get("method")
            if not isinstance(method, str) or not method or len(method) > MAX_METHOD_NAME or not method.isprintable():
                raise BindingError("malformed RPC method name", "TypeError")
            if call.data is None:
                raise BindingError("malformed RPC call: no arguments", "TypeError")
            event = {"kind": "rpc", "method": method}
            answer = await self._deliver(namespace, object_id, name, sql, event, call.data, call.depth + 1)
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
    ) -> _Answer:
        """Send one event to the object's instance (in its class's worker) and wait for its answer."""
        key = self.resolve(namespace.account_id, namespace.script)
        if key is None or key not in self.supervisor.scripts:
            raise BindingError(
                f'The Durable Object class "{namespace.class_name}" is not available: '
                f'the worker "{namespace.script}" is not deployed on this node.'
            )
        refused = self.supervisor.quarantine_message(key)
        if refused is not None:
            raise BindingError(refused)
        obj = self._object(namespace, object_id, name)
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
        description = {
            **event,
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
                extra={"event": "object", "name": json.dumps(description)},
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
        answer = await collect(exchange, MAX_RESULT_BYTES)
        if answer.error is not None:
            raise BindingError(f"The Durable Object was reset: {answer.error}")
        return _Answer(answer.status, answer.headers, answer.body)

    async def _finished(self, obj: _Object, exchange: Exchange) -> None:
        await exchange.completed.wait()
        obj.active -= 1
        obj.last_used = time.monotonic()
        if obj.sync_owner == exchange.stream:
            async with obj.lock:
                if obj.sync_owner == exchange.stream and obj.store is not None:
                    obj.sync_owner = 0
                    await asyncio.get_running_loop().run_in_executor(self._executor, obj.store.rollback_all)

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
            if not synchronous and store.sync_depth:
                # transactionSync() is synchronous: an asynchronous call while one is open
                # means the isolate was stopped inside it.
                await loop.run_in_executor(self._executor, store.rollback_all)
                obj.sync_owner = 0
            if method == "sqlBegin":
                obj.sync_owner = call.stream
            alarm_delete_all = call.caller.compatibility_date >= DELETE_ALL_DELETES_ALARM
            try:
                value, alarm = await loop.run_in_executor(
                    self._executor, self._apply, obj, store, method, args, alarm_delete_all
                )
            except sqlite3.Error as exc:
                raise _sql_error(exc, None) from None
            if method in ("sqlCommit", "sqlRollback") and store.sync_depth == 0:
                obj.sync_owner = 0
            if alarm is not UNCHANGED:
                if alarm is None:
                    self._disarm(namespace, object_id)
                else:
                    self._arm(namespace, object_id, obj.name, int(alarm), 0)
        return BindingResult(value)

    def _apply(
        self, obj: _Object, store: ObjectStore, method: str, args: dict[str, Any], delete_all_alarm: bool
    ) -> tuple[Any, Any]:
        """One storage operation, on a worker thread: (the JSON answer, the alarm it set or UNCHANGED)."""
        if method == "get":
            return store.get(_keys(args.get("keys"))), UNCHANGED
        if method == "put":
            entries = args.get("entries")
            if not isinstance(entries, list) or len(entries) > MAX_KEYS:
                raise BindingError(f"put() takes at most {MAX_KEYS} entries.", "RangeError")
            checked = [(_key(entry[0]), _value(entry[1])) for entry in entries if _pair(entry)]
            if len(checked) != len(entries):
                raise BindingError("malformed put()", "TypeError")
            store.put(checked)
            return None, UNCHANGED
        if method == "delete":
            return store.delete(_keys(args.get("keys"))), UNCHANGED
        if method == "list":
            limit = args.get("limit")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
                raise BindingError("list() limit must be a positive integer.", "RangeError")
            bounds = [_optional_key(args.get(name)) for name in ("start", "startAfter", "end", "prefix")]
            start, start_after, end, prefix = bounds
            return store.list_range(start, start_after, end, prefix, bool(args.get("reverse")), limit), UNCHANGED
        if method == "deleteAll":
            alarm: Any = UNCHANGED
            if delete_all_alarm and store.alarm() is not None:
                alarm = None
            store.delete_all(delete_all_alarm)
            if alarm is None and self._alarms is not None:
                self._alarms.remove(obj.namespace, obj.id)
            return None, alarm
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
            return None, alarm
        if method == "getAlarm":
            current = store.alarm()
            # While its handler runs, an alarm is not "set" (unless the handler set a new one).
            return (None if current is not None and current == obj.alarm_running else current), UNCHANGED
        if method == "setAlarm":
            when = _alarm_time(args.get("time"))
            if when is not None and self._alarms is not None:
                self._alarms.set(obj.namespace, obj.id, obj.name, when)
            store.set_alarm(when)
            if when is None and self._alarms is not None:
                self._alarms.remove(obj.namespace, obj.id)
            return None, when
        if method == "sqlExec":
            query, bindings = args.get("query"), args.get("bindings", [])
            if not isinstance(query, str) or not isinstance(bindings, list):
                raise BindingError("malformed SQL call", "TypeError")
            return store.sql_exec(query, bindings), UNCHANGED
        if method == "sqlSize":
            return store.size(), UNCHANGED
        if method == "sqlBegin":
            store.begin()
            return None, UNCHANGED
        if method == "sqlCommit":
            store.commit()
            return None, UNCHANGED
        if method == "sqlRollback":
            store.rollback()
            return None, UNCHANGED
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
        self._timers.pop((namespace, object_id), None)
        loop = asyncio.get_running_loop()
        obj = self._object(namespace, object_id, name)
        current = await self._alarm_now(obj)
        if current != when_ms:
            if current is None and self._alarms is not None:
                await loop.run_in_executor(self._executor, self._alarms.remove, namespace, object_id)
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
                namespace, object_id, None, None, {"kind": "alarm", "retryCount": retry, "isRetry": retry > 0}, None, 0
            )
            if answer.status != 200:
                error = _answer_message(answer.body)
        except BindingError as exc:
            error = exc.message
        self.alarms_delivered += 1
        if error is None:
            try:
                async with obj.lock:
                    store = await self._store(obj)
                    if await loop.run_in_executor(self._executor, store.alarm) == when_ms:
                        await loop.run_in_executor(self._executor, store.set_alarm, None)
                        if self._alarms is not None:
                            await loop.run_in_executor(self._executor, self._alarms.remove, namespace, object_id)
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
        async with obj.lock:
            store = await self._store(obj)
            if await loop.run_in_executor(self._executor, store.alarm) == when_ms:
                await loop.run_in_executor(self._executor, store.set_alarm, None)
                if self._alarms is not None:
                    await loop.run_in_executor(self._executor, self._alarms.remove, namespace, object_id)

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
                evicted.append(obj.label)
        return evicted

    def active_objects(self) -> int:
        return len(self._objects)


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
]
