"""The JS threads of a runtime process, and which of them runs each worker's slices.

An isolate may run on any thread, one at a time, but moving it costs V8 a
swap of its per-thread state, and the caches go cold: one hot worker whose
batches alternated between two threads served ~15% fewer requests than on
one. So a worker keeps to the thread it last ran on while that thread is
free, and takes a free one otherwise: a neighbour busy on "its" thread never
makes it wait while another thread idles. Only this module picks threads; it
knows nothing of isolates.

A trip to a JS thread is what a worker with little traffic pays per request, so
``WorkerThread.call`` hands work over with one queue and hands the result back
with one ``call_soon_threadsafe``: no ``concurrent.futures`` future, no callback
chain, no executor bookkeeping in between.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_STOP = None


class _JsThread:
    """One thread running what it is given, in order."""

    def __init__(self, name: str, finished: Callable[[], None]) -> None:
        self._work: deque[tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]] | None] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._finished = finished  # told after each piece of work, on this thread
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, work: Callable[[], Any], deliver: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``work``, count it off, then ``deliver(result, error)``: a caller told of the
        result and submitting more at once finds this thread free again."""
        with self._ready:
            self._work.append((work, deliver))
            self._ready.notify()

    def stop(self, wait: bool) -> None:
        with self._ready:
            self._work.append(_STOP)
            self._ready.notify()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._work:
                    self._ready.wait()
                item = self._work.popleft()
            if item is _STOP:
                return
            work, deliver = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # handed to whoever waits, as an executor would
                error = exc
            self._finished()
            deliver(result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class JsThreads:
    """A fixed set of JS threads, each counting the work it has in hand."""

    def __init__(self, count: int, name: str = "warren-js") -> None:
        count = max(1, count)
        self._busy = [0] * count
        self._lock = threading.Lock()  # submissions come from the loop, completions from the threads
        self._threads = [
            _JsThread(f"{name}-{index}", lambda index=index: self._done(index))  # type: ignore[misc]
            for index in range(count)
        ]
        self._next_home = 0

    def for_worker(self) -> WorkerThread:
        """An executor for one worker; new workers start on the threads in turn."""
        with self._lock:
            home = self._next_home
            self._next_home = (home + 1) % len(self._threads)
        return WorkerThread(self, home)

    def put_from(
        self, home: int, work: Callable[[], Any], deliver: Callable[[Any, BaseException | None], None]
    ) -> int:
        """Run ``work`` on ``home`` if it is free, else on a free thread, else queue it on ``home``: the thread."""
        with self._lock:
            index = home
            if self._busy[home]:
                index = next((other for other, busy in enumerate(self._busy) if not busy), home)
            self._busy[index] += 1
        self._threads[index].put(work, deliver)
        return index

    def _done(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def shutdown(self, wait: bool = True) -> None:
        for thread in self._threads:
            thread.stop(wait)


class WorkerThread(Executor):
    """What a worker runs its slices on: its last thread while free (``call``, or as an Executor)."""

    def __init__(self, threads: JsThreads, home: int) -> None:
        self._threads = threads
        self.home = home

    def call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on a JS thread; the future is settled on ``loop``."""
        future: asyncio.Future[Any] = loop.create_future()

        def deliver(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody awaits it any more
                pass

        self.home = self._threads.put_from(self.home, lambda: fn(*args), deliver)
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

        if not future.set_running_or_notify_cancel():
            return future
        self.home = self._threads.put_from(self.home, lambda: fn(*args), deliver)
        return future
