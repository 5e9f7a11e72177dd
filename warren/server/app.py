"""The HTTP front as an ASGI application: limits, routing, streaming to the supervisor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from warren.server.supervisor import Exchange, Supervisor

MAX_REQUEST_BODY = 100 * 1024 * 1024
MAX_HEADER_BYTES = 128 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Resolver = Callable[[str, str], "str | None"]  # (host, path) -> worker name


async def _plain(send: Send, status: int, message: str) -> None:
    body = (message + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class EdgeApp:
    """Routes each request to a worker and streams it through the supervisor."""

    def __init__(
        self, supervisor: Supervisor, resolve: Resolver, max_request_body: int = MAX_REQUEST_BODY
    ) -> None:
        self.supervisor = supervisor
        self.resolve = resolve
        self.max_request_body = max_request_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return  # WebSockets arrive with a later issue; returning closes the socket
        await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(name) + len(value) + 4 for name, value in raw_headers) > MAX_HEADER_BYTES:
            await _plain(send, 431, "Request header fields too large.")
            return
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers]
        lookup = {name.lower(): value for name, value in headers}
        declared = lookup.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _plain(send, 400, "Bad Content-Length.")
                return
            if int(declared) > self.max_request_body:
                await _plain(send, 413, "Request body too large.")
                return
        has_body = (declared is not None and int(declared) > 0) or "transfer-encoding" in lookup

        host = lookup.get("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = f"{scope.get('scheme', 'http')}://{host}{path.decode('latin-1')}"
        if query:
            url += "?" + query.decode("latin-1")
        name = self.resolve(host, scope["path"])
        if name is None:
            await _plain(send, 404, "No worker is routed here.")
            return
        if name not in self.supervisor.deployments:
            await _plain(send, 503, f"Worker {name} is not available: its script failed to load.")
            return

        exchange = await self.supervisor.open_exchange(name, scope["method"], url, headers, has_body)
        pump = asyncio.get_running_loop().create_task(self._pump_body(receive, exchange)) if has_body else None
        try:
            await self._respond(exchange, send, pump)
        finally:
            if pump is not None and not pump.done():
                pump.cancel()

    async def _pump_body(self, receive: Receive, exchange: Exchange) -> None:
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                exchange.cancel()
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_request_body:
                exchange.cancel()
                raise _BodyTooLarge
            if chunk:
                await exchange.send_body(chunk)
            if not message.get("more_body", False):
                exchange.end_body()
                return

    async def _respond(self, exchange: Exchange, send: Send, pump: asyncio.Task[None] | None) -> None:
        started = False
        while True:
            event_task = asyncio.ensure_future(exchange.next_event())
            waiting: set[asyncio.Future[Any]] = {event_task}
            if pump is not None and not pump.done():
                waiting.add(pump)
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if pump is not None and pump in done and pump.exception() is not None:
                event_task.cancel()
                if isinstance(pump.exception(), _BodyTooLarge) and not started:
                    await _plain(send, 413, "Request body too large.")
                    return
                raise pump.exception()  # type: ignore[misc]
            if event_task not in done:
                continue_event = await event_task
            else:
                continue_event = event_task.result()
            kind = continue_event[0]
            if kind == "head":
                _, status, headers = continue_event
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                    }
                )
            elif kind == "body":
                await send({"type": "http.response.body", "body": continue_event[1], "more_body": True})
            elif kind == "end":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            elif kind == "error":
                if not started:
                    await _plain(send, continue_event[1], continue_event[2])
                    return
                raise RuntimeError(continue_event[2])  # mid-body: the server drops the connection
            elif kind == "abort":
                raise RuntimeError("runtime process died mid-response")
