"""Service bindings: a worker calling another worker of its account on the same node.

``env.AUTH.fetch(request)`` and ``await env.AUTH.add(1, 2)`` (RPC to a
``WorkerEntrypoint`` class) arrive here as binding calls of type ``service``
(``{"type": "service", "name": "AUTH", "service": "auth-worker", "entrypoint"?}``).
The target's version is found by a resolver the node supplies (an edge node: the
script of that name deployed in the caller's account; ``warren dev``: a sibling
worker), and the call becomes an exchange the supervisor sends to the target's
runtime process, exactly as an HTTP request would be, with no HTTP round trip.
Each hop adds one to the exchange's depth; the supervisor refuses a call made at
depth 32 or more, so a chain deeper than 32 fails with a clear error. Calls count
as subrequests of the caller (``warren.runtime.worker.SUBREQUEST_TYPES``).

RPC arguments and results travel as serialized JSON (``services.js``) in the
exchange's body; the callee's runtime dispatches them as an "rpc" invocation.
Bodies through a service binding (a request, a response, RPC values) are held
whole, up to ``MAX_BODY`` bytes each. A WebSocket upgrade goes through: the
exchange is opened as an upgrade, and a 101 with a socket the service accepted
is held by the node (``warren.server.websockets.HeldSockets``) for the caller to
return (``collect`` with ``sockets``).

Owns: the ``service`` binding handler and ``collect`` (an exchange's answer as
bytes). Must not touch: isolates, the HTTP front, the store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from warren.bindings import BindingCall, BindingError, BindingResult
from warren.runtime.websockets import RELAY_HEADER

if TYPE_CHECKING:
    from warren.runtime.script import WorkerScript
    from warren.server.supervisor import Exchange, Supervisor
    from warren.server.websockets import HeldSockets

MAX_BODY = 32 * 1024 * 1024
MAX_METHOD_NAME = 256
_HEADER_TEXT = re.compile(r"[^\r\n\0]*")

# (calling script version, service name) -> the version key to run, or None
Resolver = Callable[["WorkerScript", str], str | None]


@dataclass
class Answer:
    """What an exchange produced: a response, or an error before any head (``error`` set)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    error: str | None = None
    socket: str | None = None  # a 101's WebSocket, held by the node under this token


def is_upgrade(headers: list[tuple[str, str]]) -> bool:
    """Whether a request asks for a WebSocket (and its exchange should be opened as an upgrade)."""
    return any(name.lower() == "upgrade" and value.strip().lower() == "websocket" for name, value in headers)


async def collect(exchange: Exchange, limit: int = MAX_BODY, sockets: HeldSockets | None = None,
                  owner: int = 0) -> Answer:
    """Read an exchange's response whole. Raises BindingError past ``limit`` bytes or when cut short.

    With ``sockets``, a 101 (the callee accepted a WebSocket) ends the answer at once: the socket
    is held there for the exchange ``owner`` (the caller's) to return to its client."""
    status, headers, chunks, size = 0, [], [], 0
    while True:
        event = await exchange.next_event()
        kind = event[0]
        if kind == "head":
            status, headers = int(event[1]), [(str(name), str(value)) for name, value in event[2]]
            if status == 101:
                return _held(exchange, headers, sockets, owner)
        elif kind == "error":
            return Answer(int(event[1]), [], b"", str(event[2]))
        elif kind == "body":
            chunk: bytes = event[1]
            size += len(chunk)
            if size > limit:
                exchange.cancel()
                raise BindingError(f"The response through the service binding is over {limit} bytes.", "RangeError")
            chunks.append(chunk)
            exchange.consumed(len(chunk))  # credit, or a response over 1 MiB would wait forever
        elif kind == "end":
            return Answer(status, headers, b"".join(chunks))
        elif kind == "abort":
            raise BindingError("The service's response was cut short (its runtime process crashed).")


def _held(exchange: Exchange, headers: list[tuple[str, str]], sockets: HeldSockets | None, owner: int) -> Answer:
    relayed = next((value for name, value in headers if name.lower() == RELAY_HEADER), None)
    headers = [pair for pair in headers if pair[0].lower() != RELAY_HEADER]
    if sockets is None:
        raise BindingError("A WebSocket cannot be returned through this call.")
    if relayed is None:
        return Answer(101, headers, b"", socket=sockets.hold(exchange, owner))
    # The callee returned a socket held for it in turn (a service in front of a Durable Object).
    if not sockets.pass_on(relayed, exchange.stream, owner):
        raise BindingError("The WebSocket the callee returned is no longer available.")
    return Answer(101, headers, b"", socket=relayed)


class ServiceBindings:
    """The ``service`` binding handler of one node."""

    def __init__(self, supervisor: Supervisor, resolve: Resolver) -> None:
        self.supervisor = supervisor
        self.resolve = resolve

    async def __call__(self, call: BindingCall) -> BindingResult:
        service = str(call.binding.get("service", ""))
        entrypoint = str(call.binding.get("entrypoint") or "")
        key = self.resolve(call.caller, service)
        if key is None or key not in self.supervisor.scripts:
            raise BindingError(f'The service "{service}" is not available: no worker of that name is running.')
        refused = self.supervisor.quarantine_message(key)
        if refused is not None:
            raise BindingError(refused)
        if call.method == "fetch":
            return await self._fetch(call, key, entrypoint)
        if call.method == "rpc":
            return await self._rpc(call, key, service, entrypoint)
        raise BindingError(f"A service binding has no operation {call.method!r}.", "TypeError")

    async def _open(
        self, call: BindingCall, key: str, method: str, url: str, headers: list[tuple[str, str]], extra: dict[str, Any]
    ) -> Exchange:
        try:
            exchange = await self.supervisor.open_exchange(
                key, method, url, headers, has_body=call.data is not None, depth=call.depth + 1, extra=extra
            )
        except KeyError:  # retired between resolve and open
            raise BindingError("The service was redeployed during the call; please retry.") from None
        if call.data is not None:
            await exchange.send_body(call.data)
            exchange.end_body()
        return exchange

    async def _fetch(self, call: BindingCall, key: str, entrypoint: str) -> BindingResult:
        head = call.args if isinstance(call.args, dict) else {}
        method, url, raw_headers = head.get("method"), head.get("url"), head.get("headers")
        if not isinstance(method, str) or not isinstance(url, str) or not isinstance(raw_headers, list):
            raise BindingError("malformed service binding request", "TypeError")
        headers = []
        for pair in raw_headers:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                raise BindingError("malformed service binding request headers", "TypeError")
            if not all(_HEADER_TEXT.fullmatch(part) for part in pair):
                raise BindingError("malformed service binding request headers", "TypeError")
            headers.append((pair[0], pair[1]))
        extra: dict[str, Any] = {"entrypoint": entrypoint} if entrypoint else {}
        if is_upgrade(headers):
            extra["websocket"] = True
        exchange = await self._open(call, key, method, url, headers, extra)
        answer = await collect(exchange, sockets=self.supervisor.held_sockets, owner=call.stream)
        if answer.socket is not None:
            value = {"status": 101, "statusText": "", "headers": [list(pair) for pair in answer.headers],
                     "webSocket": answer.socket}
            return BindingResult(value, None)
        if answer.error is not None:
            # As an HTTP request would get it: the callee's failure is a response, not an exception.
            value = {
                "status": answer.status,
                "statusText": "",
                "headers": [["content-type", "text/plain;charset=UTF-8"]],
            }
            return BindingResult(value, answer.error.encode())
        value = {"status": answer.status, "statusText": "", "headers": [list(pair) for pair in answer.headers]}
        return BindingResult(value, answer.body)

    async def _rpc(self, call: BindingCall, key: str, service: str, entrypoint: str) -> BindingResult:
        method = call.args.get("method") if isinstance(call.args, dict) else None
        if not isinstance(method, str) or not method or len(method) > MAX_METHOD_NAME or not method.isprintable():
            raise BindingError("malformed RPC method name", "TypeError")
        if call.data is None:
            raise BindingError("malformed RPC call: no arguments", "TypeError")
        url = f"http://{quote(service, safe='')}.rpc.invalid/{quote(method, safe='')}"
        extra = {"event": "rpc", "entrypoint": entrypoint, "name": method}
        exchange = await self._open(call, key, "POST", url, [], extra)
        answer = await collect(exchange)
        if answer.error is not None:
            raise BindingError(answer.error)
        return BindingResult(None, answer.body)


__all__ = ["MAX_BODY", "Answer", "Resolver", "ServiceBindings", "collect", "is_upgrade"]
