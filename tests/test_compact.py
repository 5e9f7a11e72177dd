"""Idle isolates are compacted: their garbage is collected once they have been idle a while."""

from __future__ import annotations

import asyncio
import ctypes
import os

import pytest

from tests.conftest import WorkerHost
from warren.runtime import IncomingRequest, WorkerScript
from warren.server.runtime_process import release_freed_memory


class _Quiet:
    def __init__(self) -> None:
        self.finished = asyncio.get_running_loop().create_future()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def body(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def error(self, status: int, message: str) -> None: ...
    def log(self, level: str, message: str) -> None: ...

    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.finished.set_result(outcome)


def test_compacting_an_idle_worker_frees_its_garbage_and_keeps_its_state() -> None:
    async def scenario() -> None:
        source = (
            "let kept = 0;\n"
            "export default { fetch() { kept++; let junk = []; for (let i = 0; i < 2e5; i++) junk.push({ i }); "
            "return new Response(String(kept)); } };"
        )
        async with WorkerHost() as host:
            worker = await host.start(WorkerScript(name="w", source=source))
            reply = _Quiet()
            worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[arg-type]
            await reply.finished
            before = worker.memory_bytes
            assert await worker.compact()
            assert worker.memory_bytes < before - 1_000_000, (before, worker.memory_bytes)
            assert not await worker.compact()  # nothing ran since: nothing to collect
            second = _Quiet()
            worker.fetch(IncomingRequest(2, "GET", "http://x/", []), second)  # type: ignore[arg-type]
            assert await second.finished == "ok"

    asyncio.run(scenario())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="not glibc: nothing to trim")
def test_memory_the_c_heap_kept_after_a_free_goes_back_to_the_system() -> None:
    # What V8 frees with malloc's free() stays in the process until trimmed; blocks of
    # 8 KiB, as its per-isolate tables are, come from the heap, not from their own mmap.
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(8_000):  # 64 MiB
        block = libc.malloc(8192)
        ctypes.memset(block, 1, 8192)
        blocks.append(block)
    keeper = libc.malloc(64)  # at the top of the heap: free() alone cannot shrink it
    for block in blocks:
        libc.free(block)
    before = _rss_bytes()
    release_freed_memory()
    after = _rss_bytes()
    libc.free(keeper)
    assert before - after > 32 * 1024 * 1024, (before, after)
