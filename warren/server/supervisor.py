"""The supervisor: owns runtime processes and the exchanges sent to them.

It starts the runtime process, forwards each HTTP exchange to it as frames,
and when the process dies it names the script that was running (from the
activity board), answers that script's requests with 503, replays the other
requests that had not yet got a response head on a fresh process (once), and
keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warren.bindings import MAX_CALL_DEPTH, BindingCall, BindingError, BindingHost, decode_message, encode_message
from warren.bindings.cache import CacheHandler
from warren.json_codec import load_json
from warren.runtime import ScriptLoadError, WorkerScript
from warren.runtime.subrequests import SubrequestPolicy
from warren.server.protocol import (
    BODY_CHUNK,
    FrameChannel,
    Kind,
    decode_with_body,
    encode,
    encode_json,
    encode_with_body,
)
from warren.server.runtime_process import ACTIVITY_SLOT_SIZE, ACTIVITY_SLOTS, read_activity
from warren.server.websockets import HeldSockets

REPLAY_BODY_LIMIT = 1024 * 1024
IN_MEMORY_CACHE_BYTES = 64 * 1024 * 1024
QUARANTINE_AFTER_CRASHES = 3  # request bodies up to this size can be replayed after a crash
CRASHED = "The worker's runtime process crashed while handling this request."
CRASHED_ELSEWHERE = "The worker's runtime process crashed; the request could not be retried."
QUARANTINED = (
    "This worker is quarantined: it was running when the runtime crashed {count} times. "
    "Deploy a new version to lift the quarantine."
)

CHOSEN_SLOTS_KEPT = 100_000  # version keys whose rendezvous choice is remembered, per cordon
MAX_EXCHANGE_LOGS = 2000  # console lines kept for an invocation's event; all of them still reach on_log
TOO_MANY_LOGS = "Too many console lines in this invocation: the rest are not in its event."

LogHandler = Callable[[str, str, str], None]  # script name, level, message
DoneHandler = Callable[[str, "Exchange", str, float, float], None]  # name, exchange, outcome, cpu, wall


@dataclass
class CrashRecord:
    """A runtime process death and the scripts that were running JavaScript then."""

    when: float
    returncode: int | None
    scripts: list[str]


class _Events:
    """An exchange's events in order, for whoever reads them: ``put_nowait`` and ``get``
    as asyncio.Queue's, without its per-call bookkeeping (a request's path uses it ~4 times)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[tuple[Any, ...]] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: tuple[Any, ...]) -> None:
        self._items.append(item)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def take_end(self) -> bool:
        """Consume an ("end",) event if it is the next one, without waiting."""
        if self._items and self._items[0][0] == "end":
            self._items.popleft()
            return True
        return False

    async def get(self) -> tuple[Any, ...]:
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._items.popleft()


class _Completion:
    """asyncio.Event's set/is_set/wait, with the Event made only if someone waits before it is set."""

    __slots__ = ("_done", "_event")

    def __init__(self) -> None:
        self._done = False
        self._event: asyncio.Event | None = None

    def set(self) -> None:
        self._done = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._done

    async def wait(self) -> bool:
        if self._done:
            return True
        if self._event is None:
            self._event = asyncio.Event()
        return await self._event.wait()


class Exchange:
    """One HTTP exchange, as the supervisor forwards it. Outlives a process restart."""

    def __init__(self, stream: int, name: str, key: str, head: dict[str, Any]) -> None:
        self.stream = stream
        self.name = name
        self.key = key
        self.head = head
        self.events = _Events()
        self.process: RuntimeProcess | None = None
        self.head_received = False
        self.status = 0
        self.body_ended = False
        self.replay: list[bytes] | None = []
        self.inline_body: bytes | None = None  # a small body sent whole with the head
        self.replay_size = 0
        self.retried = False
        self.finished = False
        self.bytes_in = 0
        self.completed = _Completion()  # set once the runtime reports DONE (or the exchange is lost)
        # filled from the runtime's DONE: bytes_out, cold, memory (see runtime_process._FrameReply.done)
        self.metering: dict[str, Any] = {}
        # for the invocation's event (warren.observability): its console output, and when it began
        self.logs: list[dict[str, Any]] = []
        self.started_ms = int(time.time() * 1000)

    async def send_body(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        if self.replay is not None:
            self.replay_size += len(chunk)
            if self.replay_size > REPLAY_BODY_LIMIT:
                self.replay = None
            else:
                self.replay.append(chunk)
        if self.process is not None:
            for start in range(0, len(chunk), BODY_CHUNK):
                self.process.send(encode(Kind.BODY, self.stream, chunk[start : start + BODY_CHUNK]))
            await self.process.drain()

    def end_body(self) -> None:
        self.body_ended = True
        if self.process is not None:
            self.process.send(encode(Kind.BODY_END, self.stream))

    def cancel(self) -> None:
        if self.process is not None and not self.finished:
            self.process.send(encode(Kind.CANCEL, self.stream))

    async def next_event(self) -> tuple[Any, ...]:
        return await self.events.get()

    def consumed(self, count: int) -> None:
        """The client took ``count`` bytes of the response body: the worker may send more."""
        if self.process is not None and not self.finished and count:
            self.process.send(encode(Kind.CREDIT, self.stream, count.to_bytes(8, "big")))


@dataclass
class RuntimeProcess:
    supervisor: Supervisor
    index: int
    cordon: str = "standard"
    process: asyncio.subprocess.Process | None = None
    writer: FrameChannel | None = None
    slots_fd: int = -1  # the activity board: an unnamed file shared with the process
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    loads: dict[int, asyncio.Future[dict[str, Any] | None]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    stopping: bool = False
    isolates: int = 0  # running in the process, as it last reported (DONE, or an eviction)
    evictions: int = 0  # idle isolates it has evicted

    async def start(self) -> None:
        # Unnamed (O_TMPFILE, or unlinked at once): a killed supervisor leaves no file behind.
        with tempfile.TemporaryFile(prefix="warren-activity-") as board:
            board.write(bytes(ACTIVITY_SLOTS * ACTIVITY_SLOT_SIZE))
            board.flush()
            self.slots_fd = os.dup(board.fileno())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warren.server.runtime_process",
            "--fd",
            str(theirs.fileno()),
            "--slots-fd",
            str(self.slots_fd),
            "--heap-mb",
            str(self.supervisor.heap_mb),
            "--js-threads",
            str(self.supervisor.js_threads),
            "--idle-timeout",
            str(self.supervisor.idle_timeout),
            "--memory-budget-mb",
            str(self.supervisor.memory_budget_mb),
            "--processes",
            str(self.supervisor.processes_per_cordon),
            *self.supervisor.subrequests.to_args(),
            pass_fds=[theirs.fileno(), self.slots_fd],
            stdin=asyncio.subprocess.DEVNULL,
        )
        theirs.close()
        loop = asyncio.get_running_loop()
        _, self.writer = await loop.create_unix_connection(lambda: FrameChannel(self._dispatch), sock=ours)
        self.reader_task = loop.create_task(self._read(self.writer))

    def send(self, frame: bytes) -> None:
        if self.writer is not None:
            self.writer.send(frame)

    async def drain(self) -> None:
        if self.writer is not None:
            await self.writer.drain()

    def ensure_loaded(self, key: str) -> None:
        """Make sure the process knows the version; it starts on its first request."""
        if key not in self.loaded:
            self.loaded.add(key)
            script = self.supervisor.scripts[key]
            self.send(encode_json(Kind.LOAD, 0, {"key": key, "script": script.to_dict(), "start": False}))

    async def load(self, key: str) -> dict[str, Any] | None:
        """Load a script version and wait for its start; returns the load error, if any."""
        stream = self.supervisor.next_stream()
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self.loads[stream] = future
        self.loaded.add(key)
        script = self.supervisor.scripts[key]
        self.send(encode_json(Kind.LOAD, stream, {"key": key, "script": script.to_dict(), "start": True}))
        return await future

    def unload(self, key: str) -> None:
        if key in self.loaded:
            self.loaded.discard(key)
            self.send(encode_json(Kind.UNLOAD, 0, {"key": key}))

    def start_exchange(self, exchange: Exchange) -> None:
        exchange.process = self
        self.exchanges[exchange.stream] = exchange
        self.ensure_loaded(exchange.key)
        if exchange.inline_body is not None:
            self.send(encode_with_body(Kind.REQUEST_WITH_BODY, exchange.stream, exchange.head, exchange.inline_body))
        else:
            self.send(encode_json(Kind.REQUEST, exchange.stream, exchange.head))

    async def _read(self, channel: FrameChannel) -> None:
        await channel.closed  # frames go to _dispatch as they arrive
        if self.process is not None:
            await self.process.wait()
        if not self.stopping:
            await self.supervisor.process_died(self)

    def _dispatch(self, kind: Kind, stream: int, payload: bytes) -> None:
        if kind == Kind.CALL:
            asyncio.get_running_loop().create_task(self.supervisor.answer_call(self, stream, payload))
            return
        if kind == Kind.LOG:
            message = load_json(payload)
            if "evicted" in message:
                self.evictions += int(message["evicted"])
                self.isolates = int(message.get("isolates", self.isolates))
            logged = self.exchanges.get(stream) if stream else None
            if logged is not None and len(logged.logs) <= MAX_EXCHANGE_LOGS:
                entry = {"level": message["level"], "message": message["message"]}
                entry["timestamp"] = message.get("timestamp") or int(time.time() * 1000)
                if len(logged.logs) == MAX_EXCHANGE_LOGS:
                    entry = {"level": "warn", "message": TOO_MANY_LOGS, "timestamp": entry["timestamp"]}
                logged.logs.append(entry)
            self.supervisor.on_log(message["script"], message["level"], message["message"])
            return
        if kind == Kind.LOADED:
            future = self.loads.pop(stream, None)
            message = load_json(payload)
            if message["error"] is not None:
                self.loaded.discard(message["key"])
            if future is not None and not future.done():
                future.set_result(message["error"])
            return
        exchange = self.exchanges.get(stream)
        if exchange is None:
            return
        if kind in (Kind.WS_MESSAGE, Kind.WS_CLOSE, Kind.WS_ACK):  # an accepted WebSocket's (warren.server.websockets)
            exchange.events.put_nowait(("ws", kind, payload))
            return
        if kind == Kind.RESPONSE:
            self._whole_response(exchange, *decode_with_body(payload))
            return
        if kind == Kind.RESPONSE_DONE:
            head, metering, data = decode_with_body(payload, heads=2)
            self._whole_response(exchange, head, data)
            self._done(stream, exchange, metering)
            return
        if kind in (Kind.HEAD, Kind.ERROR):
            # Either one settles the response, so a crash from now on cannot replay it.
            exchange.head_received = True
            message = load_json(payload)
            exchange.status = message["status"]
            second = message["headers"] if kind == Kind.HEAD else message["message"]
            exchange.events.put_nowait(("head" if kind == Kind.HEAD else "error", message["status"], second))
        elif kind == Kind.RBODY:
            exchange.events.put_nowait(("body", payload))
        elif kind == Kind.END:
            exchange.events.put_nowait(("end",))
        elif kind == Kind.DONE:
            self._done(stream, exchange, load_json(payload))

    @staticmethod
    def _whole_response(exchange: Exchange, head: dict[str, Any], data: bytes) -> None:
        exchange.head_received = True
        exchange.status = head["status"]
        exchange.events.put_nowait(("head", head["status"], head["headers"]))
        if data:
            exchange.events.put_nowait(("body", data))
        exchange.events.put_nowait(("end",))

    def _done(self, stream: int, exchange: Exchange, metering: dict[str, Any]) -> None:
        self.exchanges.pop(stream, None)
        exchange.finished = True
        exchange.metering = metering
        self.isolates = int(metering.get("isolates", self.isolates))
        exchange.completed.set()
        self.supervisor.on_done(exchange.name, exchange, metering["outcome"], metering["cpu_ms"], metering["wall_ms"])

    async def close_channel(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def stop(self) -> None:
        self.stopping = True
        await self.close_channel()
        if self.process is not None and self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader_task is not None:
            self.reader_task.cancel()
        self.close_board()

    def close_board(self) -> None:
        if self.slots_fd >= 0:
            os.close(self.slots_fd)
            self.slots_fd = -1


@dataclass
class _Slot:
    """One place in a cordon's set of runtime processes; survives the process in it."""

    cordon: str
    index: int
    process: RuntimeProcess | None = None
    starting: asyncio.Task[RuntimeProcess] | None = None


def _ignore_log(name: str, level: str, message: str) -> None:
    pass


def _ignore_done(name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
    pass


class Supervisor:
    """Runs a runtime process and routes exchanges to deployed script versions."""

    def __init__(
        self,
        *,
        heap_mb: int = 128,
        js_threads: int | None = None,
        idle_timeout: float = 300.0,
        memory_budget_mb: int = 0,  # 0: 70% of the machine's memory, shared by the processes
        processes: int = 1,  # runtime processes per trust level
        on_log: LogHandler = _ignore_log,
        on_done: DoneHandler = _ignore_done,
        bindings: BindingHost | None = None,
        subrequests: SubrequestPolicy | None = None,
    ) -> None:
        self.bindings = bindings or BindingHost()
        if not self.bindings.supports("cache"):
            # Every worker has the Cache API; without a configured store, the node's cache is in memory.
            self.bindings.register("cache", CacheHandler(None, max_bytes=IN_MEMORY_CACHE_BYTES))
        self.subrequests = subrequests or SubrequestPolicy()
        self.heap_mb = heap_mb
        self.idle_timeout = idle_timeout
        self.memory_budget_mb = memory_budget_mb
        self.js_threads = js_threads or max(1, os.cpu_count() or 1)
        self.on_log = on_log
        self.on_done = on_done
        self.scripts: dict[str, WorkerScript] = {}
        self.deployments: dict[str, str] = {}  # worker name -> key of the version serving it
        self.crashes: list[CrashRecord] = []
        # Crashes a version was running during; past QUARANTINE_AFTER_CRASHES it is
        # quarantined: refused with 503 until a new version (a new key) replaces it.
        self.crash_counts: dict[str, int] = {}
        self.quarantined: set[str] = set()
        self.processes_per_cordon = max(1, processes)
        # trust level -> its runtime processes; a level's processes start with its first script
        self._cordons: dict[str, list[_Slot]] = {}
        # The slot each version key hashes to, per cordon (for the slot list it was chosen from).
        self._chosen: dict[str, tuple[list[_Slot], dict[str, _Slot]]] = {}
        self._started = False
        self._stream = 0
        # WebSockets a Durable Object or a service accepted, until the edge relays them (warren.server.websockets)
        self.held_sockets = HeldSockets(self)

    def find_exchange(self, stream: int) -> Exchange | None:
        """The exchange open on ``stream`` in any runtime process, if any."""
        for slots in self._cordons.values():
            for slot in slots:
                if slot.process is not None and stream in slot.process.exchanges:
                    return slot.process.exchanges[stream]
        return None

    def next_stream(self) -> int:
        self._stream = self._stream % 0xFFFFFFF0 + 1
        return self._stream

    async def start(self) -> None:
        self._started = True
        await self._cordon("standard")  # the common case starts with the supervisor

    async def stop(self) -> None:
        self._started = False
        self.held_sockets.close()
        for slots in self._cordons.values():
            for slot in slots:
                if slot.process is not None:
                    await slot.process.stop()
        self._cordons.clear()

    async def _cordon(self, level: str) -> list[_Slot]:
        slots = self._cordons.get(level)
        if slots is None:
            assert self._started, "supervisor not started"
            slots = self._cordons[level] = [_Slot(level, index) for index in range(self.processes_per_cordon)]
            for slot in slots:
                slot.starting = asyncio.get_running_loop().create_task(self._start_process(slot))
        return slots

    async def _start_process(self, slot: _Slot) -> RuntimeProcess:
        process = RuntimeProcess(self, slot.index, slot.cordon)
        await process.start()
        slot.process = process
        return process

    async def _process_for(self, key: str) -> RuntimeProcess:
        """The runtime process that serves ``key``: always the same one of its cordon.

        Rendezvous hashing on the version key keeps a worker's isolate in one
        process (not one per process), and moves only 1/N of the keys if N changes.
        """
        script = self.scripts.get(key)
        level = script.trust_level if script is not None else "standard"
        slots = self._cordons.get(level)
        if slots is None:
            slots = await self._cordon(level)
        chosen = self._chosen.get(level)
        if chosen is None or chosen[0] is not slots:
            chosen = self._chosen[level] = (slots, {})
        slot = chosen[1].get(key)
        if slot is None:
            slot = max(slots, key=lambda slot: hashlib.sha256(f"{slot.index}/{key}".encode()).digest())
            if len(chosen[1]) >= CHOSEN_SLOTS_KEPT:
                chosen[1].clear()  # a bound, not a policy: recomputing is cheap
            chosen[1][key] = slot
        if slot.starting is not None and not slot.starting.done():
            return await slot.starting
        assert slot.process is not None
        return slot.process

    def processes(self) -> list[RuntimeProcess]:
        """The runtime processes running now, of every cordon."""
        return [slot.process for slots in self._cordons.values() for slot in slots if slot.process is not None]

    async def load(self, key: str, script: WorkerScript, start: bool = True) -> None:
        """Make a script version available under ``key``.

        With ``start`` its isolate is created now and a load error raises
        ScriptLoadError (and the version is forgotten); without, it starts on
        its first request.
        """
        self.scripts[key] = script
        process = await self._process_for(key)
        if not start:
            process.ensure_loaded(key)
            return
        error = await process.load(key)
        if error is not None:
            self.scripts.pop(key, None)
            process.loaded.discard(key)
            raise ScriptLoadError.from_dict(error)

    def quarantine_message(self, key: str) -> str | None:
        """Why ``key`` is refused, if it is quarantined."""
        if key not in self.quarantined:
            return None
        return QUARANTINED.format(count=self.crash_counts.get(key, 0))

    async def retire(self, key: str) -> None:
        """Forget a version; its isolate goes once its in-flight requests finish."""
        process = await self._process_for(key)
        self.scripts.pop(key, None)
        self.quarantined.discard(key)
        self.crash_counts.pop(key, None)
        process.unload(key)

    async def deploy(self, script: WorkerScript) -> str:
        """Load a script version and route its name to it; raises ScriptLoadError."""
        key = f"{script.name}@{script.version_id}"
        if self.deployments.get(script.name) == key:
            # Deploying the same version again is how a quarantine is lifted.
            self.quarantined.discard(key)
            self.crash_counts.pop(key, None)
            return key
        await self.load(key, script)
        previous = self.deployments.get(script.name)
        self.deployments[script.name] = key
        if previous is not None and previous != key:
            await self.retire(previous)
        return key

    async def answer_call(self, process: RuntimeProcess, stream: int, payload: bytes) -> None:
        """A binding call from an isolate in ``process``: run it here, send the result back."""
        header, data = decode_message(payload)
        answer: dict[str, Any] = {"call": header.get("call")}
        result_data: bytes | None = None
        key = str(header.get("key", ""))
        script = self.scripts.get(key)
        spec = None
        if script is not None:
            spec = script.binding(header.get("binding"))
        try:
            if script is None or spec is None:
                raise BindingError(f"No binding named {header.get('binding')!r}.", "TypeError")
            depth = int(header.get("depth", 0))
            if depth >= MAX_CALL_DEPTH:
                raise BindingError(f"Subrequest depth limit exceeded: more than {MAX_CALL_DEPTH} nested calls.")
            call = BindingCall(
                caller=script,
                key=key,
                binding=spec,
                method=str(header.get("method", "")),
                args=header.get("args"),
                data=data,
                stream=stream,
                depth=depth,
            )
            result = await self.bindings.call(call)
            answer.update(ok=True, value=result.value)
            result_data = result.data
        except BindingError as exc:
            answer.update(ok=False, error={"name": exc.name, "message": exc.message})
        except Exception as exc:  # a handler's bug is the worker's error, not the node's
            where = f"{header.get('binding')}.{header.get('method')}"
            self.on_log("warren", "error", f"binding call {where} failed: {exc!r}")
            answer.update(ok=False, error={"name": "Error", "message": "internal error in the binding"})
        process.send(encode(Kind.RESULT, stream, encode_message(answer, result_data)))

    async def open_exchange(
        self,
        key: str,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        has_body: bool,
        depth: int = 0,
        cf: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> Exchange:
        """Send a request to the version ``key`` (which must be loaded).

        ``extra`` head fields make it another kind of invocation (warren.bindings.service,
        warren.triggers.consumer): ``event`` "rpc" or "queue", ``entrypoint``, ``name``.
        ``body``, when the whole (small) body is at hand, goes with the head in one frame;
        otherwise a body (``has_body``) follows through ``send_body`` and ``end_body``.
        """
        has_body = has_body or body is not None
        head = {"key": key, "method": method, "url": url, "headers": headers, "has_body": has_body, "depth": depth}
        if extra:
            head.update(extra)
        if cf is not None:
            head["cf"] = cf
        exchange = Exchange(self.next_stream(), self.scripts[key].name, key, head)
        if body is not None:
            exchange.inline_body = body
            exchange.bytes_in = len(body)
            exchange.body_ended = True
        process = await self._process_for(key)
        process.start_exchange(exchange)
        return exchange

    async def scheduled(self, key: str, cron: str, scheduled_time_ms: int) -> str:
        """Run the version's scheduled() handler once; returns the outcome (ok, exception, …)."""
        head = {
            "key": key,
            "method": "GET",
            "url": "http://scheduled.invalid/",
            "headers": [],
            "has_body": False,
            "event": "scheduled",
            "cron": cron,
            "scheduled_time": scheduled_time_ms,
        }
        exchange = Exchange(self.next_stream(), self.scripts[key].name, key, head)
        process = await self._process_for(key)
        process.start_exchange(exchange)
        await exchange.completed.wait()
        return str(exchange.metering.get("outcome", "exception"))

    async def process_died(self, dead: RuntimeProcess) -> None:
        returncode = dead.process.returncode if dead.process is not None else None
        await dead.close_channel()
        culprits = read_activity(dead.slots_fd)
        culprit_keys = {key for key, _ in culprits}
        names = sorted({key.split("@", 1)[0] for key in culprit_keys})
        self.crashes.append(CrashRecord(time.time(), returncode, names))
        cause = ", ".join(names) if names else "no script was running"
        self.on_log("warren", "error", f"runtime process died (exit status {returncode}); running: {cause}")
        for key in culprit_keys:
            self.crash_counts[key] = self.crash_counts.get(key, 0) + 1
            if self.crash_counts[key] >= QUARANTINE_AFTER_CRASHES and key not in self.quarantined:
                self.quarantined.add(key)
                self.on_log(
                    key.split("@", 1)[0],
                    "error",
                    f"{key} is quarantined after {self.crash_counts[key]} runtime crashes; redeploy it to lift this",
                )
        dead.close_board()
        for future in dead.loads.values():
            if not future.done():
                future.set_result({"message": CRASHED, "filename": "", "line": 0, "column": 0})

        slot = next((slot for slot in self._cordons.get(dead.cordon, []) if slot.process is dead), None)
        if slot is None:
            return  # the supervisor is stopping
        slot.process = None
        slot.starting = asyncio.get_running_loop().create_task(self._start_process(slot))
        fresh = await slot.starting

        for exchange in list(dead.exchanges.values()):
            replayable = exchange.replay is not None and not exchange.retried and not exchange.head_received
            if exchange.key in culprit_keys or not replayable or exchange.key not in self.scripts:
                message = CRASHED if exchange.key in culprit_keys else CRASHED_ELSEWHERE
                if not exchange.head_received:
                    exchange.status = 503
                    exchange.events.put_nowait(("error", 503, message))
                else:
                    exchange.events.put_nowait(("abort",))
                exchange.finished = True
                exchange.metering = {"outcome": "exception" if exchange.key in culprit_keys else "canceled"}
                exchange.completed.set()
                outcome = exchange.metering["outcome"]
                self.on_done(exchange.name, exchange, outcome, 0.0, 0.0)
                continue
            exchange.retried = True
            fresh.start_exchange(exchange)
            for chunk in exchange.replay or []:
                fresh.send(encode(Kind.BODY, exchange.stream, chunk))
            if exchange.body_ended:
                fresh.send(encode(Kind.BODY_END, exchange.stream))
