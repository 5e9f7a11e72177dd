"""The control plane's data model: immutable records, as the store returns them.

Times are ISO-8601 UTC strings. JSON-shaped fields (bindings, limits) hold plain
JSON values; nothing here touches storage or HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Account:
    id: str  # 32 lowercase hex chars
    name: str  # a DNS label, unique: the account's subdomain
    created_on: str


@dataclass(frozen=True)
class Token:
    """An API token. Its secret is never part of it: only the SHA-256 is kept."""

    id: str
    account_id: str
    name: str
    created_on: str


@dataclass(frozen=True)
class ModuleRef:
    """One module of a version; its bytes are the blob named by ``sha256``."""

    name: str
    content_type: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Version:
    """An immutable upload of a script: code, bindings and limits."""

    id: str  # UUID4
    account_id: str
    script: str
    number: int  # 1, 2, 3… per script
    main_module: str
    modules: tuple[ModuleRef, ...]  # sorted by name
    compatibility_date: str  # "YYYY-MM-DD", or "" when the upload named none
    bindings: tuple[dict[str, Any], ...]  # non-secret bindings, in upload order
    limits: dict[str, Any]
    content_hash: str
    created_on: str
    author_token_id: str
    message: str

    def module(self, name: str) -> ModuleRef | None:
        for ref in self.modules:
            if ref.name == name:
                return ref
        return None


@dataclass(frozen=True)
class ExpectDeployment:
    """A write's precondition: the script's current deployment is still this one (None: it has none).

    The compare-and-set a caller needs when what it writes was derived from the
    deployed version (Durable Object migrations: ``warren.control.migrations``).
    """

    deployment_id: str | None


@dataclass(frozen=True)
class Deployment:
    """Which versions of a script serve traffic, and what share each gets."""

    id: str  # UUID4
    account_id: str
    script: str
    versions: tuple[tuple[str, int], ...]  # (version_id, percentage); one or two, summing to 100
    created_on: str
    author_token_id: str
    message: str

    @property
    def main_version_id(self) -> str:
        """The version with the largest share (the first listed on a tie)."""
        best_id, best_share = self.versions[0]
        for version_id, share in self.versions[1:]:
            if share > best_share:
                best_id, best_share = version_id, share
        return best_id


@dataclass(frozen=True)
class Route:
    id: str
    account_id: str
    pattern: str  # normalised: see warren.store.routes.parse_route
    script: str


@dataclass(frozen=True)
class KVNamespace:
    id: str
    account_id: str
    title: str


@dataclass(frozen=True)
class ScriptInfo:
    account_id: str
    name: str
    created_on: str
    modified_on: str
    etag: str | None  # content hash of the current deployment's main version; None if never deployed


@dataclass(frozen=True)
class EdgeState:
    """Everything an edge node serves, read in one transaction."""

    revision: int
    routes: list[Route] = field(default_factory=list)
    accounts: dict[str, Account] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Deployment] = field(default_factory=dict)  # (account_id, script)
    versions: dict[str, Version] = field(default_factory=dict)  # every version a deployment names
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (account_id, script)


def now() -> str:
    # Fixed width with microseconds and "Z", so the strings also sort chronologically.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    """The one serialisation content hashes are taken over: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def content_hash(
    main_module: str,
    modules: Sequence[ModuleRef],
    compatibility_date: str,
    bindings: Sequence[dict[str, Any]],
    limits: dict[str, Any],
) -> str:
    """SHA-256 (hex) of what makes a version behave as it does, independent of its id and number."""
    listed = [[ref.name, ref.content_type, ref.sha256] for ref in sorted(modules, key=lambda ref: ref.name)]
    payload = [main_module, listed, compatibility_date, list(bindings), limits]
    return hashlib.sha256(canonical_json(payload)).hexdigest()


# == queues (issue #10: warren.bindings.queues, warren.triggers.consumer) ======================


@dataclass(frozen=True)
class QueueConsumer:
    """The worker that consumes a queue, and how (the limits are warren.store.validation.CONSUMER_LIMITS)."""

    script: str
    batch_size: int = 10
    max_wait_ms: int = 5000
    max_retries: int = 3
    retry_delay: int = 0  # seconds before a retried message is delivered again, unless it says otherwise
    dead_letter_queue: str = ""  # a queue's name, or "": messages past max_retries are dropped
    created_on: str = ""


@dataclass(frozen=True)
class Queue:
    id: str  # 32 lowercase hex chars
    account_id: str
    name: str
    created_on: str
    modified_on: str
    consumers: tuple[QueueConsumer, ...] = ()  # at most one, as on Workers


@dataclass(frozen=True)
class QueueMessage:
    """A message as a consumer receives it; ``lease`` names this delivery (only it may ack or retry)."""

    id: str
    body: bytes
    content_type: str  # text, bytes, json or v8
    timestamp_ms: int
    attempts: int  # deliveries so far, this one included
    lease: str


@dataclass(frozen=True)
class OutgoingMessage:
    body: bytes
    content_type: str
    delay_s: int = 0
