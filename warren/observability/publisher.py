"""``EventPublisher``: an edge node's invocation events, shipped to the store in the background.

``submit`` is synchronous and never waits: it appends to a bounded queue, or
drops the event (and counts it) when the queue is full. One task takes what
has queued every ``flush_interval`` seconds and hands it to
``Store.publish_events``, one call per account; a call that fails, or takes
longer than ``publish_timeout``, drops its events (counted). So a slow or
unreachable store costs the node some events, never a request's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from warren.observability.events import event_size

if TYPE_CHECKING:
    from warren.store import Store

FLUSH_INTERVAL_S = 0.1
MAX_BATCH = 1000
MAX_QUEUED = 20_000
MAX_QUEUED_BYTES = 32 * 1024 * 1024
PUBLISH_TIMEOUT_S = 5.0
REPORT_EVERY_S = 60.0  # a drop is reported at most this often

Report = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


class EventPublisher:
    """Batches events per account to ``store.publish_events``; drops rather than waits."""

    def __init__(
        self,
        store: Store,
        *,
        flush_interval: float = FLUSH_INTERVAL_S,
        max_batch: int = MAX_BATCH,
        max_queued: int = MAX_QUEUED,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        publish_timeout: float = PUBLISH_TIMEOUT_S,
        report: Report = _ignore,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.publish_timeout = publish_timeout
        self.report = report
        self.published = 0
        self.dropped = 0
        self._queue: deque[tuple[str, dict[str, Any], int]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_report = 0.0
        self._unreported = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, account_id: str, event: Mapping[str, Any]) -> bool:
        """Queue one event for the account; False (and counted) if it had to be dropped."""
        size = event_size(event)
        if len(self._queue) >= self.max_queued or self._queued_bytes + size > self.max_queued_bytes:
            self._drop(1, "the store is not keeping up")
            return False
        self._queue.append((account_id, dict(event), size))
        self._queued_bytes += size
        if len(self._queue) >= self.max_batch:
            self._wake.set()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Stop, after one last attempt (bounded by ``flush_timeout``) to publish what is queued."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), flush_timeout)

    async def flush(self) -> None:
        """Publish everything queued now."""
        while self._queue:
            await self._publish_batch()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            while self._queue:
                await self._publish_batch()

    async def _publish_batch(self) -> None:
        by_account: dict[str, list[dict[str, Any]]] = {}
        for _ in range(min(self.max_batch, len(self._queue))):
            account_id, event, size = self._queue.popleft()
            self._queued_bytes -= size
            by_account.setdefault(account_id, []).append(event)
        for account_id, events in by_account.items():
            try:
                await asyncio.wait_for(self.store.publish_events(account_id, events), self.publish_timeout)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self._drop(len(events), f"the store took over {self.publish_timeout:g} s")
            except Exception as exc:  # the store is down or refused: the events are lost, the node goes on
                self._drop(len(events), f"{type(exc).__name__}: {exc}")
            else:
                self.published += len(events)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._unreported += count
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY_S:
            self._last_report = now
            self.report(f"▲ {self._unreported} invocation event(s) dropped: {why}")
            self._unreported = 0
