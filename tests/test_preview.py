"""The preview endpoint behind the dashboard's editor, against a real `warren control` process.

``POST /client/v4/accounts/{a}/workers/preview`` runs edited code once in a
runtime process of the control plane (trust level "untrusted") and answers
status, headers, body, console output and the error, if any. Nothing is ever
deployed or stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServiceProcess

from warren.control.dashboard import PreviewBusy, Previewer

API = "/client/v4"


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _runtime_children(pid: int) -> set[int]:
    result = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"warren.server.runtime_process" in cmdline:
            result.add(child)
    return result


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Control:
    def __init__(self, directory: Path) -> None:
        self.store = directory / "warren.db"
        self.accounts: list[dict[str, str]] = []
        for name in ("demo", "other"):
            created = subprocess.run(
                [sys.executable, "-m", "warren.cli", "control", "--store", str(self.store), "account", "create", name,
                 "--json"],
                capture_output=True, text=True, timeout=30, check=True,
            )
            self.accounts.append(json.loads(created.stdout))
        self.account_id = self.accounts[0]["account_id"]
        self.process = ServiceProcess(["control", "--store", str(self.store)], directory)
        self.api = httpx.Client(
            base_url=self.process.url + API,
            headers={"authorization": f"Bearer {self.accounts[0]['token']}"},
            timeout=60,
        )

    def preview(self, source: str, **fields: Any) -> httpx.Response:
        body: dict[str, Any] = {"main": "worker.js", "modules": {"worker.js": source}, **fields}
        return self.api.post(f"/accounts/{self.account_id}/workers/preview", json=body)

    def result(self, source: str, **fields: Any) -> dict[str, Any]:
        response = self.preview(source, **fields)
        assert response.status_code == 200, response.text
        envelope = response.json()
        assert envelope["success"] is True
        result: dict[str, Any] = envelope["result"]
        return result

    def stop(self) -> None:
        self.api.close()
        self.process.stop()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    started = Control(tmp_path_factory.mktemp("preview"))
    yield started
    started.stop()


def test_a_module_worker_runs_and_its_logs_come_back(control: Control) -> None:
    source = """
        console.log("top level");
        export default {
          async fetch(request, env) {
            const url = new URL(request.url);
            console.info("path", url.pathname, url.search);
            console.warn("header", request.headers.get("x-test"));
            const body = request.method === "POST" ? await request.text() : "";
            return new Response(`hello ${request.method} ${url.pathname}${url.search} ${body} ${env.GREETING} ✓`, {
              status: 201,
              headers: { "content-type": "text/plain; charset=utf-8", "x-answer": "42" },
            });
          },
        };
    """
    result = control.result(
        source,
        request={"method": "POST", "path": "/some/path?x=1", "headers": {"x-test": "yes"}, "body": "payload"},
        bindings=[{"type": "plain_text", "name": "GREETING", "text": "world"}],
        compatibility_date="2024-09-23",
    )
    assert result["error"] is None
    assert result["status"] == 201
    assert result["body"] == "hello POST /some/path?x=1 payload world ✓"
    assert ["x-answer", "42"] in result["headers"]
    assert result["logs"] == [
        {"level": "log", "message": "top level"},
        {"level": "info", "message": "path /some/path ?x=1"},
        {"level": "warn", "message": "header yes"},
    ]


def test_a_service_worker_script_and_several_modules(control: Control) -> None:
    sw = control.result('addEventListener("fetch", e => e.respondWith(new Response("sw")));')
    assert (sw["status"], sw["body"], sw["error"]) == (200, "sw", None)
    modules = {
        "worker.js": 'import { greet } from "./lib/greet.js"; import data from "./data.json";\n'
        "export default { fetch() { return new Response(greet(data.name)); } };",
        "lib/greet.js": "export function greet(name) { return `hi ${name}`; }",
        "data.json": '{"name": "modules"}',
    }
    response = control.api.post(
        f"/accounts/{control.account_id}/workers/preview", json={"main": "worker.js", "modules": modules}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["body"] == "hi modules"


def test_a_syntax_error_comes_back_as_error_with_its_location(control: Control) -> None:
    result = control.result("export default {\n  fetch() { return new Response('x' }\n};\n")
    error = result["error"]
    assert error is not None
    assert result["status"] == 500
    assert error["filename"] == "worker.js"
    assert error["line"] == 2
    assert error["column"] > 0
    assert "SyntaxError" in error["message"] or "Unexpected" in error["message"]


def test_an_uncaught_exception_comes_back_as_error(control: Control) -> None:
    source = 'export default {\n  fetch() {\n    throw new TypeError("boom");\n  },\n};\n'
    result = control.result(source)
    assert result["status"] == 500
    assert result["error"] is not None
    assert "boom" in result["error"]["message"]
    assert (result["error"]["filename"], result["error"]["line"]) == ("worker.js", 3)
    assert any("boom" in entry["message"] and entry["level"] == "error" for entry in result["logs"])


def test_an_infinite_loop_gets_the_cpu_limit_error_and_the_next_preview_runs(control: Control) -> None:
    started = time.monotonic()
    result = control.result('export default { fetch() { console.log("looping"); while (true) {} } };')
    assert time.monotonic() - started < 10
    assert result["status"] == 503
    assert result["error"]["message"] == "Worker exceeded its CPU time limit."
    assert {"level": "log", "message": "looping"} in result["logs"]
    following = control.result('export default { fetch() { return new Response("fine"); } };')
    assert (following["status"], following["body"], following["error"]) == (200, "fine", None)


def test_a_memory_hog_does_not_take_the_control_plane_down(control: Control) -> None:
    hog = "export default { fetch() { const a = []; while (true) a.push(new Array(1e6).fill(1)); } };"
    result = control.result(hog)
    assert result["status"] == 503
    assert result["error"] is not None
    assert control.api.get("/user/tokens/verify").status_code == 200
    after = control.result('export default { fetch() { return new Response("still here"); } };')
    assert after["body"] == "still here"


def test_bad_input_is_refused_with_a_clear_error(control: Control) -> None:
    url = f"/accounts/{control.account_id}/workers/preview"
    cases: list[tuple[Any, str]] = [
        ({"main": "worker.js"}, "'modules'"),
        ({"main": "nope.js", "modules": {"worker.js": "x"}}, "main module"),
        ({"main": "worker.js", "modules": {"worker.js": "x", "m.wasm": "AGFzbQ=="}}, "binary modules"),
        ({"main": "worker.js", "modules": {"worker.js": "x", "../x.js": "x"}}, "invalid module name"),
        ({"main": "worker.js", "modules": {"worker.js": "x"}, "request": {"path": "no-slash"}}, "request.path"),
        ({"main": "worker.js", "modules": {"worker.js": "x"}, "request": {"method": "GE T"}}, "HTTP method"),
        ({"main": "worker.js", "modules": {"worker.js": "x"}, "request": {"headers": {"a\nb": "c"}}}, "header"),
        ({"main": "worker.js", "modules": {"worker.js": "x"}, "compatibility_date": "soon"}, "compatibility_date"),
        ({"main": "worker.js", "modules": {"worker.js": 5}}, "must be a string"),
    ]
    for body, fragment in cases:
        response = control.api.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert fragment in response.json()["errors"][0]["message"], (body, response.text)
    response = control.api.post(url, content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_authentication_is_required_and_scoped_to_the_account(control: Control) -> None:
    body = {"main": "worker.js", "modules": {"worker.js": "export default {}"}}
    url = control.process.url + API + f"/accounts/{control.account_id}/workers/preview"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    other = control.accounts[1]["token"]
    response = httpx.post(url, json=body, headers={"authorization": f"Bearer {other}"}, timeout=30)
    assert response.status_code == 403


def test_nothing_is_deployed_and_it_runs_in_a_runtime_process_of_its_own(control: Control, tmp_path: Path) -> None:
    scripts = f"/accounts/{control.account_id}/workers/scripts"
    files = {
        "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
        "index.js": ("index.js", 'export default { fetch() { return new Response("deployed"); } };',
                     "application/javascript+module"),
    }
    assert control.api.put(f"{scripts}/hello", files=files).status_code == 200
    before = control.api.get(f"{scripts}/hello/versions").json()["result"]
    deployments = control.api.get(f"{scripts}/hello/deployments").json()["result"]
    edge = ServiceProcess(["serve", "--store", str(control.store), "--workers-domain", "workers.test"], tmp_path)
    try:
        result = control.result('export default { fetch() { return new Response("previewed"); } };')
        assert result["body"] == "previewed"
        assert [s["id"] for s in control.api.get(scripts).json()["result"]] == ["hello"]
        assert control.api.get(f"{scripts}/hello/versions").json()["result"] == before
        assert control.api.get(f"{scripts}/hello/deployments").json()["result"] == deployments
        served = httpx.get(edge.url + "/", headers={"host": "hello.demo.workers.test"}, timeout=30)
        assert served.text == "deployed"
        assert "preview" not in edge.output
    finally:
        edge.stop()
    # The preview runs in a child runtime process of the control plane, never in it.
    runtimes = _runtime_children(control.process.process.pid)
    assert len(runtimes) == 1


def test_the_preview_runtime_stops_with_the_control_plane(tmp_path: Path) -> None:
    started = Control(tmp_path)
    try:
        # Started lazily: nothing runs before the first preview.
        assert _runtime_children(started.process.process.pid) == set()
        assert started.result('export default { fetch() { return new Response("x"); } };')["body"] == "x"
        runtimes = _runtime_children(started.process.process.pid)
        assert len(runtimes) == 1
    finally:
        started.stop()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in runtimes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in runtimes)
    assert os.path.exists(started.store)


def test_the_preview_runtime_stops_when_idle_and_starts_again() -> None:
    async def scenario() -> None:
        previewer = Previewer(idle_stop_s=0.3)
        body = {"main": "worker.js", "modules": {"worker.js": 'export default { fetch() { return new Response("a"); } };'}}
        try:
            assert not previewer.running
            assert (await previewer.run(body))["body"] == "a"
            assert previewer.running
            deadline = time.monotonic() + 10
            while previewer.running and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not previewer.running
            assert (await previewer.run(body))["body"] == "a"
        finally:
            await previewer.stop()
        assert not previewer.running

    asyncio.run(scenario())


def test_a_slow_preview_times_out_and_a_full_queue_says_busy() -> None:
    slow = 'export default { async fetch() { await new Promise(r => setTimeout(r, 3000)); return new Response("late"); } };'
    body = {"main": "worker.js", "modules": {"worker.js": slow}}

    async def scenario() -> None:
        previewer = Previewer(max_concurrent=1, queue_timeout_s=0.2, response_timeout_s=1.0)
        try:
            first = asyncio.ensure_future(previewer.run(body))
            await asyncio.sleep(0.05)
            with pytest.raises(PreviewBusy):
                await previewer.run(body)
            result = await first
            assert result["status"] == 504
            assert result["error"]["message"] == "The worker did not finish its response within 1 s."
        finally:
            await previewer.stop()

    asyncio.run(scenario())
