"""The Cache API (``caches.default``, ``caches.open(name)``): a per-node HTTP cache in SQLite.

As on Workers, the cache belongs to the node (a data centre there): nothing is
replicated. Entries are scoped by account, so tenants never see each other's.
``put`` honours Cache-Control (no-store, no-cache, private, s-maxage,
max-age), Expires, and otherwise Cloudflare's default edge TTLs by status; it
refuses non-GET requests, 206 responses and ``Vary: *``, and does not store
responses that set cookies (unless ``Cache-Control: private=Set-Cookie``, which
stores them without the cookie). ``match`` answers conditional requests (ETag,
Last-Modified) with 304 and ranges with 206.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warren.bindings import BindingCall, BindingError, BindingResult

MAX_ENTRY_BYTES = 32 * 1024 * 1024  # a binding call's payload must fit one frame
DEFAULT_NODE_BYTES = 512 * 1024 * 1024
# Cloudflare's edge TTLs for responses without cache directives, by status.
DEFAULT_TTL_S = {200: 7200, 203: 7200, 206: 7200, 300: 7200, 301: 7200, 302: 1200, 303: 1200, 404: 180, 410: 180}

_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*(\"[^\"]*\"|[^,]*))?\s*(?:,|$)")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _directives(value: str) -> dict[str, str]:
    return {m.group(1).lower(): (m.group(2) or "").strip('"') for m in _DIRECTIVE.finditer(value) if m.group(1)}


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed is not None else None


def _header(headers: list[list[str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


class CacheHandler:
    """Handles calls of the ``cache`` runtime binding for one node."""

    def __init__(
        self, path: str | Path | None, max_bytes: int = DEFAULT_NODE_BYTES, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (scope TEXT, cache TEXT, url TEXT, vary TEXT, status INTEGER,"
            " status_text TEXT, headers TEXT, body BLOB, size INTEGER, expires REAL, used REAL,"
            " PRIMARY KEY (scope, cache, url))"
        )
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.clock = clock

    def close(self) -> None:
        self._db.close()

    async def __call__(self, call: BindingCall) -> BindingResult:
        args = call.args if isinstance(call.args, dict) else {}
        scope = call.caller.account_id or call.caller.name
        cache = str(args.get("cache", "default"))[:1024]
        url = str(args.get("url", ""))
        if call.method == "put":
            return await asyncio.to_thread(self._put, scope, cache, url, args, call.data or b"")
        if call.method == "match":
            return await asyncio.to_thread(self._match, scope, cache, url, args)
        if call.method == "delete":
            return await asyncio.to_thread(self._delete, scope, cache, url, args)
        raise BindingError(f"Unknown cache operation {call.method!r}.")

    # -- operations (in a thread: they touch the disk) --

    def _put(self, scope: str, cache: str, url: str, args: dict[str, Any], body: bytes) -> BindingResult:
        if str(args.get("method", "GET")).upper() != "GET":
            raise BindingError("Cannot cache response to non-GET request.", "TypeError")
        status = int(args.get("status", 200))
        if status == 206:
            raise BindingError("Cannot cache response to a range request (206 Partial Content).", "TypeError")
        headers: list[list[str]] = [[str(n), str(v)] for n, v in args.get("headers", [])]
        vary = _header(headers, "vary")
        if vary is not None and "*" in [part.strip() for part in vary.split(",")]:
            raise BindingError("Cannot cache response with 'Vary: *' header.", "TypeError")
        if len(body) > MAX_ENTRY_BYTES:
            raise BindingError(f"Cache entries are limited to {MAX_ENTRY_BYTES} bytes.", "RangeError")
        directives = _directives(_header(headers, "cache-control") or "")
        if "set-cookie" in [name.lower() for name, _ in headers]:
            if directives.get("private", "").lower() != "set-cookie":
                return BindingResult(value={"stored": False})
            headers = [[n, v] for n, v in headers if n.lower() != "set-cookie"]
        ttl = self._ttl(status, headers, directives)
        if ttl <= 0:
            return BindingResult(value={"stored": False})
        request_headers = {str(n).lower(): str(v) for n, v in args.get("requestHeaders", [])}
        varied = sorted(part.strip().lower() for part in (vary or "").split(",") if part.strip())
        vary_key = json.dumps([[name, request_headers.get(name, "")] for name in varied])
        now = self.clock()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (scope, cache, url, vary_key, status, str(args.get("statusText", "")), json.dumps(headers), body,
                 len(body), now + ttl, now),
            )
            self._evict()
        return BindingResult(value={"stored": True})

    def _ttl(self, status: int, headers: list[list[str]], directives: dict[str, str]) -> float:
        if "no-store" in directives or "no-cache" in directives:
            return 0
        if "private" in directives and directives["private"] == "":
            return 0
        for name in ("s-maxage", "max-age"):
            if name in directives:
                try:
                    return float(int(directives[name]))
                except ValueError:
                    return 0
        expires = _header(headers, "expires")
        if expires is not None:
            when = _http_date(expires)
            return (when - self.clock()) if when is not None else 0
        return float(DEFAULT_TTL_S.get(status, 0))

    def _evict(self) -> None:
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        if total <= self.max_bytes:
            return
        self._db.execute("DELETE FROM entries WHERE expires <= ?", (self.clock(),))
        for scope, cache, url, size in self._db.execute(
            "SELECT scope, cache, url, size FROM entries ORDER BY used"
        ).fetchall():
            if total <= self.max_bytes:
                break
            self._db.execute("DELETE FROM entries WHERE scope = ? AND cache = ? AND url = ?", (scope, cache, url))
            total -= size

    def _match(self, scope: str, cache: str, url: str, args: dict[str, Any]) -> BindingResult:
        if str(args.get("method", "GET")).upper() != "GET" and not args.get("ignoreMethod"):
            return BindingResult(value=None)
        with self._lock:
            row = self._db.execute(
                "SELECT vary, status, status_text, headers, body, expires FROM entries"
                " WHERE scope = ? AND cache = ? AND url = ?",
                (scope, cache, url),
            ).fetchone()
        if row is None:
            return BindingResult(value=None)
        vary_key, status, status_text, headers_json, body, expires = row
        if expires <= self.clock():
            with self._lock, self._db:
                self._db.execute("DELETE FROM entries WHERE scope = ? AND cache = ? AND url = ?", (scope, cache, url))
            return BindingResult(value=None)
        request_headers = {str(n).lower(): str(v) for n, v in args.get("requestHeaders", [])}
        if any(request_headers.get(name, "") != value for name, value in json.loads(vary_key)):
            return BindingResult(value=None)
        with self._lock, self._db:
            self._db.execute(
                "UPDATE entries SET used = ? WHERE scope = ? AND cache = ? AND url = ?",
                (self.clock(), scope, cache, url),
            )
        headers: list[list[str]] = [*json.loads(headers_json), ["cf-cache-status", "HIT"]]
        if self._not_modified(headers, request_headers):
            kept = [[n, v] for n, v in headers if n.lower() not in ("content-length", "content-type")]
            return BindingResult(value={"status": 304, "statusText": "Not Modified", "headers": kept})
        wanted = request_headers.get("range")
        if wanted is not None and status == 200:
            partial = self._range(wanted, len(body))
            if partial is None:
                unsatisfiable = [[n, v] for n, v in headers if n.lower() != "content-length"]
                unsatisfiable.append(["content-range", f"bytes */{len(body)}"])
                refused = {"status": 416, "statusText": "Range Not Satisfiable", "headers": unsatisfiable}
                return BindingResult(value=refused)
            start, end = partial
            ranged = [[n, v] for n, v in headers if n.lower() != "content-length"]
            ranged.append(["content-range", f"bytes {start}-{end}/{len(body)}"])
            return BindingResult(
                value={"status": 206, "statusText": "Partial Content", "headers": ranged}, data=body[start : end + 1]
            )
        return BindingResult(value={"status": status, "statusText": status_text, "headers": headers}, data=body)

    @staticmethod
    def _not_modified(headers: list[list[str]], request: dict[str, str]) -> bool:
        etag = _header(headers, "etag")
        if_none_match = request.get("if-none-match")
        if if_none_match is not None:
            if etag is None:
                return False
            weak = etag.removeprefix("W/")
            return if_none_match.strip() == "*" or any(
                candidate.strip().removeprefix("W/") == weak for candidate in if_none_match.split(",")
            )
        since = request.get("if-modified-since")
        modified = _header(headers, "last-modified")
        if since is not None and modified is not None:
            since_at, modified_at = _http_date(since), _http_date(modified)
            return since_at is not None and modified_at is not None and modified_at <= since_at
        return False

    @staticmethod
    def _range(value: str, size: int) -> tuple[int, int] | None:
        match = _RANGE.match(value.strip())
        if match is None or size == 0:
            return None
        first, last = match.groups()
        if first == "":
            if last == "":
                return None
            length = min(int(last), size)
            return (size - length, size - 1) if length else None
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        return (start, end) if start <= end and start < size else None

    def _delete(self, scope: str, cache: str, url: str, args: dict[str, Any]) -> BindingResult:
        if str(args.get("method", "GET")).upper() != "GET" and not args.get("ignoreMethod"):
            return BindingResult(value=False)
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM entries WHERE scope = ? AND cache = ? AND url = ?", (scope, cache, url)
            )
        return BindingResult(value=cursor.rowcount > 0)
