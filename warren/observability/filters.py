"""Tail filters: what a tail client asks to see, as Cloudflare's tail takes them.

A client sends ``{"filters": [...]}`` at any time; every filter must match
(they are ANDed) and a new message replaces the previous filters. Kinds::

    {"outcome": ["ok", "exception", ...]}      the invocation's outcome is one of these
    {"status": "ok" | "error" | "canceled"}     shorthand for outcomes (error: exception,
                                                exceededCpu, exceededMemory, unknown)
    {"method": ["GET", ...]}                    the request's method (case-insensitive)
    {"query": "text"}                           the text appears (case-insensitively) in a
                                                console message, an exception, or the URL
    {"header": {"key": name, "query": value?}}  the request has that header (with that value)
    {"sampling_rate": 0.0-1.0}                  keep about this share of events (at random)
    {"scriptVersion": id}                       the invocation ran that version

``debug`` and filter kinds warren does not know (``client_ip``) are accepted
and ignored, so a wrangler-shaped message works.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from warren.observability.events import ERROR_OUTCOMES, OUTCOMES, REDACTED

MAX_FILTERS = 64
MAX_FILTER_TEXT = 1024
STATUS_OUTCOMES = {
    "ok": frozenset({"ok"}),
    "error": ERROR_OUTCOMES,
    "canceled": frozenset({"canceled"}),
}


class FilterError(ValueError):
    """A filter message that cannot be understood; the message says why."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_FILTER_TEXT:
        raise FilterError(f"{what} must be a non-empty string of at most {MAX_FILTER_TEXT} characters")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_FILTERS:
        raise FilterError(f"{what} must be a non-empty list of strings")
    return [_text(item, what) for item in value]


@dataclass(frozen=True)
class TailFilter:
    """Filters ANDed together; the empty filter lets everything through."""

    outcomes: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    queries: tuple[str, ...] = ()
    headers: tuple[tuple[str, str | None], ...] = ()
    versions: frozenset[str] | None = None
    sampling_rate: float = 1.0
    _random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    @classmethod
    def parse(cls, message: str | bytes | Mapping[str, Any]) -> TailFilter:
        """The filters of a client's message (JSON text or already parsed); FilterError if malformed."""
        if isinstance(message, str | bytes):
            try:
                message = json.loads(message)
            except ValueError:
                raise FilterError('a tail message is JSON: {"filters": [...]}') from None
        if not isinstance(message, Mapping):
            raise FilterError('a tail message is a JSON object: {"filters": [...]}')
        items = message.get("filters", [])
        if not isinstance(items, list) or len(items) > MAX_FILTERS:
            raise FilterError(f'"filters" must be a list of at most {MAX_FILTERS} filters')
        outcomes: frozenset[str] | None = None
        methods: frozenset[str] | None = None
        versions: frozenset[str] | None = None
        queries: list[str] = []
        headers: list[tuple[str, str | None]] = []
        rate = 1.0

        def narrow(current: frozenset[str] | None, wanted: frozenset[str]) -> frozenset[str]:
            return wanted if current is None else current & wanted

        for item in items:
            if not isinstance(item, Mapping) or len(item) != 1:
                raise FilterError('each filter is an object with one key, e.g. {"method": ["GET"]}')
            kind, value = next(iter(item.items()))
            if kind == "outcome":
                wanted = _strings(value, "outcome")
                unknown = sorted(set(wanted) - set(OUTCOMES))
                if unknown:
                    raise FilterError(f"unknown outcome {unknown[0]!r}; known: {', '.join(OUTCOMES)}")
                outcomes = narrow(outcomes, frozenset(wanted))
            elif kind == "status":
                statuses = _strings(value, "status")
                allowed: set[str] = set()
                for status in statuses:
                    if status not in STATUS_OUTCOMES:
                        raise FilterError(f"status is ok, error or canceled, not {status!r}")
                    allowed |= STATUS_OUTCOMES[status]
                outcomes = narrow(outcomes, frozenset(allowed))
            elif kind == "method":
                methods = narrow(methods, frozenset(method.upper() for method in _strings(value, "method")))
            elif kind == "query":
                queries.append(_text(value, "query").lower())
            elif kind == "header":
                if not isinstance(value, Mapping) or "key" not in value:
                    raise FilterError('a header filter is {"key": name, "query": value (optional)}')
                query = value.get("query")
                headers.append(
                    (
                        _text(value["key"], "header key").strip().lower(),
                        None if query in (None, "") else _text(query, "header query").strip(),
                    )
                )
            elif kind == "sampling_rate":
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                    raise FilterError("sampling_rate is a number from 0 to 1")
                rate = min(rate, float(value))
            elif kind == "scriptVersion":
                versions = narrow(versions, frozenset(_strings(value, "scriptVersion")))
            # other kinds (client_ip, …) are accepted and ignored: warren does not record them
        return cls(outcomes, methods, tuple(queries), tuple(headers), versions, rate)

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.outcomes is not None and event.get("outcome") not in self.outcomes:
            return False
        if self.versions is not None and event.get("version") not in self.versions:
            return False
        request = (event.get("event") or {}).get("request")
        if self.methods is not None and (request is None or str(request.get("method", "")).upper() not in self.methods):
            return False
        if self.headers:
            received = request.get("headers", {}) if request is not None else {}
            for name, query in self.headers:
                if name not in received:
                    return False
                # A redacted value cannot be matched: the tail never learns a credential.
                if query is not None and (received[name] == REDACTED or received[name] != query):
                    return False
        for query in self.queries:
            if not _contains(event, request, query):
                return False
        return self.sampling_rate >= 1.0 or self._random() < self.sampling_rate


def _contains(event: Mapping[str, Any], request: Mapping[str, Any] | None, query: str) -> bool:
    for entry in event.get("logs", ()):
        if any(query in str(part).lower() for part in entry.get("message", ())):
            return True
    for entry in event.get("exceptions", ()):
        if query in str(entry.get("name", "")).lower() or query in str(entry.get("message", "")).lower():
            return True
    return request is not None and query in str(request.get("url", "")).lower()
