"""The client verbs of the ``warren`` command: wrangler's, against the control-plane API.

``login``, ``whoami``, ``deploy``, ``versions list|view|upload|deploy``,
``deployments list``, ``rollback``, ``secret put|list|delete`` and ``delete``
(docs/control-plane.md, "CLI"). Every command takes ``--json`` for machine
output; a failure prints ``✘ <message>`` on stderr and exits with status 1.

Settings: ``WARREN_API_URL``, ``WARREN_API_TOKEN`` and ``WARREN_ACCOUNT_ID``
override ``config.json`` (written by ``warren login``, mode 0600) in
``$WARREN_CONFIG_DIR`` (default ``~/.warren``).

Uploads: the entry module plus every module it imports by relative path, as
``warren.config.collect_modules`` finds them (the same modules ``warren dev``
runs), each named by its path relative to the entry's directory. ``deploy`` adds
the ``[[migrations]]`` the deployed worker has not applied (from its
``migration_tag`` on, as wrangler picks them; ``warren.config.migrations_to_upload``).

Owns: parsing these command lines, the config file, and printing for people.
Talks to the API only through ``warren.cli.client``; reads projects only through
``warren.config``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from warren.cli.client import ApiClient, ApiError, Module, api_root

if TYPE_CHECKING:
    from warren.config import ModuleRules, Project

DEFAULT_API_URL = "http://127.0.0.1:8788"
CONFIG_FILE = "config.json"

# the runtime's module kinds (warren.config.ModuleFile.kind) -> upload content types
CONTENT_TYPES = {
    "script": "text/javascript",  # a service-worker script
    "esm": "application/javascript+module",
    # Cloudflare's CommonJS type (wrangler sends application/javascript, which the store does not take)
    "commonjs": "text/javascript",
    "json": "application/json",
    "text": "text/plain",
    "wasm": "application/wasm",
    "data": "application/octet-stream",
}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

P = ParamSpec("P")
R = TypeVar("R")


class Failure(click.ClickException):
    """A failure reported as ``✘ <message>`` on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"✘ {self.format_message()}", err=True)


def _explain(error: ApiError) -> str:
    text = error.describe()
    if error.status == 401:
        text += " — check the token (run `warren login`, or set WARREN_API_TOKEN)"
    elif error.status == 403:
        text += " — the token does not belong to this account (check WARREN_ACCOUNT_ID)"
    return text


def _reports_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Turn an ``ApiError`` escaping a command into ``✘ <message>`` and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except ApiError as error:
            raise Failure(_explain(error)) from None

    return wrapper


def _warn(message: str) -> None:
    click.echo(f"▲ {message}", err=True)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw API result as JSON.")
name_option = click.option(
    "--name",
    "script",
    default=None,
    metavar="NAME",
    help="The worker's name (default: `name` from the wrangler config in the current directory).",
)


# -- settings -------------------------------------------------------------------------------


def config_dir() -> Path:
    """``$WARREN_CONFIG_DIR``, or ``~/.warren``."""
    override = os.environ.get("WARREN_CONFIG_DIR")
    return Path(override).expanduser() if override else Path.home() / ".warren"


def config_path() -> Path:
    return config_dir() / CONFIG_FILE


def read_config() -> dict[str, str]:
    """The saved settings; empty if there are none."""
    path = config_path()
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read {path}: {exc}; run `warren login` again") from None
    if not isinstance(data, dict):
        raise Failure(f"{path} is malformed; run `warren login` again")
    return {key: value for key, value in data.items() if isinstance(value, str)}


def write_config(settings: dict[str, str]) -> Path:
    """Save settings readable by the owner only (the directory 0700, the file 0600)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    temporary = directory / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(settings, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


@dataclass
class Session:
    """Resolved settings and an open API client."""

    api_url: str
    client: ApiClient
    token_source: str
    account_id: str | None = None
    _account_name: str | None = field(default=None, repr=False)

    def account(self) -> str:
        """The account id: from the settings, else the token's only account (GET /accounts)."""
        if self.account_id is None:
            accounts = self.client.accounts()
            if not accounts:
                raise Failure("the token has no account")
            if len(accounts) > 1:
                names = ", ".join(f"{account.get('name')} ({account.get('id')})" for account in accounts)
                raise Failure(f"the token can use several accounts ({names}); set WARREN_ACCOUNT_ID")
            self.account_id = str(accounts[0]["id"])
            self._account_name = accounts[0].get("name")
        return self.account_id


@contextmanager
def session() -> Iterator[Session]:
    """The API as configured: environment first, then the config file."""
    saved = read_config()
    env_url = os.environ.get("WARREN_API_URL")
    env_token = os.environ.get("WARREN_API_TOKEN")
    api_url = env_url or saved.get("api_url") or DEFAULT_API_URL
    token = env_token or saved.get("token")
    if not token:
        raise Failure("not logged in: run `warren login`, or set WARREN_API_TOKEN")
    account_id = os.environ.get("WARREN_ACCOUNT_ID")
    # the saved account belongs to the saved token on the saved server, and to nothing else
    if not account_id and not env_token and (not env_url or _same_api(env_url, saved.get("api_url", ""))):
        account_id = saved.get("account_id")
    try:
        client = ApiClient(api_url, token)
    except ValueError as exc:
        raise Failure(f"bad API URL: {exc}") from None
    source = "$WARREN_API_TOKEN" if env_token else str(config_path())
    with client:
        yield Session(api_url=api_url, client=client, token_source=source, account_id=account_id or None)


def _same_api(first: str, second: str) -> bool:
    try:
        return api_root(first) == api_root(second)
    except ValueError:
        return False


def _default_script() -> str:
    """``name`` from the wrangler config in the current directory."""
    import json5

    from warren.config import CONFIG_NAMES

    for config_name in CONFIG_NAMES:
        path = Path.cwd() / config_name
        if not path.is_file():
            continue
        try:
            text = path.read_text("utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json5.loads(text)
        except (OSError, ValueError) as exc:
            raise Failure(f"cannot read {path}: {exc}") from None
        name = data.get("name") if isinstance(data, dict) else None
        if isinstance(name, str) and name:
            return name
        raise Failure(f"{path} has no `name`; pass --name")
    raise Failure("no --name given and no wrangler.toml, wrangler.json or wrangler.jsonc here")


def _script_name(option: str | None) -> str:
    return option if option else _default_script()


# -- formatting ------------------------------------------------------------------------------


def _when(timestamp: Any) -> str:
    text = str(timestamp or "")
    return text.replace("T", " ")[:19] if len(text) >= 19 else text


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    return f"{count / 1024:.1f} KiB" if count < 1024 * 1024 else f"{count / 1024 / 1024:.1f} MiB"


def _version_label(version_id: str, numbers: dict[str, Any]) -> str:
    number = numbers.get(version_id)
    return f"{version_id} (#{number})" if number is not None else version_id


def _deployed_share(deployment: dict[str, Any] | None) -> dict[str, int]:
    if not deployment:
        return {}
    return {str(entry["version_id"]): int(entry["percentage"]) for entry in deployment.get("versions", [])}


# -- projects and uploads -------------------------------------------------------------------


def _load_project(target: str) -> Project:
    from warren.config import ConfigError, load_project

    try:
        project = load_project(target)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    for warning in project.warnings:
        _warn(warning)
    return project


def collect_modules(entry: Path, rules: ModuleRules | None = None) -> list[Module]:
    """The entry module and what it imports by relative path (warren.config), as upload parts."""
    from warren.config import ConfigError
    from warren.config import collect_modules as module_files

    try:
        files = module_files(entry, warn=_warn, rules=rules)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    return [Module(name=file.name, content_type=CONTENT_TYPES[file.kind], data=file.data) for file in files]


def _bindings(variables: dict[str, Any]) -> list[dict[str, Any]]:
    bindings: list[dict[str, Any]] = []
    for name, value in variables.items():
        if isinstance(value, str):
            bindings.append({"type": "plain_text", "name": name, "text": value})
        else:
            bindings.append({"type": "json", "name": name, "json": value})
    return bindings


def build_upload(
    project: Project, message: str | None, bundle: bool = True
) -> tuple[dict[str, Any], list[Module]]:
    """The ``metadata`` part and the modules of an upload of ``project``.

    Bundled with esbuild where it is installed (``warren.cli.bundle``), unless
    ``bundle`` is false; otherwise the modules as ``warren dev`` runs them.
    """
    from warren.cli.bundle import bundle as bundle_with
    from warren.cli.bundle import find_esbuild
    from warren.config import ConfigError, uploaded_durable_object
    from warren.runtime.script import DEFAULT_CPU_MS, DEFAULT_SUBREQUEST_LIMIT

    if project.blobs:
        # The control plane has no wasm_module/text_blob/data_blob bindings yet.
        raise Failure(
            "[wasm_modules], [text_blobs] and [data_blobs] work with `warren dev` only for now; "
            "to deploy, use module syntax and import the files (import mod from \"./x.wasm\")"
        )
    esbuild = find_esbuild(project.script_path.parent) if bundle else None
    if esbuild is None:
        modules = collect_modules(project.script_path, project.rules)
    else:
        try:
            files = bundle_with(project.script_path, esbuild)
        except ConfigError as exc:
            raise Failure(str(exc)) from None
        modules = [Module(name=file.name, content_type=CONTENT_TYPES[file.kind], data=file.data) for file in files]
    missing = [spec["name"] for spec in project.kv_namespaces if not spec["namespace_id"]]
    if missing:
        raise Failure(
            f"[[kv_namespaces]] {', '.join(missing)} need an id to deploy: create a namespace with "
            "`warren kv namespace create TITLE` and put its id in the config"
        )
    metadata: dict[str, Any] = {
        "main_module": modules[0].name,
        "bindings": [*_bindings(project.vars), *project.kv_namespaces, *project.service_bindings,
                     *project.queue_bindings,
                     *(uploaded_durable_object(spec, project.name) for spec in project.durable_objects)],
    }
    if project.compatibility_date:
        metadata["compatibility_date"] = project.compatibility_date
    limits: dict[str, Any] = {}
    if project.cpu_ms != DEFAULT_CPU_MS:
        cpu_ms = project.cpu_ms
        limits["cpu_ms"] = int(cpu_ms) if float(cpu_ms).is_integer() else cpu_ms
    if project.subrequests != DEFAULT_SUBREQUEST_LIMIT:
        limits["subrequests"] = project.subrequests
    if limits:
        metadata["limits"] = limits
    if message:
        metadata["message"] = message
    return metadata, modules


def _migrations(current: Session, name: str, project: Project) -> dict[str, Any] | None:
    """The ``[[migrations]]`` the deployed worker has not applied yet, as wrangler picks them: from the
    script's ``migration_tag`` on (none if it is the last one)."""
    from warren.config import migrations_to_upload

    if not project.migrations:
        return None
    try:
        tag = current.client.get_script(current.account(), name).get("migration_tag")
    except ApiError as error:
        if error.status != 404:
            raise
        tag = None
    steps, warning = migrations_to_upload(project.migrations, tag if isinstance(tag, str) else None)
    if warning:
        _warn(warning)
    return steps


def _describe_upload(name: str, modules: list[Module]) -> None:
    total = sum(len(module.data) for module in modules)
    click.echo(f"Uploading {name}: {len(modules)} module{'s' if len(modules) != 1 else ''}, {_size(total)}")
    if len(modules) > 1:
        width = max(len(module.name) for module in modules)
        for module in modules:
            click.echo(f"  {module.name:<{width}}  {module.content_type:<29}  {_size(len(module.data))}")


# -- versions ---------------------------------------------------------------------------------


def _resolve_version(current: Session, script: str, reference: str) -> dict[str, Any]:
    """A version by id, number (``3``) or unique id prefix (``6f1c``)."""
    account = current.account()
    reference = reference.strip().lower()
    if not reference:
        raise Failure("empty version")
    if _UUID.match(reference):
        return current.client.get_version(account, script, reference)
    if reference.isdigit():
        try:
            return current.client.get_version(account, script, reference)
        except ApiError as error:
            if error.status != 404:
                raise
    matches = [
        version
        for version in current.client.list_versions(account, script)
        if str(version.get("id", "")).startswith(reference)
    ]
    if not matches:
        raise Failure(f"{script} has no version {reference}")
    if len(matches) > 1:
        raise Failure(f"{reference} matches {len(matches)} versions of {script}; give more of the id")
    return matches[0]


def _parse_split(specs: tuple[str, ...]) -> list[tuple[str, int | None]]:
    parsed: list[tuple[str, int | None]] = []
    for spec in specs:
        reference, separator, share = spec.partition("@")
        percentage: int | None = None
        if separator:
            text = share.strip().removesuffix("%")
            if not text.isdigit() or not 1 <= int(text) <= 100:
                raise click.BadParameter(f"{spec!r}: the percentage must be a whole number 1-100", param_hint="VERSION")
            percentage = int(text)
        if not reference:
            raise click.BadParameter(f"{spec!r} names no version", param_hint="VERSION")
        parsed.append((reference, percentage))
    if not parsed:
        raise click.BadParameter("give one or two versions", param_hint="VERSION")
    if len(parsed) > 2:
        raise click.BadParameter("a deployment has at most two versions", param_hint="VERSION")
    missing = [index for index, (_, percentage) in enumerate(parsed) if percentage is None]
    if len(missing) == 2:
        raise click.BadParameter("give the split, e.g. abc@50 def@50", param_hint="VERSION")
    if missing:
        known = sum(percentage or 0 for _, percentage in parsed)
        reference, _ = parsed[missing[0]]
        if known >= 100:
            raise click.BadParameter(f"{reference!r} would get {100 - known}%", param_hint="VERSION")
        parsed[missing[0]] = (reference, 100 - known)
    total = sum(percentage or 0 for _, percentage in parsed)
    if total != 100:
        raise click.BadParameter(f"the percentages add up to {total}, not 100", param_hint="VERSION")
    return parsed


def _print_deployment(deployment: dict[str, Any], numbers: dict[str, Any], indent: str = "  ") -> None:
    for entry in deployment.get("versions", []):
        click.echo(f"{indent}{entry.get('percentage'):>3}%  {_version_label(str(entry.get('version_id')), numbers)}")


# -- commands ---------------------------------------------------------------------------------


@click.command()
@click.option("--api-url", default=None, metavar="URL", help=f"The control-plane API (default: {DEFAULT_API_URL}).")
@click.option("--token", default=None, help="An API token (default: $WARREN_API_TOKEN, else asked for).")
@json_option
@_reports_errors
def login(api_url: str | None, token: str | None, as_json: bool) -> None:
    """Check an API token and save it for the other commands."""
    saved = read_config()
    api_url = api_url or os.environ.get("WARREN_API_URL") or saved.get("api_url") or DEFAULT_API_URL
    token = token or os.environ.get("WARREN_API_TOKEN")
    if not token:
        token = click.prompt("API token", hide_input=True, err=True)
    token = (token or "").strip()
    if not token:
        raise Failure("no token given")
    try:
        client = ApiClient(api_url, token)
    except ValueError as exc:
        raise Failure(f"bad API URL: {exc}") from None
    with client:
        verified = client.verify_token()
        if verified.get("status") != "active":
            raise Failure(f"the token is {verified.get('status') or 'not active'}")
        accounts = client.accounts()
    account_id = verified.get("account_id") or (accounts[0]["id"] if len(accounts) == 1 else None)
    if not account_id:
        raise Failure("cannot tell which account the token belongs to")
    account_name = next((account.get("name") for account in accounts if account.get("id") == account_id), None)
    path = write_config({"api_url": api_url.rstrip("/"), "token": token, "account_id": str(account_id)})
    if as_json:
        _print_json(
            {
                "api_url": api_url.rstrip("/"),
                "account_id": account_id,
                "account_name": account_name,
                "token_id": verified.get("id"),
                "config_path": str(path),
            }
        )
        return
    click.echo(f"✔ Logged in to {api_url} as account {account_name} ({account_id})")
    click.echo(f"  token {verified.get('id')} saved in {path}")


@click.command()
@json_option
@_reports_errors
def whoami(as_json: bool) -> None:
    """Show the account and token in use."""
    with session() as current:
        verified = current.client.verify_token()
        accounts = current.client.accounts()
    account_id = current.account_id or verified.get("account_id")
    account = next((item for item in accounts if item.get("id") == account_id), accounts[0] if accounts else {})
    if as_json:
        _print_json({"api_url": current.api_url, "token": verified, "account": account})
        return
    click.echo(f"Account {account.get('name')} ({account.get('id')}) at {current.api_url}")
    click.echo(f"  token {verified.get('id')}, {verified.get('status')}, from {current.token_source}")


@click.command()
@click.argument("target", default=".", metavar="[DIR_OR_SCRIPT]", type=click.Path())
@name_option
@click.option("--message", default=None, help="A note kept with the version and the deployment.")
@click.option("--no-bundle", is_flag=True, help="Upload the modules as they are, even where esbuild is installed.")
@json_option
@_reports_errors
def deploy(target: str, script: str | None, message: str | None, no_bundle: bool, as_json: bool) -> None:
    """Upload a new version of a worker and deploy it at 100%."""
    project = _load_project(target)
    name = script or project.name
    metadata, modules = build_upload(project, message, bundle=not no_bundle)
    with session() as current:
        if not as_json:
            _describe_upload(name, modules)
        steps = _migrations(current, name, project)
        if steps is not None:
            metadata["migrations"] = steps
            if not as_json:
                old = f"from {steps['old_tag']} " if steps.get("old_tag") else ""
                click.echo(f"  migrations {old}to {steps['new_tag']}: {len(steps['steps'])} step(s)")
        result = current.client.deploy_script(current.account(), name, metadata, modules)
        content_hash = result.get("etag")
        if not content_hash and result.get("version_id"):
            version = current.client.get_version(current.account(), name, str(result["version_id"]))
            content_hash = version.get("content_hash")
        from warren.cli.queues import sync_triggers  # crons and queue consumers (issue #10)

        triggers = sync_triggers(current.client, current.account(), name, project)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Deployed {name}")
    click.echo(f"  version       {result.get('version_id')}")
    click.echo(f"  deployment    {result.get('deployment_id')}")
    click.echo(f"  content hash  {content_hash}")
    for line in triggers:
        click.echo(line)


@click.command()
@name_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@_reports_errors
def delete(script: str | None, yes: bool, as_json: bool) -> None:
    """Delete a worker: its deployments, routes and secrets stop serving."""
    name = _script_name(script)
    _confirm(f"Delete the worker {name}, its routes and its secrets?", yes)
    with session() as current:
        result = current.client.delete_script(current.account(), name)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Deleted {name}")


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; scripts (stdin not a terminal) are not asked."""
    if yes or not click.get_text_stream("stdin").isatty():
        return
    if not click.confirm(question, default=False, err=True):
        raise Failure("cancelled")


@click.command()
@click.argument("version", required=False)
@name_option
@click.option("--message", default=None, help="A note kept with the deployment.")
@json_option
@_reports_errors
def rollback(version: str | None, script: str | None, message: str | None, as_json: bool) -> None:
    """Deploy an earlier version at 100% (default: the one deployed before the current deployment)."""
    name = _script_name(script)
    with session() as current:
        account = current.account()
        if version is None:
            deployments = current.client.list_deployments(account, name)
            if len(deployments) < 2:
                raise Failure(f"{name} has no deployment before the current one to roll back to")
            previous = deployments[1]
            shares = previous.get("versions") or []
            if not shares:
                raise Failure(f"deployment {previous.get('id')} has no versions")
            chosen = max(shares, key=lambda entry: int(entry.get("percentage", 0)))
            if len(shares) > 1 and not as_json:
                _warn("the previous deployment split traffic; rolling back to its main version at 100%")
            target = current.client.get_version(account, name, str(chosen["version_id"]))
        else:
            target = _resolve_version(current, name, version)
        label = f"{target['id']} (#{target.get('number')})"
        deployment = current.client.create_deployment(
            account, name, [(str(target["id"]), 100)], message or f"rollback to version {target.get('number')}"
        )
    if as_json:
        _print_json(deployment)
        return
    click.echo(f"✔ Rolled {name} back to version {label}")
    click.echo(f"  deployment  {deployment.get('id')}")


@click.group()
def versions() -> None:
    """Versions of a worker: list, view, upload without deploying, deploy (gradually)."""


@versions.command("list")
@name_option
@json_option
@_reports_errors
def versions_list(script: str | None, as_json: bool) -> None:
    """List a worker's versions, newest first."""
    name = _script_name(script)
    with session() as current:
        account = current.account()
        found = current.client.list_versions(account, name)
        if as_json:
            _print_json(found)
            return
        try:
            deployments = current.client.list_deployments(account, name)
        except ApiError as error:
            if error.status != 404:
                raise
            deployments = []  # a deleted script: its versions stay, as an archive
    shares = _deployed_share(deployments[0] if deployments else None)
    if not found:
        click.echo(f"{name} has no versions")
        return
    click.echo(f"{'#':>4}  {'version id':<36}  {'created (UTC)':<19}  {'deployed':>8}  message")
    for version in found:
        share = shares.get(str(version.get("id")))
        deployed = f"{share}%" if share is not None else ""
        click.echo(
            f"{version.get('number', ''):>4}  {version.get('id', ''):<36}  {_when(version.get('created_on')):<19}  "
            f"{deployed:>8}  {version.get('message') or ''}"
        )


@versions.command("view")
@click.argument("version")
@name_option
@json_option
@_reports_errors
def versions_view(version: str, script: str | None, as_json: bool) -> None:
    """Show one version (by id, number or id prefix)."""
    name = _script_name(script)
    with session() as current:
        found = _resolve_version(current, name, version)
    if as_json:
        _print_json(found)
        return
    click.echo(f"Version {found.get('id')} (#{found.get('number')}) of {found.get('script', name)}")
    rows = [
        ("created", _when(found.get("created_on"))),
        ("author", found.get("author")),
        ("message", found.get("message") or ""),
        ("content hash", found.get("content_hash")),
        ("compat. date", found.get("compatibility_date") or ""),
        ("main module", found.get("main_module")),
    ]
    for label, value in rows:
        click.echo(f"  {label:<13} {value}")
    click.echo("  modules")
    modules = found.get("modules", [])
    width = max((len(str(module.get("name"))) for module in modules), default=0)
    for module in modules:
        click.echo(
            f"    {module.get('name')!s:<{width}}  {module.get('content_type')!s:<29}"
            f"  {_size(int(module.get('size', 0))):>10}  sha256 {str(module.get('sha256', ''))[:12]}"
        )
    bindings = found.get("bindings") or []
    if bindings:
        click.echo("  bindings")
        width = max(len(str(binding.get("name"))) for binding in bindings)
        for binding in bindings:
            kind = binding.get("type")
            if kind == "plain_text":
                value = json.dumps(binding.get("text"), ensure_ascii=False)
            elif kind == "json":
                value = json.dumps(binding.get("json"), ensure_ascii=False)
            else:
                value = json.dumps({k: v for k, v in binding.items() if k not in ("type", "name")})
            click.echo(f"    {binding.get('name')!s:<{width}}  {kind!s:<12}  {value}")
    limits = found.get("limits") or {}
    if limits:
        click.echo("  limits        " + ", ".join(f"{key}={value}" for key, value in limits.items()))


versions.add_command(versions_view, "show")  # the archive's word for it


@versions.command("upload")
@click.argument("target", default=".", metavar="[DIR_OR_SCRIPT]", type=click.Path())
@name_option
@click.option("--message", default=None, help="A note kept with the version.")
@click.option("--no-bundle", is_flag=True, help="Upload the modules as they are, even where esbuild is installed.")
@json_option
@_reports_errors
def versions_upload(target: str, script: str | None, message: str | None, no_bundle: bool, as_json: bool) -> None:
    """Upload a new version without deploying it."""
    project = _load_project(target)
    name = script or project.name
    metadata, modules = build_upload(project, message, bundle=not no_bundle)
    with session() as current:
        if not as_json:
            _describe_upload(name, modules)
        result = current.client.upload_version(current.account(), name, metadata, modules)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Uploaded version {result.get('id')} (#{result.get('number')}) of {name}; not deployed")
    click.echo(f"  content hash  {result.get('content_hash')}")
    click.echo(f"  deploy it with: warren versions deploy {result.get('id')} --name {name}")


@versions.command("deploy")
@click.argument("specs", nargs=-1, required=True, metavar="VERSION[@PERCENT] [VERSION@PERCENT]")
@name_option
@click.option("--message", default=None, help="A note kept with the deployment.")
@json_option
@_reports_errors
def versions_deploy(specs: tuple[str, ...], script: str | None, message: str | None, as_json: bool) -> None:
    """Deploy one version, or split traffic between two (e.g. abc@90 def@10)."""
    split = _parse_split(specs)
    name = _script_name(script)
    with session() as current:
        chosen = [(_resolve_version(current, name, reference), percentage) for reference, percentage in split]
        ids = [str(version["id"]) for version, _ in chosen]
        if len(set(ids)) != len(ids):
            raise Failure("the same version is named twice")
        deployment = current.client.create_deployment(
            current.account(), name, [(str(version["id"]), percentage or 0) for version, percentage in chosen], message
        )
    if as_json:
        _print_json(deployment)
        return
    numbers = {str(version["id"]): version.get("number") for version, _ in chosen}
    click.echo(f"✔ Deployed {name}: deployment {deployment.get('id')}")
    _print_deployment(deployment, numbers)


@click.group()
def deployments() -> None:
    """Deployments of a worker: which versions serve, with what share."""


@deployments.command("list")
@name_option
@json_option
@_reports_errors
def deployments_list(script: str | None, as_json: bool) -> None:
    """List a worker's deployments, newest (the current one) first."""
    name = _script_name(script)
    with session() as current:
        account = current.account()
        found = current.client.list_deployments(account, name)
        if as_json:
            _print_json(found)
            return
        listed = current.client.list_versions(account, name)
    numbers = {str(version.get("id")): version.get("number") for version in listed}
    if not found:
        click.echo(f"{name} has no deployments")
        return
    for index, deployment in enumerate(found):
        marker = "  (current)" if index == 0 else ""
        click.echo(f"deployment {deployment.get('id')}  {_when(deployment.get('created_on'))}{marker}")
        if deployment.get("message"):
            click.echo(f"  message: {deployment['message']}")
        _print_deployment(deployment, numbers)


@click.group()
def secret() -> None:
    """Secrets of a worker: values it sees as env.NAME but nobody can read back."""


@secret.command("put")
@click.argument("secret_name", metavar="NAME")
@name_option
@json_option
@_reports_errors
def secret_put(secret_name: str, script: str | None, as_json: bool) -> None:
    """Set a secret; the value is read from stdin, or asked for (hidden) on a terminal."""
    name = _script_name(script)
    stdin = click.get_text_stream("stdin")
    if stdin.isatty():
        value = click.prompt(f"Value of {secret_name}", hide_input=True, err=True)
    else:
        value = stdin.read()
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise Failure("the secret's value is empty")
    with session() as current:
        result = current.client.put_secret(current.account(), name, secret_name, value)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Secret {result.get('name', secret_name)} set on {name}")


@secret.command("list")
@name_option
@json_option
@_reports_errors
def secret_list(script: str | None, as_json: bool) -> None:
    """List a worker's secret names (never their values)."""
    name = _script_name(script)
    with session() as current:
        found = current.client.list_secrets(current.account(), name)
    if as_json:
        _print_json(found)
        return
    if not found:
        click.echo(f"{name} has no secrets")
        return
    for item in found:
        click.echo(f"{item.get('name')}  {item.get('type', 'secret_text')}")


@secret.command("delete")
@click.argument("secret_name", metavar="NAME")
@name_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@_reports_errors
def secret_delete(secret_name: str, script: str | None, yes: bool, as_json: bool) -> None:
    """Delete a secret."""
    name = _script_name(script)
    _confirm(f"Delete the secret {secret_name} of {name}?", yes)
    with session() as current:
        result = current.client.delete_secret(current.account(), name, secret_name)
    if as_json:
        _print_json(result)
        return
    click.echo(f"✔ Secret {secret_name} deleted from {name}")


COMMANDS: list[click.Command] = [login, whoami, deploy, versions, deployments, rollback, secret, delete]
