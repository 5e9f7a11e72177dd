"""A worker's queued requests run in batches, one trip to a JS thread each, whose
responses leave when the batch ends: batches are bounded so responses keep flowing; and
the thread a worker's batches run on."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.test_pool import Collect
from warren.runtime import Compiler, IncomingRequest, Worker, WorkerScript
from warren.runtime.threads import JsThreads


class Reply(Collect):
    """Records the loop turn in which its invocation finished."""

    def __init__(self, turns: list[int], index: int, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.turns, self.index, self.all_done = turns, index, done

    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.turns[self.index] = TURN[0]
        if all(turn >= 0 for turn in self.turns):
            self.all_done.set_result(None)


TURN = [0]  # turns of the event loop so far


def test_queued_requests_answer_in_bounded_batches() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            TURN[0] += 1
            loop.call_soon(tick)

        tick()
        executor = ThreadPoolExecutor(1)
        compiler = Compiler()
        worker = Worker(
            WorkerScript(name="quick", source="export default { fetch: () => new Response('ok') };"),
            executor, compiler, lambda *a: None,
        )
        await worker.start()
        count = 48  # ~1 ms of JavaScript: within one batch's CPU allowance (2 ms)
        turns = [-1] * count
        finished: asyncio.Future[None] = loop.create_future()
        for index in range(count):  # all queued before the first batch starts
            worker.fetch(IncomingRequest(index + 1, "GET", "http://x/", []), Reply(turns, index, finished))
        await asyncio.wait_for(finished, 30)
        # Answered in order, a batch at a time: never more than 16 in one turn.
        assert turns == sorted(turns)
        per_turn = [turns.count(turn) for turn in sorted(set(turns))]
        assert max(per_turn) <= 16, per_turn
        assert len(per_turn) >= 3, per_turn
        await worker.close()
        compiler.close()
        executor.shutdown()

    asyncio.run(scenario())


def test_a_worker_keeps_to_its_thread_while_free_and_never_waits_behind_a_neighbour() -> None:
    threads = JsThreads(2)
    first, second, third = threads.for_worker(), threads.for_worker(), threads.for_worker()
    assert (first.home, second.home, third.home) == (0, 1, 0)  # new workers take the threads in turn
    # One worker's successive slices run on one thread (an isolate moving costs V8 a swap).
    ran_on = {first.submit(threading.get_ident).result(5) for _ in range(20)}
    assert len(ran_on) == 1
    # Its thread busy with a neighbour's long slice: the third worker, whose last thread
    # that is, runs on the free one instead of queueing behind it.
    release = threading.Event()
    hog = first.submit(release.wait, 10)
    try:
        moved_to = third.submit(threading.get_ident).result(5)
        assert moved_to not in ran_on
        assert third.home == 1
    finally:
        release.set()
    assert hog.result(5) is True
    threads.shutdown()
