"""The one message shape between the supervisor and a runtime process.

A frame is ``length (4 bytes) | kind (1 byte) | stream id (4 bytes) | payload``
over a Unix socket. A stream is one HTTP exchange; stream 0 carries control
messages. Payloads are JSON for heads and control, raw bytes for bodies.

Both ends speak it through ``FrameChannel``: frames are handed on as they are
parsed, with no task or await per frame, and the frames one turn of the event
loop sends (a response's head, body, end and metering) go out in one write,
which wakes the other side once instead of four times.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Callable
from typing import Any, cast

from warren.json_codec import dump_json, load_json

_HEADER = struct.Struct("!IBI")
MAX_FRAME = 64 * 1024 * 1024
BODY_CHUNK = 256 * 1024


class Kind(enum.IntEnum):
    # supervisor -> runtime
    LOAD = 1  # {key, script}: make a script version available (and start it)
    UNLOAD = 2  # {key}: retire a script version once idle
    REQUEST = 3  # {key, method, url, headers, has_body}
    BODY = 4  # raw request body bytes
    BODY_END = 5
    CANCEL = 6  # the client went away
    RESULT = 7  # the result of a CALL (warren.bindings.encode_message)
    CREDIT = 8  # {bytes}: the client took this much of the response body; send more
    # a REQUEST whose whole (small) body follows its head: 4 bytes of head length, head, body
    REQUEST_WITH_BODY = 9
    # runtime -> supervisor
    LOADED = 20  # {key, error: null | {message, filename, line, column}}
    HEAD = 21  # {status, headers}
    # a whole (small) response: 4 bytes of head length, {status, headers}, the body; no END follows
    RESPONSE = 28
    # a RESPONSE and the DONE of its invocation, which ended with it: two heads (response, metering), the body
    RESPONSE_DONE = 29
    RBODY = 22  # raw response body bytes
    END = 23
    ERROR = 24  # {status, message}: failed before a response head
    LOG = 25  # {script, level, message}
    DONE = 26  # {outcome, cpu_ms, wall_ms}
    CALL = 27  # a binding call from an isolate, on its request's stream (warren.bindings.encode_message)
    # either way, on an accepted WebSocket's stream (payloads: warren.server.websockets)
    WS_MESSAGE = 40  # kind byte (1 text, 2 binary) + the message
    WS_CLOSE = 41  # {code, reason, error?}: this side closed (error: the edge refused a message)
    # runtime -> supervisor
    WS_ACK = 42  # {bytes}: the isolate took a message of the client's; the edge may read more


def encode(kind: Kind, stream: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload) + 5, kind, stream) + payload


def encode_json(kind: Kind, stream: int, value: Any) -> bytes:
    return encode(kind, stream, dump_json(value))


def encode_with_body(kind: Kind, stream: int, head: dict[str, Any], body: bytes, *more: dict[str, Any]) -> bytes:
    """JSON heads, each after 4 bytes of its length, then a whole body, in one frame
    (REQUEST_WITH_BODY and RESPONSE: one head; RESPONSE_DONE: the response's, then the metering)."""
    parts: list[bytes] = []
    for value in (head, *more):
        encoded = dump_json(value)
        parts += (len(encoded).to_bytes(4, "big"), encoded)
    parts.append(body)
    return encode(kind, stream, b"".join(parts))


def decode_with_body(payload: bytes, heads: int = 1) -> tuple[Any, ...]:
    """``heads`` JSON heads and the body: ``(head, body)``, or ``(head, metering, body)`` for two."""
    values: list[Any] = []
    offset = 0
    for _ in range(heads):
        length = int.from_bytes(payload[offset : offset + 4], "big")
        values.append(load_json(payload[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    values.append(payload[offset:])
    return tuple(values)


async def read_frame(reader: asyncio.StreamReader) -> tuple[Kind, int, bytes] | None:
    """The next frame, or None at end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length, kind, stream = _HEADER.unpack(header)
    if length < 5 or length > MAX_FRAME:
        raise ValueError(f"bad frame length {length}")
    try:
        payload = await reader.readexactly(length - 5)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return Kind(kind), stream, payload


_KINDS: list[Kind | None] = [None] * 256
for _kind in Kind:
    _KINDS[_kind] = _kind

FrameHandler = Callable[[Kind, int, bytes], None]


class FrameChannel(asyncio.Protocol):
    """One end of a frame socket.

    ``on_frame`` is called for each frame, in order, as soon as it is complete;
    it must not block. An exception it raises is reported to the event loop and
    the next frame is read. A malformed frame closes the channel.
    ``send`` queues a frame; all frames queued in one turn of the loop are
    written together at its end. With ``pause_reading``, no frame is read
    while more than ``high_water`` bytes wait to be written (the runtime stops
    taking work while the supervisor is not taking its output).
    """

    def __init__(self, on_frame: FrameHandler, high_water: int | None = None, pause_reading: bool = False) -> None:
        self._on_frame = on_frame
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._high_water = high_water
        self._pause_reading = pause_reading
        # a frame still arriving: its pieces, their size, and the size that completes it
        self._pieces: list[bytes] = []
        self._have = 0
        self._need = 0
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._writing_paused = False
        self._drained: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are one.
        self._transport = cast(asyncio.Transport, transport)
        if self._high_water is not None:
            self._transport.set_write_buffer_limits(high=self._high_water)

    def data_received(self, data: bytes) -> None:
        if self._pieces:
            self._pieces.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._pieces)
            self._pieces = []
        offset = 0
        end = len(data)
        need = _HEADER.size
        while end - offset >= _HEADER.size:
            length, kind, stream = _HEADER.unpack_from(data, offset)
            known = _KINDS[kind]
            if length < 5 or length > MAX_FRAME or known is None:
                self._malformed(f"bad frame (length {length}, kind {kind})")
                return
            stop = offset + 4 + length
            if stop > end:
                need = 4 + length
                break
            payload = data[offset + _HEADER.size : stop]
            offset = stop
            try:
                self._on_frame(known, stream, payload)
            except Exception as exc:  # a bug in a handler must not lose the frames after it
                self._loop.call_exception_handler(
                    {"message": f"frame handler failed on {known.name}", "exception": exc, "protocol": self}
                )
        if offset < end:
            rest = data[offset:] if offset else data
            self._pieces = [rest]
            self._have = len(rest)
            self._need = need

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._outgoing.clear()
        self._writing_paused = False
        self._wake_drainers()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._pause_reading and self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._pause_reading and self._transport is not None:
            self._transport.resume_reading()
        self._wake_drainers()

    # -- sending --

    def send(self, frame: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._outgoing.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames, self._outgoing = self._outgoing, []
        if frames and self._transport is not None and not self._transport.is_closing():
            if len(frames) == 1:
                self._transport.write(frames[0])
            else:
                self._transport.writelines(frames)

    async def drain(self) -> None:
        """Until what was sent is (mostly) written; at once if the channel is closed."""
        self._flush()
        if self._writing_paused and self._transport is not None:
            waiter = self._loop.create_future()
            self._drained.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    def _malformed(self, message: str) -> None:
        self._loop.call_exception_handler({"message": f"frame channel closed: {message}", "protocol": self})
        self._pieces = []
        if self._transport is not None:
            self._transport.abort()
