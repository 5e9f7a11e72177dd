"""The JS threads of a runtime process, and which of them runs each piece of JavaScript work.

One thread, the primary, runs the work as it comes, in order. The others are
spares: one takes the oldest waiting piece only once it has waited SPILL_AFTER_S
while the primary was busy. Short batches rarely wait that long (a batch ends at
2 ms of CPU), so the work stays on one thread; a slice spinning to its CPU limit
makes the next piece wait, so a neighbour waits at most that long behind a hog;
and work piling up behind a busy primary (heavy tenants) brings the spares in.
On a machine whose cores the supervisor, the runtime's loop and other runtime
processes share, a second busy JS thread cost more than it gave for light work
(8 hello workers in one process: 9.3k req/s with two threads taking work as it
came, 11.1-12.0k with one; an isolate moving between threads also costs V8 a
swap of its per-thread state, and the caches go cold). Only this module picks
threads; it knows nothing of isolates.

A trip to a JS thread is what a worker with little traffic pays per request, so
work goes in through one queue and its result goes back with one
``call_soon_threadsafe``: no ``concurrent.futures`` future or callback chain.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

SPILL_AFTER_S = 0.003  # work waiting this long behind a busy primary: a spare takes it

Deliver = Callable[[Any, BaseException | None], None]


class JsThreads:
    """A primary JS thread and spares, taking work from one queue."""

    def __init__(self, count: int, name: str = "warren-js") -> None:
        count = max(1, count)
        self._lock = threading.Lock()
        self._ready = [threading.Condition(self._lock) for _ in range(count)]  # one each: who is woken is chosen
        self._pending: deque[tuple[Callable[[], Any], Deliver, float]] = deque()  # work, deliver, put at
        # Housekeeping (an idle isolate's collection): on a spare, so it never delays the primary.
        self._background: deque[tuple[Callable[[], Any], Deliver]] = deque()
        self._primary_busy = False
        self._idle_untimed = [False] * count  # a spare waiting with no deadline (nothing was pending)
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def for_worker(self) -> WorkerThread:
        """What a worker hands its JavaScript work to."""
        return WorkerThread(self)

    def put(self, work: Callable[[], Any], deliver: Deliver, background: bool = False) -> None:
        """Run ``work`` on a JS thread, then ``deliver(result, error)`` from that thread.

        ``background`` work runs on a spare as soon as one is free (the primary takes it only
        when there is no spare), after any other background work, and never delays the primary.
        """
        with self._lock:
            if background and len(self._threads) > 1:
                self._background.append((work, deliver))
                self._wake_spares()
                return
            self._pending.append((work, deliver, time.monotonic()))
            if not self._primary_busy:
                self._ready[0].notify()
            else:  # the primary is busy: spares must watch how long the work waits
                self._wake_spares()

    def _wake_spares(self) -> None:
        """Under the lock: spares waiting with no deadline start watching the queue (or take housekeeping)."""
        for index in range(1, len(self._threads)):
            if self._idle_untimed[index]:
                self._ready[index].notify()

    def _wait_before_taking(self, index: int, now: float) -> float | None:
        """Under the lock, with work pending: 0 to take it now, else how long to wait (None: until told)."""
        if index == 0 or self._stopping:  # shutting down: every thread drains what is left
            return 0.0
        if not self._primary_busy:
            return None  # the primary is free and was told
        return max(0.0, self._pending[0][2] + SPILL_AFTER_S - now)

    def _run(self, index: int) -> None:
        ready = self._ready[index]
        while True:
            with self._lock:
                while True:
                    if self._stopping and not self._pending and not self._background:
                        return
                    wait: float | None = None
                    if index != 0 and self._background:
                        work, deliver = self._background.popleft()
                        break
                    if self._pending:
                        now = time.monotonic()
                        wait = self._wait_before_taking(index, now)
                        if wait == 0.0:
                            work, deliver, _ = self._pending.popleft()
                            if index == 0:
                                self._primary_busy = True
                                if self._pending:
                                    self._wake_spares()  # put while the primary was still free
                            break
                    self._idle_untimed[index] = wait is None
                    ready.wait(wait)
                    self._idle_untimed[index] = False
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # handed to whoever waits, as an executor would
                error = exc
            if index == 0:
                with self._lock:
                    self._primary_busy = False
            deliver(result, error)

    def shutdown(self, wait: bool = True) -> None:
        """Stop once the work already put has run (as ``ThreadPoolExecutor.shutdown`` does)."""
        with self._lock:
            self._stopping = True
            for ready in self._ready:
                ready.notify_all()
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerThread(Executor):
    """What a worker runs its slices on (``call``, or as an Executor)."""

    def __init__(self, threads: JsThreads) -> None:
        self._threads = threads

    def call(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any, background: bool = False
    ) -> asyncio.Future[Any]:
        """``fn(*args)`` on a JS thread (``background``: housekeeping, see ``JsThreads.put``);
        the future is settled on ``loop``."""
        future: asyncio.Future[Any] = loop.create_future()

        def deliver(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody awaits it any more
                pass

        self._threads.put(lambda: fn(*args), deliver, background)
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("JS thread work takes positional arguments only")
        future: Future[Any] = Future()

        def deliver(result: Any, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        if future.set_running_or_notify_cancel():
            self._threads.put(lambda: fn(*args), deliver)
        return future
