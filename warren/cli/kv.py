"""``warren kv``: Workers KV namespaces and their keys, through the control-plane API, as wrangler's.

``kv namespace create|list|delete``, ``kv key put|get|delete|list`` and ``kv
bulk put|delete FILE.json`` (wrangler's JSON format: ``[{"key", "value",
"expiration"?, "expiration_ttl"?, "metadata"?, "base64"?}]`` to put, key names
or ``{"key"}`` objects to delete). A namespace is named by ``--namespace-id
ID`` or ``--binding NAME`` (its id from ``[[kv_namespaces]]`` in the wrangler
config of the current directory).

Owns: parsing these command lines and printing for people. Talks to the API
only through ``warren.cli.client`` (a value is read raw, not as an envelope);
reads projects only through ``warren.config``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx

from warren.cli.client import ApiClient, ApiError
from warren.cli.commands import Failure, _confirm, _print_json, _reports_errors, json_option, session

BULK_BATCH = 10_000  # pairs per request: the API's limit
LIST_PAGE = 1000


def _namespaces_path(account_id: str, *rest: str) -> str:
    path = f"/accounts/{quote(account_id, safe='')}/storage/kv/namespaces"
    return "/".join([path, *(quote(part, safe="") for part in rest)])


def _resolve_namespace(namespace_id: str | None, binding: str | None) -> str:
    if bool(namespace_id) == bool(binding):
        raise Failure("name the namespace with --namespace-id ID or --binding NAME (from the wrangler config)")
    if namespace_id:
        return namespace_id
    from warren.config import ConfigError, project_kv_namespaces

    try:
        specs = project_kv_namespaces(Path.cwd())
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    for spec in specs:
        if spec["name"] == binding:
            if not spec["namespace_id"]:
                raise Failure(f"the KV binding {binding} has no id in the wrangler config")
            return str(spec["namespace_id"])
    names = ", ".join(spec["name"] for spec in specs) or "none"
    raise Failure(f"no [[kv_namespaces]] binding named {binding} in the wrangler config (there are: {names})")


def namespace_options(function: Any) -> Any:
    function = click.option("--binding", default=None, metavar="NAME", help="The binding's name in wrangler.toml.")(
        function
    )
    return click.option("--namespace-id", default=None, metavar="ID", help="The namespace's id.")(function)


def _raw(client: ApiClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request whose success is not an envelope (a value's bytes); errors still are."""
    try:
        # The client's session (base URL, token, timeouts); its request() only takes envelopes.
        response = client._http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(0, [{"code": 0, "message": f"cannot reach {client.base_url}: {exc}"}]) from None
    if response.is_success:
        return response
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    raise ApiError(response.status_code, errors or [{"code": 0, "message": response.reason_phrase}])


@click.group()
def kv() -> None:
    """Workers KV: namespaces, keys and values."""


# -- namespaces ----------------------------------------------------------------------------------


@kv.group()
def namespace() -> None:
    """Create, list and delete namespaces."""


@namespace.command("create")
@click.argument("title")
@json_option
@_reports_errors
def namespace_create(title: str, as_json: bool) -> None:
    """Create a namespace titled TITLE."""
    with session() as current:
        result = current.client.request("POST", _namespaces_path(current.account()), json={"title": title})
    if as_json:
        _print_json(result)
        return
    binding = "".join(char if char.isalnum() else "_" for char in title).upper()
    if not binding or binding[0].isdigit():
        binding = "KV_" + binding
    click.echo(f"✔ Created namespace {title} (id {result['id']})")
    click.echo("Add it to wrangler.toml:")
    click.echo(f'[[kv_namespaces]]\nbinding = "{binding}"\nid = "{result["id"]}"')


@namespace.command("list")
@json_option
@_reports_errors
def namespace_list(as_json: bool) -> None:
    """List the account's namespaces."""
    with session() as current:
        result = current.client.request("GET", _namespaces_path(current.account()))
    if as_json:
        _print_json(result)
        return
    if not result:
        click.echo("No namespaces.")
        return
    for found in result:
        click.echo(f"{found['id']}  {found['title']}")


@namespace.command("delete")
@namespace_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@_reports_errors
def namespace_delete(namespace_id: str | None, binding: str | None, yes: bool, as_json: bool) -> None:
    """Delete a namespace and every key in it."""
    target = _resolve_namespace(namespace_id, binding)
    _confirm(f"Delete the namespace {target} and all its keys?", yes)
    with session() as current:
        result = current.client.request("DELETE", _namespaces_path(current.account(), target))
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Deleted namespace {target}")


# -- keys ----------------------------------------------------------------------------------------------


@kv.group()
def key() -> None:
    """Put, get, delete and list keys."""


@key.command("put")
@click.argument("name", metavar="KEY")
@click.argument("value", required=False)
@namespace_options
@click.option("--path", "path", type=click.Path(exists=True, dir_okay=False), help="Read the value from a file.")
@click.option("--ttl", type=int, default=None, help="Expire the key this many seconds from now (60 or more).")
@click.option("--expiration", type=int, default=None, help="Expire the key at this time (seconds since the epoch).")
@click.option("--metadata", default=None, metavar="JSON", help="Metadata to store with the key (JSON).")
@json_option
@_reports_errors
def key_put(
    name: str,
    value: str | None,
    namespace_id: str | None,
    binding: str | None,
    path: str | None,
    ttl: int | None,
    expiration: int | None,
    metadata: str | None,
    as_json: bool,
) -> None:
    """Write VALUE (or the file at --path) to KEY."""
    if (value is None) == (path is None):
        raise Failure("give the value as an argument or with --path FILE (one of the two)")
    data = Path(path).read_bytes() if path is not None else (value or "").encode("utf-8")
    if metadata is not None:
        try:
            json.loads(metadata)
        except ValueError:
            raise Failure("--metadata must be JSON") from None
    target = _resolve_namespace(namespace_id, binding)
    params: dict[str, int] = {}
    if ttl is not None:
        params["expiration_ttl"] = ttl
    if expiration is not None:
        params["expiration"] = expiration
    with session() as current:
        url = _namespaces_path(current.account(), target, "values", name)
        if metadata is None:
            result = current.client.request("PUT", url, params=params, content=data)
        else:
            files = {"value": ("value", data, "application/octet-stream"), "metadata": (None, metadata)}
            result = current.client.request("PUT", url, params=params, files=files)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Wrote {len(data)} bytes to {name}")


@key.command("get")
@click.argument("name", metavar="KEY")
@namespace_options
@click.option("--text", is_flag=True, help="Decode the value as UTF-8 and end it with a newline.")
@_reports_errors
def key_get(name: str, namespace_id: str | None, binding: str | None, text: bool) -> None:
    """Print KEY's value (its raw bytes, unless --text)."""
    target = _resolve_namespace(namespace_id, binding)
    with session() as current:
        try:
            response = _raw(current.client, "GET", _namespaces_path(current.account(), target, "values", name))
        except ApiError as error:
            if error.status == 404 and "key not found" in error.describe():
                raise Failure(f"Value not found: {name}") from None
            raise
    if text:
        click.echo(response.content.decode("utf-8", "replace"))
    else:
        sys.stdout.buffer.write(response.content)
        sys.stdout.buffer.flush()


@key.command("delete")
@click.argument("name", metavar="KEY")
@namespace_options
@json_option
@_reports_errors
def key_delete(name: str, namespace_id: str | None, binding: str | None, as_json: bool) -> None:
    """Delete KEY."""
    target = _resolve_namespace(namespace_id, binding)
    with session() as current:
        result = current.client.request("DELETE", _namespaces_path(current.account(), target, "values", name))
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Deleted {name}")


@key.command("list")
@namespace_options
@click.option("--prefix", default=None, help="Only keys starting with this.")
@_reports_errors
def key_list(namespace_id: str | None, binding: str | None, prefix: str | None) -> None:
    """Print the keys as JSON: [{name, expiration?, metadata?}], in UTF-8 byte order (all pages)."""
    target = _resolve_namespace(namespace_id, binding)
    keys: list[Any] = []
    with session() as current:
        path = _namespaces_path(current.account(), target, "keys")
        cursor = ""
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE}
            if prefix:
                params["prefix"] = prefix
            if cursor:
                params["cursor"] = cursor
            # The envelope's result_info carries the cursor: read the whole answer.
            page = _raw(current.client, "GET", path, params=params).json()
            keys.extend(page.get("result") or [])
            cursor = (page.get("result_info") or {}).get("cursor") or ""
            if not cursor:
                break
    _print_json(keys)


# -- bulk ----------------------------------------------------------------------------------------------


@kv.group()
def bulk() -> None:
    """Write or delete many keys from a JSON file."""


def _read_array(path: str) -> list[Any]:
    try:
        items = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read {path}: {exc}") from None
    if not isinstance(items, list):
        raise Failure(f"{path} must hold a JSON array")
    return items


@bulk.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@namespace_options
@json_option
@_reports_errors
def bulk_put(file: str, namespace_id: str | None, binding: str | None, as_json: bool) -> None:
    """Write the pairs of FILE: [{"key", "value", "expiration"?, "expiration_ttl"?, "metadata"?, "base64"?}]."""
    items = _read_array(file)
    for index, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("value"), str):
            raise Failure(f"{file}: pair #{index} must be an object with a string 'key' and a string 'value'")
    target = _resolve_namespace(namespace_id, binding)
    written = 0
    with session() as current:
        path = _namespaces_path(current.account(), target, "bulk")
        for start in range(0, len(items), BULK_BATCH):
            result = current.client.request("PUT", path, json=items[start : start + BULK_BATCH])
            written += int(result.get("successful_key_count", 0))
    if as_json:
        _print_json({"successful_key_count": written, "unsuccessful_keys": []})
        return
    click.echo(f"✔ Wrote {written} key{'s' if written != 1 else ''}")


@bulk.command("delete")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@namespace_options
@click.option("--yes", "-y", "--force", "-f", is_flag=True, help="Do not ask for confirmation.")
@json_option
@_reports_errors
def bulk_delete(file: str, namespace_id: str | None, binding: str | None, yes: bool, as_json: bool) -> None:
    """Delete the keys of FILE: ["key", ...] or [{"key"}, ...]."""
    names = []
    for index, item in enumerate(_read_array(file), 1):
        name = item.get("key") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise Failure(f"{file}: entry #{index} must be a key name or an object with a string 'key'")
        names.append(name)
    target = _resolve_namespace(namespace_id, binding)
    _confirm(f"Delete {len(names)} key{'s' if len(names) != 1 else ''} from {target}?", yes)
    deleted = 0
    with session() as current:
        path = _namespaces_path(current.account(), target, "bulk", "delete")
        for start in range(0, len(names), BULK_BATCH):
            result = current.client.request("POST", path, json=names[start : start + BULK_BATCH])
            deleted += int(result.get("successful_key_count", 0))
    if as_json:
        _print_json({"successful_key_count": deleted, "unsuccessful_keys": []})
        return
    click.echo(f"✔ Deleted {deleted} key{'s' if deleted != 1 else ''}")


COMMANDS: list[click.Command] = [kv]
