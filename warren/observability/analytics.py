"""Per-minute counts of invocations, and the analytics answer built from them.

The store keeps, per account, script and minute, how many invocations there
were, how many ended in an error outcome, and the CPU they used
(``Store.event_stats``); this turns them into the dashboard's series, one
point per minute, zeros included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from warren.observability.events import is_error

MINUTE_MS = 60_000
MAX_MINUTES = 120  # what the stores keep the counts for (at least)

# (script, minute start in ms since the epoch, requests, errors, cpu ms)
StatRow = tuple[str, int, int, int, float]


def minute_of(timestamp_ms: int) -> int:
    return int(timestamp_ms) // MINUTE_MS * MINUTE_MS


def iso(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_events(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list[float]]:
    """``{(script, minute): [requests, errors, cpu_ms]}`` of a batch of events, by their start time."""
    counts: dict[tuple[str, int], list[float]] = {}
    for event in events:
        key = (str(event.get("scriptName", "")), minute_of(int(event.get("eventTimestamp") or 0)))
        row = counts.setdefault(key, [0, 0, 0.0])
        row[0] += 1
        row[1] += 1 if is_error(str(event.get("outcome", ""))) else 0
        row[2] += float(event.get("cpuTime") or 0.0)
    return counts


def window(minutes: int, now_ms: int) -> tuple[int, int]:
    """(first minute, last minute) of a window of ``minutes`` minutes ending with the current one."""
    last = minute_of(now_ms)
    return last - (minutes - 1) * MINUTE_MS, last


def analytics_result(rows: Iterable[StatRow], scripts: Iterable[str], minutes: int, now_ms: int) -> dict[str, Any]:
    """The analytics endpoint's result: every script of the account (and any other that has
    counts in the window), with totals and one point per minute, oldest first."""
    first, last = window(minutes, now_ms)
    by_script: dict[str, dict[int, list[float]]] = {name: {} for name in scripts}
    for script, minute, requests, errors, cpu_ms in rows:
        if first <= minute <= last:
            point = by_script.setdefault(script, {}).setdefault(minute, [0, 0, 0.0])
            point[0] += requests
            point[1] += errors
            point[2] += cpu_ms
    result = []
    for script in sorted(by_script):
        points = by_script[script]
        series = []
        totals: list[float] = [0, 0, 0.0]
        for minute in range(first, last + MINUTE_MS, MINUTE_MS):
            count, failed, cpu = points.get(minute, [0, 0, 0.0])
            totals = [totals[0] + count, totals[1] + failed, totals[2] + cpu]
            series.append(
                {"minute": iso(minute), "requests": int(count), "errors": int(failed), "cpu_ms": round(cpu, 3)}
            )
        result.append(
            {
                "script": script,
                "requests": int(totals[0]),
                "errors": int(totals[1]),
                "cpu_ms": round(totals[2], 3),
                "series": series,
            }
        )
    return {"since": iso(first), "scripts": result}
