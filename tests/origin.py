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
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
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
        self._runner: web.AppRunner | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"

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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

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

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"compressed hello"),
            headers={"content-encoding": "gzip", "content-type": "text/plain"},
        )

    def stop(self) -> None:
        async def stop() -> None:
            for gate in self._gates.values():
                gate.set()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def json(self) -> str:
        return json.dumps({"url": self.url})


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()
