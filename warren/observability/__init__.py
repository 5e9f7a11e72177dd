"""Observability: one event per invocation, its redaction, tail filters, and shipping events.

Owns: the invocation event (docs/control-plane.md, "Logs and analytics"; the
shape Cloudflare's tail sends), built from what the supervisor saw of an
exchange (``events.build_event``); which request headers are redacted
(``events.redact_headers``); the filters a tail client sends
(``filters.TailFilter``); the per-node ``EventPublisher`` that batches events
to the store in the background and drops (and counts) them rather than ever
slowing a request; the tails the control plane hands out (``tails.TailRegistry``);
and turning per-minute counts into the analytics answer (``analytics``).

May call: the ``Store`` protocol (``publish_events``), the standard library.
Must not touch: isolates, the runtime process, HTTP servers, the database or
NATS directly. Never sees a secret's value: headers that may carry one are
replaced by ``"REDACTED"`` before an event leaves the edge node.
"""

from warren.observability.analytics import analytics_result, minute_of
from warren.observability.events import (
    ERROR_OUTCOMES,
    OUTCOMES,
    REDACTED,
    build_event,
    exchange_event,
    is_error,
    redact_headers,
)
from warren.observability.filters import FilterError, TailFilter
from warren.observability.publisher import EventPublisher
from warren.observability.tails import Tail, TailRegistry, stream_tail

__all__ = [
    "ERROR_OUTCOMES",
    "OUTCOMES",
    "REDACTED",
    "EventPublisher",
    "FilterError",
    "Tail",
    "TailFilter",
    "TailRegistry",
    "analytics_result",
    "build_event",
    "exchange_event",
    "is_error",
    "minute_of",
    "redact_headers",
    "stream_tail",
]
