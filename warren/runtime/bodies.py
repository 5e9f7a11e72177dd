"""Bodies that live on the host side of an isolate: read by JavaScript on demand.

A request body arriving from the client, a subrequest's response, a value
from storage: each is a ``BodySource`` the isolate reads in chunks through a
handle, so a body can pass through a worker (``return fetch(url)``, or
``env.KV.put(key, request.body)``) without ever being copied into JavaScript.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol


class BodySource(Protocol):
    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the body (at least one unless it has ended); b"" at its end."""
        ...

    def close(self) -> None:
        """Nobody will read further: release what the body holds."""
        ...


class BytesBody:
    """A body already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    async def read(self, max_bytes: int) -> bytes:
        chunk = bytes(self._data[self._at : self._at + max_bytes])
        self._at += len(chunk)
        return chunk

    def close(self) -> None:
        self._data = memoryview(b"")
        self._at = 0


class BodyAborted(Exception):
    """The body's producer failed before its end (the client went away, the origin reset)."""


class QueueBody:
    """A body fed in chunks by its producer (frames from the supervisor, say)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._failure: str | None = None
        self._ready = asyncio.Event()
        self.buffered = 0
        self.taken = False  # some of it was read, or all by whole()

    def whole(self, limit: int) -> bytes | None:
        """All of the body, taken, if it has ended, is at most ``limit`` bytes and nobody read any."""
        if not self._ended or self._failure is not None or self.buffered > limit or self.taken:
            return None
        self.taken = True
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def feed(self, chunk: bytes) -> None:
        if chunk and not self._ended:
            self._chunks.append(chunk)
            self.buffered += len(chunk)
            self._ready.set()

    def finish(self) -> None:
        self._ended = True
        self._ready.set()

    def fail(self, reason: str) -> None:
        self._failure = reason
        self._ended = True
        self._ready.set()

    async def read(self, max_bytes: int) -> bytes:
        while not self._chunks:
            if self._failure is not None:
                raise BodyAborted(self._failure)
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self.taken = True
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        return chunk

    def close(self) -> None:
        self._chunks.clear()
        self.buffered = 0
        self._ended = True
        self._ready.set()


async def read_all(source: BodySource, chunk: int = 1024 * 1024) -> bytes:
    parts: list[bytes] = []
    while True:
        data = await source.read(chunk)
        if not data:
            return b"".join(parts)
        parts.append(data)
