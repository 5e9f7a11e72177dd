"""The HTTP front as an ASGI application: limits, routing, streaming to the supervisor."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from warren.server.supervisor import Exchange, Supervisor
from warren.server.visitor import Visitors
from warren.server.websockets import serve_websocket

MAX_REQUEST_BODY = 100 * 1024 * 1024
MAX_HEADER_BYTES = 128 * 1024
# A request body this small, with its Content-Length, goes to the runtime with the head.
INLINE_REQUEST_BODY = 64 * 1024

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
            "headers": _add_date(
                [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            ),
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class ResponseAborted(Exception):
    """A response failed after its head went out; raising it is how the connection is dropped."""


class _QuietAborts(logging.Filter):
    """uvicorn logs an exception from the app with a traceback; an aborted response is not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseAborted))


_date: tuple[int, bytes] = (0, b"")  # the Date header's value, made once per second


def _add_date(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # The edge adds Date only when the worker did not set one (uvicorn's own is off).
    global _date
    if not any(name.lower() == b"date" for name, _ in headers):
        now = int(time.time())
        if _date[0] != now:
            _date = (now, email.utils.formatdate(now, usegmt=True).encode())
        headers.append((b"date", _date[1]))
    return headers


class EdgeApp:
    """Routes each request to a worker and streams it through the supervisor."""

    def __init__(
        self,
        supervisor: Supervisor,
        resolve: Resolver,
        max_request_body: int = MAX_REQUEST_BODY,
        visitors: Visitors | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.visitors = visitors or Visitors("local")
        self.resolve = resolve
        self.max_request_body = max_request_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await serve_websocket(self, scope, receive, send)  # warren.server.websockets
            return
        if scope["type"] != "http":
            return
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

        client = scope.get("client")
        cf, headers = self.visitors.describe(
            client[0] if client else None, headers, scope.get("scheme", "http"), scope.get("http_version", "1.1")
        )
        first: dict[str, Any] | None = None
        inline_size = int(declared) if declared is not None and "transfer-encoding" not in lookup else -1
        if has_body and 0 < inline_size <= INLINE_REQUEST_BODY:
            # A small body is usually here with the head: it goes to the runtime in one frame
            # with it, and the worker gets it whole with the event (no read back from the host).
            first = await receive()
            if first["type"] == "http.disconnect":
                return
            if not first.get("more_body", False):
                body = first.get("body", b"")
                if len(body) == inline_size:
                    exchange = await self.supervisor.open_exchange(
                        target, scope["method"], url, headers, True, cf=cf, body=body
                    )
                    await self._respond_to(exchange, send, None, receive)
                    return
        exchange = await self.supervisor.open_exchange(target, scope["method"], url, headers, has_body, cf=cf)
        # The pump forwards the request body, then watches for the client leaving; without a
        # body it starts only for a streamed response (the one case where leaving must stop work).
        pump = None
        if has_body:
            pump = asyncio.get_running_loop().create_task(self._pump_body(receive, exchange, True, first))
        await self._respond_to(exchange, send, pump, receive)

    async def _respond_to(
        self, exchange: Exchange, send: Send, pump: asyncio.Task[None] | None, receive: Receive
    ) -> None:
        try:
            await self._respond(exchange, send, pump, receive)
        except _ClientGone:
            pass  # nobody to answer; the exchange was cancelled
        finally:
            if pump is not None and not pump.done():
                pump.cancel()

    async def _pump_body(
        self, receive: Receive, exchange: Exchange, has_body: bool, first: dict[str, Any] | None = None
    ) -> None:
        """Forward the request body (``first``: its first message, already received), then keep
        listening: a client that leaves cancels the exchange."""
        if not has_body:
            await self._watch_disconnect(receive, exchange)
            return
        received = 0
        while True:
            message, first = (first, None) if first is not None else (await receive(), None)
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
                await self._watch_disconnect(receive, exchange)
                return

    @staticmethod
    async def _watch_disconnect(receive: Receive, exchange: Exchange) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        exchange.cancel()

    @staticmethod
    async def _next_event(exchange: Exchange, pump: asyncio.Task[None] | None) -> tuple[Any, ...]:
        """The runtime's next event, unless the request body failed or the client left first."""
        if pump is None:
            return await exchange.next_event()
        if not pump.done():
            event = asyncio.ensure_future(exchange.next_event())
            await asyncio.wait({event, pump}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():
                return await event
            event.cancel()
        if pump.exception() is not None:
            raise pump.exception()  # type: ignore[misc]
        raise _ClientGone  # the pump ends without error only when the client disconnects

    async def _respond(
        self, exchange: Exchange, send: Send, pump: asyncio.Task[None] | None, receive: Receive
    ) -> None:
        watcher: asyncio.Task[None] | None = None
        started = False
        try:
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
                    headers = _add_date([(name.encode("latin-1"), value.encode("latin-1")) for name, value in event[2]])
                    await send({"type": "http.response.start", "status": event[1], "headers": headers})
                    if pump is None and not any(name.lower() == b"content-length" for name, _ in headers):
                        # A streamed body may never end by itself: it stops when the client leaves.
                        pump = watcher = asyncio.get_running_loop().create_task(
                            self._watch_disconnect(receive, exchange)
                        )
                elif kind == "body":
                    # A body that came whole (its end already here) goes out as the last message:
                    # one ASGI send fewer per small response.
                    last = exchange.events.take_end()
                    await send({"type": "http.response.body", "body": event[1], "more_body": not last})
                    if last:
                        return
                    exchange.consumed(len(event[1]))
                elif kind == "end":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                elif kind == "error" and not started:
                    await _plain(send, event[1], event[2])
                    return
                else:  # the runtime failed mid-response: dropping the connection is all that is left
                    raise ResponseAborted(f"response aborted: {event}")
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()


_QUIET_ABORTS = _QuietAborts()


@dataclass
class Listening:
    """An ASGI app being served by uvicorn on a bound port."""

    server: Any
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


# Written at once past this; below it, what one turn of the loop writes waits for its end.
_COALESCE_LIMIT = 64 * 1024


class _CoalescingTransport:
    """A connection's transport whose writes in one turn of the event loop go out in one.

    uvicorn writes a response's head and its body separately: two system calls per small
    response, about a third of the edge's CPU under load. Anything else asked of the
    transport first writes what waits, so the order on the wire never changes.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _COALESCE_LIMIT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_size

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._pending_size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._transport, name)
        if not callable(attribute):
            return attribute

        def after_pending(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return attribute(*args, **kwargs)

        return after_pending


_edge_protocol: type | None = None


def _edge_http_protocol() -> type:
    """uvicorn's httptools protocol, on a coalescing transport."""
    global _edge_protocol
    if _edge_protocol is None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class EdgeHttpProtocol(HttpToolsProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

        _edge_protocol = EdgeHttpProtocol
    return _edge_protocol


async def listen(app: Any, host: str, port: int, date_header: bool = True) -> Listening:
    """Serve ``app`` with uvicorn (httptools) on host:port (0 picks a free port).

    The edge passes ``date_header=False``: a worker's own Date header must not be doubled.
    """
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_QUIET_ABORTS)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_edge_http_protocol(),
        lifespan="off",
        log_level="warning",
        server_header=False,
        date_header=date_header,
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
