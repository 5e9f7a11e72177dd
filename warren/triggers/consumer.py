"""Queue consumers: deliver each queue's messages in batches to the worker that consumes it.

Every edge node runs a ``QueueConsumers``. For each queue whose consumer script
this node serves, a loop receives messages from the store, which leases each
one to this node alone (``Store.queue_receive``) until it is acked, given back
or its lease runs out; leases are extended while a batch is collected and run,
so a long batch is not delivered twice, and a node that dies lets its messages
go to another after ``lease_s``. Delivery is at least once.

A batch is delivered when it holds ``batch_size`` messages, or ``max_wait_ms``
after its first message arrived, whichever comes first. It runs as a "queue"
invocation of the consumer (``queue(batch, env, ctx)``, see ``queues.js``),
which answers with what it decided for each message. As on Workers: a message
acked (``ack()``, ``ackAll()``, or the handler returning without deciding) is
deleted; one retried (``retry()``, ``retryAll()``, or every undecided message
when the handler throws or the invocation fails) comes back after its delay
(``delaySeconds``, else the consumer's ``retry_delay``), unless it has been
delivered ``max_retries + 1`` times: then it moves to the dead-letter queue, or
is dropped (and logged) when there is none.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from warren.bindings.service import collect
from warren.store.model import Queue, QueueConsumer, QueueMessage

if TYPE_CHECKING:
    from warren.server.supervisor import Supervisor
    from warren.store import Store

LEASE_S = 30.0  # how long a received message stays with this node without being extended
POLL_INTERVAL_S = 0.1  # between receives while a queue is empty
CONFIG_INTERVAL_S = 5.0  # real seconds between reads of the consumers (and on every change the node sees)
ERROR_BACKOFF_S = 1.0

# (account id, script) -> the version key to run, or None when this node does not serve it
Resolve = Callable[[str, str], str | None]
Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class _Running:
    queue: Queue
    consumer: QueueConsumer
    task: asyncio.Task[None]


def payload(queue_name: str, messages: list[QueueMessage]) -> bytes:
    """The batch as the consumer's runtime reads it (queues.js: queueBatch)."""
    return json.dumps(
        {
            "queue": queue_name,
            "messages": [
                {
                    "id": message.id,
                    "timestamp": message.timestamp_ms,
                    "attempts": message.attempts,
                    "contentType": message.content_type,
                    "body": message.body.decode("latin-1"),
                }
                for message in messages
            ],
        },
        ensure_ascii=False,
    ).encode("utf-8")


class QueueConsumers:
    """The queue consumers of one node."""

    def __init__(
        self,
        store: Store,
        supervisor: Supervisor,
        resolve: Resolve,
        *,
        echo: Echo = _echo,
        lease_s: float = LEASE_S,
        poll_interval: float = POLL_INTERVAL_S,
        config_interval: float = CONFIG_INTERVAL_S,
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.resolve = resolve
        self.echo = echo
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.config_interval = config_interval
        self._running: dict[tuple[str, str], _Running] = {}  # (account id, queue id) -> its loop
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # delivered by this node

    def changed(self) -> None:
        """The node's state changed (a deploy, a new consumer): read the consumers again now."""
        self._changed.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [running.task for running in self._running.values()]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._running.clear()

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            try:
                found = await self.store.queue_consumers()
                wanted = {(queue.account_id, queue.id): (queue, consumer) for queue, consumer in found}
            except Exception as exc:  # keep what runs: the store may be back soon
                self.echo(f"✘ reading queue consumers failed: {exc!r}")
                wanted = {key: (running.queue, running.consumer) for key, running in self._running.items()}
            for key, running in list(self._running.items()):
                # A consumer whose settings are unchanged keeps running (its batch in progress too).
                queue, consumer = wanted.get(key, (None, None))
                if consumer != running.consumer or queue is None or running.task.done():
                    running.task.cancel()
                    del self._running[key]
            for key, (queue, consumer) in wanted.items():
                if key not in self._running:
                    task = asyncio.get_running_loop().create_task(self._consume(queue, consumer))
                    self._running[key] = _Running(queue, consumer, task)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.config_interval)
            except TimeoutError:
                pass

    async def _consume(self, queue: Queue, consumer: QueueConsumer) -> None:
        while True:
            if self.resolve(queue.account_id, consumer.script) is None:
                await asyncio.sleep(self.poll_interval * 10)  # not deployed (here): nothing to run yet
                continue
            try:
                batch = await self._collect(queue, consumer)
                if batch:
                    await self._deliver(queue, consumer, batch)
                else:
                    await asyncio.sleep(self.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store, most likely: leases run out, messages come back
                self.echo(f"✘ queue {queue.name}: {exc!r}")
                await asyncio.sleep(ERROR_BACKOFF_S)

    async def _collect(self, queue: Queue, consumer: QueueConsumer) -> list[QueueMessage]:
        """Receive until the batch is full or ``max_wait_ms`` has passed since its first message."""
        batch: list[QueueMessage] = []
        first = 0.0
        extended = time.monotonic()
        while True:
            wanted = consumer.batch_size - len(batch)
            batch += await self.store.queue_receive(queue.account_id, queue.id, wanted, self.lease_s)
            now = time.monotonic()
            if not batch:
                return batch
            if not first:
                first = now
            if len(batch) >= consumer.batch_size or now - first >= consumer.max_wait_ms / 1000:
                return batch
            if now - extended > self.lease_s / 3:
                await self.store.queue_extend(queue.account_id, queue.id, batch, self.lease_s)
                extended = now
            await asyncio.sleep(min(self.poll_interval, max(0.0, first + consumer.max_wait_ms / 1000 - now)))

    async def _keep_leases(self, queue: Queue, batch: list[QueueMessage]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.queue_extend(queue.account_id, queue.id, batch, self.lease_s)
            except Exception as exc:
                self.echo(f"✘ queue {queue.name}: extending leases failed: {exc!r}")

    async def _deliver(self, queue: Queue, consumer: QueueConsumer, batch: list[QueueMessage]) -> None:
        keeper = asyncio.get_running_loop().create_task(self._keep_leases(queue, batch))
        try:
            outcome, decisions = await self._invoke(queue, consumer, batch)
        except Exception as exc:  # the batch could not run (a redeploy under way, say): it is retried
            self.echo(f"✘ queue {queue.name}: delivering a batch failed: {exc!r}")
            outcome, decisions = "exception", None
        finally:
            keeper.cancel()
        self.batches += 1
        await self._settle(queue, consumer, batch, outcome, decisions)

    async def _invoke(
        self, queue: Queue, consumer: QueueConsumer, batch: list[QueueMessage]
    ) -> tuple[str, dict[str, Any] | None]:
        key = self.resolve(queue.account_id, consumer.script)
        if key is None or key not in self.supervisor.scripts:
            return "canceled", None
        if self.supervisor.quarantine_message(key) is not None:
            return "canceled", None
        exchange = await self.supervisor.open_exchange(
            key,
            "POST",
            f"http://queue.invalid/{quote(queue.name, safe='')}",
            [("content-type", "application/json")],
            has_body=True,
            extra={"event": "queue", "name": queue.name},
        )
        await exchange.send_body(payload(queue.name, batch))
        exchange.end_body()
        try:
            answer = await collect(exchange)
        except Exception:
            answer = None
        await exchange.completed.wait()
        outcome = str(exchange.metering.get("outcome", "exception"))
        decisions = None
        if answer is not None and answer.error is None:
            try:
                decisions = json.loads(answer.body)
            except ValueError:
                decisions = None
        return outcome, decisions if isinstance(decisions, dict) else None

    async def _settle(
        self,
        queue: Queue,
        consumer: QueueConsumer,
        batch: list[QueueMessage],
        outcome: str,
        decisions: dict[str, Any] | None,
    ) -> None:
        decided = decisions or {}
        found = decided.get("explicit")
        explicit: dict[str, Any] = found if isinstance(found, dict) else {}
        every = decided.get("all")
        failed = outcome != "ok" or decisions is None or bool(decided.get("threw"))
        acks: list[QueueMessage] = []
        retries: list[tuple[QueueMessage, int]] = []
        dead: list[QueueMessage] = []
        for message in batch:
            decision = explicit.get(message.id, every)
            if decision is None:
                decision = {"retry": None} if failed else "ack"
            if decision == "ack":
                acks.append(message)
                continue
            delay = decision.get("retry") if isinstance(decision, dict) else None
            if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 43200:
                delay = consumer.retry_delay
            if message.attempts > consumer.max_retries:
                dead.append(message)
            else:
                retries.append((message, delay))
        if acks:
            await self.store.queue_ack(queue.account_id, queue.id, acks)
        if retries:
            await self.store.queue_retry(queue.account_id, queue.id, retries)
        if dead:
            await self._dead_letter(queue, consumer, dead)
        summary = f"{len(acks)} acked, {len(retries)} retried"
        if dead:
            summary += f", {len(dead)} past max_retries ({consumer.max_retries})"
        self.echo(f"[{consumer.script}] queue {queue.name}: batch of {len(batch)} ({outcome}): {summary}")

    async def _dead_letter(self, queue: Queue, consumer: QueueConsumer, messages: list[QueueMessage]) -> None:
        target = None
        if consumer.dead_letter_queue:
            target = await self.store.get_queue(queue.account_id, consumer.dead_letter_queue)
            if target is not None and target.name != consumer.dead_letter_queue:
                target = None
        if target is None:
            where = "no dead letter queue"
            if consumer.dead_letter_queue:
                where = f"dead letter queue {consumer.dead_letter_queue!r} does not exist"
            deliveries = consumer.max_retries + 1
            self.echo(f"✘ queue {queue.name}: dropped {len(messages)} message(s) after {deliveries} tries: {where}")
            await self.store.queue_ack(queue.account_id, queue.id, messages)
            return
        await self.store.queue_dead_letter(queue.account_id, queue.id, messages, target.id)
        self.echo(f"[{consumer.script}] queue {queue.name}: {len(messages)} message(s) moved to {target.name}")


__all__ = ["LEASE_S", "QueueConsumers", "payload"]
