"""Queue producers: ``env.QUEUE.send(body)`` and ``sendBatch`` land here and go to the store.

A binding of type ``queue`` (``{"type": "queue", "name": "Q", "queue_name": "jobs"}``)
names a queue of the caller's account. ``queues.js`` encodes bodies (contentType
``text``, ``bytes``, ``json`` or ``v8``, the default: warren's structured-clone
JSON) and checks Workers' limits; they are checked again here, as the isolate is
not trusted: at most 100 messages and 256 KB a call, 128 KB a message, delays of
0 to 43,200 s. A send returns once the store holds the messages (durable: they
survive any node's restart). Consuming them is ``warren.triggers.consumer``.

Owns: the ``queue`` binding handler. Must not touch: isolates, the HTTP front.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from warren.bindings import BindingCall, BindingError, BindingResult
from warren.store.errors import NotFound
from warren.store.model import OutgoingMessage

if TYPE_CHECKING:
    from warren.runtime.script import WorkerScript
    from warren.store import Store

MAX_MESSAGE_BYTES = 128 * 1024
MAX_BATCH_MESSAGES = 100
MAX_BATCH_BYTES = 256 * 1024
MAX_DELAY_S = 43200
CONTENT_TYPES = ("text", "bytes", "json", "v8")
QUEUE_ID_TTL_S = 5.0  # how long a queue name's id is trusted without asking the store again


def _messages(args: Any) -> list[OutgoingMessage]:
    batch = args.get("messages") if isinstance(args, dict) else None
    if not isinstance(batch, list) or not batch:
        raise BindingError("malformed queue send", "TypeError")
    if len(batch) > MAX_BATCH_MESSAGES:
        raise BindingError(f"A batch holds at most {MAX_BATCH_MESSAGES} messages.", "RangeError")
    messages = []
    total = 0
    for entry in batch:
        if not isinstance(entry, dict) or not isinstance(entry.get("body"), str):
            raise BindingError("malformed queue message", "TypeError")
        content_type, delay = entry.get("contentType"), entry.get("delaySeconds", 0)
        if content_type not in CONTENT_TYPES:
            raise BindingError(f"contentType must be one of {', '.join(CONTENT_TYPES)}.", "TypeError")
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_S:
            raise BindingError(f"delaySeconds must be a whole number from 0 to {MAX_DELAY_S}.", "RangeError")
        try:
            body = entry["body"].encode("latin-1")
        except UnicodeEncodeError:
            raise BindingError("malformed queue message body", "TypeError") from None
        if len(body) > MAX_MESSAGE_BYTES:
            raise BindingError(f"A message is at most {MAX_MESSAGE_BYTES} bytes.", "RangeError")
        total += len(body)
        messages.append(OutgoingMessage(body, str(content_type), delay))
    if total > MAX_BATCH_BYTES:
        raise BindingError(f"A batch is at most {MAX_BATCH_BYTES} bytes.", "RangeError")
    return messages


class QueueProducers:
    """The ``queue`` binding handler of one node, over its store.

    ``account_of`` names the account a caller's queues belong to (an edge node:
    the script's; ``warren dev``: its one local account).
    """

    def __init__(self, store: Store, account_of: Callable[[WorkerScript], str] | None = None) -> None:
        self.store = store
        self.account_of = account_of or (lambda script: script.account_id)
        self._ids: dict[tuple[str, str], tuple[str, float]] = {}

    async def _queue_id(self, account_id: str, name: str) -> str:
        cached = self._ids.get((account_id, name))
        if cached is not None and time.monotonic() - cached[1] < QUEUE_ID_TTL_S:
            return cached[0]
        queue = await self.store.get_queue(account_id, name)
        if queue is None or queue.name != name:
            self._ids.pop((account_id, name), None)
            raise BindingError(f'Queue "{name}" does not exist.')
        if len(self._ids) > 10_000:
            self._ids.clear()
        self._ids[(account_id, name)] = (queue.id, time.monotonic())
        return queue.id

    async def __call__(self, call: BindingCall) -> BindingResult:
        if call.method != "send":
            raise BindingError(f"A queue binding has no operation {call.method!r}.", "TypeError")
        messages = _messages(call.args)
        account_id = self.account_of(call.caller)
        name = str(call.binding.get("queue_name", ""))
        queue_id = await self._queue_id(account_id, name)
        try:
            await self.store.queue_send(account_id, queue_id, messages)
        except NotFound:
            self._ids.pop((account_id, name), None)
            raise BindingError(f'Queue "{name}" does not exist.') from None
        return BindingResult(None)


__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_MESSAGES", "MAX_MESSAGE_BYTES", "QueueProducers"]
