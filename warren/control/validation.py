"""Turning API request bodies into store arguments.

Only the shape of requests is checked here (is it JSON, is a field the right
type); what the values may be (names, module types, bindings, limits,
percentages, route syntax) is checked by ``warren.store.validation`` and the
store itself, so the API and any other caller of the store agree. Every
failure is an ``InvalidInput`` whose message is meant for the client.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from warren.control.migrations import Migrations
from warren.control.migrations import parse as parse_migrations
from warren.store.errors import InvalidInput
from warren.store.validation import MAX_SCRIPT_BYTES

MAX_JSON_BODY = 1024 * 1024
MAX_METADATA = 1024 * 1024
# The request as a whole: the modules' limit plus room for the metadata part and multipart framing.
MAX_UPLOAD_BODY = MAX_SCRIPT_BYTES + MAX_METADATA + 64 * 1024
MAX_MODULES = 1000

# For a part that does not say its content type, as wrangler's default module rules.
_BY_EXTENSION = {
    ".js": "application/javascript+module",
    ".mjs": "application/javascript+module",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".txt": "text/plain",
    ".html": "text/plain",
}
_BINARY_TYPES = ("application/wasm", "application/octet-stream")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, what: str = "the request body") -> Any:
    """Strict JSON: UTF-8, and no NaN or Infinity (which Python would otherwise accept)."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def json_object(data: bytes, what: str = "the request body") -> dict[str, Any]:
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _string(body: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if value is None:
        raise InvalidInput(f"{what} needs {key!r}")
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: {key!r} must be a string")
    return value


def _annotation_message(body: dict[str, Any], what: str) -> str | None:
    annotations = body.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict):
        raise InvalidInput(f"{what}: 'annotations' must be an object")
    message = annotations.get("workers/message")
    if message is not None and not isinstance(message, str):
        raise InvalidInput(f"{what}: 'annotations.workers/message' must be a string")
    return message


@dataclass(frozen=True)
class UploadMetadata:
    main_module: str
    compatibility_date: str
    bindings: list[dict[str, Any]]
    limits: dict[str, Any]
    message: str
    migrations: Migrations | None = None  # Durable Object class migrations (warren.control.migrations)


def upload_metadata(data: bytes) -> UploadMetadata:
    """The ``metadata`` part. Keys other than those in the contract are ignored, as wrangler sends many."""
    body = json_object(data, "the metadata part")
    what = "metadata"
    bindings = body.get("bindings", [])
    if not isinstance(bindings, list) or not all(isinstance(binding, dict) for binding in bindings):
        raise InvalidInput("metadata: 'bindings' must be a list of objects")
    limits = body.get("limits", {})
    if not isinstance(limits, dict):
        raise InvalidInput("metadata: 'limits' must be an object")
    message = body.get("message")
    if message is None:
        message = _annotation_message(body, what) or ""
    if not isinstance(message, str):
        raise InvalidInput("metadata: 'message' must be a string")
    return UploadMetadata(
        main_module=_string(body, "main_module", what),
        compatibility_date=_string(body, "compatibility_date", what, default=""),
        bindings=bindings,
        limits=limits,
        message=message,
        migrations=parse_migrations(body["migrations"]) if body.get("migrations") is not None else None,
    )


def module_content_type(name: str, declared: str | None, *, text_part: bool) -> str:
    """The content type of a module part: as declared, else guessed from the name's extension.

    A part sent without a filename reaches the API as text (Starlette's form
    parsing keeps neither its bytes nor its headers), so it may only be a text module.
    """
    if text_part:
        guessed = _BY_EXTENSION.get(posixpath.splitext(name)[1].lower(), "text/plain")
        if guessed in _BINARY_TYPES:
            raise InvalidInput(f"module {name!r} is binary: send it as a file part (with a filename)")
        return guessed
    if declared:
        return declared
    return _BY_EXTENSION.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


def deployment(body: dict[str, Any]) -> tuple[list[tuple[str, int]], str]:
    """``{"versions": [{"version_id", "percentage"}], "annotations": {"workers/message"}}``."""
    what = "deployment"
    entries = body.get("versions")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("deployment needs 'versions': a list of {version_id, percentage}")
    versions: list[tuple[str, int]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidInput("deployment: each entry of 'versions' must be an object {version_id, percentage}")
        version_id = _string(entry, "version_id", "each deployment entry")
        percentage = entry.get("percentage")
        # Cloudflare's clients send 100.0; a whole float means the same, a fraction is refused.
        if isinstance(percentage, float) and percentage.is_integer():
            percentage = int(percentage)
        if isinstance(percentage, bool) or not isinstance(percentage, int):
            raise InvalidInput(f"deployment: the percentage of version {version_id!r} must be a whole number")
        versions.append((version_id, percentage))
    return versions, _annotation_message(body, what) or ""


def secret(body: dict[str, Any]) -> tuple[str, str]:
    """``{"name", "text", "type": "secret_text"}``; the type may be left out."""
    kind = body.get("type", "secret_text")
    if kind != "secret_text":
        raise InvalidInput(f"secret: type {kind!r} is not supported; use 'secret_text'")
    return _string(body, "name", "secret"), _string(body, "text", "secret")


def route(body: dict[str, Any]) -> tuple[str, str]:
    return _string(body, "pattern", "route"), _string(body, "script", "route")


def kv_namespace(body: dict[str, Any]) -> str:
    return _string(body, "title", "namespace")
