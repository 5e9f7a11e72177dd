"""End to end: `warren control` and `warren serve` as real processes sharing a SQLite store.

A user creates an account, uploads versions through the API, and the edge node
serves them: live within a second, with no failed request during a deploy,
split by percentage, rolled back, with write-only secrets and routes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

API = "/client/v4"
DOMAIN = "workers.test"


class Platform:
    def __init__(self, tmp_path: Path, spawn: Any) -> None:
        self.store = tmp_path / "warren.db"
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", str(self.store), "account", "create", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        account = json.loads(created.stdout)
        self.account_id: str = account["account_id"]
        self.token: str = account["token"]
        self.control = spawn(["control", "--store", str(self.store)])
        self.edge = spawn(["serve", "--store", str(self.store), "--workers-domain", DOMAIN])
        self.api = httpx.Client(
            base_url=self.control.url + API, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )

    def scripts(self, path: str = "") -> str:
        return f"/accounts/{self.account_id}/workers/scripts{path}"

    def upload(self, name: str, source: str, deploy: bool = True, **metadata: Any) -> dict[str, Any]:
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js", **metadata}), "application/json"),
            "index.js": ("index.js", source, "application/javascript+module"),
        }
        if deploy:
            response = self.api.put(self.scripts(f"/{name}"), files=files)
        else:
            response = self.api.post(self.scripts(f"/{name}/versions"), files=files)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def get(self, host: str, path: str = "/") -> httpx.Response:
        return httpx.get(self.edge.url + path, headers={"host": host}, timeout=30)

    def wait_until_served(self, host: str, text: str, timeout: float = 5, in_a_row: int = 1) -> float:
        started = time.monotonic()
        streak = 0
        while time.monotonic() - started < timeout:
            response = self.get(host)
            streak = streak + 1 if response.status_code == 200 and response.text == text else 0
            if streak >= in_a_row:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"{host} never served {text!r}; last: {response.status_code} {response.text!r}")

@pytest.fixture
def platform(tmp_path: Path, spawn: Any) -> Iterator[Platform]:
    started = Platform(tmp_path, spawn)
    yield started
    started.api.close()


def version_source(label: str) -> str:
    return f"export default {{ fetch(request, env) {{ return new Response('{label}' + (env.SUFFIX ?? '')); }} }};"


HOST = f"hello.demo.{DOMAIN}"


def test_deploy_is_live_within_a_second_and_the_content_hash_is_logged(platform: Platform) -> None:
    platform.upload("hello", version_source("v0"))
    platform.wait_until_served(HOST, "v0")  # the node's first script also starts its runtime: not a deploy's cost
    result = platform.upload("hello", version_source("v1"))
    assert platform.wait_until_served(HOST, "v1") < 1.0
    version = platform.api.get(platform.scripts(f"/hello/versions/{result['version_id']}")).json()["result"]
    platform.edge.wait_for(re.escape(version["content_hash"]))
    assert platform.get(f"nothing.demo.{DOMAIN}").status_code == 404
    assert platform.get("elsewhere.example").status_code == 404


def test_deploying_under_load_fails_no_request(platform: Platform) -> None:
    platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    seen: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.get(platform.edge.url + "/", headers={"host": HOST})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                seen[response.text] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    platform.upload("hello", version_source("v2"))
    deadline = time.monotonic() + 5
    while seen["v2"] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert seen["v1"] > 0 and seen["v2"] >= 50, seen


def test_gradual_rollout_and_rollback(platform: Platform) -> None:
    v1 = platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    v2 = platform.upload("hello", version_source("v2"), deploy=False)
    assert platform.get(HOST).text == "v1"  # an uploaded version is not deployed
    split = platform.api.post(
        platform.scripts("/hello/deployments"),
        json={"versions": [{"version_id": v1["version_id"], "percentage": 50}, {"version_id": v2["id"], "percentage": 50}]},
    )
    assert split.status_code == 200, split.text
    time.sleep(0.5)
    counts = Counter(platform.get(HOST).text for _ in range(300))
    # 300 fair coin flips: each side within 115..185 except with probability < 1e-4
    assert set(counts) == {"v1", "v2"} and min(counts.values()) >= 115, counts

    rollback = platform.api.post(
        platform.scripts("/hello/deployments"), json={"versions": [{"version_id": v1["version_id"], "percentage": 100}]}
    )
    assert rollback.status_code == 200
    platform.wait_until_served(HOST, "v1", in_a_row=20)  # a 50/50 split gives 20 in a row once in a million
    assert {platform.get(HOST).text for _ in range(30)} == {"v1"}
    deployments = platform.api.get(platform.scripts("/hello/deployments")).json()["result"]
    assert len(deployments) == 3


def test_secrets_reach_the_worker_and_are_never_readable(platform: Platform) -> None:
    platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    put = platform.api.put(
        platform.scripts("/hello/secrets"), json={"name": "SUFFIX", "text": "-s3cr3t", "type": "secret_text"}
    )
    assert put.status_code == 200
    assert "s3cr3t" not in put.text
    platform.wait_until_served(HOST, "v1-s3cr3t")
    listed = platform.api.get(platform.scripts("/hello/secrets"))
    assert listed.json()["result"] == [{"name": "SUFFIX", "type": "secret_text"}]
    for path in ("/hello", "/hello/versions", "/hello/deployments"):
        assert "s3cr3t" not in platform.api.get(platform.scripts(path)).text
    assert "s3cr3t" not in platform.edge.output and "s3cr3t" not in platform.control.output


def test_routes_with_the_most_specific_winning(platform: Platform) -> None:
    platform.upload("site", version_source("site"))
    platform.upload("api", version_source("api"))
    for pattern, script in (("*example.test/*", "site"), ("www.example.test/api/*", "api")):
        created = platform.api.post(f"/accounts/{platform.account_id}/workers/routes", json={"pattern": pattern, "script": script})
        assert created.status_code == 200, created.text
    platform.wait_until_served("www.example.test", "site")
    assert platform.get("www.example.test", "/api/users").text == "api"
    assert platform.get("shop.example.test", "/api/users").text == "site"
    bad = platform.api.post(f"/accounts/{platform.account_id}/workers/routes", json={"pattern": "http://x/*", "script": "site"})
    assert bad.status_code == 400
    # A route cannot take over a script's own hostname under the workers domain.
    hijack = platform.api.post(
        f"/accounts/{platform.account_id}/workers/routes", json={"pattern": f"*.{DOMAIN}/*", "script": "site"}
    )
    assert hijack.status_code == 200
    platform.wait_until_served(f"api.demo.{DOMAIN}", "api")
    assert platform.get(f"nothing.demo.{DOMAIN}").status_code == 404


def test_refused_uploads_change_nothing(platform: Platform) -> None:
    platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    before = platform.api.get(platform.scripts("/hello/versions")).json()["result"]

    wrong = httpx.get(platform.control.url + API + platform.scripts(), headers={"authorization": "Bearer wrn_nope"})
    assert wrong.status_code == 401
    other = platform.api.get(f"/accounts/{'0' * 32}/workers/scripts")
    assert other.status_code == 403

    huge = platform.api.put(
        platform.scripts("/hello"),
        files={
            "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
            "index.js": ("index.js", "// " + "x" * (11 * 1024 * 1024), "application/javascript+module"),
        },
    )
    assert huge.status_code == 413
    malformed = platform.api.put(
        platform.scripts("/hello"),
        files={"metadata": (None, "{not json", "application/json"), "index.js": ("index.js", "x", "text/javascript")},
    )
    assert malformed.status_code == 400
    missing_main = platform.api.put(
        platform.scripts("/hello"),
        files={"metadata": (None, json.dumps({"main_module": "main.js"}), "application/json"), "index.js": ("index.js", "x", "text/javascript")},
    )
    assert missing_main.status_code == 400
    assert platform.api.get(platform.scripts("/hello/versions")).json()["result"] == before
    assert platform.get(HOST).text == "v1"


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(platform: Platform) -> None:
    platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    platform.upload("hello", "export default { fetch() { return new Response('x' } };")
    platform.edge.wait_for("failed to load")
    assert platform.get(HOST).text == "v1"


def test_deleting_a_script_stops_serving_it_and_keeps_its_archive(platform: Platform) -> None:
    v1 = platform.upload("hello", version_source("v1"))
    platform.wait_until_served(HOST, "v1")
    assert platform.api.delete(platform.scripts("/hello")).status_code == 200
    deadline = time.monotonic() + 5
    while platform.get(HOST).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert platform.get(HOST).status_code == 404
    module = platform.api.get(platform.scripts(f"/hello/versions/{v1['version_id']}/modules/index.js"))
    assert module.status_code == 200 and "v1" in module.text


def test_a_second_node_on_the_same_state_directory_is_refused(platform: Platform, tmp_path: Path, spawn: Any) -> None:
    """Durable Objects' files and alarms are one node's: a second `warren serve` given the
    same state directory stops with a clear error, and the first serves on untouched."""
    platform.upload("hello", version_source("one"))
    platform.wait_until_served(HOST, "one")
    second = subprocess.run(
        [sys.executable, "-m", "warren.cli", "serve", "--store", str(platform.store), "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert "the state directory .warren/state is in use by another warren process (pid " in second.stderr
    assert f"(pid {platform.edge.process.pid})" in second.stderr  # the node that holds it
    assert "its own --state-dir" in second.stderr
    assert platform.get(HOST).text == "one"
    # Given a directory of its own (the option or $WARREN_STATE_DIR), it serves too.
    other = spawn(["serve", "--store", str(platform.store), "--workers-domain", DOMAIN, "--state-dir", "other"])
    assert httpx.get(other.url, headers={"host": HOST}, timeout=30).text == "one"
    assert (tmp_path / "other" / "node.lock").read_text() == f"{other.process.pid}\n"


def test_serve_can_host_the_control_api_itself(tmp_path: Path, spawn: Any) -> None:
    store = tmp_path / "one.db"
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", "solo", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    account = json.loads(created.stdout)
    node = spawn(["serve", "--store", str(store), "--workers-domain", DOMAIN, "--control-port", "0"])
    api_url = re.search(r"Control-plane API on (http://\S+)", node.output).group(1)  # type: ignore[union-attr]
    files = {
        "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
        "index.js": ("index.js", version_source("solo"), "application/javascript+module"),
    }
    uploaded = httpx.put(
        f"{api_url}{API}/accounts/{account['account_id']}/workers/scripts/one",
        files=files,
        headers={"authorization": f"Bearer {account['token']}"},
    )
    assert uploaded.status_code == 200, uploaded.text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = httpx.get(node.url + "/", headers={"host": f"one.solo.{DOMAIN}"})
        if response.text == "solo":
            break
        time.sleep(0.05)
    assert response.text == "solo"


ESBUILD = Path(__file__).resolve().parent.parent / "scripts" / "vendor" / "node_modules" / ".bin" / "esbuild"


def _cli(platform: Platform, project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warren.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "WARREN_API_URL": platform.control.url,
            "WARREN_API_TOKEN": platform.token,
            "WARREN_CONFIG_DIR": str(project / ".warren"),
            **env,
        },
    )


def test_warren_deploy_with_esbuild_bundles_npm_packages(platform: Platform, tmp_path: Path) -> None:
    if not ESBUILD.is_file():
        pytest.skip("esbuild is not installed: run `npm ci --prefix scripts/vendor` (as .ci/run does)")
    project = tmp_path / "project"
    (project / "node_modules" / "greeting").mkdir(parents=True)
    (project / "node_modules" / "greeting" / "package.json").write_text('{"name": "greeting", "main": "index.js"}')
    (project / "node_modules" / "greeting" / "index.js").write_text("exports.greet = (who) => `hello ${who} from npm`;")
    (project / "wrangler.toml").write_text('name = "bundled"\nmain = "src/index.js"\n')
    (project / "src").mkdir()
    (project / "src" / "index.js").write_text(
        'import { greet } from "greeting";\n'
        'import { suffix } from "./suffix.js";\n'
        "export default { fetch() { return new Response(greet('edge') + suffix); } };\n"
    )
    (project / "src" / "suffix.js").write_text('export const suffix = "!";\n')

    unbundled = _cli(platform, project, "deploy", "--no-bundle", WARREN_ESBUILD=str(ESBUILD))
    assert unbundled.returncode == 0, unbundled.stderr
    platform.edge.wait_for("bundled.*failed to load.*No such module \"greeting\"")

    deployed = _cli(platform, project, "deploy", "--json", WARREN_ESBUILD=str(ESBUILD))
    assert deployed.returncode == 0, deployed.stderr
    platform.wait_until_served(f"bundled.demo.{DOMAIN}", "hello edge from npm!")
    version = platform.api.get(platform.scripts(f"/bundled/versions/{json.loads(deployed.stdout)['version_id']}"))
    assert [module["name"] for module in version.json()["result"]["modules"]] == ["index.js"]
