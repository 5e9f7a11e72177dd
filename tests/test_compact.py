"""Idle isolates are compacted: their garbage is collected once they have been idle a while."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from warren.runtime import Compiler, IncomingRequest, Worker, WorkerScript


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
        executor = ThreadPoolExecutor(1)
        compiler = Compiler()
        source = (
            "let kept = 0;\n"
            "export default { fetch() { kept++; let junk = []; for (let i = 0; i < 2e5; i++) junk.push({ i }); "
            "return new Response(String(kept)); } };"
        )
        worker = Worker(WorkerScript(name="w", source=source), executor, compiler, lambda *a: None)
        await worker.start()
        reply = _Quiet()
        worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[arg-type]
        await reply.finished
        before = worker.memory_bytes
        await worker.compact()
        assert worker.memory_bytes < before - 1_000_000, (before, worker.memory_bytes)
        second = _Quiet()
        worker.fetch(IncomingRequest(2, "GET", "http://x/", []), second)  # type: ignore[arg-type]
        assert await second.finished == "ok"
        await worker.close()
        compiler.close()
        executor.shutdown()

    asyncio.run(scenario())
