"""The host side of a worker's WebSockets, inside its runtime process.

``js/websocket.js`` keeps the JavaScript side (``WebSocketPair``, ``WebSocket``,
the events). When a fetch handler answers an upgrade with ``new Response(null,
{status: 101, webSocket: client})``, the end the worker kept (the *server* end)
is coupled to that invocation: its ``send``/``close`` become effects sent on the
invocation's stream (``Reply.ws_message``/``ws_close``), and what the client
sends arrives as "ws" entries into the isolate, one slice per message.

The invocation stays alive while the socket is open: the coupling holds a host
operation (so it is neither settled nor cut by the 30 s ``waitUntil`` limit) and
keeps its response "open" (``body_open``), so it finishes once the socket has
closed and its ``waitUntil`` work is done. Each incoming message is an event of
its own for CPU (the invocation's budget starts again: ``cpu_base``) and for
console output; a slice over the CPU limit discards the isolate, which ends the
invocation, and the edge closes the client's socket with 1011.

Backpressure: what the worker sends and the client has not yet taken is bounded
per socket (``SOCKET_QUEUE_LIMIT``); past it the send is refused and the script
sees the socket fail (an ``error`` event, the client gets 1011). Incoming
messages are acknowledged (``Reply.ws_ack``) once dispatched in the isolate,
which is what lets the edge read more from the client.

A worker's own outgoing WebSockets (``fetch()`` with ``Upgrade: websocket``, or ``new
WebSocket(url)``) are *origin sockets*: the runtime process holds the connection
(aiohttp, through the fetcher's SSRF guard) under a negative id, messages from
the origin arrive in the isolate as "ws" entries like a client's (acknowledged
once taken; past ``ORIGIN_WINDOW_BYTES`` not yet taken the origin is not read)
and the worker's sends are written in order by a task of the socket's. An origin
socket is a host operation of the invocation that opened it: it keeps that
invocation alive while open (after a plain response, for the usual 30 s of
``waitUntil`` at most) and is closed (1001) when the invocation ends. A worker
that returns it (not accepted) in its own 101 response has it *piped* to its
client here, with no JavaScript per message (as workerd does, and no CPU time
of the worker's): the client's messages are written to the origin and
acknowledged to the edge once written, the origin's go to the client, read only
while the client takes them (``PIPE_WINDOW``). What was already on its way into
the isolate when the socket was returned is forwarded by the isolate first
(``forward``/``forwardClose``), and the origin's later messages wait behind it.

A socket accepted by another invocation (a Durable Object's, a service's: the
node holds it, ``warren.server.websockets.HeldSockets``) reaches the worker as a
101 answer of its stub with a token; returning it (``host("relay")``) answers
the worker's own invocation 101 with the token in ``RELAY_HEADER``, which only
the runtime writes (a worker's own header of that name is dropped), and the
edge relays the client to the holder from then on.

Owns: the sockets coupled to a worker's invocations. Must not touch: frames and
sockets (it reports through the invocation's ``Reply``), other workers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warren.runtime.worker import Worker, _Invocation

SOCKET_QUEUE_LIMIT = 2 * 1024 * 1024  # bytes sent by the worker that the client has not taken yet
MESSAGE_OVERHEAD = 64  # counted per message besides its bytes, as the edge does (warren.server.websockets)
WITHOUT_UPGRADE = (
    'Worker tried to return a WebSocket in a response to a request which did not contain the header '
    '"Upgrade: websocket".'
)
GONE = "WebSocket disconnected without sending Close frame."
NO_SOCKET_101 = "A 101 response must carry a WebSocket (new Response(null, { status: 101, webSocket }))."
RELAY_HEADER = "x-warren-websocket-relay"  # on a 101 head: the token of a socket the node holds
ORIGIN_WINDOW_BYTES = 1024 * 1024  # an origin's messages handed to the isolate and not yet taken
GOING_AWAY = 1001  # an origin socket whose invocation ended
PIPE_WINDOW = 256 * 1024  # an origin piped to a client is read while the client has not taken more than this
WENT_AWAY = "The other side went away."


@dataclass
class _Socket:
    """The server end of a pair, coupled to invocation ``request_id``."""

    request_id: int
    js_id: int
    reply: Any
    holder: asyncio.Task[None] | None = None
    op_id: int = 0
    closed_out: bool = False  # the worker closed its side (a close went to the client)
    closed_in: bool = False  # the client's close (or disconnect) was handed to the isolate
    ended: bool = False
    unacked: int = 0  # bytes of the client's messages handed to the isolate and not yet taken
    origin_id: int = 0  # piped: the origin socket the client is relayed to (no isolate in between)


@dataclass
class _Origin:
    """A WebSocket the worker opened to an origin (ids are negative: the isolate's own are positive)."""

    request_id: int | None
    js_id: int
    connection: Any  # aiohttp.ClientWebSocketResponse
    op_id: int = 0
    reader: asyncio.Task[None] | None = None
    writer: asyncio.Task[None] | None = None
    outbox: deque[tuple[Any, ...]] = field(default_factory=deque)
    queued: int = 0  # bytes in the outbox
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    readable: asyncio.Event = field(default_factory=asyncio.Event)
    unacked: int = 0  # bytes of its messages scheduled into the isolate and not yet taken
    closed_out: bool = False
    ended: bool = False
    piped: _Socket | None = None  # returned in a 101: the client it is relayed to
    held: deque[tuple[Any, ...]] = field(default_factory=deque)  # for the client, behind what the isolate has


class WebSocketHost:
    """The WebSockets of one Worker. Host calls run on the JS thread, the rest on the loop."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._by_request: dict[int, _Socket] = {}
        self._by_js: dict[int, _Socket] = {}
        # Bytes of sends made in the slice running now, per socket: written on the JS
        # thread, settled when its effects are applied (never at the same time).
        self._pending: dict[int, int] = {}
        self._origins: dict[int, _Origin] = {}
        self._next_origin = -1
        self._piped: dict[int, _Socket] = {}  # by origin socket id: the client it is piped to

    @property
    def open_count(self) -> int:
        return len(self._by_request)

    @property
    def origin_count(self) -> int:
        """Origin sockets held open (each is a connection of the runtime process)."""
        return len(self._origins)

    # --- host calls (JS thread): checks the script must see at once, then effects -----------

    def host_call(self, action: str, a: Any = None, b: Any = None, c: Any = None) -> Any:
        worker = self._worker
        if action == "send":
            js_id, binary = int(a), bool(b)
            data = str(c).encode("latin-1") if binary else str(c).encode("utf-8", "replace")
            socket = self._by_js.get(js_id)
            taken = getattr(socket.reply, "unconfirmed", 0) if socket is not None else 0
            origin = self._origins.get(js_id)
            if origin is not None:
                taken = origin.queued
            pending = self._pending.get(js_id, 0) + len(data) + MESSAGE_OVERHEAD
            if pending + taken > SOCKET_QUEUE_LIMIT:
                return 1
            self._pending[js_id] = pending
            worker._effects.append(("ws", "send", js_id, binary, data))
            return 0
        if action in ("couple", "relay", "pipe"):  # b: the server end's id, the held socket's token, the origin's id
            request_id = int(a)
            invocation = worker._invocations.get(request_id)
            if invocation is not None and not invocation.request.websocket:
                return WITHOUT_UPGRADE
            if action == "pipe":
                origin = self._origins.get(int(b))
                if origin is not None and origin.request_id != request_id:
                    return "This WebSocket was opened by another request: only that request's response can return it."
                worker._effects.append(("ws", "pipe", request_id, int(b), str(c)))
                return ""
            end: int | str = int(b) if action == "couple" else str(b)
            worker._effects.append(("ws", action, request_id, end, str(c)))
            return ""
        if action == "close":
            worker._effects.append(("ws", "close", int(a), int(b), str(c)))
        elif action == "ack":
            worker._effects.append(("ws", "ack", int(a), int(b)))
        elif action == "ended":
            worker._effects.append(("ws", "ended", int(a)))
        elif action == "forward":  # a piped origin's message that was on its way into the isolate
            binary = bool(b)
            data = str(c).encode("latin-1") if binary else str(c).encode("utf-8", "replace")
            worker._effects.append(("ws", "forward", int(a), binary, data))
        elif action == "forwardClose":
            worker._effects.append(("ws", "forwardClose", int(a), int(b), str(c)))
        return None

    # --- effects (loop) --------------------------------------------------------------------

    def apply(self, action: str, *args: Any) -> None:
        if action == "pipe":
            self._pipe(*args)
            return
        if action != "couple" and action != "relay" and int(args[0]) < 0:
            self._apply_origin(action, *args)
            return
        if action == "send":
            js_id, binary, data = args
            self._sent(js_id, len(data))
            socket = self._by_js.get(js_id)
            send = getattr(socket.reply, "ws_message", None) if socket is not None else None
            if socket is not None and send is not None and not (socket.closed_out or socket.closed_in):
                send(binary, data)
        elif action == "couple":
            self._couple(*args)
        elif action == "relay":
            self._relay(*args)
        elif action == "close":
            js_id, code, reason = args
            socket = self._by_js.get(js_id)
            if socket is not None and not (socket.closed_out or socket.closed_in):
                socket.closed_out = True
                close = getattr(socket.reply, "ws_close", None)
                if close is not None:
                    close(code, reason)
        elif action == "ack":
            js_id, count = args
            socket = self._by_js.get(js_id)
            ack = getattr(socket.reply, "ws_ack", None) if socket is not None else None
            if socket is not None and ack is not None and not socket.closed_in:
                count = max(0, min(count, socket.unacked))
                socket.unacked -= count
                ack(count)
        elif action == "ended":
            socket = self._by_js.get(args[0])
            if socket is not None:
                self._end(socket)

    def _couple(self, request_id: int, js_id: int, headers_json: str) -> None:
        worker = self._worker
        invocation = worker._invocations.get(request_id)
        if invocation is None or invocation.responded or invocation.outcome == "canceled":
            # The client left during the handshake (or the invocation is over): the
            # script's end sees the socket close as a disconnect.
            if invocation is not None and not invocation.responded:
                invocation.responded = True
            worker._schedule(request_id if invocation is not None else None, "ws", js_id, "close", 1006, GONE, False)
            return
        if not self._answer_101(invocation, headers_json):
            return
        socket = _Socket(request_id, js_id, invocation.reply)
        self._by_request[request_id] = socket
        self._by_js[js_id] = socket
        self._hold_open(socket)

    def _answer_101(self, invocation: _Invocation, headers_json: str) -> bool:
        """Head the invocation's answer 101 with the worker's headers; False (failed) if malformed."""
        from warren.runtime.worker import THREW, _valid_headers

        headers = _valid_headers(headers_json)
        if headers is None:
            invocation.reply.log("error", "The worker produced a malformed response.")
            self._worker._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            return False
        invocation.responded = True
        invocation.reply.head(101, [pair for pair in headers if pair[0].lower() != RELAY_HEADER])
        # Open until the socket closes: "done" then waits for it (finish_after_body).
        invocation.body_open = True
        return True

    def _hold_open(self, socket: _Socket) -> None:
        """Hold the socket as a host operation of its invocation: the invocation is not settled
        while the socket is open, and ending it (a limit, a restart) cancels the holder."""
        from warren.runtime.worker import _Op

        worker = self._worker
        op = _Op(socket.request_id)
        socket.op_id = op_id = worker._next_op
        worker._next_op += 1
        worker._ops[op_id] = op
        worker._live_ops += 1
        op.handle = socket.holder = asyncio.get_running_loop().create_task(self._hold(socket))

    def _relay(self, request_id: int, token: str, headers_json: str) -> None:
        """Answer ``request_id`` 101 with a socket the node holds; the invocation itself is then over
        but for its waitUntil work (if it is gone, the node drops the unclaimed socket on its own)."""
        from warren.runtime.worker import THREW, WAIT_UNTIL_LIMIT_S, _valid_headers

        worker = self._worker
        invocation = worker._invocations.get(request_id)
        if invocation is None or invocation.responded or invocation.outcome == "canceled":
            return
        headers = _valid_headers(headers_json)
        if headers is None:
            invocation.reply.log("error", "The worker produced a malformed response.")
            worker._fail_invocation(invocation, 500, THREW, "exception", finish=False)
            return
        invocation.responded = True
        headers = [pair for pair in headers if pair[0].lower() != RELAY_HEADER]
        headers.append((RELAY_HEADER, token))
        invocation.deadline = worker._loop.call_later(WAIT_UNTIL_LIMIT_S, worker._finish, invocation)
        invocation.reply.head(101, headers)
        invocation.reply.end()

    async def _hold(self, socket: _Socket) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self._forget(socket)

    def _forget(self, socket: _Socket) -> None:
        if self._by_request.get(socket.request_id) is socket:
            del self._by_request[socket.request_id]
        if self._by_js.get(socket.js_id) is socket:
            del self._by_js[socket.js_id]
        if socket.origin_id:
            if self._piped.get(socket.origin_id) is socket:
                del self._piped[socket.origin_id]
            origin = self._origins.get(socket.origin_id)
            if origin is not None:  # the client is gone: so is its pipe to the origin
                self._end_origin(origin)
        else:
            self._pending.pop(socket.js_id, None)

    def _end(self, socket: _Socket) -> None:
        """Both sides are closed: the invocation may finish (once its waitUntil work is done)."""
        if socket.ended:
            return
        socket.ended = True
        worker = self._worker
        self._forget(socket)
        if worker._ops.pop(socket.op_id, None) is not None:
            worker._live_ops -= 1
        if socket.holder is not None:
            socket.holder.cancel()
        invocation = worker._invocations.get(socket.request_id)
        if invocation is not None and invocation.body_open:
            worker._body_closed(invocation)
        worker._settle_idle()

    # --- origin sockets (loop) --------------------------------------------------------------

    def adopt_origin(self, request_id: int | None, connection: Any) -> int:
        """Hold a connection the worker opened; its id for the isolate."""
        from warren.runtime.worker import _Op

        worker = self._worker
        js_id = self._next_origin
        self._next_origin -= 1
        origin = _Origin(request_id, js_id, connection)
        origin.readable.set()
        self._origins[js_id] = origin
        op = _Op(request_id)
        origin.op_id = worker._next_op
        worker._next_op += 1
        worker._ops[origin.op_id] = op
        worker._live_ops += 1
        loop = asyncio.get_running_loop()
        origin.writer = loop.create_task(self._write_origin(origin))
        op.handle = origin.reader = loop.create_task(self._read_origin(origin))
        return js_id

    def _sent(self, js_id: int, size: int) -> None:
        """A send of the slice that ran is applied: it no longer counts as pending."""
        left = self._pending.get(js_id, 0) - size - MESSAGE_OVERHEAD
        if left > 0:
            self._pending[js_id] = left
        else:
            self._pending.pop(js_id, None)

    def _apply_origin(self, action: str, *args: Any) -> None:
        origin = self._origins.get(int(args[0]))
        if action == "send":
            js_id, binary, data = args
            self._sent(js_id, len(data))
            if origin is not None and not origin.closed_out:
                origin.outbox.append(("send", binary, data, None))
                origin.queued += len(data) + MESSAGE_OVERHEAD
                origin.wake.set()
        elif action == "close":
            if origin is not None and not origin.closed_out:
                origin.closed_out = True
                origin.outbox.append(("close", int(args[1]), str(args[2])))
                origin.wake.set()
        elif action == "ack":
            if origin is not None:
                origin.unacked = max(0, origin.unacked - int(args[1]))
                if origin.unacked < ORIGIN_WINDOW_BYTES:
                    origin.readable.set()
        elif action == "ended" and origin is not None:
            self._end_origin(origin)
        elif action == "forward":
            socket = self._piped.get(int(args[0]))
            if socket is not None and not socket.closed_out:
                socket.reply.ws_message(args[1], args[2])
            if origin is not None:
                self._taken(origin, len(args[2]))
        elif action == "forwardClose":
            socket = self._piped.get(int(args[0]))
            if socket is not None:
                self._close_client(socket, int(args[1]), str(args[2]))

    def _taken(self, origin: _Origin, count: int) -> None:
        origin.unacked = max(0, origin.unacked - count)
        if origin.unacked < ORIGIN_WINDOW_BYTES:
            origin.readable.set()
        while origin.held and origin.unacked == 0:
            self._send_to_client(origin, origin.held.popleft())

    def _to_client(self, origin: _Origin, item: tuple[Any, ...]) -> None:
        """A piped origin's message or close: to its client, behind what the isolate still has."""
        if origin.unacked > 0 or origin.held:
            origin.held.append(item)
        else:
            self._send_to_client(origin, item)

    def _send_to_client(self, origin: _Origin, item: tuple[Any, ...]) -> None:
        socket = origin.piped
        if socket is None:
            return
        if item[0] == "message":
            if not socket.closed_out:
                socket.reply.ws_message(item[1], item[2])
        else:
            self._close_client(socket, item[1], item[2])

    def _close_client(self, socket: _Socket, code: int, reason: str) -> None:
        if socket.closed_out:
            return
        socket.closed_out = True
        if code == 1006:  # no frame for it: the client hears that the origin is gone
            code, reason = 1011, WENT_AWAY
        close = getattr(socket.reply, "ws_close", None)
        if close is not None:
            close(code, reason)

    def _pipe(self, request_id: int, origin_id: int, headers_json: str) -> None:
        """Answer ``request_id`` 101 and relay its client to origin socket ``origin_id`` from here."""
        worker = self._worker
        invocation = worker._invocations.get(request_id)
        origin = self._origins.get(origin_id)
        if invocation is None or invocation.responded or invocation.outcome == "canceled":
            if invocation is not None and not invocation.responded:
                invocation.responded = True
            if origin is not None:
                self._end_origin(origin)
            return
        if not self._answer_101(invocation, headers_json):
            return
        socket = _Socket(request_id, origin_id, invocation.reply, origin_id=origin_id)
        self._by_request[request_id] = socket
        self._piped[origin_id] = socket
        self._hold_open(socket)
        if origin is not None:
            origin.piped = socket

    async def _write_origin(self, origin: _Origin) -> None:
        connection = origin.connection
        try:
            while True:
                while not origin.outbox:
                    origin.wake.clear()
                    await origin.wake.wait()
                item = origin.outbox.popleft()
                if item[0] == "close":
                    code, reason = item[1], item[2]
                    # 1005 is "no code given": the frame then carries 1000.
                    await connection.close(code=1000 if code == 1005 else code, message=reason.encode())
                    return
                _, binary, data, ack = item
                origin.queued -= len(data) + MESSAGE_OVERHEAD
                if binary:
                    await connection.send_bytes(data)
                else:
                    await connection.send_str(data.decode("utf-8", "replace"))
                if ack is not None:  # a piped client's message: the edge may read more from it
                    ack(len(data))
        except Exception:  # OSError, aiohttp's ClientError: the connection is gone, and the reader says so
            return

    async def _read_origin(self, origin: _Origin) -> None:
        import aiohttp

        worker = self._worker
        connection = origin.connection
        js_id = origin.js_id
        try:
            while True:
                await origin.readable.wait()
                message = await connection.receive()
                kind = message.type
                if kind in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    binary = kind is aiohttp.WSMsgType.BINARY
                    data = message.data if binary else message.data.encode("utf-8")
                    text = data.decode("latin-1") if binary else message.data
                    if origin.piped is not None:
                        self._to_client(origin, ("message", binary, data))
                        wait = getattr(origin.piped.reply, "wait_writable", None)
                        if wait is not None:
                            await wait(PIPE_WINDOW)  # the client's pace is the origin's
                        continue
                    origin.unacked += len(data)
                    if origin.unacked >= ORIGIN_WINDOW_BYTES:
                        origin.readable.clear()
                    self._origin_event(origin)
                    worker._schedule(origin.request_id, "ws", js_id, "message", text, binary, len(data))
                    continue
                if kind is aiohttp.WSMsgType.CLOSE:  # the origin closed (aiohttp has answered it)
                    self._origin_closed(origin, int(message.data or 1005), str(message.extra or ""), None)
                    return
                if kind is aiohttp.WSMsgType.CLOSING and origin.writer is not None:
                    await asyncio.shield(origin.writer)  # the worker's close: the origin's answer ends it
                code = connection.close_code
                if kind is not aiohttp.WSMsgType.ERROR and connection.closed and code not in (None, 1006):
                    self._origin_closed(origin, int(code), "", None)
                elif kind is aiohttp.WSMsgType.ERROR:
                    self._origin_closed(origin, 1011, "", f"WebSocket error: {connection.exception() or message.data}")
                else:
                    self._origin_closed(origin, 1006, GONE, None)
                return
        finally:
            cancelled = worker._ops.get(origin.op_id) is None  # with its invocation (its end, a limit, a restart)
            if not origin.ended and cancelled:
                self._end_origin(origin)  # closes it for the origin

    def _origin_closed(self, origin: _Origin, code: int, reason: str, error: str | None) -> None:
        """The origin's side is over: to its client if piped, else into the isolate."""
        if origin.piped is not None:
            self._to_client(origin, ("close", 1006 if error is not None else code, reason))
            return
        self._origin_event(origin)
        worker = self._worker
        if error is not None:
            worker._schedule(origin.request_id, "ws", origin.js_id, "error", error, code, reason)
        else:
            worker._schedule(origin.request_id, "ws", origin.js_id, "close", code, reason, code != 1006)

    def _origin_event(self, origin: _Origin) -> None:
        # A message on a socket the worker answered its client with (a relay through a pair
        # of its own) is an event of its own, as the client's are; otherwise it is the
        # invocation's time that it spends.
        if origin.request_id is not None and origin.request_id in self._by_request:
            invocation = self._worker._invocations.get(origin.request_id)
            if invocation is not None:
                self._new_event(invocation)

    def _end_origin(self, origin: _Origin) -> None:
        if origin.ended:
            return
        origin.ended = True
        worker = self._worker
        self._origins.pop(origin.js_id, None)
        self._pending.pop(origin.js_id, None)
        if worker._ops.pop(origin.op_id, None) is not None:
            worker._live_ops -= 1
        # A close the worker sent is left to finish (the origin gets its code); else 1001.
        tasks = (origin.reader,) if origin.closed_out else (origin.reader, origin.writer)
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        connection = origin.connection
        if not connection.closed and not origin.closed_out:
            asyncio.get_running_loop().create_task(_close_quietly(connection, GOING_AWAY))
        worker._settle_idle()

    def close_origins(self) -> None:
        """The isolate is gone: every origin socket it opened goes with it."""
        for origin in list(self._origins.values()):
            self._end_origin(origin)

    # --- from the edge (loop) ----------------------------------------------------------------

    def incoming(self, request_id: int, event: str, args: tuple[Any, ...]) -> None:
        """A client's message or close, for the socket coupled to ``request_id``."""
        socket = self._by_request.get(request_id)
        worker = self._worker
        invocation = worker._invocations.get(request_id)
        if socket is None or socket.closed_in or invocation is None:
            return
        if socket.origin_id:
            self._from_piped_client(socket, event, args)
            return
        self._new_event(invocation)
        if event == "message":
            binary, data = bool(args[0]), bytes(args[1])
            text = data.decode("latin-1") if binary else data.decode("utf-8", "replace")
            socket.unacked += len(data)
            worker._schedule(request_id, "ws", socket.js_id, "message", text, binary, len(data))
            return
        code, reason, error = int(args[0]), str(args[1]), args[2]
        socket.closed_in = True
        if error is not None:
            worker._schedule(request_id, "ws", socket.js_id, "error", str(error), code, reason)
        elif code == 1006:
            worker._schedule(request_id, "ws", socket.js_id, "close", 1006, GONE, False)
        else:
            worker._schedule(request_id, "ws", socket.js_id, "close", code, reason, True)

    def _from_piped_client(self, socket: _Socket, event: str, args: tuple[Any, ...]) -> None:
        origin = self._origins.get(socket.origin_id)
        ack = getattr(socket.reply, "ws_ack", None)
        if event == "message":
            binary, data = bool(args[0]), bytes(args[1])
            if origin is not None and not origin.closed_out:
                origin.outbox.append(("send", binary, data, ack))
                origin.queued += len(data) + MESSAGE_OVERHEAD
                origin.wake.set()
            elif ack is not None:
                ack(len(data))
            return
        # The client's close (or its disconnect): the origin gets its code, or 1001.
        code, reason, error = int(args[0]), str(args[1]), args[2]
        socket.closed_in = True
        if origin is not None and not origin.closed_out:
            origin.closed_out = True
            if error is not None or code == 1006:
                code, reason = GOING_AWAY, ""
            origin.outbox.append(("close", code, reason))
            origin.wake.set()
        self._end(socket)

    def _new_event(self, invocation: _Invocation) -> None:
        # Each message is an event of its own: a fresh CPU budget and log allowance.
        invocation.cpu_base = invocation.cpu_seconds
        self._worker._log_bytes.pop(invocation.request.request_id, None)


async def _close_quietly(connection: Any, code: int) -> None:
    try:
        await connection.close(code=code)
    except Exception:  # already broken: nothing more to tell the origin
        pass


__all__ = [
    "GONE",
    "MESSAGE_OVERHEAD",
    "NO_SOCKET_101",
    "ORIGIN_WINDOW_BYTES",
    "RELAY_HEADER",
    "SOCKET_QUEUE_LIMIT",
    "WITHOUT_UPGRADE",
    "WebSocketHost",
]
