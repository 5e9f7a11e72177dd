"""One running instance of a Worker: an isolate, its event loop, its invocations.

JavaScript runs in "slices" on a thread of the executor, one slice at a time
per Worker; between slices the isolate waits for host operations (timers,
request bodies) on the asyncio loop. Host functions called from JavaScript only
record effects, which the loop applies after the slice returns, so nothing on
the JS thread touches asyncio.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from warren.engine import (
    CpuLimitExceeded,
    EngineError,
    Isolate,
    IsolateTerminated,
    MemoryLimitExceeded,
    ScriptError,
)
from warren.runtime.crypto import CryptoHost
from warren.runtime.pool import ENTRY_POINT as _ENTER
from warren.runtime.pool import IsolatePool, PreparedIsolate, prepare_isolate
from warren.runtime.script import (
    STARTUP_CPU_MS,
    CompiledModule,
    Compiler,
    ScriptLoadError,
    WorkerScript,
)

WAIT_UNTIL_LIMIT_S = 30.0
REFILL_DELAY_S = 0.1
# Bodies cross into and out of the isolate as latin-1 strings (stpyv8 has no
# way to share bytes). Small ones ride along with the event; larger ones move
# in chunks, each in a slice of its own that is not charged to the request's
# CPU time: the conversion is the runtime's overhead (about 3 ms per MB each
# way here), not the script's work.
INLINE_BODY = 64 * 1024
BODY_CHUNK = 1024 * 1024
TRANSFER_BUDGET_MS = 200.0
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


class BodySource(Protocol):
    async def read_all(self) -> bytes: ...


class Reply(Protocol):
    """Where one invocation's results go. Called on the event loop."""

    def head(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def body(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def error(self, status: int, message: str) -> None: ...
    def log(self, level: str, message: str) -> None: ...
    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None: ...


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


@dataclass
class _Invocation:
    request: IncomingRequest
    reply: Reply
    started: float = field(default_factory=time.monotonic)
    cpu_seconds: float = 0.0
    responded: bool = False
    finished: bool = False
    outcome: str = "ok"
    deadline: asyncio.TimerHandle | None = None
    body_open: bool = False  # a response head went out and its body is still being pulled
    finish_after_body: bool = False


@dataclass
class _Op:
    request_id: int | None
    handle: asyncio.TimerHandle | asyncio.Task[Any] | None = None


LogSink = Callable[[str, str], None]
# Told, on the JS thread, which worker and request is about to run JavaScript
# (and None after): the runtime process records it so a crash has a culprit.
Activity = Callable[[str | None, int | None], None]


class Worker:
    """An isolate running one version of one script, serving its requests."""

    def __init__(
        self,
        script: WorkerScript,
        executor: Executor,
        compiler: Compiler,
        log_sink: LogSink,
        activity: Activity | None = None,
        key: str = "",
        pool: IsolatePool | None = None,
    ) -> None:
        self.script = script
        self._pool = pool
        self._crypto = CryptoHost()  # this worker's keys: never shared with another isolate
        self.cold_start_pooled = False
        self.key = key or script.name
        self._activity = activity
        self._executor = executor
        self._compiler = compiler
        self._log_sink = log_sink
        self._loop = asyncio.get_running_loop()
        self._isolate: Isolate | None = None
        self._turn = asyncio.Lock()
        self._queued_slices = 0
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

    # --- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Create the isolate and run the script's top level; raises ScriptLoadError."""
        async with self._turn:
            modules = await self._loop.run_in_executor(self._executor, self._compiler.compile, self.script)
            prepared = self._pool.take(self.script.memory_mb) if self._pool is not None else None
            self.cold_start_pooled = prepared is not None
            try:
                await self._loop.run_in_executor(self._executor, self._load, modules, prepared)
            finally:
                self._apply_effects()
                if self._pool is not None:
                    # Later, not now: a new worker's first request usually follows at
                    # once, and preparing an isolate would compete with it for the GIL.
                    self._loop.call_later(REFILL_DELAY_S, self._pool.refill)
            # Any crash or incident then maps to exact bytes in the archive.
            self._log_sink("info", f"started {self.key} running code sha256 {self.script.code_hash}")

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
            config = json.dumps({"env": self.script.vars, "compatibilityDate": self.script.compatibility_date})
            isolate.call(_ENTER, _now_ms(), "configure", config, cpu_budget_ms=STARTUP_CPU_MS)
            for module in modules:
                if module.kind in ("script", "esm"):
                    isolate.run_script(module.text, module.name, cpu_budget_ms=STARTUP_CPU_MS)
                else:
                    isolate.call(
                        _ENTER, _now_ms(), "defineData", module.name, module.kind, module.text,
                        cpu_budget_ms=STARTUP_CPU_MS,
                    )
            main = modules[0].name if modules[0].kind == "esm" else None
            problem = isolate.call(_ENTER, _now_ms(), "loaded", main, cpu_budget_ms=STARTUP_CPU_MS)
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

    def _discard_isolate(self) -> None:
        if self._isolate is not None:
            self._isolate.dispose()
            self._isolate = None
        self.broken = True

    async def close(self) -> None:
        """Dispose of the isolate once no slice is running. Pending invocations fail."""
        self.broken = True
        for invocation in list(self._invocations.values()):
            self._fail_invocation(invocation, 503, RESTARTED, "canceled")
        self._cancel_ops(lambda op: True)
        async with self._turn:
            if self._isolate is not None:
                await self._loop.run_in_executor(self._executor, self._discard_isolate)

    async def compact(self) -> None:
        """Shrink an idle isolate's heap (a full collection); a no-op once done until it runs again."""
        if self._compacted_at == self.last_used or not self.idle or self._isolate is None:
            return
        async with self._turn:
            if self._isolate is not None and not self.broken:
                await self._loop.run_in_executor(self._executor, self._isolate.compact)
                self._compacted_at = self.last_used

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
            self._schedule(request.request_id, "scheduled", request.request_id, request.cron, request.scheduled_time)
            return
        headers = json.dumps(request.headers)
        self._schedule(
            request.request_id,
            "fetch",
            request.request_id,
            request.method,
            request.url,
            headers,
            request.body is not None,
        )

    def cancel(self, request_id: int) -> None:
        """The client went away: its response is no longer wanted."""
        invocation = self._invocations.get(request_id)
        if invocation is not None and not invocation.responded:
            invocation.outcome = "canceled"

    # --- slices -------------------------------------------------------------------

    def _schedule(self, request_id: int | None, *args: Any, charged: bool = True) -> None:
        self._queued_slices += 1
        self._loop.create_task(self._slice(request_id, args, charged))

    async def _slice(self, request_id: int | None, args: tuple[Any, ...], charged: bool) -> None:
        try:
            async with self._turn:
                if self.broken or self._isolate is None:
                    return
                invocation = self._invocations.get(request_id) if request_id is not None else None
                budget = self.script.cpu_ms
                if not charged:
                    budget = TRANSFER_BUDGET_MS
                elif invocation is not None:
                    budget = max(0.0, self.script.cpu_ms - invocation.cpu_seconds * 1000.0)
                self._current = request_id
                self._log_bytes.pop(None, None)
                failure: BaseException | None = None
                try:
                    await self._loop.run_in_executor(self._executor, self._enter, budget, args)
                except (IsolateTerminated, ScriptError, EngineError) as exc:
                    failure = exc
                # Charged before anything reports the invocation's cost.
                used = self._isolate.last_cpu_seconds if self._isolate is not None else 0.0
                self.cpu_seconds_total += used
                if invocation is not None and charged:
                    invocation.cpu_seconds += used
                self._current = None
                if isinstance(failure, IsolateTerminated):
                    # What the terminated slice did is void, except what it logged.
                    self._effects = [effect for effect in self._effects if effect[0] == "log"]
                    self._apply_effects()
                    await self._terminated(request_id, failure)
                    return
                if failure is not None:
                    self._log_sink("error", f"warren runtime error: {failure}")
                self._apply_effects()
        finally:
            self._queued_slices -= 1
            self._settle_idle()

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
        await self._loop.run_in_executor(self._executor, self._discard_isolate)

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

    def _host_op(self, kind: str, argument: Any) -> int:
        if self._live_ops >= MAX_PENDING_OPS:
            return -1
        self._live_ops += 1
        op_id = self._next_op
        self._next_op += 1
        self._effects.append(("op", self._current, op_id, str(kind), argument))
        return op_id

    def _host_cancel_op(self, op_id: int) -> None:
        self._effects.append(("cancel", int(op_id)))

    def _host_respond(
        self, request_id: int, status: int, status_text: str, headers: str, body: str | None, length: int
    ) -> None:
        self._effects.append(("respond", int(request_id), int(status), str(headers), body, int(length or 0)))

    def _host_chunk(self, request_id: int, data: str, last: bool) -> None:
        self._effects.append(("chunk", int(request_id), data, bool(last)))

    def _host_fail(self, request_id: int, name: str, message: str, stack: str) -> None:
        self._effects.append(("exception", int(request_id), *_exception_fields(name, message, stack)))
        self._effects.append(("fail", int(request_id), str(stack)))

    def _host_crypto(self, operation: str, arguments: str, data: str | None) -> str:
        """WebCrypto, computed here on the JS thread (it is the script's CPU time)."""
        return self._crypto.call(str(operation), str(arguments), data)

    def _host_done(self, request_id: int) -> None:
        self._effects.append(("done", int(request_id)))

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
            elif kind == "cancel":
                self._cancel_ops(effect[1].__eq__)
            elif kind == "respond":
                self._respond(*effect[1:])
            elif kind == "chunk":
                _, request_id, data, last = effect
                invocation = self._invocations.get(request_id)
                if invocation is not None and invocation.body_open:
                    invocation.reply.body(data.encode("latin-1"))
                    if last:
                        invocation.body_open = False
                        invocation.reply.end()
                        if invocation.finish_after_body:
                            self._finish(invocation)
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

    def _respond(self, request_id: int, status: int, headers_json: str, body: str | None, length: int) -> None:
        invocation = self._invocations.get(request_id)
        if invocation is None or invocation.responded:
            return
        headers = _valid_headers(headers_json)
        if headers is None or not 100 <= status <= 999:
            # Only a script that tampered with the runtime's own JavaScript gets here.
            invocation.reply.log("error", "The worker produced a malformed response.")
            self._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            return
        invocation.responded = True
        if length and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
            headers.append(("content-length", str(length)))
        invocation.deadline = self._loop.call_later(WAIT_UNTIL_LIMIT_S, self._finish, invocation)
        if invocation.outcome == "canceled":
            return
        invocation.reply.head(status, headers)
        if body is not None or not length:
            if body:
                invocation.reply.body(body.encode("latin-1"))
            invocation.reply.end()
            return
        invocation.body_open = True
        for offset in range(0, length, BODY_CHUNK):
            self._schedule(request_id, "pull", request_id, offset, BODY_CHUNK, charged=False)

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
        # As on Workers, timers of a finished invocation never fire.
        cancelled = self._cancel_ops(lambda op_id: self._ops[op_id].request_id == request_id)
        if cancelled and not self.broken:
            # The isolate still holds their callbacks (a timer's closure, say): let it drop them.
            self._schedule(None, "forget", json.dumps(cancelled), charged=False)
        wall_ms = (time.monotonic() - invocation.started) * 1000.0
        invocation.reply.done(invocation.outcome, invocation.cpu_seconds * 1000.0, wall_ms)
        self.last_used = time.monotonic()

    # --- host operations --------------------------------------------------------------------

    def _start_op(self, request_id: int | None, op_id: int, kind: str, argument: Any) -> None:
        op = _Op(request_id)
        self._ops[op_id] = op
        if kind == "sleep":
            delay = max(0.0, float(argument or 0)) / 1000.0
            op.handle = self._loop.call_later(delay, self._complete, op_id, True, None)
        elif kind == "readBody":
            invocation = self._invocations.get(int(argument))
            body = invocation.request.body if invocation is not None else None
            op.handle = self._loop.create_task(self._read_body(op_id, body))
        else:
            self._loop.call_soon(self._complete, op_id, False, f"unknown host operation {kind}")

    async def _read_body(self, op_id: int, body: BodySource | None) -> None:
        try:
            data = await body.read_all() if body is not None else b""
        except Exception as exc:
            self._complete(op_id, False, f"reading the request body failed: {exc}")
            return
        if len(data) <= INLINE_BODY:
            self._complete(op_id, True, data.decode("latin-1"))
            return
        op = self._ops.get(op_id)
        if op is None:
            return
        for offset in range(0, len(data), BODY_CHUNK):
            chunk = data[offset : offset + BODY_CHUNK].decode("latin-1")
            last = offset + BODY_CHUNK >= len(data)
            self._schedule(op.request_id, "stash", op_id, chunk, last, charged=False)
        self._complete(op_id, True, None)

    def _complete(self, op_id: int, ok: bool, value: str | None) -> None:
        op = self._ops.pop(op_id, None)
        if op is None:
            return
        self._live_ops -= 1
        self._schedule(op.request_id, "complete", op_id, ok, value)

    def _cancel_ops(self, which: Callable[[int], bool]) -> list[int]:
        cancelled = [op_id for op_id in self._ops if which(op_id)]
        for op_id in cancelled:
            op = self._ops.pop(op_id)
            self._live_ops -= 1
            if op.handle is not None:
                op.handle.cancel()
        return cancelled


_FORBIDDEN_IN_HEADERS = re.compile(r"[\r\n\0]")


def _valid_headers(headers_json: str) -> list[tuple[str, str]] | None:
    """Header pairs from the isolate, or None if they could split a response."""
    try:
        pairs = json.loads(headers_json)
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


def _now_ms() -> int:
    return int(time.time() * 1000)

