"""Store layer: the control plane's state, and route matching.

Owns: accounts, API tokens (only their SHA-256 is kept), immutable script
versions and their modules (blobs, content-addressed by SHA-256), deployments,
secrets, routes, KV namespaces and their contents (KV data: records with
last-write-wins stamps, ``warren.store.kv_data``; never the revision), queues (records,
consumers and messages), cron schedules and their claims, the revision
counter edge nodes poll, and the one consistent snapshot they serve from
(``edge_state``). Validation of everything stored lives here too
(``warren.store.validation``), so no caller can write what the API would refuse.
Route pattern syntax and matching (``parse_route``, ``match_route``,
``RouteTable``) live here so that edge nodes can use them without the API.

May call: the standard library (sqlite3) only. Must not touch: HTTP,
Starlette, isolates, the supervisor, the CLI. Never logs, and never returns a
secret's value except through ``secrets_for`` and ``edge_state``, which are for
edge nodes only.

The contract is docs/control-plane.md. Every write is one transaction that
bumps the revision; a failure raises a ``ValueError`` (``InvalidInput``,
``NotFound`` or ``Conflict``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from warren.store.errors import Conflict, InvalidInput, NotFound, PreconditionFailed, StoreError
from warren.store.kv_data import KVChange, KVKeyInfo, KVRecord
from warren.store.model import (
    Account,
    Deployment,
    EdgeState,
    ExpectDeployment,
    KVNamespace,
    ModuleRef,
    OutgoingMessage,
    Queue,
    QueueConsumer,
    QueueMessage,
    Route,
    ScriptInfo,
    Token,
    Version,
    canonical_json,
    content_hash,
)
from warren.store.routes import RoutePattern, RouteTable, match_route, normalise_host, parse_route
from warren.store.sqlite import SQLiteStore
from warren.store.validation import MAX_SCRIPT_BYTES, MODULE_CONTENT_TYPES


class Store(Protocol):
    """What the control API and edge nodes need from storage. All methods are coroutines."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def create_account(self, name: str) -> Account: ...
    async def get_account(self, account_id: str) -> Account | None: ...
    async def account_by_name(self, name: str) -> Account | None: ...
    async def create_token(self, account_id: str, name: str) -> tuple[Token, str]: ...
    async def authenticate(self, secret: str) -> Token | None: ...

    async def upload_version(
        self,
        account_id: str,
        script: str,
        main_module: str,
        modules: dict[str, tuple[str, bytes]],
        compatibility_date: str,
        bindings: Sequence[dict[str, Any]],
        limits: dict[str, Any],
        author_token_id: str,
        message: str,
        deploy: bool,
        expect: ExpectDeployment | None = None,
    ) -> tuple[Version, Deployment | None]: ...
    async def get_version(self, account_id: str, script: str, version_id: str) -> Version | None: ...
    async def list_versions(self, account_id: str, script: str) -> list[Version]: ...
    async def get_blob(self, sha256: str) -> bytes | None: ...
    async def create_deployment(
        self,
        account_id: str,
        script: str,
        versions: Sequence[tuple[str, int]],
        author_token_id: str,
        message: str,
    ) -> Deployment: ...
    async def list_deployments(self, account_id: str, script: str) -> list[Deployment]: ...
    async def current_deployment(self, account_id: str, script: str) -> Deployment | None: ...

    async def get_script(self, account_id: str, script: str) -> ScriptInfo | None: ...
    async def list_scripts(self, account_id: str) -> list[ScriptInfo]: ...
    async def delete_script(self, account_id: str, script: str) -> bool: ...

    async def put_secret(self, account_id: str, script: str, name: str, text: str) -> None: ...
    async def delete_secret(self, account_id: str, script: str, name: str) -> bool: ...
    async def list_secret_names(self, account_id: str, script: str) -> list[str]: ...
    async def secrets_for(self, account_id: str, script: str) -> dict[str, str]: ...

    async def create_route(self, account_id: str, pattern: str, script: str) -> Route: ...
    async def list_routes(self, account_id: str) -> list[Route]: ...
    async def delete_route(self, account_id: str, route_id: str) -> bool: ...

    async def create_kv_namespace(self, account_id: str, title: str) -> KVNamespace: ...
    async def list_kv_namespaces(self, account_id: str) -> list[KVNamespace]: ...
    async def delete_kv_namespace(self, account_id: str, namespace_id: str) -> bool: ...

    async def revision(self) -> int: ...
    async def edge_state(self) -> EdgeState: ...
    async def wait_for_change(self, after_revision: int, timeout: float) -> int:
        """The revision once it differs from ``after_revision``, or the current one after ``timeout`` s.

        Edge nodes follow the store through this: SQLite polls, a store with
        change notifications (NATS KV watch) wakes as soon as one arrives.
        """
        ...

    # -- invocation events (warren.observability): not configuration, so never the revision --
    async def publish_events(self, account_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Append invocation events (``warren.observability.build_event``) of one account.

        Kept at least an hour (bounded in size); counted per script and minute for ``event_stats``.
        """
        ...

    def follow_events(
        self, account_id: str, script: str | None = None, since_ms: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The account's events (of one script, or all), published from ``since_ms`` (ms since
        the epoch; default: now) on, from every edge node, as they arrive. Never ends by itself:
        the caller closes it (``aclose``)."""
        ...

    async def event_stats(self, account_id: str, since_ms: int) -> list[tuple[str, int, int, int, float]]:
        """``(script, minute start ms, requests, errors, cpu ms)`` of the account from ``since_ms`` on."""
        ...

    # == KV data (warren.bindings.kv): namespace contents; never the revision =================
    async def kv_get(self, namespace_id: str, key: str) -> KVRecord | None:
        """The key's stored record (tombstones and expired records included), or None if never written."""
        ...

    async def kv_get_many(self, namespace_id: str, keys: Sequence[str]) -> dict[str, KVRecord]:
        """``kv_get`` of each key (at most a few hundred); keys never written are absent."""
        ...

    async def kv_put(self, namespace_id: str, key: str, record: KVRecord) -> bool:
        """Store ``record`` unless the stored one's ``(stamp, writer)`` is as great (last write wins).

        True if it was stored. Every stored write is announced by ``kv_changes``."""
        ...

    async def kv_put_many(self, namespace_id: str, items: Sequence[tuple[str, KVRecord]]) -> int:
        """``kv_put`` of each (key, record) pair; how many were stored."""
        ...

    async def kv_list(
        self, namespace_id: str, prefix: str, after: bytes | None, limit: int, now: float
    ) -> tuple[list[KVKeyInfo], bool]:
        """Up to ``limit`` live keys (not deleted, not expired at ``now``, seconds) starting with ``prefix``
        and greater than ``after`` (UTF-8 bytes), in UTF-8 byte order; and whether more follow."""
        ...

    async def kv_purge(self, namespace_id: str) -> None:
        """Remove every key of a namespace (it was deleted)."""
        ...

    def kv_changes(self) -> AsyncGenerator[KVChange, None]:
        """Notifications of stored KV writes, from every node, as they happen (from now on). Never
        ends by itself; the caller closes it. A ``KVChange`` with ``key`` None says that some
        notifications may have been lost (for one namespace, or all with ``namespace_id`` None)."""
        ...

    # == queues and cron triggers (issue #10): edge nodes re-read queue records and schedules
    # on a timer (warren.triggers; on SQLite their writes also move the revision, waking them);
    # messages and cron claims are data and never move it ====================================
    async def create_queue(self, account_id: str, name: str) -> Queue:
        """Conflict if the account has a queue of that name."""
        ...

    async def list_queues(self, account_id: str) -> list[Queue]: ...
    async def get_queue(self, account_id: str, queue: str) -> Queue | None:
        """By id or name."""
        ...

    async def delete_queue(self, account_id: str, queue_id: str) -> bool:
        """The queue and its messages."""
        ...

    async def put_queue_consumer(self, account_id: str, queue_id: str, consumer: QueueConsumer) -> Queue:
        """Set the queue's one consumer (the same script's is updated; another's is a Conflict)."""
        ...

    async def delete_queue_consumer(self, account_id: str, queue_id: str, script: str) -> bool: ...
    async def queue_consumers(self) -> list[tuple[Queue, QueueConsumer]]:
        """Every consumer of every account: what edge nodes run."""
        ...

    async def queue_send(self, account_id: str, queue_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Store messages durably (each visible after its delay); their ids. NotFound if the queue is gone."""
        ...

    async def queue_receive(self, account_id: str, queue_id: str, limit: int, lease_s: float) -> list[QueueMessage]:
        """Up to ``limit`` visible messages, oldest first, each leased to this caller alone for ``lease_s``
        seconds: no other receiver gets it until the lease runs out (at-least-once delivery)."""
        ...

    async def queue_extend(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], lease_s: float
    ) -> None: ...
    async def queue_ack(self, account_id: str, queue_id: str, messages: Sequence[QueueMessage]) -> None: ...
    async def queue_retry(self, account_id: str, queue_id: str, retries: Sequence[tuple[QueueMessage, int]]) -> None:
        """Give leased messages back, each visible again after its delay in seconds."""
        ...

    async def queue_dead_letter(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], dead_letter_queue_id: str
    ) -> None:
        """Move leased messages to another queue of the account (NotFound if it does not exist)."""
        ...

    async def queue_backlog(self, account_id: str, queue_id: str) -> int: ...
    async def put_schedules(self, account_id: str, script: str, crons: Sequence[str]) -> list[str]:
        """Replace a script's cron triggers (``warren.store.validation.crons``)."""
        ...

    async def get_schedules(self, account_id: str, script: str) -> list[str]: ...
    async def all_schedules(self) -> list[tuple[str, str, list[str]]]:
        """(account id, script, crons) of every script with cron triggers."""
        ...

    async def claim_cron(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> bool:
        """True for exactly one caller per (account, script, cron, scheduled time), across all nodes."""
        ...


if TYPE_CHECKING:

    def _sqlite_store_is_a_store(store: SQLiteStore) -> Store:
        return store  # mypy checks SQLiteStore against the protocol here


__all__ = [
    "MAX_SCRIPT_BYTES",
    "MODULE_CONTENT_TYPES",
    "Account",
    "Conflict",
    "Deployment",
    "EdgeState",
    "ExpectDeployment",
    "InvalidInput",
    "KVChange",
    "KVKeyInfo",
    "KVNamespace",
    "KVRecord",
    "ModuleRef",
    "NotFound",
    "OutgoingMessage",
    "PreconditionFailed",
    "Queue",
    "QueueConsumer",
    "QueueMessage",
    "Route",
    "RoutePattern",
    "RouteTable",
    "SQLiteStore",
    "ScriptInfo",
    "Store",
    "StoreError",
    "Token",
    "Version",
    "canonical_json",
    "content_hash",
    "match_route",
    "normalise_host",
    "parse_route",
]
