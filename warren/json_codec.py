"""JSON on the per-request paths: orjson, with the standard library for what orjson refuses.

Frames between the supervisor and a runtime process, and the strings a runtime hands
an isolate, are encoded and decoded several times per request; orjson does that about
ten times faster than ``json``. It refuses a few values ``json`` takes (a lone
surrogate in a script's string, an integer past 64 bits), so those go through ``json``
and come out as before. Owns nothing else; used by ``server`` and ``runtime``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dump_json(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def dump_json_text(value: Any) -> str:
    """``value`` as compact JSON text (for an isolate)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def load_json(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError as ``json.loads`` does."""
    try:
        return orjson.loads(data)
    except ValueError:
        return json.loads(data)  # e.g. an escaped lone surrogate, which json accepts
