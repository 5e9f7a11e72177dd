"""The invocation event: what one fetch or scheduled invocation did, as a tail client sees it.

The shape is Cloudflare's trace event (what ``wrangler tail`` prints), so tools
written for it read ours. Everything that goes in is bounded here, whatever the
worker did: a hostile script cannot make an event large enough to hurt the
store or a tail client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OUTCOMES = ("ok", "exception", "exceededCpu", "exceededMemory", "canceled", "unknown")
# As wrangler's `--status error`: what counts as an error in filters and analytics.
ERROR_OUTCOMES = frozenset({"exception", "exceededCpu", "exceededMemory", "unknown"})
LOG_LEVELS = frozenset({"log", "info", "debug", "warn", "error"})

REDACTED = "REDACTED"
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization"})
SENSITIVE_PARTS = ("token", "secret", "key", "auth")

# Bounds of one event. Console output is already capped by the runtime (256 KB per
# invocation); these hold whatever reaches here, so an event stays well under a
# NATS message (1 MB by default).
MAX_LOG_CHARS = 256 * 1024
MAX_EXCEPTIONS = 8
MAX_EXCEPTION_FIELD = 8 * 1024
MAX_URL = 16 * 1024
MAX_HEADER_CHARS = 64 * 1024
LOGS_TRUNCATED = "Log limit of the tail reached: further console output of this invocation is not shown here."


def now_ms() -> int:
    return int(time.time() * 1000)


def is_error(outcome: str) -> bool:
    return outcome in ERROR_OUTCOMES or outcome not in OUTCOMES


# One search instead of a test per part: every request's headers go through it.
_SENSITIVE_PART = re.compile("|".join(re.escape(part) for part in SENSITIVE_PARTS))


def is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return lowered in SENSITIVE_HEADERS or _SENSITIVE_PART.search(lowered) is not None


def redact_headers(headers: Iterable[Sequence[str]] | Mapping[str, str]) -> dict[str, str]:
    """Header pairs as ``{lower-case name: value}`` with credentials replaced by ``"REDACTED"``.

    Repeated names are joined with ", " as ``Headers.get`` joins them.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, str] = {}
    used = 0
    for pair in pairs:
        name, value = str(pair[0]).lower(), str(pair[1])
        if name in SENSITIVE_HEADERS or _SENSITIVE_PART.search(name) is not None:  # is_sensitive, lowered once
            value = REDACTED
        used += len(name) + len(value)
        if used > MAX_HEADER_CHARS:
            break
        result[name] = f"{result[name]}, {value}" if name in result and value != REDACTED else value
    return result


def _clip(text: Any, limit: int) -> str:
    value = str(text)
    return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit} more characters]"


def bounded_logs(logs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Log entries ``{level, message: [str], timestamp}``, at most MAX_LOG_CHARS of messages in all."""
    result: list[dict[str, Any]] = []
    used = 0
    for entry in logs:
        raw = entry.get("message", "")
        parts = [str(part) for part in raw] if isinstance(raw, list | tuple) else [str(raw)]
        size = sum(len(part) for part in parts)
        if used + size > MAX_LOG_CHARS:
            last = result[-1]["timestamp"] if result else now_ms()
            result.append({"level": "warn", "message": [LOGS_TRUNCATED], "timestamp": last})
            break
        used += size
        level = str(entry.get("level", "log"))
        result.append(
            {
                "level": level if level in LOG_LEVELS else "log",
                "message": parts,
                "timestamp": int(entry.get("timestamp") or now_ms()),
            }
        )
    return result


def bounded_exceptions(exceptions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for entry in exceptions:
        if len(result) >= MAX_EXCEPTIONS:
            break
        result.append(
            {
                "name": _clip(entry.get("name", "Error"), MAX_EXCEPTION_FIELD),
                "message": _clip(entry.get("message", ""), MAX_EXCEPTION_FIELD),
                "stack": _clip(entry.get("stack", ""), MAX_EXCEPTION_FIELD),
                "timestamp": int(entry.get("timestamp") or now_ms()),
            }
        )
    return result


def build_event(
    *,
    script_name: str,
    version: str,
    node: str,
    outcome: str,
    started_ms: int,
    cpu_ms: float,
    wall_ms: float,
    head: Mapping[str, Any],
    status: int,
    logs: Iterable[Mapping[str, Any]] = (),
    exceptions: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One invocation's event. ``head`` is the exchange's head as the supervisor sent it
    (method, url, headers as pairs; for a scheduled event ``event``, ``cron`` and
    ``scheduled_time``); ``status`` is the response status (0 if none was sent)."""
    if head.get("event") == "scheduled":
        event: dict[str, Any] = {
            "cron": str(head.get("cron", "")),
            "scheduledTime": int(head.get("scheduled_time") or started_ms),
        }
    else:
        event = {
            "request": {
                "url": _clip(head.get("url", ""), MAX_URL),
                "method": str(head.get("method", "GET")).upper(),
                "headers": redact_headers(head.get("headers") or ()),
            },
            "response": {"status": int(status)} if status else None,
        }
        if event["response"] is None:
            del event["response"]
    return {
        "scriptName": script_name,
        "version": version,
        "node": node,
        "outcome": outcome if outcome in OUTCOMES else "unknown",
        "eventTimestamp": int(started_ms),
        "cpuTime": round(float(cpu_ms), 3),
        "wallTime": round(float(wall_ms), 3),
        "event": event,
        "logs": bounded_logs(logs),
        "exceptions": bounded_exceptions(exceptions),
    }


def event_size(event: Mapping[str, Any]) -> int:
    """About how many bytes the event takes as JSON, without serialising it."""
    size = 512
    for entry in event.get("logs", ()):
        size += 64 + sum(len(part) for part in entry.get("message", ()))
    for entry in event.get("exceptions", ()):
        size += 96 + len(entry.get("name", "")) + len(entry.get("message", "")) + len(entry.get("stack", ""))
    request = event.get("event", {}).get("request")
    if request:
        size += len(request.get("url", "")) + sum(len(k) + len(v) + 6 for k, v in request.get("headers", {}).items())
    return size


def exchange_event(
    exchange: Any, *, script_name: str, version: str, node: str, outcome: str, cpu_ms: float, wall_ms: float
) -> dict[str, Any]:
    """The event of a finished ``warren.server.supervisor.Exchange`` (read by duck typing: its
    ``head``, ``status``, ``logs``, ``started_ms`` and the ``exceptions`` of its DONE metering)."""
    metering = getattr(exchange, "metering", None) or {}
    started = getattr(exchange, "started_ms", None)
    return build_event(
        script_name=script_name,
        version=version,
        node=node,
        outcome=outcome,
        started_ms=int(started) if started is not None else int(now_ms() - wall_ms),
        cpu_ms=cpu_ms,
        wall_ms=wall_ms,
        head=exchange.head,
        status=int(getattr(exchange, "status", 0) or 0),
        logs=getattr(exchange, "logs", None) or (),
        exceptions=metering.get("exceptions") or (),
    )
