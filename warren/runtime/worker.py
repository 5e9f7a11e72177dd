"""One running instance of a Worker: an isolate, its event loop, its invocations.

JavaScript runs in "slices" on a JS thread (warren.runtime.threads), one slice at a time
per Worker; between slices the isolate waits for host operations (timers,
request bodies) on the asyncio loop. Host functions called from JavaScript only
record effects, which the loop applies after the slice returns, so nothing on
the JS thread touches asyncio.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from warren.engine import (
    CpuLimitExceeded,
    EngineError,
    Isolate,
    IsolateTerminated,
    MemoryLimitExceeded,
    ScriptError,
)
from warren.json_codec import dump_json_text, load_json
from warren.runtime.bodies import BodyAborted, BodySource, BytesBody, QueueBody, read_all
from warren.runtime.crypto import CryptoHost
from warren.runtime.pool import ENTRY_POINT as _ENTER
from warren.runtime.pool import IsolatePool, PreparedIsolate, prepare_isolate
from warren.runtime.script import (
    STARTUP_CPU_MS,
    CodeCaches,
    CompiledModule,
    Compiler,
    ScriptLoadError,
    WorkerScript,
)
from warren.runtime.subrequests import Fetcher, OriginSocket, SubrequestError, TcpConnection
from warren.runtime.threads import WorkerThread
from warren.runtime.websockets import NO_SOCKET_101, WebSocketHost

# Limits on calls from the isolate; they are the bindings' rules, enforced here
# because the worker counts its invocations' operations.
OPERATION_LIMITS = {"kv_namespace": 1000, "queue": 1000}  # queue: send/sendBatch calls (issue #10)
# What the worker is told past its binding type's limit (Workers' words where it has them).
OPERATION_LIMIT_MESSAGES = {"kv_namespace": "Too many API requests by single worker invocation."}
SUBREQUEST_TYPES = frozenset({"service", "durable_object_namespace"})
# Durable Object storage (issue #8): its calls complete even after their invocation
# has ended (the object's input gate waits on them), and ctx.storage.sql.exec() is
# a call the JS thread blocks on. Its handler never waits on an isolate, so a
# blocked thread cannot be waiting on itself.
OUTLIVING_TYPES = frozenset({"durable_object_storage"})
SYNC_CALL_TYPES = frozenset({"durable_object_storage"})
SYNC_CALL_TIMEOUT_S = 30.0
# The largest body one binding call carries (it crosses to the supervisor in one frame, at most
# warren.server.protocol.MAX_FRAME), by binding type, and what the worker is told past it.
BINDING_BODY_LIMITS = {
    "kv_namespace": (25 * 1024 * 1024, "KV PUT failed: 413 Value length of {size} exceeds limit of {limit}."),
}
DEFAULT_BINDING_BODY_LIMIT = (32 * 1024 * 1024, "The body of a binding call is {size} bytes; the limit is {limit}.")

WAIT_UNTIL_LIMIT_S = 30.0
# Connections a worker's isolate may hold open at once (cloudflare:sockets and outgoing
# WebSockets, all its requests together): each is a socket of the runtime process.
MAX_OUTGOING_CONNECTIONS = 100
TOO_MANY_CONNECTIONS = f"Too many open connections: a worker may hold {MAX_OUTGOING_CONNECTIONS} at once."
# Slices queued together run in one trip to a JS thread until they have used this much CPU,
# or this many have run: the responses of a batch leave when it ends, so a shorter batch
# lets the supervisor work on them while the next one runs (hello under wrk -c64: ~10% more
# requests/s, p99 halved; at 6 the trips themselves cost more than that).
BATCH_CPU_S = 0.002
BATCH_MAX_SLICES = 16
REFILL_DELAY_S = 0.1
# Bodies cross into and out of the isolate as latin-1 strings (stpyv8 has no
# way to share bytes). Small ones ride along with the event; larger ones move
# in chunks, each in a slice of its own that is not charged to the request's
# CPU time: the conversion is the runtime's overhead (about 3 ms per MB each
# way here), not the script's work.
INLINE_BODY = 64 * 1024
BODY_CHUNK = 1024 * 1024
TRANSFER_BUDGET_MS = 200.0
READ_CHUNK = 256 * 1024  # what one read of a host body gives JavaScript at most
# Response bytes sent to the client but not yet taken by it, past which a
# streaming worker waits: a fast producer cannot pile up memory in the host.
STREAM_WINDOW = 1024 * 1024
SINK_WINDOW = 1024 * 1024  # the same, for a request body a worker streams into fetch()
# What one worker may hold or emit, so a hostile script cannot flood the host.
MAX_PENDING_OPS = 10_000  # timers and other host operations waiting at once
LOG_BYTES_PER_INVOCATION = 256 * 1024  # of console output, per request (per slice outside one)
LOG_LINE_BYTES = 16 * 1024
LOG_LIMIT_NOTICE = "Log limit reached: further console output of this invocation is dropped."

NEVER_RESPONDS = "The script will never generate a response."
EXCEEDED_CPU = "Worker exceeded its CPU time limit."
EXCEEDED_MEMORY = "Worker exceeded its memory limit."
RESTARTED = "Worker was restarted because another request to it exceeded a limit; please retry."
THREW = "Worker threw exception"
TOO_MANY_SUBREQUESTS = "Too many subrequests."


class Reply(Protocol):
    """Where one invocation's results go. Called on the event loop."""

    def head(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def body(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def error(self, status: int, message: str) -> None: ...
    def log(self, level: str, message: str) -> None: ...
    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None: ...


# Where binding calls go (the node's supervisor): (request id, {binding, method, args}, data)
# -> (ok, JSON value or {name, message}, data)
CallHandler = Callable[[int | None, dict[str, Any], bytes | None], Awaitable[tuple[bool, Any, bytes | None]]]


@dataclass
class IncomingRequest:
    request_id: int
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: BodySource | None = None
    event: str = "fetch"  # or "scheduled", with the two fields below
    cron: str = ""
    scheduled_time: int = 0  # ms since the epoch
    depth: int = 0  # service-binding calls that led to this request
    cf: dict[str, Any] | None = None  # request.cf, from the edge
    # Issue #10: a service binding's named entrypoint; for event "rpc" the method
    # (arguments in the body), for event "queue" the queue (the batch in the body).
    entrypoint: str = ""
    name: str = ""
    websocket: bool = False  # an upgrade from the edge: may be answered 101 with a WebSocket


@dataclass
class _Invocation:
    request: IncomingRequest
    reply: Reply
    started: float = field(default_factory=time.monotonic)
    cpu_seconds: float = 0.0
    cpu_base: float = 0.0  # cpu_seconds when its current event began (a WebSocket message starts one)
    responded: bool = False
    finished: bool = False
    outcome: str = "ok"
    deadline: asyncio.TimerHandle | None = None
    body_open: bool = False  # a response head went out and its body is still being pulled
    finish_after_body: bool = False
    subrequests: int = 0
    operations: dict[str, int] = field(default_factory=dict)  # binding calls, by binding type


@dataclass
class _Op:
    request_id: int | None
    handle: asyncio.Handle | asyncio.Task[Any] | None = None
    outlives: bool = False  # not cancelled when its invocation ends (OUTLIVING_TYPES, "defer")


class _TcpReadBody:
    """The readable of a TCP connection: its end (or the isolate giving it up) closes the connection,
    unless startTls() replaced it first."""

    def __init__(self, connection: TcpConnection) -> None:
        self.connection = connection
        self.detached = False

    async def read(self, max_bytes: int) -> bytes:
        return b"" if self.detached else await self.connection.read(max_bytes)

    def close(self) -> None:
        if not self.detached:
            self.connection.close()


@dataclass
class _TcpSocket:
    connection: TcpConnection
    reading: _TcpReadBody | None = None
    writing: asyncio.Task[None] | None = None
    upgrading: bool = False


@dataclass
class _HostBody:
    """A body on the host side that the isolate reads by handle; owned by an invocation."""

    request_id: int | None
    source: BodySource


LogSink = Callable[[str, str], None]
# Told, on the JS thread, which worker and request is about to run JavaScript
# (and None after): the runtime process records it so a crash has a culprit.
Activity = Callable[[str | None, int | None], None]


class Worker:
    """An isolate running one version of one script, serving its requests."""

    def __init__(
        self,
        script: WorkerScript,
        js_thread: WorkerThread,
        compiler: Compiler,
        log_sink: LogSink,
        activity: Activity | None = None,
        key: str = "",
        pool: IsolatePool | None = None,
        calls: CallHandler | None = None,
        fetcher: Fetcher | None = None,
        compile_executor: Executor | None = None,
    ) -> None:
        self.script = script
        self._compile_executor = compile_executor
        self._calls = calls
        self._fetcher = fetcher
        self._bodies: dict[int, _HostBody] = {}
        self._next_body = 1
        self._tcp: dict[int, _TcpSocket] = {}  # cloudflare:sockets connections, by the isolate's id
        self._next_tcp = 1
        self._connecting = 0  # connections being opened: counted against MAX_OUTGOING_CONNECTIONS already
        self._pool = pool
        self._crypto = CryptoHost()  # this worker's keys: never shared with another isolate
        self.cold_start_pooled = False
        self.key = key or script.name
        self._activity = activity
        self._js_thread = js_thread
        self._compiler = compiler
        self._log_sink = log_sink
        self._loop = asyncio.get_running_loop()
        self._isolate: Isolate | None = None
        self._turn = asyncio.Lock()
        self._queued_slices = 0
        self._slices: list[tuple[int | None, tuple[Any, ...], bool]] = []  # queued, in order
        self._slicing = False  # a task is running the queued slices
        self._effects: list[tuple[Any, ...]] = []
        self._current: int | None = None
        self._invocations: dict[int, _Invocation] = {}
        self._ops: dict[int, _Op] = {}
        self._live_ops = 0  # started or about to start: self._ops plus those still in effects
        self._log_bytes: dict[int | None, int] = {}
        self._next_op = 1
        self.broken = False
        self.cpu_seconds_total = 0.0
        self.last_used = time.monotonic()
        self._compacted_at = -1.0
        self._uncached: list[CompiledModule] = []  # large modules loaded without a code cache
        self.code_cache_hits = 0  # modules of the last load compiled from a code cache
        self._sockets = WebSocketHost(self)  # its invocations' WebSockets (warren.runtime.websockets)

    # --- life cycle ----------------------------------------------------------------

    async def start(self, first: tuple[IncomingRequest, Reply] | None = None) -> None:
        """Create the isolate and run the script's top level; raises ScriptLoadError.

        ``first``, the request that made the worker start, runs on the same trip to
        the JS thread as the load (one hop less for a cold request). If the load
        fails it is left unanswered: the caller reports the ScriptLoadError.
        """
        compiled: list[CompiledModule] | None = None
        if self._compile_executor is not None and Compiler.is_large(self.script):
            # Transforming megabytes may take seconds: not on a JS thread, where the
            # neighbours' requests run.
            compiled = await self._loop.run_in_executor(self._compile_executor, self._compiler.compile, self.script)
        async with self._turn:
            bound_to_objects = any(spec.get("type") == "durable_object_namespace" for spec in self.script.bindings)
            prepared = self._pool.take(self.script.memory_mb, bound_to_objects) if self._pool is not None else None
            self.cold_start_pooled = prepared is not None
            batch: list[tuple[int | None, tuple[Any, ...], bool]] = []
            if first is not None:
                self._slicing = True  # queued here, not by a task of its own
                self.fetch(*first)
                batch, self._slices = self._slices, []
            outcome: list[Any] = [0, None, None, 0, None]  # as _enter_batch's, then where its effects start
            try:
                # Compiled on the same trip to the JS thread as the load: one hop less.
                await self._on_js_thread(self._compile_and_load, prepared, batch, outcome, compiled)
            except BaseException:
                if first is not None:
                    self._invocations.pop(first[0].request_id, None)
                    self._queued_slices -= len(batch)
                    self._slicing = False
                raise
            finally:
                if self._pool is not None:
                    # Later, not now: a new worker's first request usually follows at
                    # once, and preparing an isolate would compete with it for the GIL.
                    self._loop.call_later(REFILL_DELAY_S, self._pool.refill)
                # The load's own effects, then (below) the first request's.
                loaded = outcome[4] if outcome[4] is not None else len(self._effects)
                rest, self._effects = self._effects[loaded:], self._effects[:loaded]
                self._apply_effects()
                self._effects = rest
            # Any crash or incident then maps to exact bytes in the archive.
            self._log_sink("info", f"started {self.key} running code sha256 {self.script.code_hash}")
            if not batch:
                return
            outcome[3] -= loaded
            try:
                ran, failure, started_ops = await self._after_batch(outcome[:4])
            except BaseException:
                self._queued_slices -= len(batch)
                self._slicing = False
                raise
            self._settle_batch(batch, ran, failure)
        self._slicing = False
        if self._slices:
            self._slicing = True
            self._loop.create_task(self._run_slices(yield_first=started_ops))

    def _on_js_thread(self, fn: Callable[..., Any], *args: Any, background: bool = False) -> Awaitable[Any]:
        """``fn(*args)`` on a JS thread; ``background`` for housekeeping that must not
        hold up other workers' requests (a collection, a disposal: warren.runtime.threads)."""
        return self._js_thread.call(self._loop, fn, *args, background=background)

    def _compile_and_load(
        self,
        prepared: PreparedIsolate | None,
        batch: list[tuple[int | None, tuple[Any, ...], bool]] | None = None,
        outcome: list[Any] | None = None,
        compiled: list[CompiledModule] | None = None,
    ) -> None:
        try:
            modules = compiled if compiled is not None else self._compiler.compile(self.script)
        except ScriptLoadError:
            if prepared is not None and self._pool is not None:  # unused: still nobody's
                self._loop.call_soon_threadsafe(self._pool.give_back, prepared)
            raise
        self._load(modules, prepared)
        if batch and outcome is not None:
            outcome[4] = len(self._effects)
            first = self._invocations.get(batch[0][0]) if batch[0][0] is not None else None
            if first is not None:
                first.started = time.monotonic()  # its wall time, as before: from the dispatch on
            try:
                self._enter_batch(batch, outcome)
            finally:
                self._current = None

    def _load(self, modules: list[CompiledModule], prepared: PreparedIsolate | None) -> None:
        if self._activity is not None:
            self._activity(self.key, None)
        try:
            self._load_in_isolate(modules, prepared)
        finally:
            if self._activity is not None:
                self._activity(None, None)

    def _load_in_isolate(self, modules: list[CompiledModule], prepared: PreparedIsolate | None) -> None:
        try:
            if prepared is None:
                prepared = prepare_isolate(self.script.memory_mb)
            prepared.router.target = self
            isolate = self._isolate = prepared.isolate
            module_worker = modules[0].kind == "esm"
            config = json.dumps(
                {
                    "env": self.script.vars,
                    "bindings": list(self.script.bindings),
                    "compatibilityDate": self.script.compatibility_date,
                    "globals": not module_worker,
                }
            )
            if not module_worker:  # its top level runs next and may use its bindings
                isolate.call(_ENTER, _now_ms(), "configure", config, cpu_budget_ms=STARTUP_CPU_MS)
            caches = self._compiler.code_caches
            self.code_cache_hits = 0
            for module in modules:
                if module.kind in ("script", "esm"):
                    cache = caches.get(self.script.account_id, module) if CodeCaches.wanted(module) else None
                    isolate.run_script(module.text, module.name, cpu_budget_ms=STARTUP_CPU_MS, code_cache=cache)
                    if cache is not None and not isolate.code_cache_rejected:
                        self.code_cache_hits += 1
                    elif CodeCaches.wanted(module):
                        if cache is not None:
                            caches.drop(self.script.account_id, module)
                        self._uncached.append(module)
                else:
                    isolate.call(
                        _ENTER,
                        _now_ms(),
                        "defineData",
                        module.name,
                        module.kind,
                        module.text,
                        cpu_budget_ms=STARTUP_CPU_MS,
                    )
            main = modules[0].name if module_worker else None
            problem = isolate.call(
                _ENTER, _now_ms(), "loaded", main, config if module_worker else None, cpu_budget_ms=STARTUP_CPU_MS
            )
        except ScriptError as exc:
            self._discard_isolate()
            raise ScriptLoadError(f"{exc.name}: {exc.message}", exc.filename, exc.line, exc.column) from None
        except CpuLimitExceeded:
            self._discard_isolate()
            raise ScriptLoadError(f"Script startup exceeded CPU time limit ({STARTUP_CPU_MS} ms).") from None
        except MemoryLimitExceeded:
            self._discard_isolate()
            raise ScriptLoadError("Script startup exceeded its memory limit.") from None
        if problem:
            self._discard_isolate()
            raise ScriptLoadError(str(problem), self.script.filename)

    def _discard_isolate(self, keep_code: bool = False) -> None:
        if self._isolate is not None:
            if keep_code:
                self._keep_code_caches()
            self._isolate.dispose()
            self._isolate = None
        self.broken = True

    def _keep_code_caches(self) -> None:
        """On the JS thread: code caches of the large modules loaded without one, with all
        the functions compiled so far (the handlers its requests ran included)."""
        uncached, self._uncached = self._uncached, []
        isolate = self._isolate
        if isolate is None or isolate.broken:
            return
        for module in uncached:
            try:
                cache = isolate.code_cache(module.text, module.name)
            except EngineError:  # housekeeping: the next start compiles from the text, as ever
                return
            if cache:
                self._compiler.code_caches.keep(self.script.account_id, module, cache)

    def _compact_isolate(self) -> None:
        self._keep_code_caches()
        if self._isolate is not None:
            self._isolate.compact()

    async def close(self, keep_code: bool = False) -> None:
        """Dispose of the isolate once no slice is running. Pending invocations fail.

        ``keep_code`` (an eviction: the script may well start again) first keeps the
        code caches of its large modules, if none was made yet.
        """
        self.broken = True
        for invocation in list(self._invocations.values()):
            self._fail_invocation(invocation, 503, RESTARTED, "canceled")
        self._cancel_ops(lambda op: True)
        self._sockets.close_origins()
        async with self._turn:
            if self._isolate is not None:
                await self._on_js_thread(self._discard_isolate, keep_code, background=True)

    async def compact(self) -> bool:
        """Shrink an idle isolate's heap (a full collection); a no-op once done until it runs again.
        True if it collected."""
        if self._compacted_at == self.last_used or not self.idle or self._isolate is None:
            return False
        async with self._turn:
            if self._isolate is not None and not self.broken:
                await self._on_js_thread(self._compact_isolate, background=True)
                self._compacted_at = self.last_used
                return True
        return False

    @property
    def idle(self) -> bool:
        return not self._invocations and self._queued_slices == 0

    @property
    def memory_bytes(self) -> int:
        return self._isolate.memory_bytes if self._isolate is not None else 0

    # --- invocations --------------------------------------------------------------

    def fetch(self, request: IncomingRequest, reply: Reply) -> None:
        """Start an invocation (fetch, or scheduled). Results arrive on ``reply``."""
        if self.broken:
            reply.error(503, RESTARTED)
            reply.done("canceled", 0.0, 0.0)
            return
        self.last_used = time.monotonic()
        self._invocations[request.request_id] = _Invocation(request, reply)
        if request.event == "scheduled":
            # As a float: the engine passes ints to JavaScript as 32 bits, and epoch milliseconds need more.
            scheduled_time = float(request.scheduled_time)
            self._schedule(request.request_id, "scheduled", request.request_id, request.cron, scheduled_time)
            return
        headers = dump_json_text(request.headers)
        body_handle = 0
        whole: str | None = None
        if request.body is not None:
            # A small body that has arrived whole goes in with the event: the worker reads it
            # without an operation and another trip to its thread.
            data = request.body.whole(INLINE_BODY) if isinstance(request.body, QueueBody) else None
            if data is not None and request.event == "fetch":
                whole = data.decode("latin-1")
            else:
                if data is not None:
                    request.body = BytesBody(data)
                body_handle = self._adopt_body(request.request_id, request.body)
        if request.event == "rpc":
            self._schedule(request.request_id, "rpc", request.request_id, request.entrypoint, request.name, body_handle)
            return
        if request.event == "queue":
            self._schedule(request.request_id, "queue", request.request_id, request.name, body_handle)
            return
        if request.event == "object":  # a Durable Object's event, described (JSON) in ``name``
            self._schedule(request.request_id, "object", request.request_id, request.name, body_handle)
            return
        self._schedule(
            request.request_id,
            "fetch",
            request.request_id,
            request.method,
            request.url,
            headers,
            body_handle,
            dump_json_text(request.cf) if request.cf is not None else "",
            request.entrypoint,
            whole,
        )

    def cancel(self, request_id: int) -> None:
        """The client went away: its response is no longer wanted."""
        invocation = self._invocations.get(request_id)
        if invocation is None:
            return
        if not invocation.responded:
            invocation.outcome = "canceled"
        elif invocation.body_open:
            # Mid-body: the stream's producer is told (its next drain answers "closed").
            invocation.reply.end()
            self._body_closed(invocation)

    # --- slices -------------------------------------------------------------------

    def _schedule(self, request_id: int | None, *args: Any, charged: bool = True) -> None:
        self._queued_slices += 1
        self._slices.append((request_id, args, charged))
        if not self._slicing:
            self._slicing = True
            self._loop.create_task(self._run_slices())

    async def _run_slices(self, yield_first: bool = False) -> None:
        """Run the queued slices in order. Those queued by the time the isolate is free
        go to the JS thread together: a trip to a JS thread and back costs two thread
        wake-ups, more than a small request's JavaScript."""
        try:
            if yield_first:
                await asyncio.sleep(0)  # as below: the last batch started host operations
            while self._slices:
                async with self._turn:
                    batch, self._slices = self._slices, []
                    try:
                        ran, failure, started_ops = await self._run_batch(batch)
                    except BaseException:
                        self._queued_slices -= len(batch)
                        raise
                    self._settle_batch(batch, ran, failure)
                if started_ops:
                    # Operations that complete at once (a 0 ms timer) do so before the next
                    # slice runs, as they did with one slice per trip: a worker's cap on
                    # pending operations must not count them.
                    await asyncio.sleep(0)
        finally:
            self._slicing = False
            if self._slices:  # queued while the last batch was failing
                self._slicing = True
                self._loop.create_task(self._run_slices())

    def _settle_batch(
        self, batch: list[tuple[int | None, tuple[Any, ...], bool]], ran: int, failure: BaseException | None
    ) -> None:
        self._slices[:0] = batch[ran:]  # past the batch's CPU allowance: next turn
        self._queued_slices -= ran
        if isinstance(failure, IsolateTerminated):
            # The rest would have found the isolate broken.
            self._queued_slices -= len(self._slices)
            self._slices.clear()
        self._settle_idle()

    async def _run_batch(
        self, batch: list[tuple[int | None, tuple[Any, ...], bool]]
    ) -> tuple[int, BaseException | None, bool]:
        """Run slices of ``batch`` on a JS thread: how many ran, how the last one failed,
        and whether they started host operations."""
        if self.broken or self._isolate is None:
            return len(batch), None, False
        outcome: list[Any] = [0, None, None, 0]  # ran, failure, its request id, where its effects start
        try:
            await self._on_js_thread(self._enter_batch, batch, outcome)
        finally:
            self._current = None
        return await self._after_batch(outcome)

    async def _after_batch(self, outcome: list[Any]) -> tuple[int, BaseException | None, bool]:
        """On the loop, after a batch ran: apply its effects."""
        ran, failure, request_id, mark = outcome
        if isinstance(failure, IsolateTerminated):
            # What the terminated slice did is void, except what it logged.
            self._effects[mark:] = [effect for effect in self._effects[mark:] if effect[0] == "log"]
            self._apply_effects()
            await self._terminated(request_id, failure)
            return ran, failure, False
        started_ops = any(effect[0] == "op" for effect in self._effects)
        self._apply_effects()
        return ran, failure, started_ops

    def _enter_batch(self, batch: list[tuple[int | None, tuple[Any, ...], bool]], outcome: list[Any]) -> None:
        """On the JS thread: the batch's slices one after the other, each under its own
        CPU budget and charged as it ends, until one is terminated, the batch has used
        BATCH_CPU_S (a worker busy for long gives the thread up between slices) or has run
        BATCH_MAX_SLICES (its responses wait for its end). The isolate
        is held for the whole batch: taking and giving it back costs more than a small slice."""
        isolate = self._isolate
        if isolate is None:
            outcome[0] += len(batch)
            return
        with isolate.session():
            used_total = 0.0
            for request_id, args, charged in batch:
                if self.broken or self._isolate is None:
                    outcome[0] += 1
                    continue
                invocation = self._invocations.get(request_id) if request_id is not None else None
                budget = self.script.cpu_ms
                if not charged:
                    budget = TRANSFER_BUDGET_MS
                elif invocation is not None:
                    budget = max(0.0, self.script.cpu_ms - (invocation.cpu_seconds - invocation.cpu_base) * 1000.0)
                self._current = request_id
                self._log_bytes.pop(None, None)
                mark = len(self._effects)
                failure: BaseException | None = None
                try:
                    self._enter(budget, args)
                except (IsolateTerminated, ScriptError, EngineError) as exc:
                    failure = exc
                # Charged before anything reports the invocation's cost.
                used = self._isolate.last_cpu_seconds if self._isolate is not None else 0.0
                self.cpu_seconds_total += used
                if invocation is not None and charged:
                    invocation.cpu_seconds += used
                self._current = None
                outcome[0] += 1
                if isinstance(failure, IsolateTerminated):
                    outcome[1:4] = [failure, request_id, mark]
                    return
                if failure is not None:
                    self._effects.append(("log", None, "error", f"warren runtime error: {failure}"))
                used_total += used
                started_ops = any(effect[0] == "op" for effect in self._effects[mark:])
                if started_ops or used_total >= BATCH_CPU_S or outcome[0] >= BATCH_MAX_SLICES:
                    # A slice that started host operations ends the batch: they start (and a
                    # timer of 0 ms fires) before the next slice runs, as they would one slice per trip.
                    return

    def _enter(self, budget_ms: float, args: tuple[Any, ...]) -> None:
        assert self._isolate is not None
        if self._activity is not None:
            self._activity(self.key, self._current)
        try:
            self._isolate.call(_ENTER, _now_ms(), *args, cpu_budget_ms=budget_ms)
        finally:
            if self._activity is not None:
                self._activity(None, None)

    async def _terminated(self, request_id: int | None, exc: IsolateTerminated) -> None:
        outcome = "exceededCpu" if isinstance(exc, CpuLimitExceeded) else "exceededMemory"
        message = EXCEEDED_CPU if outcome == "exceededCpu" else EXCEEDED_MEMORY
        culprit = self._invocations.get(request_id) if request_id is not None else None
        if culprit is None:  # outside any request (or it has ended): the worker's own log
            self._log_sink("error", f"{message} The isolate was discarded.")
        self.broken = True
        for invocation in list(self._invocations.values()):
            if invocation is culprit:
                invocation.reply.log("error", f"{message} The isolate was discarded.")
                self._fail_invocation(invocation, 503, message, outcome)
            else:
                self._fail_invocation(invocation, 503, RESTARTED, "canceled")
        self._cancel_ops(lambda op: True)
        self._sockets.close_origins()
        await self._on_js_thread(self._discard_isolate, background=True)

    def _settle_idle(self) -> None:
        """Finish what can no longer progress: nothing queued and no host operation pending."""
        if self._queued_slices or self._ops or self.broken:
            return
        for invocation in list(self._invocations.values()):
            if not invocation.responded:
                invocation.reply.log("error", NEVER_RESPONDS)
                self._fail_invocation(invocation, 500, NEVER_RESPONDS, "exception")
            else:
                self._finish(invocation)

    # --- host functions: called on the JS thread, they only record effects -----------

    def _host_log(self, level: str, message: str) -> None:
        used = self._log_bytes.get(self._current, 0)
        if used >= LOG_BYTES_PER_INVOCATION:
            return
        text = str(message)
        if len(text) > LOG_LINE_BYTES:
            text = text[:LOG_LINE_BYTES] + f"… [{len(text) - LOG_LINE_BYTES} more characters]"
        used += len(text)
        self._log_bytes[self._current] = used
        self._effects.append(("log", self._current, str(level), text))
        if used >= LOG_BYTES_PER_INVOCATION:
            self._effects.append(("log", self._current, "warn", LOG_LIMIT_NOTICE))

    def _host_exception(self, name: str, message: str, stack: str, where: str) -> None:
        self._host_log("error", f"Uncaught (in {where}) {stack}")
        self._effects.append(("exception", self._current, *_exception_fields(name, message, stack)))

    def _host_op(self, kind: str, argument: Any, data: str | None = None) -> int:
        if self._live_ops >= MAX_PENDING_OPS:
            return -1
        self._live_ops += 1
        op_id = self._next_op
        self._next_op += 1
        self._effects.append(("op", self._current, op_id, str(kind), argument, data))
        return op_id

    def _host_asset(self, name: str) -> str | None:
        """A file the runtime's own JavaScript needs (the HTMLRewriter's wasm), as latin-1."""
        return runtime_asset(str(name))

    def _host_sink(self) -> int:
        """A new body the isolate writes and the host reads (a streamed fetch() request body)."""
        if len(self._bodies) >= MAX_PENDING_OPS:
            return -1
        handle = self._next_body
        self._next_body += 1
        self._effects.append(("sink", self._current, handle))
        return handle

    def _host_write(self, handle: int, data: str | None, last: bool) -> None:
        self._effects.append(("write", int(handle), data, bool(last)))

    def _host_release(self, handle: int) -> None:
        """The isolate will not read this body any further."""
        self._effects.append(("release", int(handle)))

    def _host_abort_body(self, request_id: int, message: str) -> None:
        self._effects.append(("abortBody", int(request_id), str(message)))

    def _host_cancel_op(self, op_id: int) -> None:
        self._effects.append(("cancel", int(op_id)))

    def _host_respond(
        self,
        request_id: int,
        status: int,
        status_text: str,
        headers: str,
        body: str | None,
        length: int,
        handle: int = 0,
    ) -> None:
        """``body`` inline; or ``length`` bytes to pull; or -1: chunks follow; or a host body's ``handle``."""
        self._effects.append(
            ("respond", int(request_id), int(status), str(headers), body, int(length or 0), int(handle or 0))
        )

    def _host_chunk(self, request_id: int, data: str, last: bool) -> None:
        self._effects.append(("chunk", int(request_id), data, bool(last)))

    def _host_fail(self, request_id: int, name: str, message: str, stack: str) -> None:
        self._effects.append(("exception", int(request_id), *_exception_fields(name, message, stack)))
        self._effects.append(("fail", int(request_id), str(stack)))

    def _host_crypto(self, operation: str, arguments: str, data: str | None) -> str:
        """WebCrypto, computed here on the JS thread (it is the script's CPU time)."""
        return self._crypto.call(str(operation), str(arguments), data)

    def _host_call_sync(self, call_json: str) -> str:
        """A binding call the isolate waits for (ctx.storage.sql.exec()): ``[ok, value]`` as JSON.

        This JS thread blocks until the node answers, while the loop goes on; its CPU
        clock does not run meanwhile, so the wait is not charged to the script.
        """
        try:
            call = json.loads(str(call_json))
            spec = self.script.binding(call.get("binding")) if isinstance(call, dict) else None
            if spec is None or spec.get("type") not in SYNC_CALL_TYPES or self._calls is None:
                refused = {"name": "TypeError", "message": "This binding cannot be called synchronously."}
                return json.dumps([False, refused])
            request = {"binding": call.get("binding"), "method": call.get("method"), "args": call.get("args")}
            calls, current = self._calls, self._current

            async def ask() -> tuple[bool, Any, bytes | None]:
                return await calls(current, request, None)

            future = asyncio.run_coroutine_threadsafe(ask(), self._loop)
            try:
                ok, value, _ = future.result(SYNC_CALL_TIMEOUT_S)
            except TimeoutError:
                future.cancel()
                return json.dumps([False, {"name": "Error", "message": "The storage call timed out."}])
            return json.dumps([ok, value])
        except Exception as exc:  # a bug of ours must surface as the script's exception, not kill the slice
            self._effects.append(("log", self._current, "error", f"warren runtime error in a call: {exc!r}"))
            return json.dumps([False, {"name": "Error", "message": "internal error"}])

    def _host_done(self, request_id: int) -> None:
        self._effects.append(("done", int(request_id)))

    def _host_websocket(self, action: str, a: Any = None, b: Any = None, c: Any = None) -> Any:
        return self._sockets.host_call(str(action), a, b, c)

    def websocket_event(self, request_id: int, event: str, *args: Any) -> None:
        """A message or close from the client of the WebSocket coupled to ``request_id``."""
        self._sockets.incoming(request_id, event, args)

    # --- applying effects on the loop ---------------------------------------------------

    def _apply_effects(self) -> None:
        effects, self._effects = self._effects, []
        for effect in effects:
            kind = effect[0]
            if kind == "log":
                _, request_id, level, message = effect
                invocation = self._invocations.get(request_id) if request_id is not None else None
                if invocation is not None:
                    invocation.reply.log(level, message)
                else:
                    self._log_sink(level, message)
            elif kind == "op":
                self._start_op(*effect[1:])
            elif kind == "ws":
                self._sockets.apply(*effect[1:])
            elif kind == "cancel":
                self._cancel_ops(effect[1].__eq__)
            elif kind == "sink":
                _, request_id, handle = effect
                self._bodies[handle] = _HostBody(request_id, QueueBody())
            elif kind == "write":
                _, handle, data, last = effect
                body = self._bodies.get(handle)
                if body is not None and isinstance(body.source, QueueBody):
                    if data:
                        body.source.feed(data.encode("latin-1"))
                    if last:
                        body.source.finish()
            elif kind == "release":
                body = self._bodies.pop(effect[1], None)
                if body is not None:
                    body.source.close()
            elif kind == "abortBody":
                _, request_id, message = effect
                invocation = self._invocations.get(request_id)
                if invocation is not None and invocation.body_open:
                    invocation.reply.log("error", f"The response body failed: {message}")
                    invocation.reply.error(502, "the response body was cut short")
                    self._body_closed(invocation)
            elif kind == "respond":
                self._respond(*effect[1:])
            elif kind == "chunk":
                _, request_id, data, last = effect
                invocation = self._invocations.get(request_id)
                if invocation is not None and invocation.body_open:
                    invocation.reply.body(data.encode("latin-1"))
                    if last:
                        invocation.reply.end()
                        self._body_closed(invocation)
            elif kind == "exception":
                # For the invocation's event (warren.observability); a Reply without it only logs.
                invocation = self._invocations.get(effect[1]) if effect[1] is not None else None
                report = getattr(invocation.reply, "exception", None) if invocation is not None else None
                if report is not None:
                    report(*effect[2:])
            elif kind == "fail":
                _, request_id, stack = effect
                invocation = self._invocations.get(request_id)
                if invocation is not None:
                    invocation.reply.log("error", f"Uncaught {stack}")
                    self._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            elif kind == "done":
                invocation = self._invocations.get(effect[1])
                if invocation is not None:
                    if invocation.body_open:
                        invocation.finish_after_body = True
                    else:
                        self._finish(invocation)

    def _respond(
        self, request_id: int, status: int, headers_json: str, body: str | None, length: int, handle: int
    ) -> None:
        invocation = self._invocations.get(request_id)
        if invocation is None or invocation.responded:
            return
        headers = _valid_headers(headers_json)
        if headers is None or not 100 <= status <= 999:
            # Only a script that tampered with the runtime's own JavaScript gets here.
            invocation.reply.log("error", "The worker produced a malformed response.")
            self._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            return
        if status == 101:  # only a WebSocket coupled to this request answers 101 (warren.runtime.websockets)
            invocation.reply.log("error", NO_SOCKET_101)
            self._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            return
        invocation.responded = True
        if length > 0 and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
            headers.append(("content-length", str(length)))
        if not (handle or length < 0):
            # A streamed body may take as long as it takes: its waitUntil time starts when it ends.
            invocation.deadline = self._loop.call_later(WAIT_UNTIL_LIMIT_S, self._finish, invocation)
        if invocation.outcome == "canceled":
            self._body_closed(invocation)
            return
        if not handle and length >= 0 and (body is not None or not length):
            whole = getattr(invocation.reply, "whole", None)  # one frame, where the reply can
            if whole is not None:
                whole(status, headers, body.encode("latin-1") if body else b"")
                return
        invocation.reply.head(status, headers)
        if handle:
            source = self._bodies.pop(handle, None)
            invocation.body_open = True
            op = _Op(request_id)
            op_id = self._next_op
            self._next_op += 1
            self._ops[op_id] = op
            self._live_ops += 1
            op.handle = self._loop.create_task(self._pipe(op_id, invocation, source))
            return
        if length < 0:  # the isolate streams it: chunk effects follow
            invocation.body_open = True
            return
        if body is not None or not length:
            if body:
                invocation.reply.body(body.encode("latin-1"))
            invocation.reply.end()
            return
        invocation.body_open = True
        for offset in range(0, length, BODY_CHUNK):
            self._schedule(request_id, "pull", request_id, offset, BODY_CHUNK, charged=False)

    async def _pipe(self, op_id: int, invocation: _Invocation, body: _HostBody | None) -> None:
        """Send a host body (an origin's response passed through, say) to the client, never via JS."""
        try:
            while body is not None:
                chunk = await body.source.read(READ_CHUNK)
                if not chunk or not invocation.body_open:
                    break
                invocation.reply.body(chunk)
                await self._writable(invocation)
        except (BodyAborted, SubrequestError) as exc:
            if invocation.body_open:
                invocation.reply.log("error", f"The response body failed: {exc}")
                invocation.body_open = False
                invocation.reply.error(502, "the response body was cut short")
        finally:
            if body is not None:
                body.source.close()
            if self._ops.pop(op_id, None) is not None:
                self._live_ops -= 1
        if invocation.body_open:
            invocation.reply.end()
        self._body_closed(invocation)
        self._settle_idle()

    def _body_closed(self, invocation: _Invocation) -> None:
        """The response body has ended (or failed, or its client left)."""
        invocation.body_open = False
        if invocation.finish_after_body:
            self._finish(invocation)
        elif invocation.deadline is None and not invocation.finished:
            invocation.deadline = self._loop.call_later(WAIT_UNTIL_LIMIT_S, self._finish, invocation)

    @staticmethod
    async def _writable(invocation: _Invocation) -> None:
        wait = getattr(invocation.reply, "wait_writable", None)
        if wait is not None:
            await wait(STREAM_WINDOW)

    def _fail_invocation(
        self, invocation: _Invocation, status: int, message: str, outcome: str, finish: bool = True
    ) -> None:
        if not invocation.responded:
            invocation.responded = True
            invocation.reply.error(status, message)
        if invocation.outcome == "ok":
            invocation.outcome = outcome
        if finish:
            self._finish(invocation)
        elif invocation.deadline is None:
            invocation.deadline = self._loop.call_later(WAIT_UNTIL_LIMIT_S, self._finish, invocation)

    def _finish(self, invocation: _Invocation) -> None:
        if invocation.finished:
            return
        invocation.finished = True
        if invocation.deadline is not None:
            invocation.deadline.cancel()
        if invocation.body_open:
            invocation.body_open = False
            invocation.reply.error(502, "the response body was cut short")
        request_id = invocation.request.request_id
        self._invocations.pop(request_id, None)
        self._log_bytes.pop(request_id, None)
        for handle in [h for h, body in self._bodies.items() if body.request_id == request_id]:
            self._bodies.pop(handle).source.close()
        # As on Workers, timers of a finished invocation never fire.
        cancelled = self._cancel_ops(
            lambda op_id: self._ops[op_id].request_id == request_id and not self._ops[op_id].outlives
        )
        if cancelled and not self.broken:
            # The isolate still holds their callbacks (a timer's closure, say): let it drop them.
            self._schedule(None, "forget", json.dumps(cancelled), charged=False)
        wall_ms = (time.monotonic() - invocation.started) * 1000.0
        meter = getattr(invocation.reply, "meter", None)
        if meter is not None:
            meter(
                {
                    "subrequests": invocation.operations.get("subrequest", 0),
                    "kv_ops": invocation.operations.get("kv_namespace", 0),
                }
            )
        invocation.reply.done(invocation.outcome, invocation.cpu_seconds * 1000.0, wall_ms)
        self.last_used = time.monotonic()

    # --- host operations --------------------------------------------------------------------

    def _start_op(self, request_id: int | None, op_id: int, kind: str, argument: Any, data: str | None) -> None:
        op = _Op(request_id)
        self._ops[op_id] = op
        if kind == "sleep":
            delay = max(0.0, float(argument or 0)) / 1000.0
            if delay:
                op.handle = self._loop.call_later(delay, self._complete, op_id, True, None)
            else:  # in order with the slice runner's turn (_run_slices)
                op.handle = self._loop.call_soon(self._complete, op_id, True, None)
            return
        work: Awaitable[tuple[bool, Any, bytes | None]]
        if kind == "defer":
            # A Durable Object's input gate reopens: the next event runs in a slice charged to it.
            target = int(argument) if isinstance(argument, int | float) else None
            if target is not None and target in self._invocations:
                op.request_id = target
            op.outlives = True
            self._loop.call_soon(self._complete, op_id, True, "null")
            return
        if kind == "runtimeLoad":
            # The runtime's own one-off set-up in this isolate (compiling the HTMLRewriter's
            # wasm): done in a slice of its own, not on the time of the request that needed it.
            self._schedule(request_id, "runtimeLoad", str(argument), charged=False)
            self._loop.call_soon(self._complete, op_id, True, "null")
            return
        if kind == "read":
            handle, limit = json.loads(argument)
            work = self._read(int(handle), max(1, min(int(limit), READ_CHUNK)), whole=False)
        elif kind == "readAll":
            work = self._read(int(argument), READ_CHUNK, whole=True)
        elif kind == "drain":
            work = self._drain(int(argument))
        elif kind == "sinkReady":
            work = self._sink_ready(int(argument))
        elif kind == "fetch":
            work = self._subrequest(request_id, json.loads(argument), data)
        elif kind == "connect":
            work = self._connect(request_id, json.loads(argument))
        elif kind == "startTls":
            work = self._start_tls(request_id, json.loads(argument))
        elif kind == "call":
            call = json.loads(argument)
            spec = self.script.binding(call.get("binding")) if isinstance(call, dict) else None
            op.outlives = spec is not None and spec.get("type") in OUTLIVING_TYPES
            work = self._binding_call(request_id, call, data)
        else:
            self._loop.call_soon(self._complete, op_id, False, f"unknown host operation {kind}")
            return
        op.handle = self._loop.create_task(self._run_op(op_id, work))

    async def _run_op(self, op_id: int, work: Awaitable[tuple[bool, Any, bytes | None]]) -> None:
        try:
            ok, value, data = await work
        except (BodyAborted, SubrequestError) as exc:
            ok, value, data = False, {"name": "TypeError", "message": str(exc)}, None
        except Exception as exc:  # a bug of ours must not leave the worker's promise pending forever
            self._log_sink("error", f"warren runtime error in a host operation: {exc!r}")
            ok, value, data = False, {"name": "Error", "message": "internal error"}, None
        self._deliver(op_id, ok, value, data)

    def _deliver(self, op_id: int, ok: bool, value: Any, data: bytes | None) -> None:
        """Complete an operation with a JSON value and, optionally, bytes."""
        op = self._ops.get(op_id)
        if op is None:
            return
        text = json.dumps(value)
        if data is not None and len(data) > INLINE_BODY:
            # In uncharged slices of their own: converting bytes is the runtime's cost.
            for offset in range(0, len(data), BODY_CHUNK):
                chunk = data[offset : offset + BODY_CHUNK].decode("latin-1")
                self._schedule(op.request_id, "stash", op_id, chunk, offset + BODY_CHUNK >= len(data), charged=False)
            self._complete(op_id, ok, text, None)
        else:
            self._complete(op_id, ok, text, data.decode("latin-1") if data is not None else None)

    def _adopt_body(self, request_id: int | None, source: BodySource) -> int:
        handle = self._next_body
        self._next_body += 1
        self._bodies[handle] = _HostBody(request_id, source)
        return handle

    async def _read(self, handle: int, limit: int, whole: bool) -> tuple[bool, Any, bytes | None]:
        body = self._bodies.get(handle)
        if body is None:
            return False, {"name": "TypeError", "message": "This body is no longer available."}, None
        data = await (read_all(body.source) if whole else body.source.read(limit))
        if whole or not data:
            self._bodies.pop(handle, None)
            body.source.close()
        return True, None, data if (data or whole) else None

    async def _drain(self, request_id: int) -> tuple[bool, Any, bytes | None]:
        invocation = self._invocations.get(request_id)
        if invocation is not None and invocation.body_open:
            await self._writable(invocation)
        return True, invocation is not None and invocation.body_open, None

    async def _sink_ready(self, handle: int) -> tuple[bool, Any, bytes | None]:
        body = self._bodies.get(handle)
        source = body.source if body is not None else None
        while isinstance(source, QueueBody) and source.buffered > SINK_WINDOW and handle in self._bodies:
            await asyncio.sleep(0.005)
        return True, handle in self._bodies, None

    def _count(self, request_id: int | None, kind: str, limit: int, message: str) -> str | None:
        """Count an operation against its invocation's limit; the error message past it."""
        invocation = self._invocations.get(request_id) if request_id is not None else None
        if invocation is None:
            return None
        used = invocation.operations.get(kind, 0) + 1
        invocation.operations[kind] = used
        return message if used > limit else None

    async def _subrequest(
        self, request_id: int | None, head: dict[str, Any], data: str | None
    ) -> tuple[bool, Any, bytes | None]:
        refused = self._count(request_id, "subrequest", self.script.subrequest_limit, TOO_MANY_SUBREQUESTS)
        if refused is not None:
            return False, {"name": "Error", "message": refused}, None
        if self._fetcher is None:
            return False, {"name": "TypeError", "message": "fetch() is not available in this runtime."}, None
        body: bytes | BodySource | None = None
        if data is not None:
            body = data.encode("latin-1")
        elif head.get("body"):
            # Kept registered: a sink's writer still looks it up (and the invocation's end closes it).
            held = self._bodies.get(int(head["body"]))
            if held is None:
                return False, {"name": "TypeError", "message": "The request body is no longer available."}, None
            body = held.source
        headers = [(str(name), str(value)) for name, value in head["headers"]]
        if _asks_for_websocket(str(head["method"]), headers):
            return await self._open_websocket(request_id, str(head["url"]), headers)
        response = await self._fetcher.fetch(
            str(head["method"]), str(head["url"]), headers, body, str(head.get("redirect", "follow"))
        )
        handle = self._adopt_body(request_id, response.body) if response.body is not None else 0
        value = {
            "status": response.status,
            "statusText": response.status_text,
            "headers": response.headers,
            "url": response.url,
            "redirected": response.redirected,
            "body": handle,
        }
        return True, value, None

    async def _open_websocket(
        self, request_id: int | None, url: str, headers: list[tuple[str, str]]
    ) -> tuple[bool, Any, bytes | None]:
        """fetch() with ``Upgrade: websocket``: a 101 with the origin socket's id, or the origin's refusal."""
        assert self._fetcher is not None
        if self._open_connections() >= MAX_OUTGOING_CONNECTIONS:
            return False, {"name": "Error", "message": TOO_MANY_CONNECTIONS}, None
        self._connecting += 1
        try:
            opened = await self._fetcher.websocket(url, headers)
        finally:
            self._connecting -= 1
        if not isinstance(opened, OriginSocket):
            value = {"status": opened.status, "statusText": opened.status_text, "headers": opened.headers}
            return True, {**value, "url": opened.url, "redirected": False, "body": 0}, None
        if self.broken or (request_id is not None and request_id not in self._invocations):
            await opened.socket.close(code=1001)
            return False, {"name": "TypeError", "message": "The request that opened this WebSocket has ended."}, None
        value = {"status": 101, "statusText": "Switching Protocols", "headers": opened.headers, "url": url}
        socket_id = self._sockets.adopt_origin(request_id, opened.socket)
        return True, {**value, "redirected": False, "body": 0, "webSocket": socket_id}, None

    async def _connect(self, request_id: int | None, head: dict[str, Any]) -> tuple[bool, Any, bytes | None]:
        """``cloudflare:sockets``' connect(): a TCP connection, read as a host body and written
        from a sink the isolate feeds. Counted as a subrequest; closed with its invocation."""
        refused = self._count(request_id, "subrequest", self.script.subrequest_limit, TOO_MANY_SUBREQUESTS)
        if refused is not None:
            return False, {"name": "Error", "message": refused}, None
        if self._fetcher is None:
            return False, {"name": "TypeError", "message": "connect() is not available in this runtime."}, None
        if self._open_connections() >= MAX_OUTGOING_CONNECTIONS:
            return False, {"name": "Error", "message": TOO_MANY_CONNECTIONS}, None
        self._connecting += 1
        try:
            connection = await self._fetcher.connect(str(head["hostname"]), int(head["port"]), bool(head.get("tls")))
        finally:
            self._connecting -= 1
        if self.broken or (request_id is not None and request_id not in self._invocations):
            connection.close()
            return False, {"name": "Error", "message": "The request that opened this socket has ended."}, None
        for gone in [key for key, each in self._tcp.items() if each.connection.closed]:
            del self._tcp[gone]
        socket_id = self._next_tcp
        self._next_tcp += 1
        tcp = _TcpSocket(connection)
        self._tcp[socket_id] = tcp
        value = self._attach_tcp(request_id, socket_id, tcp, int(head["sink"]))
        value.update(remoteAddress=connection.remote_address, localAddress=connection.local_address)
        return True, value, None

    def _open_connections(self) -> int:
        open_tcp = sum(1 for tcp in self._tcp.values() if not tcp.connection.closed)
        return open_tcp + self._sockets.origin_count + self._connecting

    def _attach_tcp(self, request_id: int | None, socket_id: int, tcp: _TcpSocket, sink: int) -> dict[str, Any]:
        """A new readable (a host body) and a pipe from the isolate's sink ``sink`` to the connection."""
        tcp.reading = _TcpReadBody(tcp.connection)
        handle = self._adopt_body(request_id, tcp.reading)
        tcp.writing = self._loop.create_task(self._pipe_to_tcp(tcp, sink))
        return {"socket": socket_id, "readable": handle}

    async def _pipe_to_tcp(self, tcp: _TcpSocket, sink: int) -> None:
        held = self._bodies.get(sink)
        if held is None:
            return
        try:
            while chunk := await held.source.read(READ_CHUNK):
                await tcp.connection.write(chunk)
            if not tcp.upgrading:
                tcp.connection.end_writing()  # the writable was closed: the peer reads its end
        except (BodyAborted, SubrequestError):
            tcp.connection.close()
        finally:
            if self._bodies.get(sink) is held:
                del self._bodies[sink]
            held.source.close()

    async def _start_tls(self, request_id: int | None, head: dict[str, Any]) -> tuple[bool, Any, bytes | None]:
        tcp = self._tcp.get(int(head["socket"]))
        if tcp is None or tcp.connection.closed or tcp.reading is None:
            return False, {"name": "TypeError", "message": "The socket is closed."}, None
        # The plain streams end here (the isolate has given them up); the TLS ones replace them.
        tcp.upgrading = True
        tcp.reading.detached = True
        for handle in [h for h, body in self._bodies.items() if body.source is tcp.reading]:
            del self._bodies[handle]
        if tcp.writing is not None:
            tcp.writing.cancel()
        expected = head.get("hostname")
        await tcp.connection.start_tls(str(expected) if expected is not None else None)
        tcp.upgrading = False
        return True, self._attach_tcp(request_id, int(head["socket"]), tcp, int(head["sink"])), None

    async def _binding_call(
        self, request_id: int | None, call: dict[str, Any], data: str | None
    ) -> tuple[bool, Any, bytes | None]:
        spec = self.script.binding(call.get("binding"))
        if spec is None or self._calls is None:
            return False, {"name": "TypeError", "message": f"No binding named {call.get('binding')!r}."}, None
        kind = str(spec.get("type"))
        limit = OPERATION_LIMITS.get(kind)
        if limit is not None:
            generic = f"Too many {kind} operations in one invocation (limit {limit})."
            message = OPERATION_LIMIT_MESSAGES.get(kind, generic)
            refused = self._count(request_id, kind, limit, message)
            if refused is not None:
                return False, {"name": "Error", "message": refused}, None
        if kind in SUBREQUEST_TYPES:
            refused = self._count(request_id, "subrequest", self.script.subrequest_limit, TOO_MANY_SUBREQUESTS)
            if refused is not None:
                return False, {"name": "Error", "message": refused}, None
        payload: bytes | None = None
        body_limit, too_large = BINDING_BODY_LIMITS.get(kind, DEFAULT_BINDING_BODY_LIMIT)
        size = 0
        if data is not None:
            payload = data.encode("latin-1")
            size = len(payload)
        elif call.get("body"):
            held = self._bodies.pop(int(call["body"]), None)
            if held is None:
                return False, {"name": "TypeError", "message": "The body is no longer available."}, None
            chunks: list[bytes] = []
            try:
                # Counted to its end past the limit (the message says the size), but never kept.
                while chunk := await held.source.read(BODY_CHUNK):
                    size += len(chunk)
                    if size <= body_limit:
                        chunks.append(chunk)
                    else:
                        chunks.clear()
            finally:
                held.source.close()
            payload = b"".join(chunks)
        if size > body_limit:
            return False, {"name": "Error", "message": too_large.format(size=size, limit=body_limit)}, None
        call = {"binding": call.get("binding"), "method": call.get("method"), "args": call.get("args")}
        ok, value, result = await self._calls(request_id, call, payload)
        if ok and result is not None and len(result) > INLINE_BODY:
            # Large results are read by handle, so a stream of them never sits whole in JavaScript.
            return True, {"value": value, "body": self._adopt_body(request_id, BytesBody(result))}, None
        return ok, {"value": value} if ok else value, result

    def _complete(self, op_id: int, ok: bool, value: str | None, data: str | None = None) -> None:
        op = self._ops.pop(op_id, None)
        if op is None:
            return
        self._live_ops -= 1
        self._schedule(op.request_id, "complete", op_id, ok, value, data)

    def _cancel_ops(self, which: Callable[[int], bool]) -> list[int]:
        cancelled = [op_id for op_id in self._ops if which(op_id)]
        for op_id in cancelled:
            op = self._ops.pop(op_id)
            self._live_ops -= 1
            if op.handle is not None:
                op.handle.cancel()
        return cancelled


_FORBIDDEN_IN_HEADERS = re.compile(r"[\r\n\0]")


def _asks_for_websocket(method: str, headers: list[tuple[str, str]]) -> bool:
    """A fetch() that opens a WebSocket, as on Workers: a GET with ``Upgrade: websocket``."""
    return method.upper() == "GET" and any(
        name.lower() == "upgrade" and "websocket" in value.lower() for name, value in headers
    )


def _valid_headers(headers_json: str) -> list[tuple[str, str]] | None:
    """Header pairs from the isolate, or None if they could split a response."""
    try:
        pairs = load_json(headers_json)
    except ValueError:
        return None
    if not isinstance(pairs, list):
        return None
    headers = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            return None
        name, value = pair
        if not name or _FORBIDDEN_IN_HEADERS.search(name) or _FORBIDDEN_IN_HEADERS.search(value):
            return None
        try:
            name.encode("latin-1"), value.encode("latin-1")
        except UnicodeEncodeError:
            return None
        headers.append((name, value))
    return headers


def _exception_fields(name: str, message: str, stack: str) -> tuple[str, str, str]:
    """An uncaught exception's name, message and stack, bounded as log lines are."""
    return str(name)[:LOG_LINE_BYTES], str(message)[:LOG_LINE_BYTES], str(stack)[:LOG_LINE_BYTES]


_ASSETS = frozenset({"html_rewriter_bg.wasm"})


@functools.cache
def runtime_asset(name: str) -> str | None:
    if name not in _ASSETS:
        return None
    return resources.files("warren.runtime").joinpath("vendor", name).read_bytes().decode("latin-1")


def _now_ms() -> float:
    # A float: stpyv8 turns a Python int past 2**31 into a wrapped 32-bit integer.
    return float(int(time.time() * 1000))
