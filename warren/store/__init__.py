"""Store layer: the control plane's state, and route matching.

Owns: accounts, API tokens (only their SHA-256 is kept), immutable script
versions and their modules (blobs, content-addressed by SHA-256), deployments,
secrets, routes, KV namespaces (their names; not their contents), the revision
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

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from warren.store.errors import Conflict, InvalidInput, NotFound, StoreError
from warren.store.model import (
    Account,
    Deployment,
    EdgeState,
    KVNamespace,
    ModuleRef,
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
    "InvalidInput",
    "KVNamespace",
    "ModuleRef",
    "NotFound",
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
