"""The client verbs of ``warren`` (login, deploy, versions, deployments, rollback, secret,
delete), driven with click's CliRunner against the real control-plane API server on
127.0.0.1 with a real SQLite store; nothing of warren is mocked.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner, Result

from warren.cli import main
from warren.cli.commands import collect_modules
from warren.control import create_account_with_token, create_app
from warren.store import SQLiteStore

HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class ControlPlane:
    """The real API app over a fresh SQLite store, served by uvicorn in a thread of its own."""

    def __init__(self, path: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.store = SQLiteStore(path)
        self._server: uvicorn.Server | None = None
        self.url = self.run(self._start())

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _start(self) -> str:
        await self.store.open()
        config = uvicorn.Config(
            create_app(self.store, manage_store=False), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def account(self, name: str) -> tuple[str, str]:
        """A new account and a token for it: (account id, secret)."""
        account, secret = self.run(create_account_with_token(self.store, name))
        return account.id, secret

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._serving
        await self.store.close()

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "warren.db")
    yield plane
    plane.stop()


class Cli:
    """``warren`` as a user runs it: its own config dir, in a project directory."""

    def __init__(self, control: ControlPlane, home: Path, token: str) -> None:
        self.control = control
        self.config_dir = home / "config"
        self.env: dict[str, str | None] = {
            "WARREN_CONFIG_DIR": str(self.config_dir),
            "WARREN_API_URL": control.url,
            "WARREN_API_TOKEN": token,
            "WARREN_ACCOUNT_ID": None,
        }
        self.token = token

    def __call__(self, *args: str, input: str | None = None, ok: bool = True, **env: str | None) -> Result:
        runner = CliRunner()
        result = runner.invoke(main, list(args), input=input, env={**self.env, **env}, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, f"warren {' '.join(args)} failed:\n{result.output}"
        return result

    def json(self, *args: str, **env: str | None) -> Any:
        result = self(*args, "--json", **env)
        return json.loads(result.stdout)


@pytest.fixture
def cli(control: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    _account_id, secret = control.account("acme")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return Cli(control, tmp_path, secret)


def write_project(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


PROJECT = {
    "wrangler.toml": """
        name = "greeter"
        main = "src/index.js"
        compatibility_date = "2024-09-23"

        [vars]
        GREETING = "hello"
        SETTINGS = { loud = true, times = 2 }

        [limits]
        cpu_ms = 100
        """,
    "src/index.js": """
        import { greet } from "./lib/greet.js";
        export default { fetch(request, env) { return new Response(greet(env.GREETING)); } };
        """,
    "src/lib/greet.js": """
        export function greet(word) { return word + " from a module"; }
        """,
}


# -- login and identity -------------------------------------------------------------------------


def test_login_saves_the_token_readable_by_the_owner_only(cli: Cli) -> None:
    result = cli(
        "login", "--api-url", cli.control.url, "--token", cli.token, WARREN_API_TOKEN=None, WARREN_API_URL=None
    )
    assert "acme" in result.stdout
    path = cli.config_dir / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["api_url"] == cli.control.url
    assert saved["token"] == cli.token
    assert re.fullmatch(r"[0-9a-f]{32}", saved["account_id"])
    assert cli.token not in result.output

    # the other commands now work from the config file alone
    whoami = cli("whoami", WARREN_API_TOKEN=None, WARREN_API_URL=None)
    assert "acme" in whoami.stdout and saved["account_id"] in whoami.stdout
    assert cli.token not in whoami.output
    identity = cli.json("whoami", WARREN_API_TOKEN=None, WARREN_API_URL=None)
    assert identity["account"] == {"id": saved["account_id"], "name": "acme"}
    assert identity["token"]["status"] == "active"


def test_login_asks_for_the_token_when_not_given(cli: Cli) -> None:
    result = cli("login", "--api-url", cli.control.url, input=cli.token + "\n", WARREN_API_TOKEN=None)
    assert "acme" in result.stdout
    assert cli.token not in result.output  # the prompt does not echo it
    saved = json.loads((cli.config_dir / "config.json").read_text())
    assert saved["token"] == cli.token

    again = cli.json("login", "--token", cli.token)
    assert again["account_id"] == saved["account_id"] and again["account_name"] == "acme"
    assert cli.token not in json.dumps(again)


def test_a_bad_token_is_a_clear_error(cli: Cli) -> None:
    result = cli("whoami", ok=False, WARREN_API_TOKEN="wrn_" + "x" * 40)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("✘ ")
    assert "401" in result.stderr and "warren login" in result.stderr

    login = cli("login", "--token", "wrn_bogus", ok=False)
    assert login.exit_code == 1 and login.stderr.startswith("✘ ")
    assert not (cli.config_dir / "config.json").exists()


def test_not_logged_in_and_unreachable_server_are_clear_errors(cli: Cli) -> None:
    result = cli("whoami", ok=False, WARREN_API_TOKEN=None)
    assert result.exit_code == 1
    assert result.stderr == "✘ not logged in: run `warren login`, or set WARREN_API_TOKEN\n"

    unreachable = cli("whoami", ok=False, WARREN_API_URL="http://127.0.0.1:9")
    assert unreachable.exit_code == 1
    assert unreachable.stderr.startswith("✘ cannot reach http://127.0.0.1:9")


def test_another_accounts_id_is_refused(cli: Cli) -> None:
    other_id, _ = cli.control.account("other")
    write_project(Path.cwd(), PROJECT)
    result = cli("versions", "list", ok=False, WARREN_ACCOUNT_ID=other_id)
    assert result.exit_code == 1
    assert result.stderr.startswith("✘ ") and "403" in result.stderr


# -- deploy, versions, deployments, rollback --------------------------------------------------


def test_deploy_uploads_the_modules_vars_and_limits(cli: Cli) -> None:
    project = Path.cwd()
    write_project(project, PROJECT)
    result = cli("deploy", "--message", "first")
    version_id = re.search(rf"version\s+({UUID})", result.stdout)
    deployment_id = re.search(rf"deployment\s+({UUID})", result.stdout)
    content_hash = HEX64.search(result.stdout)
    assert version_id and deployment_id and content_hash, result.stdout

    version = cli.json("versions", "view", version_id.group(1))
    assert version["id"] == version_id.group(1)
    assert version["number"] == 1
    assert version["script"] == "greeter"
    assert version["main_module"] == "index.js"
    assert sorted(module["name"] for module in version["modules"]) == ["index.js", "lib/greet.js"]
    assert version["compatibility_date"] == "2024-09-23"
    assert {"type": "plain_text", "name": "GREETING", "text": "hello"} in version["bindings"]
    assert {"type": "json", "name": "SETTINGS", "json": {"loud": True, "times": 2}} in version["bindings"]
    assert version["limits"] == {"cpu_ms": 100}
    assert version["message"] == "first"
    assert version["content_hash"] == content_hash.group(0)

    # the bytes stored are the files' bytes
    account_id = cli.json("whoami")["account"]["id"]
    for name, path in (("index.js", "src/index.js"), ("lib/greet.js", "src/lib/greet.js")):
        response = httpx.get(
            f"{cli.control.url}/client/v4/accounts/{account_id}/workers/scripts/greeter/versions/"
            f"{version['id']}/modules/{name}",
            headers={"Authorization": f"Bearer {cli.token}"},
        )
        assert response.status_code == 200
        assert response.content == (project / path).read_bytes()

    # by number, and by id prefix, in text
    view = cli("versions", "view", "1")
    assert version["id"] in view.stdout and "lib/greet.js" in view.stdout and "GREETING" in view.stdout
    assert version["id"] in cli("versions", "view", version["id"][:8]).stdout

    deployed = cli.json("deploy")  # --json: the raw result
    assert deployed["id"] == "greeter"
    assert re.fullmatch(UUID, deployed["version_id"]) and re.fullmatch(UUID, deployed["deployment_id"])


def test_deploy_a_script_file_with_another_name(cli: Cli) -> None:
    write_project(Path.cwd(), {"worker.js": "export default { fetch() { return new Response('x'); } };"})
    result = cli("deploy", "worker.js", "--name", "solo")
    assert "Deployed solo" in result.stdout
    assert [version["main_module"] for version in cli.json("versions", "list", "--name", "solo")] == ["worker.js"]


def test_a_bad_project_is_refused_before_any_upload(cli: Cli) -> None:
    result = cli("deploy", "nowhere", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("✘ nowhere: no such file")
    write_project(Path.cwd(), {"wrangler.toml": 'name = "Bad Name!"\nmain = "w.js"\n', "w.js": "export default {};"})
    refused = cli("deploy", ok=False)
    assert refused.exit_code == 1 and refused.stderr.startswith("✘ ")  # the API refuses the script name


def test_versions_upload_then_split_then_rollback(cli: Cli) -> None:
    project = Path.cwd()
    write_project(project, PROJECT)
    first = cli.json("deploy", "--message", "one")["version_id"]

    (project / "src/lib/greet.js").write_text('export function greet(word) { return word + " v2"; }\n')
    uploaded = cli("versions", "upload", "--message", "two")
    second = re.search(rf"version ({UUID}) \(#2\)", uploaded.stdout)
    assert second and "not deployed" in uploaded.stdout, uploaded.stdout
    second_id = second.group(1)
    assert len(cli.json("deployments", "list")) == 1  # uploading does not deploy

    listed = cli.json("versions", "list")
    assert [version["id"] for version in listed] == [second_id, first]
    assert [version["message"] for version in listed] == ["two", "one"]
    text = cli("versions", "list").stdout
    first_line = next(line for line in text.splitlines() if first in line)
    assert "100%" in first_line

    split = cli("versions", "deploy", f"{first}@50", f"{second_id[:8]}@50", "--message", "half")
    assert "50%" in split.stdout
    deployments = cli.json("deployments", "list")
    assert len(deployments) == 2
    assert sorted((entry["version_id"], entry["percentage"]) for entry in deployments[0]["versions"]) == sorted(
        [(first, 50), (second_id, 50)]
    )
    assert deployments[0]["message"] == "half"
    listing = cli("deployments", "list").stdout
    assert "(current)" in listing and "#2" in listing and "half" in listing

    # back to the version of the deployment before the current one, at 100%
    rolled = cli("rollback")
    assert first in rolled.stdout
    deployments = cli.json("deployments", "list")
    assert len(deployments) == 3
    assert deployments[0]["versions"] == [{"version_id": first, "percentage": 100}]

    # an explicit version, by number; a single version defaults to 100%
    cli("rollback", "2", "--message", "again")
    current = cli.json("deployments", "list")[0]
    assert current["versions"] == [{"version_id": second_id, "percentage": 100}]
    assert current["message"] == "again"
    cli("versions", "deploy", first)
    assert cli.json("deployments", "list")[0]["versions"] == [{"version_id": first, "percentage": 100}]


def test_versions_deploy_checks_the_split(cli: Cli) -> None:
    write_project(Path.cwd(), PROJECT)
    version = cli.json("deploy")["version_id"]
    bad_sum = cli("versions", "deploy", f"{version}@30", f"{version}@30", ok=False)
    assert bad_sum.exit_code == 2 and "add up to 60" in bad_sum.output
    unknown = cli("versions", "deploy", "00000000-0000-4000-8000-000000000000", ok=False)
    assert unknown.exit_code == 1 and unknown.stderr.startswith("✘ ")
    nothing_before = cli("rollback", ok=False)
    assert nothing_before.exit_code == 1 and "no deployment before" in nothing_before.stderr


# -- secrets and deletion ---------------------------------------------------------------------


def test_secrets_are_set_from_stdin_and_never_shown(cli: Cli) -> None:
    write_project(Path.cwd(), PROJECT)
    cli("deploy")
    value = "s3cr3t-value-do-not-print"
    put = cli("secret", "put", "API_KEY", input=value + "\n")
    assert "API_KEY" in put.stdout
    assert json.loads(cli("secret", "put", "OTHER", "--json", input="x").stdout) == {
        "name": "OTHER",
        "type": "secret_text",
    }

    listed = cli("secret", "list")
    assert "API_KEY" in listed.stdout and "OTHER" in listed.stdout
    secrets = cli.json("secret", "list")
    assert sorted(item["name"] for item in secrets) == ["API_KEY", "OTHER"]
    for item in secrets:
        assert set(item) == {"name", "type"}
    for output in (put.output, listed.output, json.dumps(secrets)):
        assert value not in output
    account_id = cli.json("whoami")["account"]["id"]
    stored = cli.control.run(cli.control.store.secrets_for(account_id, "greeter"))
    assert stored == {"API_KEY": value, "OTHER": "x"}  # the newline ending stdin is not part of it

    deleted = cli("secret", "delete", "API_KEY")
    assert "API_KEY" in deleted.stdout
    assert [item["name"] for item in cli.json("secret", "list")] == ["OTHER"]
    missing = cli("secret", "delete", "API_KEY", ok=False)
    assert missing.exit_code == 1 and missing.stderr.startswith("✘ ")


def test_an_empty_secret_is_refused(cli: Cli) -> None:
    write_project(Path.cwd(), PROJECT)
    cli("deploy")
    result = cli("secret", "put", "EMPTY", input="", ok=False)
    assert result.exit_code == 1 and "empty" in result.stderr


def test_delete_a_worker(cli: Cli) -> None:
    write_project(Path.cwd(), PROJECT)
    cli("deploy")
    assert cli.json("delete") == {"id": "greeter"}
    # its versions stay, as an archive
    assert [version["number"] for version in cli.json("versions", "list")] == [1]
    assert "no deployments" not in cli("versions", "list").stdout
    again = cli("delete", "--name", "greeter", ok=False)
    assert again.exit_code == 1 and again.stderr.startswith("✘ ") and "404" in again.stderr


def test_name_defaults_to_the_project_in_the_current_directory(cli: Cli) -> None:
    result = cli("versions", "list", ok=False)
    assert result.exit_code == 1 and "no --name given" in result.stderr


# -- module collection (no server needed) ------------------------------------------------------


def test_modules_are_found_through_relative_imports(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "index.js": """
                import { a } from "./a.js";
                import data from './data.json';
                // import { gone } from "./commented-out.js";
                export * from "./lib/b";
                export default { async fetch() { const c = await import("./c.mjs"); return new Response(a + c.c); } };
                """,
            "a.js": 'import "./index.js";\nexport const a = 1;\n',
            "lib/b.js": 'export { note } from "../note.txt";\n',
            "c.mjs": "export const c = 2;\n",
            "data.json": "{}",
            "note.txt": "hello",
            "unused.js": "export const unused = 1;\n",
        },
    )
    modules = collect_modules(tmp_path / "index.js")
    assert [module.name for module in modules] == ["index.js", "a.js", "data.json", "lib/b.js", "c.mjs", "note.txt"]
    types = {module.name: module.content_type for module in modules}
    assert types["index.js"] == "application/javascript+module"
    assert types["data.json"] == "application/json"
    assert types["note.txt"] == "text/plain"


def test_a_service_worker_script_is_uploaded_as_text_javascript(tmp_path: Path) -> None:
    (tmp_path / "sw.js").write_text("addEventListener('fetch', (e) => e.respondWith(new Response('x')));\n")
    [module] = collect_modules(tmp_path / "sw.js")
    assert (module.name, module.content_type) == ("sw.js", "text/javascript")
