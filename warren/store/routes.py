"""Route patterns: their syntax, and which route serves a request.

A pattern is ``host/path``. The host is a hostname, optionally starting with
``*`` (any prefix: ``*example.com`` matches ``example.com`` and
``www.example.com``, ``*.example.com`` only subdomains). The path starts with
``/`` and may end with ``*`` (a prefix match); otherwise it must equal the
request's path. No ``*`` elsewhere, no scheme, no port.

Imported by the edge node on its hot path, so it depends on nothing but the
standard library and the data model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from warren.store.model import Route

MAX_PATTERN = 1024
_HOST_CHARS = re.compile(r"[a-z0-9.-]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class RoutePattern:
    host: str  # lower case, without the leading "*"
    host_wildcard: bool
    path: str  # without the trailing "*"
    path_wildcard: bool

    def __str__(self) -> str:
        return ("*" if self.host_wildcard else "") + self.host + self.path + ("*" if self.path_wildcard else "")

    def matches(self, host: str, path: str) -> bool:
        """``host`` must already be normalised (see ``normalise_host``)."""
        if self.host_wildcard:
            if not host.endswith(self.host):
                return False
        elif host != self.host:
            return False
        return path.startswith(self.path) if self.path_wildcard else path == self.path

    @property
    def specificity(self) -> tuple[bool, int, int, bool]:
        """Larger is more specific: exact host, longer host, longer path, then an exact path over a prefix."""
        return (not self.host_wildcard, len(self.host), len(self.path), not self.path_wildcard)


@lru_cache(maxsize=8192)
def parse_route(pattern: str) -> RoutePattern:
    """Parse and normalise a pattern; ``ValueError`` says what is wrong with it."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a route pattern is a non-empty string such as 'example.com/*'")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"a route pattern is at most {MAX_PATTERN} characters")
    if "://" in pattern:
        raise ValueError(f"route {pattern!r}: no scheme; write 'example.com/*', not 'https://example.com/*'")
    host, slash, path = pattern.partition("/")
    if not slash:
        raise ValueError(f"route {pattern!r} has no path; add one, e.g. {pattern + '/*'!r}")
    path = "/" + path
    host_wildcard = host.startswith("*")
    if host_wildcard:
        host = host[1:]
    host = host.lower()
    if "*" in host:
        raise ValueError(f"route {pattern!r}: '*' is only allowed at the start of the host")
    if ":" in host:
        raise ValueError(f"route {pattern!r}: no port; a route matches every port")
    _check_host(pattern, host, host_wildcard)
    path_wildcard = path.endswith("*")
    if path_wildcard:
        path = path[:-1]
    if "*" in path:
        raise ValueError(f"route {pattern!r}: '*' is only allowed at the end of the path")
    # Printable ASCII without spaces; "?" and "#" never reach a route, which sees the path alone.
    if any(not "!" <= char <= "~" or char in "?#" for char in path):
        raise ValueError(f"route {pattern!r}: the path may hold printable ASCII only, without spaces, '?' or '#'")
    return RoutePattern(host, host_wildcard, path, path_wildcard)


def _check_host(pattern: str, host: str, wildcard: bool) -> None:
    if not host or host == ".":
        raise ValueError(f"route {pattern!r} needs a hostname, e.g. 'example.com/*' or '*.example.com/*'")
    if len(host) > 253 or not _HOST_CHARS.fullmatch(host):
        raise ValueError(f"route {pattern!r}: {host!r} is not a hostname (a-z, 0-9, '-' and '.')")
    # After a "*" the literal may begin mid-label ("*example.com") or with the dot ("*.example.com").
    labels = host[1:].split(".") if wildcard and host.startswith(".") else host.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"route {pattern!r}: {host!r} is not a hostname (bad label {label!r})")


def normalise_host(host: str) -> str:
    """A Host header as routes see it: lower case, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: the port follows the bracket
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".")


def match_route(routes: Iterable[Route], host: str, path: str) -> Route | None:
    """The most specific route matching the request, or None.

    Patterns are parsed once and cached, so this is a scan of the list; for
    many routes, build a ``RouteTable`` once per change instead.
    """
    host = normalise_host(host)
    best: Route | None = None
    best_key: tuple[tuple[bool, int, int, bool], str, str] | None = None
    for route in routes:
        try:
            parsed = parse_route(route.pattern)
        except ValueError:
            continue  # the store never holds one; a stale or hand-made list might
        if not parsed.matches(host, path):
            continue
        # The pattern and id only make ties deterministic; the doc's rules are the first element.
        key = (parsed.specificity, str(parsed), route.id)
        if best_key is None or key > best_key:
            best, best_key = route, key
    return best


class RouteTable:
    """Routes sorted most specific first, so the first match is the answer."""

    def __init__(self, routes: Iterable[Route]) -> None:
        entries: list[tuple[RoutePattern, Route]] = []
        for route in routes:
            try:
                entries.append((parse_route(route.pattern), route))
            except ValueError:
                continue
        entries.sort(key=lambda entry: (entry[0].specificity, str(entry[0]), entry[1].id), reverse=True)
        self._entries = entries

    def match(self, host: str, path: str) -> Route | None:
        host = normalise_host(host)
        for parsed, route in self._entries:
            if parsed.matches(host, path):
                return route
        return None

    def __len__(self) -> int:
        return len(self._entries)
