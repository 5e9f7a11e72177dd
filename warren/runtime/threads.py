"""The JS threads of a runtime process, and which of them runs each worker's slices.

An isolate may run on any thread, one at a time, but moving it costs V8 a
swap of its per-thread state, and the caches go cold: one hot worker whose
batches alternated between two threads served ~15% fewer requests than on
one. So a worker keeps to the thread it last ran on while that thread is
free, and takes a free one otherwise: a neighbour busy on "its" thread never
makes it wait while another thread idles. Only this module picks threads; it
knows nothing of isolates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any


class JsThreads:
    """A fixed set of single-thread executors, each counting the work it has in hand."""

    def __init__(self, count: int, name: str = "warren-js") -> None:
        count = max(1, count)
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{index}") for index in range(count)]
        self._busy = [0] * count
        self._lock = threading.Lock()  # submissions come from the loop, completions from the threads
        self._next_home = 0

    def for_worker(self) -> WorkerThread:
        """An executor for one worker; new workers start on the threads in turn."""
        with self._lock:
            home = self._next_home
            self._next_home = (home + 1) % len(self._threads)
        return WorkerThread(self, home)

    def submit_from(self, home: int, function: Callable[..., Any], *args: Any) -> tuple[int, Future[Any]]:
        """Run on ``home`` if it is free, else on a free thread, else queue on ``home``: (thread, future)."""
        with self._lock:
            index = home
            if self._busy[home]:
                index = next((other for other, busy in enumerate(self._busy) if not busy), home)
            self._busy[index] += 1
        future = self._threads[index].submit(function, *args)
        future.add_done_callback(lambda _: self._done(index))
        return index, future

    def _done(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def shutdown(self, wait: bool = True) -> None:
        for thread in self._threads:
            thread.shutdown(wait=wait)


class WorkerThread(Executor):
    """What a worker runs its slices on (``loop.run_in_executor``): its last thread while free."""

    def __init__(self, threads: JsThreads, home: int) -> None:
        self._threads = threads
        self.home = home

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("JS thread work takes positional arguments only")
        self.home, future = self._threads.submit_from(self.home, fn, *args)
        return future
