"""The one message shape between the supervisor and a runtime process.

A frame is ``length (4 bytes) | kind (1 byte) | stream id (4 bytes) | payload``
over a Unix socket. A stream is one HTTP exchange; stream 0 carries control
messages. Payloads are JSON for heads and control, raw bytes for bodies.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from typing import Any

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
    # runtime -> supervisor
    LOADED = 20  # {key, error: null | {message, filename, line, column}}
    HEAD = 21  # {status, headers}
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
    return encode(kind, stream, json.dumps(value, separators=(",", ":")).encode())


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
