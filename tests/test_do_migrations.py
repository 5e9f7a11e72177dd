"""Durable Object ``[[migrations]]`` through ``warren deploy`` (issue #8), against real servers.

A real ``warren serve`` process (edge node and control-plane API, one SQLite
store, its own state directory) serves what the real CLI deploys; objects'
storage is the node's real per-object SQLite files; every request is real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.conftest import ServiceProcess
from warren.bindings.durable_objects import Namespace
from warren.cli import main
from warren.config import migrations_to_upload
from warren.control import create_account_with_token
from warren.store import SQLiteStore

DOMAIN = "workers.test"
SCRIPT = "objs"

WORKER = r"""
import { DurableObject } from "cloudflare:workers";

class Base extends DurableObject {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/put") await this.ctx.storage.put("v", url.searchParams.get("v"));
    let sql;
    try {
      this.ctx.storage.sql.exec("SELECT 1");
      sql = "yes";
    } catch (error) {
      sql = String(error.message);
    }
    return Response.json({ value: (await this.ctx.storage.get("v")) ?? null, sql });
  }
}
export class Sql extends Base {}
export class Kv extends Base {}
export class Renamed extends Base {}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, binding, name, op] = url.pathname.split("/");
    const ns = env[binding];
    if (!ns) return Response.json({ error: `no binding ${binding}` }, { status: 404 });
    try {
      return await ns.get(ns.idFromName(name)).fetch("http://object/" + (op || "") + url.search);
    } catch (error) {
      return Response.json({ error: String(error.message) }, { status: 500 });
    }
  },
};
"""

V1 = """
[[migrations]]
tag = "v1"
new_sqlite_classes = ["Sql"]
new_classes = ["Kv"]
"""
V2 = V1 + """
[[migrations]]
tag = "v2"
renamed_classes = [{ from = "Sql", to = "Renamed" }]
"""
V3 = V2 + """
[[migrations]]
tag = "v3"
deleted_classes = ["Kv"]
"""


def _config(bindings: dict[str, str], migrations: str) -> str:
    text = f'name = "{SCRIPT}"\nmain = "worker.js"\ncompatibility_date = "2025-01-01"\n'
    for name, class_name in bindings.items():
        text += f'\n[[durable_objects.bindings]]\nname = "{name}"\nclass_name = "{class_name}"\n'
    return text + migrations


class Platform:
    """``warren serve`` with its control-plane API, and ``warren`` (the CLI) logged in to it."""

    def __init__(self, tmp_path: Path, spawn: Any) -> None:
        self.tmp_path = tmp_path
        store_path = tmp_path / "warren.db"

        async def account() -> tuple[str, str]:
            store = SQLiteStore(store_path)
            await store.open()
            try:
                created, secret = await create_account_with_token(store, "demo")
                return created.id, secret
            finally:
                await store.close()

        self.account_id, self.token = asyncio.run(account())
        self.node: ServiceProcess = spawn(
            ["serve", "--store", str(store_path), "--workers-domain", DOMAIN, "--control-port", "0",
             "--processes", "1"]
        )
        self.api_url = self.node.wait_for(r"Control-plane API on (http://\S+)").group(1)
        self.api = httpx.Client(
            base_url=f"{self.api_url}/client/v4/accounts/{self.account_id}/workers/scripts",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        self.project = tmp_path / "project"
        self.project.mkdir()
        (self.project / "worker.js").write_text(WORKER)
        self.state = tmp_path / ".warren" / "state" / "durable_objects"  # the node's default, in its cwd

    def close(self) -> None:
        self.api.close()

    def warren(self, *args: str, ok: bool = True) -> Result:
        env = {
            "WARREN_CONFIG_DIR": str(self.tmp_path / "config"),
            "WARREN_API_URL": self.api_url,
            "WARREN_API_TOKEN": self.token,
            "WARREN_ACCOUNT_ID": None,
        }
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, f"warren {' '.join(args)} failed:\n{result.output}"
        return result

    def deploy(self, bindings: dict[str, str], migrations: str, ok: bool = True) -> Result:
        (self.project / "wrangler.toml").write_text(_config(bindings, migrations))
        result = self.warren("deploy", str(self.project), "--no-bundle", ok=ok)
        if result.exit_code == 0:
            self.serving(self.versions()[0]["number"])
        return result

    def serving(self, number: int) -> None:
        """Wait until the node serves version ``number`` of the script."""
        self.node.wait_for(rf"serving demo/{SCRIPT}@v{number}-", timeout=15)

    def script(self) -> dict[str, Any]:
        response = self.api.get(f"/{SCRIPT}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def versions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api.get(f"/{SCRIPT}/versions").json()["result"]
        return result

    def get(self, path: str, until: Any = None, timeout: float = 15) -> tuple[int, dict[str, Any]]:
        """GET through the edge; with ``until``, until the answer satisfies it (a deploy takes a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.node.get(path, headers={"host": f"{SCRIPT}.demo.{DOMAIN}"})
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if until is None or until(response.status_code, body) or time.monotonic() > deadline:
                return response.status_code, body
            time.sleep(0.1)

    def upload(self, metadata: dict[str, Any], path: str = "") -> httpx.Response:
        files = {
            "metadata": (None, json.dumps({"main_module": "worker.js", **metadata}), "application/json"),
            "worker.js": ("worker.js", WORKER, "application/javascript+module"),
        }
        if path:
            return self.api.post(f"/{SCRIPT}{path}", files=files)
        return self.api.put(f"/{SCRIPT}", files=files)


@pytest.fixture
def platform(tmp_path: Path, spawn: Any) -> Iterator[Platform]:
    started = Platform(tmp_path, spawn)
    yield started
    started.close()


NO_SQL = "SQL is not enabled"


def test_deploy_uploads_migrations_and_sql_follows_the_class_kind(platform: Platform) -> None:
    deployed = platform.deploy({"SQL": "Sql", "KV": "Kv"}, V1)
    assert "migrations to v1: 1 step(s)" in deployed.output
    assert platform.script()["migration_tag"] == "v1"
    version = platform.versions()[0]
    assert version["migration_tag"] == "v1"
    assert version["durable_objects"]["classes"] == {
        "Sql": {"sqlite": True, "renamed_from": []}, "Kv": {"sqlite": False, "renamed_from": []},
    }
    assert "durable_objects" not in version["limits"]

    # new_sqlite_classes: the SQL API; new_classes: key-value storage only, SQL refused as on Workers.
    status, body = platform.get("/SQL/a/put?v=one", until=lambda status, _: status == 200)
    assert (status, body) == (200, {"value": "one", "sql": "yes"})
    status, body = platform.get("/KV/a/put?v=two")
    assert status == 200 and body["value"] == "two" and NO_SQL in body["sql"]

    # Deployed again with the same [[migrations]]: nothing to apply, nothing sent, nothing lost.
    again = platform.deploy({"SQL": "Sql", "KV": "Kv"}, V1)
    assert "migrations from" not in again.output and "migrations to" not in again.output
    versions = platform.versions()
    assert len(versions) == 2 and versions[0]["migration_tag"] == "v1"
    assert versions[0]["durable_objects"] == versions[1]["durable_objects"]
    _, body = platform.get("/SQL/a")  # served by the second version, with the same classes
    assert body == {"value": "one", "sql": "yes"}
    _, body = platform.get("/KV/a")
    assert body["value"] == "two" and NO_SQL in body["sql"]

    # What `warren deploy` computes from the deployed tag, as wrangler does.
    steps = [{"tag": "v1", "new_classes": ["A"]}, {"tag": "v2", "deleted_classes": ["A"]}]
    assert migrations_to_upload(steps, "v2") == (None, None)
    assert migrations_to_upload(steps, "v1")[0] == {"old_tag": "v1", "new_tag": "v2", "steps": [
        {"deleted_classes": ["A"]}]}
    assert migrations_to_upload(steps, None)[0] == {"new_tag": "v2", "steps": [
        {"new_classes": ["A"]}, {"deleted_classes": ["A"]}]}
    unknown, warning = migrations_to_upload(steps, "v9")
    assert unknown is not None and unknown["old_tag"] == "v9" and len(unknown["steps"]) == 2 and warning


def test_a_project_without_migrations_deploys_as_before(platform: Platform) -> None:
    deployed = platform.deploy({"SQL": "Sql"}, "")
    assert "migrations to" not in deployed.output
    assert platform.script()["migration_tag"] is None
    assert platform.versions()[0]["durable_objects"] is None
    status, body = platform.get("/SQL/x/put?v=1", until=lambda status, _: status == 200)
    assert (status, body) == (200, {"value": "1", "sql": "yes"})  # SQLite-backed, as before


def test_bad_or_conflicting_migrations_are_refused_and_nothing_is_lost(platform: Platform) -> None:
    platform.deploy({"SQL": "Sql", "KV": "Kv"}, V1)
    platform.get("/SQL/a/put?v=kept", until=lambda status, _: status == 200)
    bindings = [{"type": "durable_object_namespace", "name": "SQL", "class_name": "Sql"}]

    def refused(metadata: dict[str, Any], expected: str, path: str = "") -> None:
        response = platform.upload({"bindings": bindings, **metadata}, path)
        assert response.status_code == 400, response.text
        message = response.json()["errors"][0]["message"]
        assert expected in message, message

    precondition = "Migration tag precondition failed; current tag is v1"
    step = {"new_sqlite_classes": ["Other"]}
    refused({"migrations": {"old_tag": "v0", "new_tag": "v2", "steps": [step]}}, precondition)
    refused({"migrations": {"new_tag": "v2", "steps": [step]}}, precondition)  # no old_tag: as wrangler 2's bug
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [{"new_sqlite_classes": ["Sql"]}]}},
            "cannot apply new_sqlite_classes migration to class Sql: it already exists")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [{"deleted_classes": ["Sql"]}]}},
            "without also removing the binding SQL")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [{"deleted_classes": ["Nope"]}]}},
            "non-existent class Nope")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [
        {"renamed_classes": [{"from": "Kv", "to": "Sql"}]}]}}, "class Sql: it already exists")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [{"new_classes": ["not a class"]}]}},
            "list of class names")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [{"transferred_classes": []}]}},
            "transferred_classes is not supported")
    refused({"migrations": ["v2"]}, "'migrations' must be an object")
    refused({"migrations": {"old_tag": "v1", "steps": []}}, "new_tag must be a tag")
    refused({"limits": {"durable_objects": {"tag": "forged", "classes": {}, "deleted": []}}},
            "set by migrations")
    refused({"migrations": {"old_tag": "v1", "new_tag": "v2", "steps": [step]}},
            "must be applied by a deployment", path="/versions")
    # A binding to a class of the script that no migration declares (once it has migrations).
    response = platform.upload({"bindings": [*bindings, {
        "type": "durable_object_namespace", "name": "X", "class_name": "Undeclared"}]})
    assert response.status_code == 400 and "not currently configured" in response.text

    # The CLI's own deploy with a config whose tag is not the deployed one: refused, clearly.
    mismatched = platform.deploy({"SQL": "Sql"}, '\n[[migrations]]\ntag = "other"\nnew_sqlite_classes = ["Sql"]\n',
                                 ok=False)
    assert mismatched.exit_code == 1
    assert "not in [[migrations]]" in mismatched.output and "already exists" in mismatched.output

    # Nothing was written: one version, tag v1, the object's value intact.
    assert len(platform.versions()) == 1 and platform.script()["migration_tag"] == "v1"
    assert platform.get("/SQL/a")[1] == {"value": "kept", "sql": "yes"}

    # A version uploaded without deploying inherits the deployed classes.
    response = platform.upload({"bindings": bindings}, path="/versions")
    assert response.status_code == 200 and response.json()["result"]["migration_tag"] == "v1"


def test_rename_keeps_storage_delete_removes_it_rollback_restores_classes(platform: Platform) -> None:
    platform.deploy({"SQL": "Sql", "KV": "Kv"}, V1)
    platform.get("/SQL/a/put?v=renamed-keeps-me", until=lambda status, _: status == 200)
    platform.get("/KV/b/put?v=deleted-with-its-class")
    kv_dir = platform.state / Namespace(platform.account_id, SCRIPT, "Kv").directory
    assert list(kv_dir.glob("*.sqlite"))

    # v2 renames Sql to Renamed: the binding follows, the object keeps its storage (reached by the same name).
    renamed = platform.deploy({"SQL": "Renamed", "KV": "Kv"}, V2)
    assert "migrations from v1 to v2: 1 step(s)" in renamed.output
    assert platform.versions()[0]["durable_objects"]["classes"]["Renamed"] == {
        "sqlite": True, "renamed_from": ["Sql"],
    }
    _, body = platform.get("/SQL/a", until=lambda _, b: b.get("value") == "renamed-keeps-me")
    assert body == {"value": "renamed-keeps-me", "sql": "yes"}
    platform.get("/SQL/a/put?v=written-as-renamed")

    # v3 deletes Kv: refused while the project still binds it; then its storage goes.
    still_bound = platform.deploy({"SQL": "Renamed", "KV": "Kv"}, V3, ok=False)
    assert "without also removing the binding KV" in still_bound.output
    assert platform.script()["migration_tag"] == "v2"
    platform.deploy({"SQL": "Renamed"}, V3)
    assert platform.script()["migration_tag"] == "v3"
    deadline = time.monotonic() + 15
    while kv_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not kv_dir.exists()
    platform.node.wait_for("deleted the storage of Durable Object class Kv")  # output arrives by its own thread

    # Another worker still binding the deleted class is refused, with a clear error.
    other = platform.api.put("/other", files={
        "metadata": (None, json.dumps({"main_module": "worker.js", "bindings": [
            {"type": "durable_object_namespace", "name": "KV", "class_name": "Kv", "script_name": SCRIPT}]}),
            "application/json"),
        "worker.js": ("worker.js", WORKER, "application/javascript+module"),
    })
    assert other.status_code == 200, other.text
    deadline = time.monotonic() + 15
    while True:
        response = platform.node.get("/KV/b", headers={"host": f"other.demo.{DOMAIN}"})
        if response.status_code == 500 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status_code == 500
    assert "was deleted by a migration" in response.json()["error"]

    # Rollback to version 1: its classes again (Sql SQLite-backed, Kv key-value only) and its tag.
    platform.warren("rollback", "1", "--name", SCRIPT)
    assert platform.script()["migration_tag"] == "v1"
    time.sleep(0.5)  # version 1 is loaded already: the node switches back within its poll
    _, body = platform.get("/SQL/a", until=lambda _, b: b.get("value") == "written-as-renamed")
    assert body == {"value": "written-as-renamed", "sql": "yes"}  # the renamed class's storage is Sql's
    status, body = platform.get("/KV/b", until=lambda status, _: status == 200)
    assert status == 200 and NO_SQL in body["sql"]
    assert body["value"] is None  # deleted storage does not come back, as on Workers

    # Deploying the project again re-applies what came after v1 (rename, delete), and only that; the
    # delete is refused while another worker binds the class.
    bound = platform.deploy({"SQL": "Renamed"}, V3, ok=False)
    assert "the worker other still binds it (KV)" in bound.output
    assert platform.script()["migration_tag"] == "v1"
    platform.warren("delete", "--name", "other", "--yes")
    again = platform.deploy({"SQL": "Renamed"}, V3)
    assert "migrations from v1 to v3: 2 step(s)" in again.output
    assert platform.script()["migration_tag"] == "v3"
    _, body = platform.get("/SQL/a", until=lambda _, b: b.get("value") == "written-as-renamed")
    assert body["sql"] == "yes"


def test_migrations_round_trip_through_the_config(tmp_path: Path) -> None:
    from warren.config import load_project

    (tmp_path / "worker.js").write_text(WORKER)
    (tmp_path / "wrangler.toml").write_text(textwrap.dedent(_config({"SQL": "Renamed"}, V3)))
    project = load_project(str(tmp_path))
    assert [step["tag"] for step in project.migrations] == ["v1", "v2", "v3"]
    assert project.durable_objects[0]["sqlite"] is True  # warren dev: Renamed came from Sql, SQLite-backed


# -- two uploads at once ------------------------------------------------------------------------------


def _race(api_urls: list[str], account_id: str, token: str, old_tag: str, new_tags: list[str]) -> list[httpx.Response]:
    """PUT the script once per tag, all at once (the i-th to the i-th API), each a different step after ``old_tag``."""

    async def put(client: httpx.AsyncClient, new_tag: str) -> httpx.Response:
        metadata = {"main_module": "worker.js", "migrations": {
            "old_tag": old_tag, "new_tag": new_tag, "steps": [{"new_sqlite_classes": [f"Class_{new_tag}"]}]}}
        files = {
            "metadata": (None, json.dumps(metadata), "application/json"),
            "worker.js": ("worker.js", WORKER, "application/javascript+module"),
        }
        return await client.put(f"/{SCRIPT}", files=files)

    async def race() -> list[httpx.Response]:
        clients = [
            httpx.AsyncClient(base_url=f"{url}/client/v4/accounts/{account_id}/workers/scripts",
                              headers={"authorization": f"Bearer {token}"}, timeout=30)
            for url in api_urls
        ]  # fmt: skip
        try:
            return list(await asyncio.gather(*(put(client, tag) for client, tag in zip(clients, new_tags, strict=True))))
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(race())


def _exactly_one_wins(platform: Platform, responses: list[httpx.Response], old_tag: str, new_tags: list[str]) -> str:
    statuses = [response.status_code for response in responses]
    assert sorted(statuses) == [200, 400], [response.text for response in responses]
    winner = new_tags[statuses.index(200)]
    loser = responses[statuses.index(400)]
    assert f"Migration tag precondition failed; current tag is {winner}" in loser.json()["errors"][0]["message"]
    script = platform.script()
    assert script["migration_tag"] == winner
    version = platform.versions()[0]
    assert version["migration_tag"] == winner and f"Class_{winner}" in version["durable_objects"]["classes"]
    assert not any(f"Class_{tag}" in version["durable_objects"]["classes"] for tag in new_tags if tag != winner)
    return winner


def test_two_uploads_at_once_with_the_same_old_tag_one_wins(platform: Platform) -> None:
    platform.deploy({}, V1)
    tag, count = "v1", len(platform.versions())
    for round_ in range(4):  # each round races two uploads from the tag the last one left
        new_tags = [f"r{round_}a", f"r{round_}b"]
        tag = _exactly_one_wins(platform, _race([platform.api_url] * 2, platform.account_id, platform.token, tag,
                                                new_tags), tag, new_tags)  # fmt: skip
        count += 1
        assert len(platform.versions()) == count  # the loser wrote nothing


def test_two_control_planes_sharing_a_store_cannot_both_win(platform: Platform, spawn: Any) -> None:
    other = spawn(["control", "--store", str(platform.tmp_path / "warren.db")])
    platform.deploy({}, V1)
    tag = "v1"
    for round_ in range(20):
        new_tags = [f"r{round_}a", f"r{round_}b"]
        tag = _exactly_one_wins(platform, _race([platform.api_url, other.url], platform.account_id, platform.token,
                                                tag, new_tags), tag, new_tags)  # fmt: skip
