"""``warren queues``: queues and their consumers, through the control-plane API, as wrangler's.

``queues create NAME``, ``queues list``, ``queues delete NAME``, ``queues
consumer add QUEUE SCRIPT [--batch-size N] [--batch-timeout S]
[--message-retries N] [--retry-delay-secs S] [--dead-letter-queue Q]`` and
``queues consumer remove QUEUE SCRIPT``. ``warren deploy`` calls
``sync_triggers`` after an upload: it sets the script's cron triggers from
``[triggers] crons`` (an empty list removes them, as wrangler does) and makes
the script the consumer of each queue in ``[[queues.consumers]]``.

Owns: parsing these command lines and printing for people. Talks to the API
only through ``warren.cli.client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from warren.cli.client import ApiClient, ApiError
from warren.cli.commands import Failure, _confirm, _print_json, _reports_errors, json_option, session

if TYPE_CHECKING:
    from warren.config import Project


def _queues_path(account_id: str, *rest: str) -> str:
    path = f"/accounts/{quote(account_id, safe='')}/queues"
    return "/".join([path, *(quote(part, safe="") for part in rest)])


def _consumer_body(script: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A consumer as the API takes it (Cloudflare's shape) from warren.config's consumer settings."""
    return {
        "script_name": script,
        "type": "worker",
        "dead_letter_queue": settings.get("dead_letter_queue") or "",
        "settings": {
            key: settings[key] for key in ("batch_size", "max_wait_ms", "max_retries", "retry_delay") if key in settings
        },
    }


def sync_triggers(client: ApiClient, account_id: str, script: str, project: Project) -> list[str]:
    """After an upload: the script's cron triggers and queue consumers as its config says. Lines to print."""
    lines = []
    schedules = [{"cron": cron} for cron in project.crons]
    path = f"/accounts/{quote(account_id, safe='')}/workers/scripts/{quote(script, safe='')}/schedules"
    client.request("PUT", path, json=schedules)
    if project.crons:
        lines.append("  schedules     " + ", ".join(project.crons))
    for settings in project.queue_consumers:
        queue = str(settings["queue"])
        try:
            client.request("POST", _queues_path(account_id, queue, "consumers"), json=_consumer_body(script, settings))
        except ApiError as exc:
            if exc.status == 404:
                raise Failure(f"queue {queue} does not exist: create it with `warren queues create {queue}`") from None
            raise
        lines.append(f"  consumer of   {queue}")
    return lines


@click.group()
def queues() -> None:
    """Queues: create, list and delete them, and choose the worker that consumes each."""


@queues.command("create")
@click.argument("name")
@json_option
@_reports_errors
def queues_create(name: str, as_json: bool) -> None:
    """Create a queue."""
    with session() as current:
        result = current.client.request("POST", _queues_path(current.account()), json={"queue_name": name})
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Created queue {result.get('queue_name')} ({result.get('queue_id')})")


@queues.command("list")
@json_option
@_reports_errors
def queues_list(as_json: bool) -> None:
    """List the account's queues, their consumers and backlogs."""
    with session() as current:
        found = current.client.request("GET", _queues_path(current.account()))
    if as_json:
        _print_json(found)
        return
    if not found:
        click.echo("no queues")
        return
    width = max(len(str(queue.get("queue_name"))) for queue in found)
    for queue in found:
        consumers = ", ".join(str(consumer.get("script")) for consumer in queue.get("consumers", [])) or "-"
        backlog = queue.get("backlog_count", 0)
        name = str(queue.get("queue_name"))
        click.echo(f"{name:<{width}}  {queue.get('queue_id')}  consumer {consumers}  backlog {backlog}")


@queues.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@_reports_errors
def queues_delete(name: str, yes: bool, as_json: bool) -> None:
    """Delete a queue and the messages in it."""
    _confirm(f"Delete the queue {name} and every message in it?", yes)
    with session() as current:
        result = current.client.request("DELETE", _queues_path(current.account(), name))
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Deleted queue {name}")


@queues.group("consumer")
def consumer() -> None:
    """The worker that consumes a queue (one per queue)."""


@consumer.command("add")
@click.argument("queue")
@click.argument("script")
@click.option("--batch-size", type=click.IntRange(1, 100), default=None, help="Messages per batch (default 10).")
@click.option("--batch-timeout", type=click.FloatRange(0, 60), default=None, help="Seconds to fill a batch (5).")
@click.option("--message-retries", type=click.IntRange(0, 100), default=None, help="Retries per message (default 3).")
@click.option("--retry-delay-secs", type=click.IntRange(0, 43200), default=None, help="Delay before a retry.")
@click.option("--dead-letter-queue", default=None, metavar="QUEUE", help="Where messages go after their retries.")
@json_option
@_reports_errors
def consumer_add(
    queue: str,
    script: str,
    batch_size: int | None,
    batch_timeout: float | None,
    message_retries: int | None,
    retry_delay_secs: int | None,
    dead_letter_queue: str | None,
    as_json: bool,
) -> None:
    """Make SCRIPT the consumer of QUEUE (or change its settings)."""
    settings: dict[str, Any] = {"dead_letter_queue": dead_letter_queue or ""}
    for key, value in (
        ("batch_size", batch_size),
        ("max_wait_ms", round(batch_timeout * 1000) if batch_timeout is not None else None),
        ("max_retries", message_retries),
        ("retry_delay", retry_delay_secs),
    ):
        if value is not None:
            settings[key] = value
    with session() as current:
        result = current.client.request(
            "POST", _queues_path(current.account(), queue, "consumers"), json=_consumer_body(script, settings)
        )
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ {script} consumes {queue}")


@consumer.command("remove")
@click.argument("queue")
@click.argument("script")
@json_option
@_reports_errors
def consumer_remove(queue: str, script: str, as_json: bool) -> None:
    """Stop SCRIPT consuming QUEUE."""
    with session() as current:
        result = current.client.request("DELETE", _queues_path(current.account(), queue, "consumers", script))
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ {script} no longer consumes {queue}")


COMMANDS: list[click.Command] = [queues]
