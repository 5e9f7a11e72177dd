"""The records of Workers KV data, as both stores keep them (``warren.bindings.kv`` decides what they mean).

A key's record carries the *stamp* of the write that made it: microseconds
since the epoch on the writing node's clock, and that node's id to break ties.
A store applies a write only if its ``(stamp, writer)`` is greater than the
stored one (last write wins), so every node ends with the same value whatever
order the writes reach the store in. A delete is a write too: a record without
a value (a tombstone), so a late, older write cannot bring the key back.

Keys are compared as their UTF-8 bytes, which is the order Workers lists them in.

Owns: these shapes and their byte-level helpers. Must not touch: storage, the
binding's rules (limits, validation, caching).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, as V8 converts a JavaScript string to UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def key_bytes(key: str) -> bytes:
    return well_formed(key).encode("utf-8")


@dataclass(frozen=True)
class KVRecord:
    """A key's value as one write left it; ``value`` None: the key was deleted by that write."""

    value: bytes | None
    metadata: str | None  # serialised JSON
    expiration: int | None  # seconds since the epoch
    stamp: int  # microseconds since the epoch on the writer's clock
    writer: str  # the writing node's id: breaks ties between equal stamps

    @property
    def order(self) -> tuple[int, str]:
        return (self.stamp, self.writer)

    def live(self, now: float) -> bool:
        """Whether a read at ``now`` (seconds since the epoch) sees a value."""
        return self.value is not None and (self.expiration is None or self.expiration > now)


@dataclass(frozen=True)
class KVKeyInfo:
    """One key as ``list`` gives it."""

    name: str
    expiration: int | None
    metadata: str | None  # serialised JSON


@dataclass(frozen=True)
class KVChange:
    """A change notification: ``key`` was written with ``stamp``/``writer``.

    ``key`` None: anything in ``namespace_id`` may have changed (it was purged);
    ``namespace_id`` None too: anything at all (notifications were missed).
    """

    namespace_id: str | None
    key: str | None
    stamp: int = 0
    writer: str = ""

    @property
    def order(self) -> tuple[int, str]:
        return (self.stamp, self.writer)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def encode_cursor(last_key: str) -> str:
    """An opaque cursor: where the next page of a list starts (after this key)."""
    return base64.urlsafe_b64encode(key_bytes(last_key)).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    """The key bytes a cursor starts after; ``ValueError`` if it is not one of ours."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,700}", cursor):
        raise ValueError("invalid cursor")
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("invalid cursor") from None


__all__ = [
    "KVChange",
    "KVKeyInfo",
    "KVRecord",
    "decode_cursor",
    "encode_cursor",
    "key_bytes",
    "prefix_end",
    "well_formed",
]
