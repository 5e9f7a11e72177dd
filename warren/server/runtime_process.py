"""The runtime process: isolates live here, away from the listening socket.

V8 aborts the whole process when an isolate cannot get memory, so isolates
never run in the supervisor. This process speaks only the frame protocol on
the socket it inherits; the supervisor restarts it if it dies.

Started as ``python -m warren.server.runtime_process --fd N --slots-fd M``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import mmap
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from warren.bindings import decode_message, encode_message
from warren.engine import configure, set_abort_hook
from warren.json_codec import load_json
from warren.runtime import Compiler, IncomingRequest, ScriptLoadError, Worker, WorkerScript
from warren.runtime.bodies import QueueBody
from warren.runtime.pool import DEFAULT_POOL_SIZE, IsolatePool
from warren.runtime.subrequests import Fetcher, SubrequestPolicy
from warren.runtime.threads import JsThreads
from warren.server import websockets
from warren.server.protocol import (
    BODY_CHUNK,
    FrameChannel,
    Kind,
    decode_with_body,
    encode,
    encode_json,
    encode_with_body,
)

ACTIVITY_SLOTS = 16
ACTIVITY_SLOT_SIZE = 128
# A slot: one flag byte ("!" on the thread whose isolate aborted the process),
# 8 bytes of request id, then the worker key.
_FLAG = 1
_ID = 8
_ABORTING = b"!"


class ActivityBoard:
    """A shared page where each JS thread writes which worker it is running.

    After a crash the supervisor reads it to name the script that was running:
    writing a few bytes per slice costs nothing, and survives the process.
    """

    def __init__(self, fd: int) -> None:
        # An unnamed file the supervisor made and keeps open: nothing on disk outlives either process.
        self._map = mmap.mmap(fd, ACTIVITY_SLOTS * ACTIVITY_SLOT_SIZE)
        os.close(fd)
        self._slot = threading.local()
        self._next = 0
        self._lock = threading.Lock()

    def _slot_offset(self) -> int:
        offset: int | None = getattr(self._slot, "offset", None)
        if offset is None:
            with self._lock:
                offset = (self._next % ACTIVITY_SLOTS) * ACTIVITY_SLOT_SIZE
                self._next += 1
            self._slot.offset = offset
        return offset

    def mark(self, key: str | None, request_id: int | None) -> None:
        offset = self._slot_offset()
        if key is None:
            self._map[offset : offset + ACTIVITY_SLOT_SIZE] = bytes(ACTIVITY_SLOT_SIZE)
            return
        encoded = key.encode()[: ACTIVITY_SLOT_SIZE - _FLAG - _ID]
        record = b"\0" + (request_id or 0).to_bytes(_ID, "big") + encoded
        self._map[offset : offset + ACTIVITY_SLOT_SIZE] = record.ljust(ACTIVITY_SLOT_SIZE, b"\0")

    def mark_aborting(self) -> None:
        """Called on the thread whose isolate is aborting the process: it, not its neighbours, is the cause."""
        offset = self._slot_offset()
        self._map[offset : offset + _FLAG] = _ABORTING


def read_activity(fd: int) -> list[tuple[str, int]]:
    """(worker key, request id) of the JS threads that caused a crash, from the board file.

    The thread whose isolate aborted the process marks itself; if one did, it
    alone is named. Otherwise (a crash V8 did not report) every thread that was
    running JavaScript is.
    """
    try:
        data = os.pread(fd, ACTIVITY_SLOTS * ACTIVITY_SLOT_SIZE, 0)
    except OSError:
        return []
    running = []
    aborting = []
    for offset in range(0, len(data), ACTIVITY_SLOT_SIZE):
        slot = data[offset : offset + ACTIVITY_SLOT_SIZE]
        key = slot[_FLAG + _ID :].rstrip(b"\0").decode(errors="replace")
        if key:
            entry = (key, int.from_bytes(slot[_FLAG : _FLAG + _ID], "big"))
            running.append(entry)
            if slot[:_FLAG] == _ABORTING:
                aborting.append(entry)
    return aborting or running


class _FrameReply:
    """Sends one invocation's results back to the supervisor as frames."""

    def __init__(self, runtime: RuntimeServer, stream: int) -> None:
        self._runtime = runtime
        self._stream = stream
        # metering, reported with DONE
        self.bytes_out = 0
        self.cold = False  # the request waited for its worker's isolate to start
        self.worker: Worker | None = None
        self.operations: dict[str, int] = {}
        self.exceptions: list[dict[str, Any]] = []
        self.unconfirmed = 0  # body bytes sent that the supervisor has not yet passed on
        self.gone = False
        self._credit = asyncio.Event()
        self._held: tuple[int, list[tuple[str, str]], bytes] | None = None  # a whole response not yet sent

    def confirm(self, count: int) -> None:
        self.unconfirmed = max(0, self.unconfirmed - count)
        self._credit.set()

    def abandon(self) -> None:
        """The client went away: nobody will take the rest of the body."""
        self.gone = True
        self._credit.set()

    async def wait_writable(self, window: int) -> None:
        """Until the client has taken all but ``window`` bytes of what was sent."""
        while self.unconfirmed > window and not self._runtime.closing and not self.gone:
            self._credit.clear()
            await self._credit.wait()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._runtime.send(encode_json(Kind.HEAD, self._stream, {"status": status, "headers": headers}))

    def whole(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """Head, body and end of a small response, in one frame.

        Held until ``done``, which usually comes later in the same pass over a slice's
        effects: then response and metering leave in one RESPONSE_DONE frame. Whatever
        is still held when the loop turns (work left in ``waitUntil``, say) leaves alone.
        """
        self.bytes_out += len(data)
        self._held = (status, headers, data)
        self._runtime.hold(self)

    def release(self) -> None:
        """Send a held response now."""
        self._send_held(Kind.RESPONSE)

    def _send_held(self, kind: Kind, *more: dict[str, Any]) -> bool:
        """Send the held response (RESPONSE, or RESPONSE_DONE with ``more``: the metering), if any."""
        if self._held is None:
            return False
        status, headers, data = self._held
        self._held = None
        self._runtime.send(encode_with_body(kind, self._stream, {"status": status, "headers": headers}, data, *more))
        return True

    def body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        self.unconfirmed += len(chunk)
        for start in range(0, len(chunk), BODY_CHUNK):
            self._runtime.send(encode(Kind.RBODY, self._stream, chunk[start : start + BODY_CHUNK]))

    def end(self) -> None:
        self._runtime.send(encode(Kind.END, self._stream))

    # An accepted WebSocket's frames (warren.runtime.websockets); what the client has not
    # taken counts as unconfirmed, as response body bytes do.
    def ws_message(self, binary: bool, data: bytes) -> None:
        self.bytes_out += len(data)
        self.unconfirmed += len(data) + websockets.MESSAGE_OVERHEAD
        self._runtime.send(encode(Kind.WS_MESSAGE, self._stream, websockets.encode_message(binary, data)))

    def ws_close(self, code: int, reason: str) -> None:
        self._runtime.send(encode(Kind.WS_CLOSE, self._stream, websockets.encode_close(code, reason)))

    def ws_ack(self, count: int) -> None:
        self._runtime.send(encode(Kind.WS_ACK, self._stream, websockets.encode_ack(count)))

    def error(self, status: int, message: str) -> None:
        self.release()
        self._runtime.send(encode_json(Kind.ERROR, self._stream, {"status": status, "message": message}))

    def log(self, level: str, message: str) -> None:
        # Timestamped here, where the slice ended, for the invocation's event (warren.observability).
        script = self._runtime.script_of(self._stream)
        record = {"script": script, "level": level, "message": message, "timestamp": int(time.time() * 1000)}
        self._runtime.send(encode_json(Kind.LOG, self._stream, record))

    def exception(self, name: str, message: str, stack: str) -> None:
        """An uncaught exception of the invocation, reported with DONE (its event lists it)."""
        if len(self.exceptions) < MAX_EXCEPTIONS_REPORTED:
            self.exceptions.append(
                {"name": name, "message": message, "stack": stack, "timestamp": int(time.time() * 1000)}
            )

    def meter(self, operations: dict[str, int]) -> None:
        """Told by the worker before done(): operations of the invocation (subrequests, kv_ops)."""
        self.operations = operations

    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self._runtime.finished(self._stream)
        metering = {
            "outcome": outcome,
            "cpu_ms": cpu_ms,
            "wall_ms": wall_ms,
            "bytes_out": self.bytes_out,
            "cold": self.cold,
            "memory": self.worker.memory_bytes if self.worker is not None else 0,
            **self.operations,
            # the process's isolates now (for the node's metrics)
            "isolates": self._runtime.isolate_count(),
        }
        if self.exceptions:
            metering["exceptions"] = self.exceptions
        if not self._send_held(Kind.RESPONSE_DONE, metering):
            self._runtime.send(encode_json(Kind.DONE, self._stream, metering))


EVICTION_INTERVAL_S = 5.0
ISOLATE_COUNT_INTERVAL_S = 1.0  # how stale the isolate count in metering may be
MAX_EXCEPTIONS_REPORTED = 8  # per invocation; the rest are still in its log
COMPACT_AFTER_S = 10.0  # idle this long, an isolate's garbage is collected
DEFAULT_IDLE_TIMEOUT_S = 300.0
PRECOMPILE_QUEUE = 1000  # registered scripts waiting to be compiled ahead; more are left to their requests
# Of the memory a runtime process may use (the machine's, divided among its
# runtime processes), the share past which idle isolates are evicted.
MEMORY_BUDGET_SHARE = 0.7


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries may not have it
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


_malloc_trim = _find_malloc_trim()


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system. glibc keeps what V8 frees (a
    disposed isolate, a collected heap's tables) for reuse, and that stays in RSS: about
    0.1 MiB per compacted isolate."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def default_memory_budget(processes: int = 1) -> int:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(total / max(1, processes) * MEMORY_BUDGET_SHARE)


class RuntimeServer:
    def __init__(
        self,
        writer: FrameChannel,
        board: ActivityBoard | None,
        js_threads: int,
        pool_size: int,
        policy: SubrequestPolicy | None = None,
    ) -> None:
        self._writer = writer
        self.closing = False
        self._fetcher = Fetcher(policy or SubrequestPolicy())
        self._calls: dict[int, asyncio.Future[tuple[dict[str, Any], bytes | None]]] = {}
        self._next_call = 1
        self._replies: dict[int, _FrameReply] = {}
        self._held_replies: list[_FrameReply] = []  # whole responses waiting for their DONE (_FrameReply.whole)
        self._depths: dict[int, int] = {}
        self._board = board
        self._js_threads = JsThreads(js_threads)
        self._compiler = Compiler()
        # A large script's transform (seconds for megabytes sucrase must take) runs here,
        # never on a JS thread: neighbours' requests would wait behind it.
        self._compile_executor = ThreadPoolExecutor(1, thread_name_prefix="warren-compiler")
        # Its own thread: preparing an isolate (~16 ms) must never queue a request's slice behind it.
        self._pool = IsolatePool(ThreadPoolExecutor(1, thread_name_prefix="warren-pool"), pool_size)
        self._pool.refill()
        # The compiler's first transform compiles sucrase itself (~20 ms): not on a tenant's time.
        self._js_threads.for_worker().submit(
            self._compiler.compile, WorkerScript(name="warm-up", source="export default {};")
        )
        self._scripts: dict[str, WorkerScript] = {}
        self._workers: dict[str, asyncio.Future[Worker]] = {}
        self._retired: set[str] = set()
        self._bodies: dict[int, QueueBody] = {}
        self._stream_keys: dict[int, str] = {}
        self._precompiling: deque[str] = deque()  # registered keys to compile ahead; the first is compiling
        self._isolate_count = 0
        self._isolates_counted_at = -ISOLATE_COUNT_INTERVAL_S

    # -- output --

    def send(self, frame: bytes) -> None:
        self._writer.send(frame)

    def hold(self, reply: _FrameReply) -> None:
        """``reply`` holds a response for its DONE: send it at the next turn if the DONE has not come."""
        self._held_replies.append(reply)
        if len(self._held_replies) == 1:
            asyncio.get_running_loop().call_soon(self._release_held)

    def _release_held(self) -> None:
        held, self._held_replies = self._held_replies, []
        for reply in held:
            reply.release()

    def send_log(self, script: str, level: str, message: str, stream: int = 0) -> None:
        self.send(encode_json(Kind.LOG, stream, {"script": script, "level": level, "message": message}))

    def script_of(self, stream: int) -> str:
        key = self._stream_keys.get(stream, "")
        script = self._scripts.get(key)
        return script.name if script is not None else key

    def finished(self, stream: int) -> None:
        self._bodies.pop(stream, None)
        self._replies.pop(stream, None)
        self._depths.pop(stream, None)
        key = self._stream_keys.pop(stream, None)
        if key in self._retired:
            asyncio.get_running_loop().create_task(self._retire_if_idle(key))

    # -- workers --

    def _worker(self, key: str, first: tuple[IncomingRequest, _FrameReply] | None = None) -> asyncio.Future[Worker]:
        """The worker of ``key``, started if need be. If it starts now, ``first`` is its
        first request, dispatched with the load (``first[1].worker`` is then set)."""
        future = self._workers.get(key)
        if future is not None and future.done() and not future.exception() and future.result().broken:
            future = None  # a broken isolate is replaced on the next request
            self._recount_isolates()
        if future is None:
            future = asyncio.get_running_loop().create_task(self._start_worker(key, first))
            self._workers[key] = future
        return future

    async def evict(self, idle_timeout: float, memory_budget: int) -> list[str]:
        """Dispose of isolates idle past ``idle_timeout``, then least recently used idle ones
        while the process is over ``memory_budget`` bytes. Never one that is serving.

        The script stays registered: its next request starts a new isolate.
        """
        idle = []
        for key, future in self._workers.items():
            if future.done() and future.exception() is None and future.result().idle:
                idle.append((future.result().last_used, key))
        idle.sort()
        now = time.monotonic()
        evicted = [key for last_used, key in idle if now - last_used > idle_timeout]
        over = _rss_bytes() > memory_budget
        for _, key in idle:
            if not over:
                break
            if key not in evicted:
                evicted.append(key)
                over = _rss_bytes() - sum(self._workers[k].result().memory_bytes for k in evicted) > memory_budget
        # Taken out of service all at once, before any await lets a request in.
        victims = [self._workers.pop(key).result() for key in evicted]
        if victims:
            self._recount_isolates()
        for worker in victims:
            await worker.close(keep_code=True)
        # The idle ones kept get a full collection once: ~1 MB less each, here.
        collected = bool(victims)
        for last_used, key in idle:
            kept = self._workers.get(key)
            if kept is not None and now - last_used > COMPACT_AFTER_S:
                collected = await kept.result().compact() or collected
        if collected:
            await self._pool.in_background(release_freed_memory)
        return evicted

    async def evict_forever(self, idle_timeout: float, memory_budget: int) -> None:
        while True:
            await asyncio.sleep(min(EVICTION_INTERVAL_S, idle_timeout / 2))
            evicted = await self.evict(idle_timeout, memory_budget)
            if evicted:
                message = f"evicted {len(evicted)} idle isolate(s): {', '.join(evicted[:5])}"
                # "evicted" and "isolates" feed the node's metrics (Supervisor, LOG frames).
                record = {"script": "warren", "level": "info", "message": message, "evicted": len(evicted)}
                self.send(encode_json(Kind.LOG, 0, {**record, "isolates": self.isolate_count()}))

    def _recount_isolates(self) -> None:
        self._isolates_counted_at = -ISOLATE_COUNT_INTERVAL_S

    def isolate_count(self) -> int:
        """Isolates running now (started and not discarded).

        Every invocation's DONE reports it, and counting cost ~1 ms per request
        with 8,000 isolates in the process: counted again when isolates start or
        go, and at least once a second (one discarded for a limit is seen then).
        """
        now = time.monotonic()
        if now - self._isolates_counted_at >= ISOLATE_COUNT_INTERVAL_S:
            self._isolates_counted_at = now
            self._isolate_count = sum(
                1
                for future in self._workers.values()
                if future.done()
                and not future.cancelled()
                and future.exception() is None
                and not future.result().broken
            )
        return self._isolate_count

    async def _start_worker(self, key: str, first: tuple[IncomingRequest, _FrameReply] | None = None) -> Worker:
        script = self._scripts[key]
        worker = Worker(
            script,
            self._js_threads.for_worker(),
            self._compiler,
            lambda level, message: self.send_log(script.name, level, message),
            self._board.mark if self._board is not None else None,
            key,
            self._pool,
            calls=lambda request_id, call, data: self._call(key, request_id, call, data),
            fetcher=self._fetcher,
            compile_executor=self._compile_executor,
        )
        if first is not None:
            first[1].worker = worker
        await worker.start(first)
        self._recount_isolates()
        return worker

    async def _retire_if_idle(self, key: str) -> None:
        future = self._workers.get(key)
        if future is None or not future.done():
            return
        if future.exception() is None:
            worker = future.result()
            if not worker.idle:
                return
            await worker.close()
        if key not in self._retired:
            return  # loaded again while its old isolate closed
        if self._workers.get(key) is future:
            self._workers.pop(key)
        self._scripts.pop(key, None)
        self._retired.discard(key)
        self._recount_isolates()

    async def _call(
        self, key: str, stream: int | None, call: dict[str, Any], data: bytes | None
    ) -> tuple[bool, Any, bytes | None]:
        """A binding call, answered by the supervisor (warren.bindings)."""
        call_id = self._next_call
        self._next_call += 1
        future: asyncio.Future[tuple[dict[str, Any], bytes | None]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        header = {"call": call_id, "key": key, "depth": self._depths.get(stream or 0, 0), **call}
        try:
            self.send(encode(Kind.CALL, stream or 0, encode_message(header, data)))
            result, body = await future
        finally:
            self._calls.pop(call_id, None)
        if result.get("ok"):
            return True, result.get("value"), body
        return False, result.get("error") or {"name": "Error", "message": "the call failed"}, None

    # -- input --

    def handle(self, kind: Kind, stream: int, payload: bytes) -> None:
        """One frame from the supervisor, handled in the order frames arrive."""
        if kind == Kind.REQUEST:
            self._request(stream, load_json(payload))
        elif kind == Kind.REQUEST_WITH_BODY:
            self._request(stream, *decode_with_body(payload))
        elif kind == Kind.RESULT:
            header, data = decode_message(payload)
            waiting = self._calls.get(int(header.get("call", 0)))
            if waiting is not None and not waiting.done():
                waiting.set_result((header, data))
        elif kind == Kind.CREDIT:
            reply = self._replies.get(stream)
            if reply is not None:
                reply.confirm(int.from_bytes(payload[:8], "big"))
        elif kind == Kind.BODY:
            body = self._bodies.get(stream)
            if body is not None:
                body.feed(payload)
        elif kind == Kind.BODY_END:
            body = self._bodies.get(stream)
            if body is not None:
                body.finish()
        elif kind == Kind.CANCEL:
            reply = self._replies.get(stream)
            if reply is not None:
                reply.abandon()
            key = self._stream_keys.get(stream)
            future = self._workers.get(key) if key else None
            if future is not None and future.done() and future.exception() is None:
                future.result().cancel(stream)
        elif kind in (Kind.WS_MESSAGE, Kind.WS_CLOSE):  # from the client of an accepted WebSocket
            key = self._stream_keys.get(stream)
            future = self._workers.get(key) if key else None
            if future is not None and future.done() and future.exception() is None:
                future.result().websocket_event(stream, *websockets.decode_incoming(kind, payload))
        elif kind == Kind.LOAD:
            message = load_json(payload)
            key = message["key"]
            # Registered before any later frame is read, so a REQUEST that
            # follows this LOAD finds the script; starting it happens meanwhile.
            self._scripts[key] = WorkerScript.from_dict(message["script"])
            self._retired.discard(key)
            if message.get("start", True):
                asyncio.get_running_loop().create_task(self._load(key, stream))
            else:
                self._precompile(key)
        elif kind == Kind.UNLOAD:
            key = load_json(payload)["key"]
            self._retired.add(key)
            asyncio.get_running_loop().create_task(self._retire_if_idle(key))

    def _precompile(self, key: str) -> None:
        """Transform a registered script's modules in the background, one at a time on the
        pool's thread: its first request then finds them in the compiler's cache (~1.5 ms
        of a small module's cold start; a cold start of another script may wait that long
        for the compiler). Large scripts wait for their first request (Compiler.is_large)."""
        script = self._scripts[key]
        if Compiler.is_large(script) or len(self._precompiling) >= PRECOMPILE_QUEUE:
            return
        self._precompiling.append(key)
        if len(self._precompiling) == 1:
            self._precompile_next()

    def _precompile_next(self) -> None:
        while self._precompiling:
            script = self._scripts.get(self._precompiling[0])
            if script is not None and self._precompiling[0] not in self._workers:
                self._pool.in_background(self._compile_quietly, script).add_done_callback(self._precompiled)
                return
            self._precompiling.popleft()

    def _precompiled(self, _: asyncio.Future[None]) -> None:
        if self._precompiling:
            self._precompiling.popleft()
        if not self.closing:
            self._precompile_next()

    def _compile_quietly(self, script: WorkerScript) -> None:
        try:
            self._compiler.compile(script)
        except Exception:  # its first request compiles it again and reports the error
            pass

    async def _load(self, key: str, stream: int) -> None:
        error: dict[str, Any] | None = None
        try:
            await self._worker(key)
        except ScriptLoadError as exc:
            error = exc.to_dict()
            self._workers.pop(key, None)  # the next request retries, and reports again
        self.send(encode_json(Kind.LOADED, stream, {"key": key, "error": error}))

    def _request(self, stream: int, head: dict[str, Any], whole_body: bytes | None = None) -> None:
        key = head["key"]
        body = QueueBody() if head["has_body"] else None
        if whole_body is not None and body is not None:  # nothing follows it
            body.feed(whole_body)
            body.finish()
        elif body is not None:
            self._bodies[stream] = body
        reply = _FrameReply(self, stream)
        self._replies[stream] = reply
        self._depths[stream] = int(head.get("depth", 0))
        if key not in self._scripts:
            reply.error(503, f"unknown worker version {key}")
            reply.done("canceled", 0.0, 0.0)
            return
        self._stream_keys[stream] = key
        headers = [(str(name), str(value)) for name, value in head["headers"]]
        request = IncomingRequest(
            stream,
            head["method"],
            head["url"],
            headers,
            body,
            event=str(head.get("event", "fetch")),
            cron=str(head.get("cron", "")),
            scheduled_time=int(head.get("scheduled_time", 0)),
            depth=int(head.get("depth", 0)),
            entrypoint=str(head.get("entrypoint", "")),
            name=str(head.get("name", "")),
            cf=head.get("cf") if isinstance(head.get("cf"), dict) else None,
            websocket=bool(head.get("websocket")),
        )
        starting = self._worker(key, (request, reply))
        reply.cold = not starting.done()
        if starting.done() and starting.exception() is None:
            # Running already: dispatched now, not by a task of its own one turn of the loop later.
            reply.worker = starting.result()
            try:
                reply.worker.fetch(request, reply)
            except Exception as exc:  # a bug of ours: this request fails, the frames of the others go on
                reply.log("error", f"warren runtime error: {exc!r}")
                reply.error(500, "Internal error")
                reply.done("exception", 0.0, 0.0)
            return
        asyncio.get_running_loop().create_task(self._dispatch(key, starting, request, reply))

    async def _dispatch(
        self, key: str, starting: asyncio.Future[Worker], request: IncomingRequest, reply: _FrameReply
    ) -> None:
        try:
            worker = await starting
        except ScriptLoadError as exc:
            self._workers.pop(key, None)
            reply.log("error", f"Worker failed to start: {exc}")
            reply.error(500, "Worker failed to start")
            reply.done("exception", 0.0, 0.0)
            return
        if reply.worker is None:  # not its first request: that one was dispatched with the load
            reply.worker = worker
            worker.fetch(request, reply)


async def _serve(
    fd: int,
    slots: int | None,
    js_threads: int,
    pool_size: int,
    idle_timeout: float,
    memory_budget: int,
    policy: SubrequestPolicy,
) -> None:
    sock = socket.socket(fileno=fd)
    loop = asyncio.get_running_loop()
    board = ActivityBoard(slots) if slots is not None else None
    if board is not None:
        set_abort_hook(board.mark_aborting)
    server: RuntimeServer | None = None
    early: list[tuple[Kind, int, bytes]] = []  # frames read before the server exists

    def on_frame(kind: Kind, stream: int, payload: bytes) -> None:
        if server is None:
            early.append((kind, stream, payload))
        else:
            server.handle(kind, stream, payload)

    # Reading stops while more than this waits to be written: the supervisor is not keeping up.
    _, channel = await loop.create_unix_connection(
        lambda: FrameChannel(on_frame, high_water=4 * BODY_CHUNK, pause_reading=True), sock=sock
    )
    server = RuntimeServer(channel, board, js_threads, pool_size, policy)
    for frame in early:
        server.handle(*frame)
    early.clear()
    eviction = loop.create_task(server.evict_forever(idle_timeout, memory_budget))
    await channel.closed
    eviction.cancel()
    server.closing = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="warren-runtime")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slots-fd", type=int)
    parser.add_argument("--heap-mb", type=int, default=128)
    parser.add_argument("--js-threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--isolate-pool", type=int, default=DEFAULT_POOL_SIZE, help="isolates kept prepared")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, help="seconds before eviction")
    parser.add_argument("--memory-budget-mb", type=int, default=0, help="evict idle isolates past this RSS")
    parser.add_argument("--processes", type=int, default=1, help="runtime processes sharing the default budget")
    parser.add_argument("--allow-private-subrequests", action="store_true", help="let fetch() reach any address")
    parser.add_argument("--allow-subrequests-to", action="append", default=[], help="a network fetch() may reach")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    configure(args.heap_mb)
    budget = args.memory_budget_mb * 1024 * 1024 or default_memory_budget(args.processes)
    policy = SubrequestPolicy.parse(args.allow_private_subrequests, args.allow_subrequests_to)
    serving = _serve(args.fd, args.slots_fd, args.js_threads, args.isolate_pool, args.idle_timeout, budget, policy)
    try:
        import uvloop

        uvloop.run(serving)
    except ImportError:
        asyncio.run(serving)
    sys.stdout.flush()
    # Isolates may still be entered by executor threads; V8 aborts if they are
    # torn down at interpreter exit, and there is nothing left to save.
    os._exit(0)


if __name__ == "__main__":
    main()
