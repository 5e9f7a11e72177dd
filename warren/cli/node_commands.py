"""Commands that run warren's services on this machine: ``warren serve`` and ``warren control``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from warren.store import Store

DEFAULT_STORE = "warren.db"


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return int(uvloop.run(coroutine))
    except ImportError:
        return asyncio.run(coroutine)


def _store_option(function: Any) -> Any:
    return click.option(
        "--store",
        "store_path",
        default=DEFAULT_STORE,
        show_default=True,
        help="SQLite file shared by `warren control` and `warren serve` on this machine, or nats://HOST:PORT "
        "for NATS JetStream shared by many machines (needs $WARREN_SECRETS_KEY).",
    )(function)


def _store(url: str) -> Store:
    """The store ``--store`` names (not yet open); a bad URL or a missing secrets key is a usage error."""
    from warren.store.nats import SecretsKeyError
    from warren.store.open import open_store

    try:
        return open_store(url)
    except (ValueError, SecretsKeyError) as exc:
        raise click.ClickException(str(exc)) from None


async def _open(store: Store) -> None:
    try:
        await store.open()
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@_store_option
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@click.option("--ip", default="127.0.0.1", show_default=True)
@click.option(
    "--workers-domain",
    default="workers.localhost",
    show_default=True,
    help="Every script also answers on <script>.<account>.<workers domain>.",
)
@click.option(
    "--control-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the control-plane API from this process, on this port (single-machine use).",
)
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None, help="Serve Prometheus /metrics here.")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=max(1, os.cpu_count() or 1),
    show_default=True,
    help="Runtime processes per trust level.",
)
@click.option(
    "--trusted-account",
    "trusted_accounts",
    multiple=True,
    metavar="NAME",
    help="An account whose scripts may ask for trust_level 'trusted' (repeatable).",
)
@click.option(
    "--allow-subrequests-to",
    "allowed_networks",
    multiple=True,
    metavar="CIDR",
    help="A private network workers' fetch() may reach (repeatable; by default only public addresses).",
)
@click.option(
    "--geoip-db",
    "geoip_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A MaxMind database (City/Country/ASN .mmdb) for request.cf geography (repeatable).",
)
@click.option(
    "--node-name",
    default=None,
    envvar="WARREN_NODE_NAME",
    help="This node's name in request.cf.colo, events and metrics (default: host:port).",
)
@click.option(
    "--state-dir",
    default=".warren/state",
    show_default=True,
    envvar="WARREN_STATE_DIR",
    type=click.Path(file_okay=False),
    help="This node's own files: Durable Objects' storage, their alarms, the Cache API. One node per directory.",
)
def serve(
    store_path: str,
    port: int,
    ip: str,
    workers_domain: str,
    control_port: int | None,
    admin_port: int | None,
    processes: int,
    trusted_accounts: tuple[str, ...],
    allowed_networks: tuple[str, ...],
    geoip_paths: tuple[str, ...],
    node_name: str | None,
    state_dir: str,
) -> None:
    """Run an edge node: serve what the control plane has deployed, following changes live."""
    from warren.runtime.subrequests import SubrequestPolicy
    from warren.server.serve import StateDirInUse
    from warren.server.serve import serve as serve_edge

    try:
        policy = SubrequestPolicy.parse(False, allowed_networks)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-subrequests-to") from None
    store = _store(store_path)

    async def main() -> int:
        await _open(store)
        try:
            return await serve_edge(
                store,
                ip,
                port,
                workers_domain,
                control_port,
                admin_port,
                processes,
                frozenset(trusted_accounts),
                subrequests=policy,
                geoip_paths=geoip_paths,
                node_name=node_name,
                state_dir=state_dir,
            )
        except StateDirInUse as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await store.close()

    raise SystemExit(_run(main()))


@click.group(invoke_without_command=True)
@_store_option
@click.option("--port", default=8788, show_default=True, type=click.IntRange(0, 65535))
@click.option("--ip", default="127.0.0.1", show_default=True)
@click.pass_context
def control(context: click.Context, store_path: str, port: int, ip: str) -> None:
    """Run the control-plane API (or manage it: `warren control account create NAME`)."""
    context.obj = store_path
    if context.invoked_subcommand is not None:
        return
    from warren.control import create_app, stop_app
    from warren.server.app import listen
    from warren.store.open import describe

    store = _store(store_path)

    async def main() -> int:
        await _open(store)
        app = create_app(store, manage_store=False)
        try:
            listening = await listen(app, ip, port)
            click.echo(f"Ready on http://{ip}:{listening.port} (control-plane API, store {describe(store_path)})")
            await listening.task
            return 0
        finally:
            await stop_app(app)
            await store.close()

    raise SystemExit(_run(main()))


@control.group()
def account() -> None:
    """Accounts, managed directly in the local store (machine administrators only)."""


@account.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def account_create(store_path: str, name: str, as_json: bool) -> None:
    """Create an account and its first API token (shown once)."""
    from warren.control import create_account_with_token

    store = _store(store_path)

    async def main() -> tuple[Any, str]:
        await _open(store)
        try:
            return await create_account_with_token(store, name)
        finally:
            await store.close()

    try:
        created, token = asyncio.run(main())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"account_id": created.id, "name": created.name, "token": token}))
        return
    click.echo(f"Created account {created.name} ({created.id}).")
    click.echo(f"API token (shown once): {token}")
