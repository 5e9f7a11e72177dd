"""Triggers: what invokes a worker other than an HTTP request (issue #10).

- ``cron``: ``CronScheduler`` fires each script's ``[triggers] crons`` once per
  occurrence across every edge node that follows the same store (each
  occurrence is claimed in the store; one node wins), on an injectable clock.
- ``consumer``: ``QueueConsumers`` delivers each queue's messages in batches to
  its consumer worker (``queue(batch, env, ctx)``) and applies what it decided
  (ack, retry, dead letter), with the store's leases making sure one node holds
  a message at a time.

Both run on an edge node's event loop next to its supervisor (``warren serve``;
``warren dev`` runs consumers on its local store), invoke workers only through
the supervisor, and read their configuration from the store on a timer and
whenever the node's state changes.

Must not touch: isolates, the HTTP front, the control API.
"""

from __future__ import annotations

from warren.triggers.clock import Clock, ScaledClock, SystemClock, clock_from_environment
from warren.triggers.consumer import QueueConsumers
from warren.triggers.cron import CronScheduler, occurrences

__all__ = [
    "Clock",
    "CronScheduler",
    "QueueConsumers",
    "ScaledClock",
    "SystemClock",
    "clock_from_environment",
    "occurrences",
]
