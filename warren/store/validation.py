"""Checks on everything the store accepts, shared with the HTTP API.

Each function returns the value in its normalised form or raises ``InvalidInput``
with a message fit for the client. Pure functions: no storage, no HTTP.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from warren.store.errors import InvalidInput
from warren.store.model import ModuleRef, canonical_json, content_hash

MAX_SCRIPT_BYTES = 10 * 1024 * 1024  # all modules of a version together, as `warren dev`'s limit
MAX_CPU_MS = 300_000
MAX_SUBREQUESTS = 10_000  # [limits] subrequests, as Workers' paid plan caps it
MAX_MODULE_NAME = 256
MAX_MESSAGE = 1024
MAX_TOKEN_NAME = 128
MAX_KV_TITLE = 512
MAX_IDENTIFIER = 128

MODULE_CONTENT_TYPES = (
    "application/javascript+module",
    "text/javascript",
    "application/json",
    "text/plain",
    "application/wasm",
    "application/octet-stream",
)
# What an isolate can start from: an ES module, or a service-worker script.
MAIN_MODULE_CONTENT_TYPES = ("application/javascript+module", "text/javascript")
BINDING_TYPES = ("plain_text", "json", "kv_namespace", "service", "queue", "durable_object_namespace")

_ACCOUNT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SCRIPT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_MODULE_NAME = re.compile(r"[A-Za-z0-9._/-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    return value


def account_name(name: object) -> str:
    name = _text(name, "account name")
    if not _ACCOUNT_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid account name {name!r}: it is a DNS label (1-63 of a-z, 0-9 and '-', "
            "not starting or ending with '-')"
        )
    return name


def script_name(name: object) -> str:
    name = _text(name, "script name")
    if not _SCRIPT_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid script name {name!r}: 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def token_name(name: object) -> str:
    name = _text(name, "token name")
    if not name or len(name) > MAX_TOKEN_NAME or not name.isprintable():
        raise InvalidInput(f"a token name is 1-{MAX_TOKEN_NAME} printable characters")
    return name


def module_name(name: object) -> str:
    name = _text(name, "module name")
    if not name or len(name) > MAX_MODULE_NAME:
        raise InvalidInput(f"invalid module name {name!r}: 1-{MAX_MODULE_NAME} characters")
    if not _MODULE_NAME.fullmatch(name):
        raise InvalidInput(f"invalid module name {name!r}: only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed")
    if name.startswith("/"):
        raise InvalidInput(f"invalid module name {name!r}: it must be a relative path")
    # "." and empty segments would give one file two names; ".." would leave the script's tree.
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidInput(f"invalid module name {name!r}: no empty, '.' or '..' path segments")
    return name


def content_type(value: object, module: str) -> str:
    """The media type without parameters (``; charset=…``), lower case."""
    value = _text(value, f"content type of module {module!r}")
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type not in MODULE_CONTENT_TYPES:
        raise InvalidInput(f"module {module!r} has content type {value!r}; allowed: " + ", ".join(MODULE_CONTENT_TYPES))
    return media_type


def compatibility_date(value: object) -> str:
    """A ``YYYY-MM-DD`` date, or "" for none (as ``warren dev`` allows)."""
    value = _text(value, "compatibility_date")
    if value == "":
        return value
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"compatibility_date {value!r} is not a date of the form YYYY-MM-DD") from None
    return value


def identifier(name: object, what: str) -> str:
    name = _text(name, what)
    if len(name) > MAX_IDENTIFIER or not _IDENTIFIER.fullmatch(name):
        raise InvalidInput(f"invalid {what} {name!r}: it must be a JavaScript identifier (A-Z, a-z, 0-9, _, $)")
    return name


def message(value: object) -> str:
    value = _text(value, "message")
    if len(value) > MAX_MESSAGE:
        raise InvalidInput(f"a message is at most {MAX_MESSAGE} characters")
    return value


def kv_title(value: object) -> str:
    value = _text(value, "title")
    if not value.strip() or len(value) > MAX_KV_TITLE or not value.isprintable():
        raise InvalidInput(f"a namespace title is 1-{MAX_KV_TITLE} printable characters")
    return value


def bindings(values: object) -> tuple[dict[str, Any], ...]:
    """The bindings in canonical form (only the keys of their type). Namespaces are checked by the store."""
    if not isinstance(values, list | tuple):
        raise InvalidInput("bindings must be a list")
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, binding in enumerate(values):
        if not isinstance(binding, dict):
            raise InvalidInput(f"binding #{index + 1} must be an object")
        name = identifier(binding.get("name"), "binding name")
        if name in seen:
            raise InvalidInput(f"binding name {name!r} is used twice")
        seen.add(name)
        kind = binding.get("type")
        if kind == "plain_text":
            result.append({"type": kind, "name": name, "text": _text(binding.get("text"), f"binding {name!r}'s text")})
        elif kind == "json":
            if "json" not in binding:
                raise InvalidInput(f"binding {name!r} of type json needs a 'json' value")
            try:
                canonical_json(binding["json"])
            except (TypeError, ValueError):
                raise InvalidInput(f"binding {name!r}'s json value is not plain JSON") from None
            result.append({"type": kind, "name": name, "json": binding["json"]})
        elif kind == "kv_namespace":
            namespace_id = _text(binding.get("namespace_id"), f"binding {name!r}'s namespace_id")
            result.append({"type": kind, "name": name, "namespace_id": namespace_id})
        elif kind in ("service", "queue"):
            result.append(_worker_binding(kind, name, binding))
        elif kind == "durable_object_namespace":
            result.append(_durable_object_binding(name, binding))
        elif kind == "secret_text":
            raise InvalidInput(f"binding {name!r}: secrets are set with the secrets endpoint, not in an upload")
        else:
            raise InvalidInput(f"binding {name!r} has type {kind!r}; allowed: " + ", ".join(BINDING_TYPES))
    return tuple(result)


def _durable_object_binding(name: str, binding: dict[str, Any]) -> dict[str, Any]:
    """A Durable Object class: of the uploading script, or of ``script_name`` in the same account (issue #8)."""
    class_name = identifier(binding.get("class_name"), f"binding {name!r}'s class_name")
    spec: dict[str, Any] = {"type": "durable_object_namespace", "name": name, "class_name": class_name}
    if binding.get("script_name") not in (None, ""):
        spec["script_name"] = script_name(binding["script_name"])
    return spec


# Runtime processes are shared only within a level ("cordons"); an edge node
# honours "trusted" only for accounts its operator names.
TRUST_LEVELS = ("trusted", "standard", "untrusted")
DURABLE_OBJECTS_KEY = "durable_objects"  # warren.control.migrations.STATE_KEY


def limits(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("limits must be an object")
    unknown = sorted(set(value) - {"cpu_ms", "trust_level", "subrequests", DURABLE_OBJECTS_KEY})
    if unknown:
        raise InvalidInput(
            f"unknown limit(s) {', '.join(map(repr, unknown))}; supported: 'cpu_ms', 'subrequests', 'trust_level'"
        )
    result: dict[str, Any] = {}
    if DURABLE_OBJECTS_KEY in value:
        # The script's Durable Object classes after its migrations (warren.control.migrations), carried in the
        # version so that every version keeps its own; written by the control plane, never by a client.
        state = value[DURABLE_OBJECTS_KEY]
        try:
            canonical_json(state)
        except (TypeError, ValueError):
            raise InvalidInput(f"limits.{DURABLE_OBJECTS_KEY} is not plain JSON") from None
        if not isinstance(state, dict):
            raise InvalidInput(f"limits.{DURABLE_OBJECTS_KEY} must be an object")
        result[DURABLE_OBJECTS_KEY] = state
    if "trust_level" in value:
        if value["trust_level"] not in TRUST_LEVELS:
            raise InvalidInput(f"limits.trust_level must be one of {', '.join(TRUST_LEVELS)}")
        result["trust_level"] = value["trust_level"]
    if "cpu_ms" in value:
        cpu_ms = value["cpu_ms"]
        if isinstance(cpu_ms, bool) or not isinstance(cpu_ms, int) or not 1 <= cpu_ms <= MAX_CPU_MS:
            raise InvalidInput(f"limits.cpu_ms must be a whole number from 1 to {MAX_CPU_MS}")
        result["cpu_ms"] = cpu_ms
    if "subrequests" in value:
        count = value["subrequests"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SUBREQUESTS:
            raise InvalidInput(f"limits.subrequests must be a whole number from 1 to {MAX_SUBREQUESTS}")
        result["subrequests"] = count
    return result


def modules(main_module: object, values: object) -> dict[str, tuple[str, bytes]]:
    """Names, content types and total size of an upload's modules; ``main_module`` must be one of them."""
    if not isinstance(values, dict) or not values:
        raise InvalidInput("an upload needs at least one module")
    result: dict[str, tuple[str, bytes]] = {}
    total = 0
    for name, entry in values.items():
        name = module_name(name)
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[1], bytes | bytearray):
            raise InvalidInput(f"module {name!r} must be given as (content_type, bytes)")
        media_type = content_type(entry[0], name)
        total += len(entry[1])
        result[name] = (media_type, bytes(entry[1]))
    if total > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"the modules add up to {total} bytes; the limit is {MAX_SCRIPT_BYTES}")
    main = _text(main_module, "main_module")
    if main not in result:
        raise InvalidInput(f"main_module {main!r} is not one of the uploaded modules: " + ", ".join(sorted(result)))
    if result[main][0] not in MAIN_MODULE_CONTENT_TYPES:
        raise InvalidInput(
            f"main_module {main!r} has content type {result[main][0]!r}; it must be one of "
            + ", ".join(MAIN_MODULE_CONTENT_TYPES)
        )
    return result


def split(versions: object) -> tuple[tuple[str, int], ...]:
    """A deployment's (version id, percentage) pairs: one or two distinct versions, whole percentages summing to 100."""
    if not isinstance(versions, Sequence) or isinstance(versions, str) or not 1 <= len(versions) <= 2:
        raise InvalidInput("a deployment names one or two versions")
    result: list[tuple[str, int]] = []
    for entry in versions:
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise InvalidInput("each deployment entry is (version_id, percentage)")
        version_id = _text(entry[0], "version_id")
        percentage = entry[1]
        if isinstance(percentage, float) and percentage.is_integer():
            percentage = int(percentage)
        if isinstance(percentage, bool) or not isinstance(percentage, int) or not 1 <= percentage <= 100:
            raise InvalidInput(
                f"percentage {entry[1]!r} of version {version_id!r} must be a whole number from 1 to 100"
            )
        result.append((version_id, percentage))
    if sum(share for _, share in result) != 100:
        raise InvalidInput("the percentages of a deployment must add up to 100")
    return tuple(result)


@dataclass(frozen=True)
class CheckedUpload:
    """An upload checked and hashed, before any store is touched: what every store writes."""

    script: str
    compatibility_date: str
    bindings: tuple[dict[str, Any], ...]
    limits: dict[str, Any]
    message: str
    blobs: dict[str, tuple[str, bytes, str]]  # module name -> (content type, bytes, sha256)
    refs: tuple[ModuleRef, ...]
    content_hash: str


def upload(
    script: str,
    main_module: str,
    modules_in: dict[str, tuple[str, bytes]],
    compatibility_date_in: str,
    bindings_in: Sequence[dict[str, Any]],
    limits_in: dict[str, Any],
    message_in: str,
) -> CheckedUpload:
    """Check every part of an upload (raises InvalidInput) and hash its modules and manifest."""
    checked = modules(main_module, modules_in)
    date_text = compatibility_date(compatibility_date_in)
    binding_list = bindings(bindings_in)
    limit_map = limits(limits_in)
    blobs = {name: (media, data, hashlib.sha256(data).hexdigest()) for name, (media, data) in checked.items()}
    refs = tuple(
        ModuleRef(name=name, content_type=media, sha256=digest, size=len(data))
        for name, (media, data, digest) in sorted(blobs.items())
    )
    return CheckedUpload(
        script=script_name(script),
        compatibility_date=date_text,
        bindings=binding_list,
        limits=limit_map,
        message=message(message_in),
        blobs=blobs,
        refs=refs,
        content_hash=content_hash(main_module, refs, date_text, binding_list, limit_map),
    )


# == service bindings, queues and cron triggers (issue #10) ===================================

MAX_QUEUE_DELAY_S = 43200  # 12 hours, as Workers
MAX_CRONS = 10  # per script
_QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A consumer's settings as the store keeps them -> (lowest, highest, default); see warren.config.CONSUMER_SETTINGS
CONSUMER_LIMITS = {
    "batch_size": (1, 100, 10),
    "max_wait_ms": (0, 60_000, 5000),
    "max_retries": (0, 100, 3),
    "retry_delay": (0, MAX_QUEUE_DELAY_S, 0),
}


def queue_name(name: object) -> str:
    name = _text(name, "queue name")
    if not _QUEUE_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid queue name {name!r}: 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def _worker_binding(kind: str, name: str, binding: dict[str, Any]) -> dict[str, Any]:
    """A ``service`` binding (``service``, optional ``entrypoint``; ``environment`` is accepted
    and dropped, as warren has no environments) or a ``queue`` producer (``queue_name``, optional
    ``delivery_delay``). The queue must exist: the control API checks that before uploading."""
    if kind == "service":
        result: dict[str, Any] = {"type": kind, "name": name, "service": script_name(binding.get("service"))}
        if binding.get("entrypoint") not in (None, ""):
            result["entrypoint"] = identifier(binding.get("entrypoint"), f"binding {name!r}'s entrypoint")
        return result
    result = {"type": kind, "name": name, "queue_name": queue_name(binding.get("queue_name"))}
    if "delivery_delay" in binding:
        delay = binding["delivery_delay"]
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_QUEUE_DELAY_S:
            raise InvalidInput(
                f"binding {name!r}: delivery_delay is a whole number of seconds, 0 to {MAX_QUEUE_DELAY_S}"
            )
        result["delivery_delay"] = delay
    return result


def consumer_settings(value: object) -> dict[str, int]:
    """A queue consumer's settings, defaults filled in; raises InvalidInput."""
    if not isinstance(value, dict):
        raise InvalidInput("settings must be an object")
    unknown = sorted(set(value) - set(CONSUMER_LIMITS) - {"max_concurrency"})
    if unknown:
        raise InvalidInput(f"unknown consumer setting(s) {', '.join(map(repr, unknown))}")
    result = {}
    for key, (low, high, default) in CONSUMER_LIMITS.items():
        number = value.get(key, default)
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise InvalidInput(f"settings.{key} must be a whole number from {low} to {high}")
        result[key] = number
    return result


def crons(values: object) -> tuple[str, ...]:
    """Cron expressions of five fields (as Workers' triggers), at most MAX_CRONS, no repeats."""
    from croniter import croniter

    if not isinstance(values, list | tuple):
        raise InvalidInput("schedules must be a list of {\"cron\": \"*/5 * * * *\"}")
    if len(values) > MAX_CRONS:
        raise InvalidInput(f"a script has at most {MAX_CRONS} cron triggers")
    result: list[str] = []
    for value in values:
        expression = " ".join(_text(value, "cron").split())
        if len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise InvalidInput(f"{value!r} is not a cron expression of five fields, like \"*/5 * * * *\"")
        if expression not in result:
            result.append(expression)
    return tuple(result)
