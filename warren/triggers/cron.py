"""Cron triggers: each script's crons fire once per occurrence across the cluster.

Every edge node runs a ``CronScheduler``. It reads every script's crons from the
store (``Store.all_schedules``; written by ``PUT …/workers/scripts/{name}/schedules``,
which ``warren deploy`` sends from ``[triggers] crons``), and when an occurrence
comes due (cron expressions are in UTC, as on Workers) for a script this node
serves, it claims the occurrence in the store (``Store.claim_cron``: a row
inserted in a transaction on SQLite, a key created on NATS; either fails if it
exists). The node whose claim succeeds invokes the worker's ``scheduled()``
handler; the others do nothing. Nodes need not agree on the time to the
millisecond: an occurrence is named by its scheduled time, so however late a
node looks, it claims the same names.

Occurrences are those that come due while the node runs: a scheduler starting
up does not fire the ones it missed, and at most ``MAX_CATCH_UP`` per cron are
fired after a long pause. A failed scheduled event is not retried (Workers
retries only on internal failures, which warren does not have; so
``controller.noRetry()`` has nothing to prevent). An occurrence whose claiming
node dies before the worker runs is lost.

The clock is injectable (``warren.triggers.clock``), so tests need not wait minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from croniter import croniter

from warren.triggers.clock import Clock, SystemClock

if TYPE_CHECKING:
    from warren.store import Store

CONFIG_INTERVAL_S = 5.0  # real seconds between reads of the schedules (and on every change the node sees)
MAX_CATCH_UP = 60  # occurrences of one cron fired at once after the scheduler fell behind
IDLE_WAIT_S = 60.0  # clock seconds to wait when no cron is due sooner

# (account id, script) -> whether this node can run it
Serves = Callable[[str, str], bool]
# (account id, script, cron, scheduled time ms) -> the outcome ("ok", "exception", ...)
Fire = Callable[[str, str, str, int], Awaitable[str]]
Echo = Callable[[str], None]


def occurrences(cron: str, after: float, until: float, limit: int = MAX_CATCH_UP) -> list[float]:
    """Times (epoch seconds, UTC) at which ``cron`` fires in ``(after, until]``, the latest ``limit``."""
    found: list[float] = []
    iterator = croniter(cron, datetime.fromtimestamp(after, UTC))
    while True:
        moment = float(iterator.get_next(float))
        if moment > until:
            return found
        found.append(moment)
        if len(found) > limit:
            found.pop(0)


def next_occurrence(cron: str, after: float) -> float:
    return float(croniter(cron, datetime.fromtimestamp(after, UTC)).get_next(float))


def _echo(line: str) -> None:
    print(line, flush=True)


class CronScheduler:
    """Fires the crons of the scripts a node serves, once per occurrence across the nodes of a store."""

    def __init__(
        self,
        store: Store,
        serves: Serves,
        fire: Fire,
        *,
        clock: Clock | None = None,
        echo: Echo = _echo,
        config_interval: float = CONFIG_INTERVAL_S,
    ) -> None:
        self.store = store
        self.serves = serves
        self.fire = fire
        self.clock = clock or SystemClock()
        self.echo = echo
        self.config_interval = config_interval
        self.schedules: list[tuple[str, str, list[str]]] = []
        self.fired = 0  # occurrences this node claimed and ran
        self._changed = asyncio.Event()
        self._loaded_at = -1.0
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        """The node's state changed (a deploy, new schedules): read the schedules again now."""
        self._changed.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._running):
            task.cancel()

    async def _load(self) -> None:
        try:
            self.schedules = await self.store.all_schedules()
        except Exception as exc:  # keep the last schedules known: the store may be back soon
            self.echo(f"✘ reading cron schedules failed: {exc!r}")
        self._loaded_at = time.monotonic()

    async def _run(self) -> None:
        await self._load()
        last = self.clock.now()
        while True:
            if self._changed.is_set() or time.monotonic() - self._loaded_at >= self.config_interval:
                self._changed.clear()
                await self._load()
            now = self.clock.now()
            due_next = now + IDLE_WAIT_S
            for account_id, script, crons in self.schedules:
                if not self.serves(account_id, script):
                    continue
                for cron in crons:
                    try:
                        for moment in occurrences(cron, last, now):
                            self._spawn(account_id, script, cron, round(moment * 1000))
                        due_next = min(due_next, next_occurrence(cron, now))
                    except (ValueError, KeyError) as exc:  # a stored expression croniter refuses
                        self.echo(f"✘ cron {cron!r} of {script} cannot be read: {exc}")
            last = now
            wait = min(max(0.0, self.clock.to_real(due_next - self.clock.now())), self.config_interval)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait + 0.001)
            except TimeoutError:
                pass

    def _spawn(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> None:
        task = asyncio.get_running_loop().create_task(self._claim_and_fire(account_id, script, cron, scheduled_ms))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _claim_and_fire(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> None:
        when = datetime.fromtimestamp(scheduled_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            if not await self.store.claim_cron(account_id, script, cron, scheduled_ms):
                return  # another node has it
        except Exception as exc:
            self.echo(f"✘ claiming cron {cron!r} of {script} at {when} failed: {exc!r}")
            return
        self.fired += 1
        try:
            outcome = await self.fire(account_id, script, cron, scheduled_ms)
        except Exception as exc:
            outcome = f"not run ({exc!r})"
        self.echo(f"⏰ {script}: cron {cron!r} at {when} (scheduledTime {scheduled_ms}): {outcome}")
