"""The HTTP front as an ASGI application: limits, routing, streaming to the supervisor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from warren.server.supervisor import Exchange, Supervisor

MAX_REQUEST_BODY = 100 * 1024 * 1024
MAX_HEADER_BYTES = 128 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Unavailable:
    """A route exists but its worker cannot serve (it failed to load): 503 with this message."""

    message: str


# (host, path) -> the key of the script version to serve, Unavailable, or None (404)
Resolver = Callable[[str, str], "str | Unavailable | None"]


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
        target = self.resolve(host, scope["path"])
        if target is None:
            await _plain(send, 404, "No worker is routed here.")
            return
        if isinstance(target, Unavailable):
            await _plain(send, 503, target.message)
            return
        quarantined = self.supervisor.quarantine_message(target)
        if quarantined is not None:
            await _plain(send, 503, quarantined)
            return

        exchange = await self.supervisor.open_exchange(target, scope["method"], url, headers, has_body)
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

    @staticmethod
    async def _next_event(exchange: Exchange, pump: asyncio.Task[None] | None) -> tuple[Any, ...]:
        """The runtime's next event, unless the request body failed first."""
        if pump is None or pump.done():
            if pump is not None and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
            return await exchange.next_event()
        event = asyncio.ensure_future(exchange.next_event())
        await asyncio.wait({event, pump}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and pump.exception() is not None:
            event.cancel()
            raise pump.exception()  # type: ignore[misc]
        return await event

    async def _respond(self, exchange: Exchange, send: Send, pump: asyncio.Task[None] | None) -> None:
        started = False
        while True:
            try:
                event = await self._next_event(exchange, pump)
            except _BodyTooLarge:
                if started:
                    raise
                await _plain(send, 413, "Request body too large.")
                return
            kind = event[0]
            if kind == "head":
                started = True
                headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in event[2]]
                await send({"type": "http.response.start", "status": event[1], "headers": headers})
            elif kind == "body":
                await send({"type": "http.response.body", "body": event[1], "more_body": True})
            elif kind == "end":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            elif kind == "error" and not started:
                await _plain(send, event[1], event[2])
                return
            else:  # the runtime failed mid-response: dropping the connection is all that is left
                raise RuntimeError(f"response aborted: {event}")


@dataclass
class Listening:
    """An ASGI app being served by uvicorn on a bound port."""

    server: Any
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def listen(app: Any, host: str, port: int) -> Listening:
    """Serve ``app`` with uvicorn (httptools) on host:port (0 picks a free port)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="off",
        log_level="warning",
        server_header=False,
        access_log=False,
        proxy_headers=False,  # warren is the edge: there is no proxy in front to trust
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise OSError(f"could not listen on {host}:{port}")
    bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
    return Listening(server, task, int(bound))
