"""A worker's queued requests run in batches, one trip to a JS thread each, whose
responses leave when the batch ends: batches are bounded so responses keep flowing; and
the thread a worker's batches run on."""

from __future__ import annotations

import asyncio
import threading
import time

from tests.conftest import WorkerHost
from tests.test_pool import Collect
from warren.runtime import IncomingRequest, WorkerScript
from warren.runtime.threads import SPILL_AFTER_S, JsThreads


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
        async with WorkerHost() as runtime:
            worker = await runtime.start(
                WorkerScript(name="quick", source="export default { fetch: () => new Response('ok') };")
            )
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

    asyncio.run(scenario())


def test_work_stays_on_the_primary_thread_and_spills_to_a_spare_only_past_a_stuck_one() -> None:
    threads = JsThreads(2)
    first, second = threads.for_worker(), threads.for_worker()
    # Short pieces of work, one after another, from two workers: all on one thread (an
    # isolate moving between threads costs V8 a swap, and the caches go cold).
    ran_on = {(first if index % 2 else second).submit(threading.get_ident).result(5) for index in range(20)}
    assert len(ran_on) == 1
    primary = ran_on.pop()
    # The primary stuck on a neighbour's long slice: the next piece goes to a spare, once the
    # primary has been on it for SPILL_AFTER_S (never before), and long before the slice ends.
    release = threading.Event()
    hog = first.submit(release.wait, 10)
    try:
        started = time.monotonic()
        moved_to = second.submit(threading.get_ident).result(5)
        waited = time.monotonic() - started
        assert moved_to != primary
        assert SPILL_AFTER_S * 0.9 <= waited < 1.0, waited
    finally:
        release.set()
    assert hog.result(5) is True
    # Free again: the primary takes the work.
    assert second.submit(threading.get_ident).result(5) == primary
    threads.shutdown()


def test_work_piling_up_behind_a_busy_primary_brings_the_spares_in() -> None:
    # Heavy tenants: each piece is short (under SPILL_AFTER_S), but they queue faster than one
    # thread runs them; once the oldest has waited SPILL_AFTER_S a spare takes it.
    threads = JsThreads(2)
    worker = threads.for_worker()

    def piece() -> int:
        time.sleep(SPILL_AFTER_S * 0.7)
        return threading.get_ident()

    ran_on = {future.result(10) for future in [worker.submit(piece) for _ in range(30)]}
    assert len(ran_on) == 2
    threads.shutdown()


def test_a_js_thread_hands_results_and_errors_straight_back_to_the_loop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        threads = JsThreads(2)
        worker = threads.for_worker()
        loop_thread = threading.get_ident()
        ran_on = await worker.call(loop, threading.get_ident)
        assert ran_on != loop_thread
        assert await worker.call(loop, pow, 2, 10) == 1024
        try:
            await worker.call(loop, int, "not a number")
        except ValueError as exc:
            assert "not a number" in str(exc)
        else:
            raise AssertionError("the error stayed on the JS thread")
        # Nobody waits any more (a cancelled request): the thread finishes the work and goes on.
        release = threading.Event()
        abandoned = worker.call(loop, release.wait, 10)
        abandoned.cancel()
        release.set()
        assert await asyncio.wait_for(worker.call(loop, str, "alive"), 5) == "alive"
        # Each piece of work is counted off when it ends: with both threads idle again, a
        # worker's calls all run on its own thread.
        await asyncio.sleep(0.05)
        again = {await worker.call(loop, threading.get_ident) for _ in range(10)}
        assert len(again) == 1
        threads.shutdown()

    asyncio.run(scenario())


def test_js_threads_stop_when_shut_down_after_the_work_already_put() -> None:
    threads = JsThreads(2, name="warren-js-stopping")
    worker = threads.for_worker()
    release = threading.Event()
    first = worker.submit(release.wait, 10)
    queued = [worker.submit(pow, 2, index) for index in range(5)]
    release.set()
    threads.shutdown(wait=True)
    assert first.result(0) is True and [future.result(0) for future in queued] == [2**index for index in range(5)]
    time.sleep(0.05)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("warren-js-stopping")]


def test_housekeeping_runs_on_a_spare_and_never_holds_up_the_primary() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        threads = JsThreads(2)
        worker = threads.for_worker()
        primary = await worker.call(loop, threading.get_ident)
        # An idle isolate's collection (background work) takes a while...
        release = threading.Event()
        housekeeping = worker.call(loop, release.wait, 10, background=True)
        await asyncio.sleep(0.02)
        # ... and a request meanwhile runs on the primary, not queued behind it.
        assert await asyncio.wait_for(worker.call(loop, threading.get_ident), 5) == primary
        assert not housekeeping.done()
        release.set()
        assert await asyncio.wait_for(housekeeping, 5) is True
        assert await worker.call(loop, threading.get_ident, background=True) != primary
        threads.shutdown()
        # With one thread there is no spare: it does the housekeeping too.
        alone = JsThreads(1)
        only = await alone.for_worker().call(loop, threading.get_ident)
        assert await alone.for_worker().call(loop, threading.get_ident, background=True) == only
        alone.shutdown()

    asyncio.run(scenario())
