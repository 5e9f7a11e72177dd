"""Bindings: what a worker's ``env`` reaches outside its isolate (KV, services, queues, ...).

A call on a binding object in JavaScript (``env.MY_KV.get("k")``) leaves the
isolate as a host operation, crosses from the runtime process to the node's
supervisor as a CALL frame, and lands here: the ``BindingHost`` of the node
hands it to the handler registered for the binding's type. Handlers run on the
supervisor's event loop, next to the store, so every runtime process of a node
shares one view (and one read cache) of the node's storage.

Owns: the call and result shapes, handler registration, per-type limits.
Must not touch: isolates (they live in runtime processes) or the HTTP front.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from warren.runtime.script import WorkerScript

# Per-invocation limits on calls (1,000 KV operations; service calls count as
# subrequests) are counted by the worker: see warren.runtime.worker.OPERATION_LIMITS.
MAX_CALL_DEPTH = 32  # a chain of service-binding calls deeper than this is refused


class BindingError(Exception):
    """A call failed in a way the worker should see as a JavaScript exception."""

    def __init__(self, message: str, name: str = "Error") -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass
class BindingCall:
    """One call from a worker's isolate on one of its bindings."""

    caller: WorkerScript  # the calling script version (its account_id scopes storage)
    key: str  # the caller's worker key on this node
    binding: dict[str, Any]  # the binding's spec, from the script: {"type", "name", ...}
    method: str
    args: Any  # JSON
    data: bytes | None = None  # a body (a KV value, a request body), when the call has one
    stream: int = 0  # the caller's exchange on this node (0 outside a request)
    depth: int = 0  # service-binding calls between the client's request and this call


@dataclass
class BindingResult:
    value: Any = None  # JSON
    data: bytes | None = None


Handler = Callable[[BindingCall], Awaitable[BindingResult]]


@dataclass
class BindingHost:
    """The node's binding handlers, by binding type."""

    handlers: dict[str, Handler] = field(default_factory=dict)

    def register(self, binding_type: str, handler: Handler) -> None:
        self.handlers[binding_type] = handler

    def supports(self, binding_type: str) -> bool:
        return binding_type in self.handlers

    async def call(self, call: BindingCall) -> BindingResult:
        handler = self.handlers.get(str(call.binding.get("type")))
        if handler is None:
            raise BindingError(f"bindings of type {call.binding.get('type')!r} are not available on this node")
        return await handler(call)


def encode_message(header: dict[str, Any], data: bytes | None) -> bytes:
    """A CALL or RESULT frame's payload: JSON header length (4 bytes), the header, then the data."""
    head = json.dumps({**header, "has_data": data is not None}, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "big") + head + (data or b"")


def decode_message(payload: bytes) -> tuple[dict[str, Any], bytes | None]:
    size = int.from_bytes(payload[:4], "big")
    header = json.loads(payload[4 : 4 + size])
    data = payload[4 + size :] if header.get("has_data") else None
    return header, data


__all__ = [
    "MAX_CALL_DEPTH",
    "BindingCall",
    "BindingError",
    "BindingHost",
    "BindingResult",
    "Handler",
    "decode_message",
    "encode_message",
]
