"""``open_store``: the store a ``--store`` value names.

``nats://host:port`` (or ``tls://``; several servers separated by commas) is a
``NATSStore`` on that NATS JetStream deployment; anything else is the path of a
SQLite file. The NATS form takes two query parameters: ``replicas`` (of every
bucket; default ``auto``: ``min(3, cluster size)``, 1 on a single server) and
``prefix`` (of the bucket names; default ``warren``), as in
``nats://n1:4222,nats://n2:4222?replicas=3``.
A NATS store also needs the secrets key (``$WARREN_SECRETS_KEY``, see
``warren.store.nats``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from warren.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from warren.store import Store

NATS_SCHEMES = ("nats://", "tls://")


def is_nats_url(url: str) -> bool:
    return url.lower().startswith(NATS_SCHEMES)


def open_store(url: str) -> Store:
    """The store for ``url``, not yet opened: ``await store.open()`` (or ``async with``) before use.

    Raises ``ValueError`` for a malformed NATS URL and ``SecretsKeyError`` when a
    NATS store has no valid secrets key.
    """
    if not is_nats_url(url):
        return SQLiteStore(url)
    from warren.store.nats import DEFAULT_PREFIX, NATSStore

    servers, _, query = url.partition("?")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - {"replicas", "prefix"})
    if unknown:
        raise ValueError(f"unknown store option(s) {', '.join(unknown)} in {describe(url)}; known: prefix, replicas")
    replicas: int | None = None  # detected from the cluster when the store opens
    if options.get("replicas", ["auto"])[-1] != "auto":
        try:
            replicas = int(options["replicas"][-1])
        except ValueError:
            raise ValueError(f"replicas must be a whole number (or auto) in {describe(url)}") from None
    server_list = [server.strip() for server in servers.split(",") if server.strip()]
    if not server_list or not all(is_nats_url(server) for server in server_list):
        raise ValueError(f"{describe(url)}: each server is nats://host:port or tls://host:port")
    return NATSStore(server_list, prefix=options.get("prefix", [DEFAULT_PREFIX])[-1], replicas=replicas)


def describe(url: str) -> str:
    """``url`` fit to print: any user name and password removed."""
    if not is_nats_url(url):
        return url
    from warren.store.nats import redact

    servers, mark, query = url.partition("?")
    return ",".join(redact(server) for server in servers.split(",")) + mark + query
