"""``warren tail`` and ``warren status``: a worker's live invocations, and how the account is doing.

``warren tail [SCRIPT]`` asks the control plane for a tail (``POST …/tails``),
opens its WebSocket, sends the filters given on the command line (wrangler's
flags, translated as wrangler does) and prints each event as it arrives:
``--format pretty`` as ``wrangler tail`` prints them, ``--format json`` one
JSON object per line (for ``jq``). Status lines go to stderr, so stdout holds
only events. The tail is deleted on the way out (Ctrl-C or SIGTERM); one that
expires (after an hour) or whose connection drops is opened again.

``warren status`` prints the last hour per worker from the analytics endpoint
(requests, errors, CPU, a per-minute sparkline), or with ``--metrics URL`` a
node's admin port (``/metrics``): per worker and runtime process.

Owns: these two commands and their printing. Talks to the API through
``warren.cli.client`` (and the tail's WebSocket), and reads settings as the
other client verbs do (``warren.cli.commands.session``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any

import click
import httpx

from warren.cli.client import ApiError
from warren.cli.commands import Failure, Session, _reports_errors, _script_name, json_option, session

OUTCOME_TEXT = {
    "ok": "Ok",
    "canceled": "Canceled",
    "exceededCpu": "Exceeded CPU Limit",
    "exceededMemory": "Exceeded Memory Limit",
    "exception": "Exception Thrown",
}
STATUS_OUTCOMES = {
    "ok": ["ok"],
    "error": ["exception", "exceededCpu", "exceededMemory", "unknown"],
    "canceled": ["canceled"],
}
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
SPARKS = " ▁▂▃▄▅▆▇█"


# -- printing events --------------------------------------------------------------------------


def _when(timestamp_ms: Any) -> str:
    """Local time as wrangler prints it (``1/2/2024, 3:04:05 PM``)."""
    try:
        moment = datetime.fromtimestamp(int(timestamp_ms) / 1000)
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"
    return f"{moment.month}/{moment.day}/{moment.year}, {moment.strftime('%I:%M:%S %p').lstrip('0')}"


def format_pretty(event: dict[str, Any]) -> str:
    """One event as ``wrangler tail --format pretty`` prints it: a heading, then logs and exceptions."""
    outcome = OUTCOME_TEXT.get(str(event.get("outcome")), "Unknown")
    detail = event.get("event") or {}
    if "cron" in detail:
        lines = [f'"{detail.get("cron")}" @ {_when(detail.get("scheduledTime"))} - {outcome}']
    elif detail.get("request"):
        request = detail["request"]
        method = str(request.get("method", "")).upper()
        lines = [f"{method} {request.get('url')} - {outcome} @ {_when(event.get('eventTimestamp'))}"]
    else:
        lines = [f"Unknown Event - {outcome} @ {_when(event.get('eventTimestamp'))}"]
    for entry in event.get("logs") or []:
        message = entry.get("message")
        text = " ".join(str(part) for part in message) if isinstance(message, list) else str(message)
        lines.append(f"  ({entry.get('level', 'log')}) {text}")
    for entry in event.get("exceptions") or []:
        lines.append(f"  {entry.get('name', 'Error')}: {entry.get('message', '')}")
    return "\n".join(lines)


def build_filters(
    statuses: tuple[str, ...],
    methods: tuple[str, ...],
    search: str | None,
    sampling_rate: float | None,
    header: str | None,
    version_id: str | None,
) -> dict[str, Any]:
    """The filter message for the command line's flags (docs/control-plane.md, "Logs and analytics")."""
    filters: list[dict[str, Any]] = []
    if sampling_rate is not None:
        filters.append({"sampling_rate": sampling_rate})
    if statuses:
        outcomes = sorted({outcome for status in statuses for outcome in STATUS_OUTCOMES[status]})
        filters.append({"outcome": outcomes})
    if methods:
        filters.append({"method": [method.upper() for method in methods]})
    if header:
        key, separator, value = header.partition(":")
        if not key.strip():
            raise click.BadParameter("a header filter is NAME or NAME:VALUE", param_hint="--header")
        filters.append({"header": {"key": key.strip(), **({"query": value.strip()} if separator else {})}})
    if search:
        filters.append({"query": search})
    if version_id:
        filters.append({"scriptVersion": version_id})
    return {"filters": filters}


# -- the tail -----------------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM: leave as after Ctrl-C, deleting the tail."""


@contextmanager
def _terminate_gracefully() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _status(message: str) -> None:
    click.echo(message, err=True)


def _tail_path(account_id: str, script: str, *rest: str) -> str:
    from urllib.parse import quote

    path = f"/accounts/{quote(account_id, safe='')}/workers/scripts/{quote(script, safe='')}/tails"
    return "/".join([path, *(quote(part, safe="") for part in rest)])


def _run_tail(current: Session, script: str, message: dict[str, Any], output_format: str) -> None:
    """Tail until interrupted: a tail that expires or whose connection drops is opened again."""
    account_id = current.account()
    first = True
    failures = 0
    while True:
        try:
            tail = current.client.request("POST", _tail_path(account_id, script))
        except ApiError as error:
            if error.status != 0 or first:
                raise
            code, reason = None, error.describe()  # the control plane is unreachable (restarting?)
        else:
            code, reason = _follow(current, account_id, script, tail, message, output_format, first)
            first = False
        if code == 1007:
            raise Failure(f"the control plane refused the filters: {reason}")
        if code == 1000 and reason == "the tail was deleted":
            _status("The tail was deleted.")
            return
        failures = 0 if code in (1000, 1001) else failures + 1
        delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
        _status(f"▲ The tail ended ({reason or code}); opening another in {delay:g} s")
        time.sleep(delay)


def _follow(
    current: Session,
    account_id: str,
    script: str,
    tail: dict[str, Any],
    message: dict[str, Any],
    output_format: str,
    first: bool,
) -> tuple[int | None, str]:
    """Print one tail's events until its socket closes, then delete it. Returns the close code and reason."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    if first:
        _status(f"Successfully created tail, expires at {tail.get('expires_at')}")
    try:
        with connect(
            str(tail["url"]), subprotocols=[Subprotocol("trace-v1")], open_timeout=15, max_size=None
        ) as socket:
            socket.send(json.dumps(message))
            if first:
                _status(f"Connected to {script}, waiting for logs...")
            for data in socket:
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                click.echo(json.dumps(event, ensure_ascii=False) if output_format == "json" else format_pretty(event))
                sys.stdout.flush()
        return socket.close_code, socket.close_reason or ""
    except ConnectionClosed as exc:
        if exc.rcvd is not None:
            return exc.rcvd.code, exc.rcvd.reason
        return None, str(exc)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        return None, str(exc) or type(exc).__name__
    finally:
        # A tail left behind would only expire in an hour; this one is no longer needed.
        try:
            current.client.request("DELETE", _tail_path(account_id, script, str(tail["id"])))
        except ApiError:
            pass


@click.command()
@click.argument("script", required=False, metavar="[SCRIPT]")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["pretty", "json"]),
    default="pretty",
    show_default=True,
    help="pretty: as wrangler tail prints; json: one event per line.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["ok", "error", "canceled"]),
    help="Only invocations that ended so (repeatable).",
)
@click.option(
    "--method", "methods", multiple=True, metavar="METHOD", help="Only requests with this method (repeatable)."
)
@click.option("--search", default=None, metavar="TEXT", help="Only events whose logs, exceptions or URL contain TEXT.")
@click.option("--header", default=None, metavar="NAME[:VALUE]", help="Only requests with this header (and value).")
@click.option(
    "--sampling-rate", type=click.FloatRange(0, 1, min_open=True), default=None, help="Keep about this share of events."
)
@click.option("--version-id", default=None, metavar="ID", help="Only invocations of this version.")
@_reports_errors
def tail(
    script: str | None,
    output_format: str,
    statuses: tuple[str, ...],
    methods: tuple[str, ...],
    search: str | None,
    header: str | None,
    sampling_rate: float | None,
    version_id: str | None,
) -> None:
    """Stream a worker's invocations live: requests, console output, exceptions (all edge nodes)."""
    name = _script_name(script)
    message = build_filters(statuses, methods, search, sampling_rate, header, version_id)
    with session() as current:
        try:
            with _terminate_gracefully():
                _run_tail(current, name, message, output_format)
        except (KeyboardInterrupt, _Stop):
            pass


# -- status ---------------------------------------------------------------------------------------


def _spark(values: list[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(
        SPARKS[0] if value <= 0 else SPARKS[max(1, round(value / top * (len(SPARKS) - 1)))] for value in values
    )


def _print_analytics(result: dict[str, Any], minutes: int) -> None:
    scripts = result.get("scripts") or []
    click.echo(f"Last {minutes} min (since {result.get('since')}), all edge nodes:")
    if not scripts:
        click.echo("  no workers")
        return
    width = max(len("worker"), *(len(str(item.get("script"))) for item in scripts))
    heading = f"{'requests':>9}  {'errors':>7}  {'err %':>6}  {'cpu ms':>10}  {'ms/req':>7}  per minute"
    click.echo(f"  {'worker':<{width}}  {heading}")
    for item in scripts:
        requests, errors, cpu = int(item.get("requests", 0)), int(item.get("errors", 0)), float(item.get("cpu_ms", 0))
        rate = f"{errors / requests * 100:.1f}" if requests else "-"
        per = f"{cpu / requests:.2f}" if requests else "-"
        line = _spark([float(point.get("requests", 0)) for point in item.get("series") or []])
        click.echo(
            f"  {item.get('script')!s:<{width}}  {requests:>9}  {errors:>7}  {rate:>6}  {cpu:>10.1f}  {per:>7}  {line}"
        )


def read_metrics(url: str) -> dict[str, Any]:
    """A node's admin port, summed per worker and per runtime process."""
    from prometheus_client.parser import text_string_to_metric_families

    target = url.rstrip("/") if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        response = httpx.get(target, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise Failure(f"cannot read {target}: {exc}") from None
    workers: dict[str, dict[str, float]] = {}
    processes: dict[str, dict[str, float]] = {}
    node: dict[str, float] = {}
    names = {
        "warren_requests_total": "requests",
        "warren_errors_total": "errors",
        "warren_cpu_seconds_total": "cpu_seconds",
        "warren_cold_starts_total": "cold_starts",
        "warren_subrequests_total": "subrequests",
        "warren_kv_operations_total": "kv_operations",
    }
    node_name = ""
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            node_name = sample.labels.get("node", node_name)
            if sample.name in names and "worker" in sample.labels:
                row = workers.setdefault(sample.labels["worker"], {})
                row[names[sample.name]] = row.get(names[sample.name], 0.0) + sample.value
            elif sample.name in (
                "warren_isolates_loaded",
                "warren_runtime_memory_bytes",
                "warren_isolate_evictions_total",
            ):
                processes.setdefault(sample.labels.get("process", "?"), {})[sample.name] = sample.value
            elif sample.name in (
                "warren_runtime_crashes_total",
                "warren_quarantined_versions",
                "warren_events_published_total",
                "warren_events_dropped_total",
                "warren_store_stale",
            ):
                node[sample.name] = sample.value
    return {"node": node_name, "workers": workers, "processes": processes, "totals": node}


def _print_metrics(summary: dict[str, Any]) -> None:
    click.echo(f"Node {summary['node'] or '?'} (since it started):")
    workers = summary["workers"]
    if workers:
        width = max(len("worker"), *(len(name) for name in workers))
        heading = f"{'requests':>9}  {'errors':>7}  {'cpu ms':>10}  {'cold':>5}  {'subreq':>7}  {'kv ops':>7}"
        click.echo(f"  {'worker':<{width}}  {heading}")
        for name, row in sorted(workers.items()):
            click.echo(
                f"  {name:<{width}}  {row.get('requests', 0):>9.0f}  {row.get('errors', 0):>7.0f}"
                f"  {row.get('cpu_seconds', 0) * 1000:>10.1f}  {row.get('cold_starts', 0):>5.0f}"
                f"  {row.get('subrequests', 0):>7.0f}  {row.get('kv_operations', 0):>7.0f}"
            )
    else:
        click.echo("  no requests yet")
    for name, row in sorted(summary["processes"].items()):
        memory = row.get("warren_runtime_memory_bytes")
        shown = f"{memory / 1048576:.0f} MB" if memory is not None else "?"
        click.echo(
            f"  runtime {name}: {row.get('warren_isolates_loaded', 0):.0f} isolates, {shown},"
            f" {row.get('warren_isolate_evictions_total', 0):.0f} evicted"
        )
    totals = summary["totals"]
    click.echo(
        f"  crashes {totals.get('warren_runtime_crashes_total', 0):.0f},"
        f" quarantined {totals.get('warren_quarantined_versions', 0):.0f},"
        f" events published {totals.get('warren_events_published_total', 0):.0f},"
        f" dropped {totals.get('warren_events_dropped_total', 0):.0f}"
    )


@click.command()
@click.option("--minutes", type=click.IntRange(1, 120), default=60, show_default=True, help="The window, up to now.")
@click.option(
    "--metrics", "metrics_url", default=None, metavar="URL", help="Read a node's admin port instead (http://HOST:PORT)."
)
@json_option
@_reports_errors
def status(minutes: int, metrics_url: str | None, as_json: bool) -> None:
    """How the account's workers are doing: requests, errors and CPU per worker (or one node's metrics)."""
    if metrics_url is not None:
        summary = read_metrics(metrics_url)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            _print_metrics(summary)
        return
    with session() as current:
        account_id = current.account()
        result = current.client.request("GET", f"/accounts/{account_id}/workers/analytics", params={"minutes": minutes})
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    _print_analytics(result, minutes)


COMMANDS: list[click.Command] = [tail, status]
