"""A real origin server on 127.0.0.1 for tests of workers' subrequests (aiohttp, in a thread).

Routes:
  /echo           -> JSON {method, path, query, headers, body (text), length}
  /bytes?n=N      -> N bytes (b"0123456789" repeated), streamed in 64 KB chunks
  /redirect?to=URL&status=302
  /gate/NAME      -> waits until the test calls origin.open_gate(NAME), then "opened"
  /status/CODE    -> that status, body "status CODE"
  /upload         -> JSON {length, chunks, sha1}: how the request body arrived
  /gzip           -> "compressed hello" gzip-encoded
  /hits           -> how many requests /echo and /upload have served
  /ws             -> a WebSocket (subprotocols "chat", "other"): says "welcome PROTOCOL TOKEN"
                     (x-token header), echoes text as "origin:TEXT" and bytes reversed; "close CODE"
                     closes with CODE, "drop" drops the connection, "big" sends a 1.5 MB message, "flood N" N messages of 64 KiB
                     as fast as they go (origin.flood_sent counts them); each socket's close code
                     (as the origin saw it) goes to origin.ws_closes

A TCP server on origin.tcp_port (cloudflare:sockets tests): see _tcp_echo.

Routes for examples/ (tests/test_examples.py), state in ``origin.examples`` (ExampleRoutes):
  /site/PATH          -> a page the test put in origin.examples.pages (404 if none), written
                         chunk by chunk (a chunk may be Pause(s) or Gate(name)); hits counted
  /range/PREFIX       -> Pwned Passwords k-anonymity range: "SUFFIX:COUNT" lines (Add-Padding honoured)
  /hang/NAME/PATH     -> never answers until gate NAME opens; records when the client goes away
  /webhook            -> POST: records the JSON body in origin.examples.webhooks
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


class Origin:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._gates: dict[str, asyncio.Event] = {}
        self.hits = 0
        self.requests: list[dict[str, Any]] = []
        self.ws_closes: list[int | None] = []
        self.flood_sent = 0
        self._tcp_transports: list[Any] = []
        self.tcp_connections = 0  # connections the TCP echo server (origin.tcp_port) accepted
        self.tcp_closed = 0  # 64 KiB messages the "flood N" command has got out so far
        self._runner: web.AppRunner | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"
        self.tcp_port = asyncio.run_coroutine_threadsafe(self._start_tcp(), self._loop).result(10)

    def _gate(self, name: str) -> asyncio.Event:
        if name not in self._gates:
            self._gates[name] = asyncio.Event()
        return self._gates[name]

    def open_gate(self, name: str) -> None:
        self._loop.call_soon_threadsafe(self._gate(name).set)

    async def _start(self) -> int:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/bytes", self._bytes)
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_get("/gate/{name}", self._wait_gate)
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/ws", self._websocket)
        self.examples = ExampleRoutes(self)
        self.examples.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def _start_tcp(self) -> int:
        self.tcp_server = await asyncio.start_server(self._tcp_echo, "127.0.0.1", 0)
        return int(self.tcp_server.sockets[0].getsockname()[1])

    async def _tcp_echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """TCP, line by line: "bye" closes, "size N" answers N bytes, anything else comes back as
        "echo:LINE". At the client's end of writing, "eof" is written and the connection closed."""
        self.tcp_connections += 1
        self._tcp_transports.append(writer.transport)
        try:
            writer.write(b"hello\n")
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                if text == "bye":
                    break
                if text.startswith("size "):
                    writer.write(b"z" * int(text.split()[1]))
                else:
                    writer.write(f"echo:{text}\n".encode())
                await writer.drain()
            else:
                writer.write(b"eof\n")
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.tcp_closed += 1

    async def _echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.read()
        record = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "length": len(body),
        }
        self.requests.append(record)
        return web.json_response(record, headers={"x-origin": "yes"})

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "0"))
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        response.content_length = n
        await response.prepare(request)
        block = b"0123456789" * 6554
        sent = 0
        while sent < n:
            chunk = block[: min(len(block), n - sent)]
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"location": request.query["to"]}, text="moved")

    async def _wait_gate(self, request: web.Request) -> web.Response:
        await self._gate(request.match_info["name"]).wait()
        return web.Response(text="opened")

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def _upload(self, request: web.Request) -> web.Response:
        self.hits += 1
        digest = hashlib.sha1()
        length = chunks = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
            chunks += 1
        return web.json_response({"length": length, "chunks": chunks, "sha1": digest.hexdigest()})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        from aiohttp import WSMsgType

        ws = web.WebSocketResponse(protocols=("chat", "other"))
        await ws.prepare(request)
        try:
            await ws.send_str(f"welcome {ws.ws_protocol or '-'} {request.headers.get('x-token', '-')}")
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    if message.data.startswith("close "):
                        await ws.close(code=int(message.data.split()[1]), message=b"origin says bye")
                        break
                    if message.data == "drop":  # gone without a close frame
                        assert request.transport is not None
                        request.transport.close()
                        break
                    if message.data.startswith("flood "):
                        for _ in range(int(message.data.split()[1])):
                            await ws.send_bytes(b"f" * 65536)
                            self.flood_sent += 1
                        continue
                    if message.data == "big":
                        await ws.send_str("x" * 1_500_000)
                    else:
                        await ws.send_str("origin:" + message.data)
                elif message.type == WSMsgType.BINARY:
                    await ws.send_bytes(bytes(reversed(message.data)))
        except ConnectionError:
            pass  # the node dropped the connection (a message it refused, say)
        finally:
            self.ws_closes.append(ws.close_code)  # None: no close frame came
        return ws

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"compressed hello"),
            headers={"content-encoding": "gzip", "content-type": "text/plain"},
        )

    def stop(self) -> None:
        async def stop() -> None:
            for gate in self._gates.values():
                gate.set()
            # Every connection's transport, to abort below: one closed while its client was not
            # reading (a flood, an abandoned body) waits to flush forever, keeps its socket, and
            # warns when collected during some later test. aiohttp lists them only privately.
            server = self._runner.server if self._runner is not None else None
            transports = [*(server._connections.values() if server is not None else ()), *self._tcp_transports]
            for transport in transports:
                transport.abort()  # first: a handler blocked writing to a client that does not read ends now
            if self._runner is not None:
                await self._runner.cleanup()
            self.tcp_server.close()
            # A handler still running (for a client that gave up) ends now, its connection closed
            # here, not found unclosed by the collector during a later test (an error: warnings are).
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for transport in transports:
                transport.abort()  # a no-op on one already closed
            for _ in range(5):  # the callbacks that finish closing the transports (see settle_transports)
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def json(self) -> str:
        return json.dumps({"url": self.url})


# --- routes for examples/ (tests/test_examples.py) --------------------------------------------


@dataclass
class Pause:
    """A chunk of a page that is a delay: the bytes before it reach the client on their own."""

    seconds: float


@dataclass
class Gate:
    """A chunk of a page that waits until the test calls origin.open_gate(name)."""

    name: str


@dataclass
class Page:
    chunks: list[bytes | Pause | Gate]
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/html; charset=utf-8"})
    status: int = 200


class ExampleRoutes:
    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self.pages: dict[str, Page] = {}
        self.site_hits: dict[str, int] = {}
        self.breached: dict[str, int] = {}  # SHA-1 (upper-case hex) -> times seen in breaches
        self.range_requests: list[dict[str, str]] = []  # {"path", "padding"} of each /range request
        self.hanging: dict[str, str] = {}  # NAME -> "waiting" | "client went away" | "opened"
        self.webhooks: list[Any] = []

    def page(self, path: str, *chunks: bytes | str | Pause | Gate, **headers: str) -> None:
        """Serve ``/site{path}``; ``headers`` use ``_`` for ``-`` (content_type="text/plain")."""
        parts = [c.encode() if isinstance(c, str) else c for c in chunks]
        page = Page(parts)
        for name, value in headers.items():
            page.headers[name.replace("_", "-")] = value
        self.pages[path] = page

    def install(self, app: web.Application) -> None:
        app.router.add_get("/site/{path:.*}", self._site)
        app.router.add_get("/range/{prefix}", self._range)
        app.router.add_get("/hang/{name}/{tail:.*}", self._hang)
        app.router.add_post("/webhook", self._webhook)

    async def _site(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        self.site_hits[path] = self.site_hits.get(path, 0) + 1
        page = self.pages.get(path)
        if page is None:
            return web.Response(status=404, text=f"no page {path}")
        response = web.StreamResponse(status=page.status, headers=page.headers)
        await response.prepare(request)
        for chunk in page.chunks:
            if isinstance(chunk, Pause):
                await asyncio.sleep(chunk.seconds)
            elif isinstance(chunk, Gate):
                await self._origin._gate(chunk.name).wait()
            else:
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _range(self, request: web.Request) -> web.Response:
        prefix = request.match_info["prefix"].upper()
        padding = request.headers.get("add-padding", "")
        self.range_requests.append({"path": request.path, "padding": padding})
        if len(prefix) != 5 or any(c not in "0123456789ABCDEF" for c in prefix):
            return web.Response(status=400, text="The hash prefix was not in a valid format")
        lines = [f"{h[5:]}:{n}" for h, n in self.breached.items() if h.startswith(prefix)]
        if padding.lower() == "true":  # as the real API: decoy suffixes with a count of 0
            lines += [hashlib.sha1(f"{prefix}{i}".encode()).hexdigest().upper()[5:] + ":0" for i in range(20)]
        return web.Response(text="\r\n".join(sorted(lines)), content_type="text/plain")

    async def _hang(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hanging[name] = "waiting"
        gate = self._origin._gate(name)
        # aiohttp does not cancel a handler whose client left, so watch the transport.
        while not gate.is_set():
            if request.transport is None or request.transport.is_closing():
                self.hanging[name] = "client went away"
                return web.Response(text="nobody is listening")
            await asyncio.sleep(0.02)
        self.hanging[name] = "opened"
        return web.Response(text=f"{name} opened")

    async def _webhook(self, request: web.Request) -> web.Response:
        self.webhooks.append(await request.json())
        return web.Response(status=204)

    def wait_for(self, condition: Any, timeout: float = 10) -> None:
        """Poll ``condition()`` (read from the test's thread) until true."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the origin")
            time.sleep(0.02)


# --- end of routes for examples/ ------------------------------------------------------------


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()
