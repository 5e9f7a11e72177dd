"""The dashboard in a real browser: Debian's chromium driven by playwright-core (tests/browser/).

A real control plane and a real edge node share a SQLite store. The test
creates an account and token, deploys a first version through the API, and the
browser signs in, edits the worker, watches the live preview follow the edit
(a syntax error included), deploys, rolls back and forward again, and opens the
live log tail; the edge must serve each change. Screenshots at laptop and
phone widths go to test-artifacts/dashboard/.

Skips only when chromium or node is missing; the npm driver is installed here
if .ci/run has not done it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
API = "/client/v4"
DOMAIN = "workers.test"


def _chromium() -> str | None:
    for candidate in (os.environ.get("WARREN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _driver_installed(node: str) -> None:
    if (DRIVER / "node_modules" / "playwright-core" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("tests/browser has no node_modules and npm is missing: run `npm ci --prefix tests/browser`")
    subprocess.run(
        [npm, "ci", "--prefix", str(DRIVER), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
        timeout=300,
    )


def _tail_available(api: httpx.Client, account_id: str, script: str) -> bool:
    """Whether this control plane serves the tail endpoint (another part of issue 9)."""
    response = api.post(f"/accounts/{account_id}/workers/scripts/{script}/tails", json={})
    if response.status_code != 200:
        return False
    tail = response.json()["result"]
    api.delete(f"/accounts/{account_id}/workers/scripts/{script}/tails/{tail['id']}")
    return True


def test_dashboard_edit_preview_deploy_rollback_and_tail(
    tmp_path: Path, spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = _chromium()
    node = shutil.which("node")
    if chromium is None or node is None:
        missing = " and ".join(name for name, found in (("chromium", chromium), ("node", node)) if found is None)
        pytest.skip(f"{missing} not installed: `apt-get install -y chromium` and Node.js run this test (.ci/run does)")
    _driver_installed(node)

    store = tmp_path / "warren.db"
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    account = json.loads(created.stdout)
    control = spawn(["control", "--store", str(store)])
    edge = spawn(["serve", "--store", str(store), "--workers-domain", DOMAIN, "--processes", "1"])
    host = f"hello.demo.{DOMAIN}"
    with httpx.Client(
        base_url=control.url + API, headers={"authorization": f"Bearer {account['token']}"}, timeout=30
    ) as api:
        source = (
            'export default { fetch(request) { console.log("v1 saw", new URL(request.url).pathname); '
            'return new Response("v1"); } };'
        )
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js", "message": "first"}), "application/json"),
            "index.js": ("index.js", source, "application/javascript+module"),
        }
        response = api.put(f"/accounts/{account['account_id']}/workers/scripts/hello", files=files)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10
        while httpx.get(edge.url + "/", headers={"host": host}, timeout=10).text != "v1":
            assert time.monotonic() < deadline, "the edge never served v1"
            time.sleep(0.05)
        for path in ("/", "/a", "/b"):  # some traffic for the analytics chart, where it is collected
            httpx.get(edge.url + path, headers={"host": host}, timeout=10)
        expect_tail = _tail_available(api, account["account_id"], "hello")

    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    environment = dict(
        os.environ,
        DASHBOARD_URL=control.url,
        TOKEN=account["token"],
        EDGE_URL=edge.url,
        WORKER="hello",
        WORKER_HOST=host,
        ARTIFACTS=str(ARTIFACTS),
        CHROMIUM=chromium,
        EXPECT_TAIL="1" if expect_tail else "0",
    )
    run = subprocess.run(
        [node, str(DRIVER / "dashboard.mjs")], capture_output=True, text=True, timeout=240, env=environment
    )
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    report = "\n".join(json.dumps(step) for step in steps) + "\n" + run.stderr[-4000:]
    with capsys.disabled():
        print(f"\ndashboard screenshots: {ARTIFACTS}" + ("" if expect_tail else " (tail endpoint absent)"))
    assert run.returncode == 0, report
    assert steps[-1]["step"] == "done", report
    screenshots = sorted(path.name for path in ARTIFACTS.glob("*.png"))
    assert any(name.startswith("laptop-") for name in screenshots) and any(
        name.startswith("phone-") for name in screenshots
    ), screenshots

    # The browser's deploy is what the edge serves now, and the preview deployed nothing.
    served = httpx.get(edge.url + "/", headers={"host": host}, timeout=10)
    assert served.text == "v2 from the dashboard"
    with httpx.Client(
        base_url=control.url + API, headers={"authorization": f"Bearer {account['token']}"}, timeout=30
    ) as api:
        versions = api.get(f"/accounts/{account['account_id']}/workers/scripts/hello/versions").json()["result"]
        assert [v["number"] for v in versions] == [2, 1]
        assert versions[0]["message"] == "edited in the dashboard"
        names = [s["id"] for s in api.get(f"/accounts/{account['account_id']}/workers/scripts").json()["result"]]
        assert names == ["hello"]  # the new worker was previewed, never created


def test_the_dashboard_files_are_served_with_their_headers(spawn: Any, tmp_path: Path) -> None:
    control = spawn(["control", "--store", str(tmp_path / "warren.db")])
    index = httpx.get(control.url + "/", timeout=30)
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    csp = index.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert index.headers["x-frame-options"] == "DENY"
    assert httpx.get(control.url + "/dashboard/", timeout=30).text == index.text
    redirect = httpx.get(control.url + "/dashboard", timeout=30)
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/dashboard/")

    # Every file the page names is there, and so is every chunk app.js imports.
    names = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', index.text)
    assert "/dashboard/app.js" in names and "/dashboard/app.css" in names
    app = httpx.get(control.url + "/dashboard/app.js", timeout=30)
    for chunk in set(re.findall(r'"\./(chunks/[^"]+\.js)"', app.text)):
        names.append(f"/dashboard/{chunk}")
    assert any("chunks/" in name for name in names), "the editor chunk is not imported by app.js"
    for name in names:
        response = httpx.get(control.url + name, timeout=30)
        assert response.status_code == 200, name
        expected = "public, max-age=31536000, immutable" if "/chunks/" in name else "no-cache"
        assert response.headers["cache-control"] == expected, name

    # JavaScript goes gzipped to a client that takes it, with an ETag that revalidates.
    raw = httpx.get(control.url + "/dashboard/app.js", headers={"accept-encoding": "identity"}, timeout=30)
    assert "content-encoding" not in raw.headers
    zipped = httpx.get(control.url + "/dashboard/app.js", headers={"accept-encoding": "gzip"}, timeout=30)
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == raw.content  # httpx decodes it
    again = httpx.get(
        control.url + "/dashboard/app.js",
        headers={"accept-encoding": "gzip", "if-none-match": zipped.headers["etag"]},
        timeout=30,
    )
    assert again.status_code == 304

    licences = httpx.get(control.url + "/dashboard/LICENSES.md", timeout=30)
    assert licences.status_code == 200 and "@codemirror/view" in licences.text
    for bad in ("/dashboard/nothing.js", "/dashboard/%2e%2e/__init__.py", "/dashboard/..%2f__init__.py"):
        assert httpx.get(control.url + bad, timeout=30).status_code == 404, bad
    # The API keeps its envelope for unknown paths.
    assert httpx.get(control.url + "/client/v4/nothing", timeout=30).json()["success"] is False
