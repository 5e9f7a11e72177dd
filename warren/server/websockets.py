"""WebSockets at the edge: the client's socket, relayed to a worker's exchange as frames.

A ``websocket`` ASGI scope is routed like an HTTP request (same resolver, same
``cf`` and visitor headers) and opened as an exchange whose head carries
``"websocket": true``; the worker's fetch handler sees a GET with ``Upgrade:
websocket``. If it answers 101 with a ``webSocket`` (the runtime sends that head
only once the socket is coupled to the invocation, ``warren.runtime.websockets``),
the client's handshake is accepted and messages flow both ways on the exchange's
stream as ``WS_MESSAGE`` / ``WS_CLOSE`` frames; any other answer goes back as an
HTTP response (ASGI ``websocket.http.response``; without that extension, a 403).

Bounds, so that neither side can pile up memory in the node:

- client to worker: a message over ``MAX_MESSAGE_BYTES`` (1 MiB, as on Workers)
  closes the socket with 1009 and the worker gets an ``error`` event; at most
  ``INCOMING_WINDOW_BYTES`` / ``INCOMING_WINDOW_MESSAGES`` may be on their way to
  the isolate before it has taken them (``WS_ACK``), past which the client is not
  read (uvicorn then stops reading its TCP stream);
- worker to client: what the client has not taken is credited back (``CREDIT``,
  as for response bodies) and bounded per socket in the runtime process;
- sockets: ``MAX_SOCKETS_PER_WORKER`` open to one script version on this node,
  ``MAX_SOCKETS_PER_NODE`` in all; past either, the upgrade gets 503.

If the invocation ends abnormally (CPU or memory limit, the isolate restarted,
the runtime process crashed) the client's socket is closed with 1011 and the
reason.

Sockets accepted elsewhere: a Durable Object (or a service behind a binding)
may accept the socket and the worker return the stub's 101 as its own. The
binding then *holds* the object's exchange (``HeldSockets``) under a random
token bound to the caller's exchange; the caller's 101 carries the token
(``RELAY_HEADER``, written only by the runtime), and the edge relays the client
to the held exchange instead. A socket nobody claims is closed (1006) shortly
after its caller's invocation ends. Across nodes, the owner's node holds it and
the caller's node holds a *remote* reference; the edge then bridges the client
to the owner's internal endpoint, where the same relay runs
(``serve_internal_socket``).

Owns: the ASGI ``websocket`` scope, the WS frame payloads (also decoded by
``runtime_process``), held sockets. Must not touch: isolates, the HTTP path of
``app.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from warren.runtime.websockets import RELAY_HEADER
from warren.server.protocol import Kind, encode

if TYPE_CHECKING:
    from warren.server.app import EdgeApp, Receive, Scope, Send
    from warren.server.supervisor import Exchange, Supervisor

MAX_MESSAGE_BYTES = 1024 * 1024
INCOMING_WINDOW_BYTES = 256 * 1024
INCOMING_WINDOW_MESSAGES = 16
MAX_SOCKETS_PER_WORKER = 256
MAX_SOCKETS_PER_NODE = 10_000
REFUSAL_BODY_LIMIT = 1024 * 1024  # of a non-101 answer to an upgrade, sent back as HTTP
OUTCOME_WAIT_S = 5.0  # after a failure, how long to wait for the invocation's outcome (the close reason)
MAX_REASON_BYTES = 123  # a close frame's reason
# What a message costs on its way besides its bytes (frame, queue entry), counted in the
# send credit so that many tiny messages are bounded too; the runtime counts the same
# (warren.runtime.websockets.MESSAGE_OVERHEAD).
MESSAGE_OVERHEAD = 64

TOO_LARGE = "Message is too large"
TOO_LARGE_ANSWER = "The worker's answer to a WebSocket upgrade is too large."
TOO_MANY_FOR_WORKER = "Too many WebSockets are open to this worker on this node."
TOO_MANY_FOR_NODE = "Too many WebSockets are open on this node."
OUTCOME_REASONS = {
    "exceededCpu": "Worker exceeded its CPU time limit.",
    "exceededMemory": "Worker exceeded its memory limit.",
    "canceled": "Worker was restarted.",
    "exception": "Worker threw an exception.",
}
ENDED = "The worker's invocation ended."
HELD_GONE = "The WebSocket accepted by the Durable Object or service is no longer available."
HOLD_GRACE_S = 5.0  # after the caller's invocation ended, how long a held socket waits to be claimed
HOLD_LIMIT_S = 30.0  # at most, when there is no caller exchange to watch (a call forwarded from another node)

_TEXT = 1
_BINARY = 2
# Codes a close frame may carry on the wire (RFC 6455 7.4); others go out as a close without a code.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
# Not passed from the worker's 101 to the client: the handshake's own, and hop-by-hop.
_HANDSHAKE_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "date",
    }
)
_HOP_BY_HOP = frozenset({"connection", "upgrade", "transfer-encoding", "keep-alive", "content-length"})


# --- frame payloads (both directions) -------------------------------------------------


def encode_message(binary: bool, data: bytes) -> bytes:
    return bytes([_BINARY if binary else _TEXT]) + data


def decode_message(payload: bytes) -> tuple[bool, bytes]:
    """(binary, data) of a WS_MESSAGE payload."""
    return (payload[:1] == bytes([_BINARY])), payload[1:]


def encode_close(code: int, reason: str, error: str | None = None) -> bytes:
    value: dict[str, Any] = {"code": code, "reason": reason}
    if error is not None:
        value["error"] = error
    return json.dumps(value, separators=(",", ":")).encode()


def decode_close(payload: bytes) -> tuple[int, str, str | None]:
    """(code, reason, error) of a WS_CLOSE payload; a malformed one reads as 1011."""
    try:
        value = json.loads(payload)
        code = int(value.get("code", 1005))
        reason = str(value.get("reason") or "")
        error = value.get("error")
        return code, reason, str(error) if error is not None else None
    except (ValueError, TypeError, AttributeError):
        return 1011, "", None


def encode_ack(count: int) -> bytes:
    return max(0, count).to_bytes(8, "big")


def decode_ack(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "big")


def decode_incoming(kind: Kind, payload: bytes) -> tuple[Any, ...]:
    """An edge frame for the worker: ("message", binary, data) or ("close", code, reason, error)."""
    if kind == Kind.WS_MESSAGE:
        binary, data = decode_message(payload)
        return "message", binary, data
    return ("close", *decode_close(payload))


# --- sockets open on this node ---------------------------------------------------------

_open: weakref.WeakKeyDictionary[Supervisor, Counter[str]] = weakref.WeakKeyDictionary()


def open_sockets(supervisor: Supervisor) -> Counter[str]:
    """Sockets relayed now, by script version key (and "" for the node's total)."""
    counts = _open.get(supervisor)
    if counts is None:
        counts = _open[supervisor] = Counter()
    return counts


# --- sockets accepted by another invocation, until the edge relays them ---------------------


@dataclass(eq=False)
class HeldSocket:
    """A socket a Durable Object or service accepted: its exchange here, or where it lives."""

    exchange: Exchange | None  # the invocation holding it on this node
    owner: int  # the exchange that may claim it (the caller's stream; 0: another node, by token)
    remote: tuple[str, str] | None = None  # (owner node's internal URL, its token there)
    expiry: asyncio.Task[None] | None = None


class HeldSockets:
    """The node's held sockets, by token (unguessable, and claimable only by their owner)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._held: dict[str, HeldSocket] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, exchange: Exchange, owner: int) -> str:
        return self._add(HeldSocket(exchange, owner))

    def hold_remote(self, url: str, token: str, owner: int) -> str:
        return self._add(HeldSocket(None, owner, (url, token)))

    def pass_on(self, token: str, from_stream: int, to_stream: int) -> bool:
        """A service returned the socket to its caller (``to_stream``), who may claim it now."""
        held = self._held.get(token)
        if held is None or held.owner != from_stream:
            return False
        held.owner = to_stream
        self._watch(token, held)
        return True

    def claim(self, token: str, stream: int) -> HeldSocket | None:
        held = self._held.get(token)
        if held is None or held.owner != stream:
            return None
        del self._held[token]
        if held.expiry is not None:
            held.expiry.cancel()
        return held

    def close(self) -> None:
        """The node stops: nobody will claim what is held."""
        held, self._held = list(self._held.values()), {}
        for socket in held:
            if socket.expiry is not None:
                socket.expiry.cancel()

    def _add(self, held: HeldSocket) -> str:
        token = secrets.token_urlsafe(24)
        self._held[token] = held
        self._watch(token, held)
        return token

    def _watch(self, token: str, held: HeldSocket) -> None:
        if held.expiry is not None:
            held.expiry.cancel()
        held.expiry = asyncio.get_running_loop().create_task(self._expire(token, held))

    async def _expire(self, token: str, held: HeldSocket) -> None:
        caller = self._supervisor.find_exchange(held.owner) if held.owner else None
        try:
            if caller is not None:
                await asyncio.wait_for(caller.completed.wait(), HOLD_LIMIT_S)
                await asyncio.sleep(HOLD_GRACE_S)
            else:
                await asyncio.sleep(HOLD_LIMIT_S)
        except TimeoutError:
            pass
        if self._held.get(token) is held:
            del self._held[token]
            abandon(held)


def abandon(held: HeldSocket) -> None:
    """Nobody relays ``held``: its holder sees the client gone."""
    exchange = held.exchange
    if exchange is not None and exchange.process is not None and not exchange.finished:
        exchange.process.send(encode(Kind.WS_CLOSE, exchange.stream, encode_close(1006, "")))


# --- the ASGI side -----------------------------------------------------------------------


class _QuietRefusals(logging.Filter):
    """uvicorn (0.54, sans-I/O WebSockets) logs an error after every upgrade answered with HTTP."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


_QUIET_REFUSALS = _QuietRefusals()


async def _refuse(scope: Scope, send: Send, status: int, message: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes | None = None) -> None:
    """Answer the upgrade with an HTTP response (or, without the ASGI extension, a bare 403)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET_REFUSALS)  # once: a logger holds a filter once
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    if body is None:
        body = (message + "\n").encode()
        headers = [("content-type", "text/plain; charset=utf-8")]
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers or []]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
    await send({"type": "websocket.http.response.body", "body": body})


async def serve_websocket(app: EdgeApp, scope: Scope, receive: Receive, send: Send) -> None:
    """An upgrade request: route it, run the worker's fetch handler, then relay the socket."""
    from warren.server.app import MAX_HEADER_BYTES, Unavailable  # app imports this module

    if (await receive())["type"] != "websocket.connect":
        return
    raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
    if sum(len(name) + len(value) + 4 for name, value in raw_headers) > MAX_HEADER_BYTES:
        await _refuse(scope, send, 431, "Request header fields too large.")
        return
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers]
    lookup = {name.lower(): value for name, value in headers}
    # The worker sees the request as Workers shows it: http(s), not ws(s).
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    host = lookup.get("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
    path = scope.get("raw_path") or scope["path"].encode()
    url = f"{scheme}://{host}{path.decode('latin-1')}"
    query = scope.get("query_string") or b""
    if query:
        url += "?" + query.decode("latin-1")

    target = app.resolve(host, scope["path"])
    if target is None:
        await _refuse(scope, send, 404, "No worker is routed here.")
        return
    if isinstance(target, Unavailable):
        await _refuse(scope, send, 503, target.message)
        return
    quarantined = app.supervisor.quarantine_message(target)
    if quarantined is not None:
        await _refuse(scope, send, 503, quarantined)
        return
    counts = open_sockets(app.supervisor)
    if counts[""] >= MAX_SOCKETS_PER_NODE:
        await _refuse(scope, send, 503, TOO_MANY_FOR_NODE)
        return
    if counts[target] >= MAX_SOCKETS_PER_WORKER:
        await _refuse(scope, send, 503, TOO_MANY_FOR_WORKER)
        return
    client = scope.get("client")
    version = scope.get("http_version", "1.1")
    cf, headers = app.visitors.describe(client[0] if client else None, headers, scheme, version)
    counts[""] += 1
    counts[target] += 1
    try:
        extra = {"websocket": True}
        exchange = await app.supervisor.open_exchange(target, "GET", url, headers, False, cf=cf, extra=extra)
        await _Relay(app.supervisor, exchange, scope, receive, send).run()
    finally:
        counts[""] -= 1
        counts[target] -= 1
        if counts[target] <= 0:
            del counts[target]


def _handshake(headers: list[tuple[str, str]]) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """The subprotocol and the extra headers of the client's handshake, from the worker's 101."""
    subprotocol = None
    extra: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "sec-websocket-protocol":
            subprotocol = value
        elif lower not in _HANDSHAKE_HEADERS and lower != RELAY_HEADER:
            extra.append((lower.encode("latin-1"), value.encode("latin-1")))
    return subprotocol, extra


async def serve_held(supervisor: Supervisor, token: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Another node's edge connects its client to a socket held here (with no caller on this node)."""
    if (await receive())["type"] != "websocket.connect":
        return
    held = supervisor.held_sockets.claim(token, 0)
    if held is None or held.exchange is None:
        await send({"type": "websocket.close", "code": 1008})
        return
    await _Relay(supervisor, held.exchange, scope, receive, send).relay([])


async def _bridge_remote(remote: tuple[str, str], headers: list[tuple[str, str]], scope: Scope, receive: Receive,
                         send: Send) -> None:
    """The client's socket, relayed to the node holding the socket (its internal endpoint)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, WebSocketException

    url, authorization = remote
    try:
        upstream = await connect(
            url, additional_headers={"authorization": authorization}, max_size=MAX_MESSAGE_BYTES + 1024,
            open_timeout=10, ping_interval=None, compression=None,
        )
    except (OSError, TimeoutError, WebSocketException):
        await _refuse(scope, send, 502, HELD_GONE)
        return
    subprotocol, extra = _handshake(headers)
    try:
        await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra})
    except (OSError, RuntimeError):
        upstream.transport.abort()  # the other node sees the client gone (1006)
        return

    async def inbound() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                code = int(code) if code is not None else 1005
                if code in _SENDABLE or 3000 <= code < 5000:
                    await upstream.close(code, str(message.get("reason") or ""))
                else:
                    upstream.transport.abort()
                return
            if message["type"] != "websocket.receive":
                continue
            text = message.get("text")
            data = text if text is not None else (message.get("bytes") or b"")
            if len(data) > MAX_MESSAGE_BYTES:  # as the holder's edge would: it closes with 1009
                await upstream.close(1009, TOO_LARGE)
                await _close_quietly(send, 1009, TOO_LARGE)
                return
            await upstream.send(data)

    async def outbound() -> None:
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await send({"type": "websocket.send", "text": message})
                else:
                    await send({"type": "websocket.send", "bytes": bytes(message)})
        except ConnectionClosed:
            pass
        code = upstream.close_code
        if code is None or code == 1006:  # no close frame: the connection to the other node broke
            await _close_quietly(send, 1011, "The Durable Object's node went away.")
        else:
            await _close_quietly(send, code, upstream.close_reason or "")

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (OSError, RuntimeError, ConnectionClosed):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        upstream.transport.abort()


async def _close_quietly(send: Send, code: int, reason: str) -> None:
    sendable = code in _SENDABLE or 3000 <= code < 5000
    reason = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")
    try:
        await send({"type": "websocket.close", "code": code if sendable else None,
                    "reason": reason if sendable else ""})
    except (OSError, RuntimeError):
        pass


class _Relay:
    """One accepted socket: client frames to the runtime, the worker's frames to the client."""

    def __init__(self, supervisor: Supervisor, exchange: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        self.supervisor = supervisor
        self.exchange = exchange
        self.scope = scope
        self.receive = receive
        self.send = send
        self.in_flight_bytes = 0
        self.in_flight_messages = 0
        self.window = asyncio.Event()
        self.window.set()
        self.client_closed = False  # we sent the client a close, or it is gone
        self.worker_closed = False
        self._gone: asyncio.Future[Any] | None = None  # the client's disconnect, watched until the handshake

    def _frame(self, kind: Kind, payload: bytes) -> None:
        process = self.exchange.process
        if process is not None and not self.exchange.finished:
            process.send(encode(kind, self.exchange.stream, payload))

    async def run(self) -> None:
        answer = await self._next_answer()
        if answer is None:
            return
        if answer[0] != "head" or answer[1] != 101:
            try:
                await self._refused(answer)
            finally:
                self._client_left()
            return
        token = next((str(value) for name, value in answer[2] if str(name).lower() == RELAY_HEADER), None)
        if token is not None:
            held = self.supervisor.held_sockets.claim(token, self.exchange.stream)
            if held is None:
                self._client_left()
                await _refuse(self.scope, self.send, 502, HELD_GONE)
                return
            if held.remote is not None:
                if self._client_left():
                    return
                await _bridge_remote(held.remote, answer[2], self.scope, self.receive, self.send)
                return
            assert held.exchange is not None
            self.exchange = held.exchange  # the object's (or service's) invocation from now on
        if self._client_left():
            self.client_closed = True
            self._frame(Kind.WS_CLOSE, encode_close(1006, ""))
            return
        await self.relay(answer[2])

    async def relay(self, headers: list[tuple[str, str]]) -> None:
        """Accept the client's handshake with the worker's ``headers``, then relay both ways."""
        subprotocol, extra = _handshake(headers)
        try:
            await self.send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra})
        except (OSError, RuntimeError):
            self.client_closed = True
            self._frame(Kind.WS_CLOSE, encode_close(1006, ""))
            return
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch_completed())
        inbound = loop.create_task(self._inbound())
        outbound = loop.create_task(self._outbound())
        try:
            await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inbound, outbound, watcher):
                task.cancel()
            await asyncio.gather(inbound, outbound, watcher, return_exceptions=True)

    async def _next_answer(self) -> tuple[Any, ...] | None:
        """The exchange's next event before the socket is accepted, or None if the client left first."""
        if self._gone is None:
            self._gone = asyncio.ensure_future(self.receive())  # before the handshake, only a disconnect comes
        event: asyncio.Future[Any] = asyncio.ensure_future(self.exchange.next_event())
        try:
            await asyncio.wait({event, self._gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not event.done():
                event.cancel()
        if event.done() and not event.cancelled():
            return tuple(event.result())
        self.exchange.cancel()  # nobody is waiting for the answer any more
        return None

    def _client_left(self) -> bool:
        """Stop watching the client before the handshake; whether it had already left."""
        gone, self._gone = self._gone, None
        if gone is None:
            return False
        if not gone.done():
            gone.cancel()
            return False
        return not gone.cancelled()

    async def _refused(self, answer: tuple[Any, ...]) -> None:
        """The worker did not accept the socket: its answer goes back as an HTTP response."""
        if answer[0] == "error":
            await _refuse(self.scope, self.send, int(answer[1]), str(answer[2]))
            return
        if answer[0] != "head":
            await _refuse(self.scope, self.send, 502, "The worker's runtime process crashed.")
            return
        status = int(answer[1])
        headers = [(str(name), str(value)) for name, value in answer[2] if str(name).lower() not in _HOP_BY_HOP]
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_answer()
            if event is None:
                return
            if event[0] == "body":
                size += len(event[1])
                if size > REFUSAL_BODY_LIMIT:
                    self.exchange.cancel()
                    await _refuse(self.scope, self.send, 502, TOO_LARGE_ANSWER)
                    return
                chunks.append(event[1])
                self.exchange.consumed(len(event[1]))
            elif event[0] == "end":
                break
            else:
                await _refuse(self.scope, self.send, 502, "The worker's answer was cut short.")
                return
        if not 200 <= status <= 599:
            status = 502
        await _refuse(self.scope, self.send, status, "", headers, b"".join(chunks))

    async def _watch_completed(self) -> None:
        # After DONE nothing more arrives: the outbound loop learns it in order, after the last frame.
        await self.exchange.completed.wait()
        self.exchange.events.put_nowait(("completed",))

    async def _inbound(self) -> None:
        while True:
            while not self.worker_closed and (
                self.in_flight_bytes >= INCOMING_WINDOW_BYTES or self.in_flight_messages >= INCOMING_WINDOW_MESSAGES
            ):
                self.window.clear()
                await self.window.wait()
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                code = message.get("code")
                code = int(code) if code is not None else 1005
                if code == 1005 and "reason" not in message:
                    code = 1006  # uvicorn's word for a connection lost without a close frame
                reason = str(message.get("reason") or "")
                self.client_closed = True
                self._frame(Kind.WS_CLOSE, encode_close(code, reason))
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            binary = text is None
            data: bytes = (message.get("bytes") or b"") if text is None else str(text).encode()
            if len(data) > MAX_MESSAGE_BYTES:
                error = f"Message is too large: {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}."
                await self._close_client(1009, TOO_LARGE)
                self._frame(Kind.WS_CLOSE, encode_close(1009, TOO_LARGE, error))
                return
            if self.worker_closed:
                continue  # the worker closed its side: what the client still sends is dropped
            self.in_flight_bytes += len(data)
            self.in_flight_messages += 1
            self._frame(Kind.WS_MESSAGE, encode_message(binary, data))
            if self.exchange.process is not None:
                await self.exchange.process.drain()

    async def _outbound(self) -> None:
        while True:
            event = await self.exchange.next_event()
            if event[0] == "ws":
                kind, payload = event[1], event[2]
                if kind == Kind.WS_MESSAGE:
                    binary, data = decode_message(payload)
                    if not self.client_closed:
                        try:
                            if binary:
                                await self.send({"type": "websocket.send", "bytes": data})
                            else:
                                await self.send({"type": "websocket.send", "text": data.decode("utf-8", "replace")})
                        except (OSError, RuntimeError):
                            self.client_closed = True
                    self.exchange.consumed(len(data) + MESSAGE_OVERHEAD)
                elif kind == Kind.WS_ACK:
                    self.in_flight_bytes = max(0, self.in_flight_bytes - decode_ack(payload))
                    self.in_flight_messages = max(0, self.in_flight_messages - 1)
                    self.window.set()
                elif kind == Kind.WS_CLOSE:
                    code, reason, _ = decode_close(payload)
                    self.worker_closed = True
                    self.window.set()
                    await self._close_client(code, reason)
                continue
            if event[0] == "completed":
                await self._close_client(1011, self._reason())
                return
            # error, abort or end: the invocation failed (or its process crashed) with the socket open
            if event[0] != "abort":
                try:
                    await asyncio.wait_for(self.exchange.completed.wait(), OUTCOME_WAIT_S)
                except TimeoutError:
                    pass
            await self._close_client(1011, self._reason() if event[0] != "abort" else "The worker's runtime crashed.")
            return

    def _reason(self) -> str:
        outcome = str(self.exchange.metering.get("outcome", ""))
        return OUTCOME_REASONS.get(outcome, ENDED)

    async def _close_client(self, code: int, reason: str) -> None:
        if self.client_closed:
            return
        self.client_closed = True
        reason = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")
        sendable = code in _SENDABLE or 3000 <= code < 5000
        message: dict[str, Any] = {"type": "websocket.close", "code": code if sendable else None}
        message["reason"] = reason if sendable else ""
        try:
            await self.send(message)
        except (OSError, RuntimeError):
            pass


__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_SOCKETS_PER_NODE",
    "MAX_SOCKETS_PER_WORKER",
    "HeldSocket",
    "HeldSockets",
    "decode_ack",
    "decode_close",
    "decode_incoming",
    "decode_message",
    "encode_ack",
    "encode_close",
    "encode_message",
    "open_sockets",
    "serve_held",
    "serve_websocket",
]
