"""The ``warren`` command.

Owns: parsing command lines and printing for people. May call every other
layer's public entry points; holds no logic of its own beyond that.
"""

from __future__ import annotations

import asyncio

import click

from warren import __version__
from warren.cli.commands import COMMANDS
from warren.cli.kv import COMMANDS as KV_COMMANDS
from warren.cli.node_commands import control, serve
from warren.cli.queues import COMMANDS as QUEUE_COMMANDS
from warren.cli.tail import COMMANDS as TAIL_COMMANDS


@click.group()
@click.version_option(__version__, prog_name="warren")
def main() -> None:
    """warren: Cloudflare-Workers-style scripts in V8 isolates."""


def _parse_var(values: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for item in values:
        name, separator, value = item.partition(":")
        if not separator or not name:
            raise click.BadParameter(f"{item!r} is not KEY:VALUE", param_hint="--var")
        parsed[name] = value
    return parsed


@main.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--ip", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--var", "variables", multiple=True, metavar="KEY:VALUE", help="Add an environment variable.")
@click.option("--no-watch", is_flag=True, help="Do not reload when files change.")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None, help="Serve Prometheus /metrics here.")
@click.option("--test-scheduled", is_flag=True, help="Run the scheduled() handler on GET /__scheduled?cron=….")
@click.option(
    "--geoip-db",
    "geoip_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A MaxMind database (City/Country/ASN .mmdb) for request.cf geography (repeatable).",
)
@click.option(
    "--persist-to",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep local state (KV data) here instead of .warren/state beside the config.",
)
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="[NAME=]PATH",
    help="Also run this worker (a directory or script), for the main one's [[services]] bindings (repeatable).",
)
def dev(
    target: str,
    port: int,
    ip: str,
    variables: tuple[str, ...],
    no_watch: bool,
    admin_port: int | None,
    test_scheduled: bool,
    geoip_paths: tuple[str, ...],
    persist_to: str | None,
    services: tuple[str, ...],
) -> None:
    """Serve a worker locally: a script file, or a directory with wrangler.toml."""
    from warren.server.dev import DevServer

    server = DevServer(
        target,
        host=ip,
        port=port,
        extra_vars=_parse_var(variables),
        watch=not no_watch,
        admin_port=admin_port,
        test_scheduled=test_scheduled,
        geoip_paths=geoip_paths,
        persist_to=persist_to,
        services=services,
    )
    try:
        import uvloop

        code = uvloop.run(server.run())
    except ImportError:
        code = asyncio.run(server.run())
    raise SystemExit(code)


for _command in [*COMMANDS, *KV_COMMANDS, *TAIL_COMMANDS, *QUEUE_COMMANDS, serve, control]:
    main.add_command(_command)
