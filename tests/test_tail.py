"""Live tail, analytics and `warren tail`/`warren status`, end to end.

A real control plane and real edge nodes (`warren control`, `warren serve`)
share a store (SQLite, or a real `nats-server -js`); tails are real WebSockets
to the control plane. Nothing waits blindly: each test waits for an event, a
marker request or a count, with a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.test_store_nats import NATS_SERVER, NO_NATS, NatsServer
from warren.store.nats import SECRETS_KEY_ENV, generate_secrets_key

API = "/client/v4"
DOMAIN = "workers.test"
JS = "application/javascript+module"

WORKER = """
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    console.log("handling", url.pathname, { n: 1 });
    if (url.pathname === "/boom") {
      console.error("about to throw");
      throw new TypeError("kaboom");
    }
    if (url.pathname === "/later") {
      ctx.waitUntil(Promise.reject(new RangeError("too late")));
    }
    if (url.pathname === "/secret") {
      console.warn("needle in a haystack");
    }
    return new Response("ok " + url.pathname, { status: url.pathname === "/teapot" ? 418 : 200 });
  },
};
"""


class Platform:
    """A control plane and ``edges`` edge nodes on one store, and an account on it."""

    def __init__(self, tmp_path: Path, spawn: Any, store: str | None = None, edges: int = 1) -> None:
        self.store = store or str(tmp_path / "warren.db")
        self.account_id, self.token = self.create_account("demo")
        self.control = spawn(["control", "--store", self.store])
        self.edges = [
            spawn(["serve", "--store", self.store, "--workers-domain", DOMAIN, "--processes", "1",
                   "--state-dir", f"node{index}"])  # a node's own
            for index in range(edges)
        ]
        self.api = httpx.Client(
            base_url=self.control.url + API, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )

    def create_account(self, name: str) -> tuple[str, str]:
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", self.store, "account", "create", name, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        account = json.loads(created.stdout)
        return account["account_id"], account["token"]

    def scripts(self, path: str = "") -> str:
        return f"/accounts/{self.account_id}/workers/scripts{path}"

    def deploy(self, name: str, source: str = WORKER) -> dict[str, Any]:
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
            "index.js": ("index.js", source, JS),
        }
        response = self.api.put(self.scripts(f"/{name}"), files=files)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        for edge in self.edges:
            self.wait_served(edge, name)
        return result

    def wait_served(self, edge: Any, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.request(name, "/", edge=edge).status_code == 200:
                return
            assert time.monotonic() < deadline, f"{name} is not served by {edge.url}:\n{edge.output}"
            time.sleep(0.05)

    def request(self, name: str, path: str, method: str = "GET", edge: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {"host": f"{name}.demo.{DOMAIN}", **kwargs.pop("headers", {})}
        target = edge or self.edges[0]
        return httpx.request(method, target.url + path, headers=headers, timeout=30, **kwargs)

    def open_tail(self, name: str) -> dict[str, Any]:
        response = self.api.post(self.scripts(f"/{name}/tails"))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def tail(self, name: str, filters: list[dict[str, Any]] | None = None) -> ClientConnection:
        socket = connect(self.open_tail(name)["url"], open_timeout=10, max_size=None, legacy=True)
        if filters is not None:
            socket.send(json.dumps({"filters": filters}))
        return socket


@pytest.fixture
def platform(tmp_path: Path, spawn: Any) -> Iterator[Platform]:
    started = Platform(tmp_path, spawn)
    yield started
    started.api.close()


def receive_until(
    socket: ClientConnection,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15,
    into: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Events from the socket (added to ``into``) until ``done(events)`` holds; fails after ``timeout`` s."""
    events: list[dict[str, Any]] = [] if into is None else into
    deadline = time.monotonic() + timeout
    while not done(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"gave up waiting; received {json.dumps(events, indent=1)[:4000]}")
        try:
            events.append(json.loads(socket.recv(timeout=remaining)))
        except TimeoutError:
            continue
    return events


def path_of(event: dict[str, Any]) -> str:
    url = str(event["event"]["request"]["url"])
    return "/" + url.split("/", 3)[3] if url.count("/") >= 3 else url


def has_path(path: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(path_of(event) == path for event in events)


# -- the event ----------------------------------------------------------------------------------


def test_events_carry_logs_exceptions_and_redacted_headers(platform: Platform) -> None:
    deployed = platform.deploy("hello")
    with platform.tail("hello") as socket:
        started = int(time.time() * 1000)
        headers = {
            "authorization": "Bearer wrn_do-not-show",
            "cookie": "session=do-not-show",
            "x-custom-token": "do-not-show",
            "x-api-key": "do-not-show",
            "x-trace": "visible",
        }
        assert platform.request("hello", "/ok?q=1", headers=headers).text == "ok /ok"
        assert platform.request("hello", "/boom").status_code == 500
        assert platform.request("hello", "/later").status_code == 200
        events = receive_until(socket, lambda got: {path_of(event) for event in got} >= {"/ok?q=1", "/boom", "/later"})

    by_path = {path_of(event): event for event in events}
    ok = by_path["/ok?q=1"]
    assert ok["scriptName"] == "hello"
    assert ok["version"] == deployed["version_id"]
    assert ok["node"]
    assert ok["outcome"] == "ok"
    assert started - 1000 <= ok["eventTimestamp"] <= int(time.time() * 1000)
    assert 0 <= ok["cpuTime"] <= ok["wallTime"] + 1
    request = ok["event"]["request"]
    assert request["method"] == "GET"
    assert request["url"].endswith("/ok?q=1")
    assert request["headers"]["x-trace"] == "visible"
    for name in ("authorization", "cookie", "x-custom-token", "x-api-key"):
        assert request["headers"][name] == "REDACTED"
    assert "do-not-show" not in json.dumps(events)
    assert ok["event"]["response"] == {"status": 200}
    assert [entry["level"] for entry in ok["logs"]] == ["log"]
    assert ok["logs"][0]["message"] == ["handling /ok { n: 1 }"]
    assert abs(ok["logs"][0]["timestamp"] - ok["eventTimestamp"]) < 5000
    assert ok["exceptions"] == []

    boom = by_path["/boom"]
    assert boom["outcome"] == "exception"
    assert boom["event"]["response"] == {"status": 500}
    assert [entry["level"] for entry in boom["logs"]][:2] == ["log", "error"]
    assert boom["logs"][1]["message"] == ["about to throw"]
    (exception,) = boom["exceptions"]
    assert exception["name"] == "TypeError"
    assert exception["message"] == "kaboom"
    assert "kaboom" in exception["stack"] and "index.js" in exception["stack"]
    assert isinstance(exception["timestamp"], int)

    later = by_path["/later"]  # thrown in waitUntil, after the response: the invocation still succeeded
    assert later["outcome"] == "ok"
    assert [(entry["name"], entry["message"]) for entry in later["exceptions"]] == [("RangeError", "too late")]


def test_tail_lifecycle_and_authorisation(platform: Platform) -> None:
    platform.deploy("hello")
    _, other_token = platform.create_account("other")
    assert httpx.post(platform.control.url + API + platform.scripts("/hello/tails")).status_code == 401
    response = httpx.post(
        platform.control.url + API + platform.scripts("/hello/tails"),
        headers={"authorization": f"Bearer {other_token}"},
    )
    assert response.status_code == 403
    assert platform.api.post(platform.scripts("/nothing/tails")).status_code == 404

    created = platform.open_tail("hello")
    assert created["url"].startswith("ws://") and created["url"].endswith(f"/tails/{created['id']}/ws")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", created["expires_at"])
    # The id is the capability: a wrong one (or another script's path) is refused at the handshake.
    with pytest.raises(InvalidStatus):
        connect(created["url"].replace(created["id"], "0" * 32), open_timeout=10)
    with pytest.raises(InvalidStatus):
        connect(created["url"].replace("/hello/", "/other/"), open_timeout=10)

    with connect(created["url"], open_timeout=10, subprotocols=["trace-v1"]) as socket:
        assert socket.subprotocol == "trace-v1"  # as wrangler asks
        deleted = platform.api.delete(platform.scripts(f"/hello/tails/{created['id']}"))
        assert deleted.status_code == 200 and deleted.json()["result"] == {"id": created["id"]}
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert closed.value.rcvd.reason == "the tail was deleted"
    assert platform.api.delete(platform.scripts(f"/hello/tails/{created['id']}")).status_code == 404

    with platform.tail("hello") as socket:
        socket.send("this is not JSON")
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        assert "JSON" in closed.value.rcvd.reason
    with platform.tail("hello", [{"outcome": ["fine"]}]) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd is not None and "unknown outcome 'fine'" in closed.value.rcvd.reason
    # the edge and the control plane are unharmed
    assert platform.request("hello", "/").status_code == 200


# -- filters --------------------------------------------------------------------------------------


def test_filters(platform: Platform) -> None:
    platform.deploy("hello")
    errors = platform.tail("hello", [{"status": "error"}])
    posts = platform.tail("hello", [{"method": ["post"]}])
    search = platform.tail("hello", [{"query": "NEEDLE"}])
    header = platform.tail("hello", [{"header": {"key": "X-Flag", "query": "on"}}])
    both = platform.tail("hello", [{"method": ["GET"]}, {"outcome": ["ok"]}])
    try:
        platform.request("hello", "/a")
        platform.request("hello", "/b", method="POST", content=b"x")
        platform.request("hello", "/secret")
        platform.request("hello", "/c", headers={"x-flag": "off"})
        platform.request("hello", "/d", headers={"x-flag": "on"})
        platform.request("hello", "/boom")  # the last one: every socket has seen all before it once it is here
        platform.request("hello", "/boom", method="POST")
        platform.request("hello", "/boom", headers={"x-flag": "on"})
        platform.request("hello", "/secret", headers={"x-flag": "on"})
        platform.request("hello", "/end", method="POST", headers={"x-flag": "on"})
        platform.request("hello", "/end")

        got = receive_until(errors, lambda events: len(events) == 3)
        assert [(event["event"]["request"]["method"], path_of(event)) for event in got] == [
            ("GET", "/boom"),
            ("POST", "/boom"),
            ("GET", "/boom"),
        ]
        got = receive_until(posts, has_path("/end"))
        assert [path_of(event) for event in got] == ["/b", "/boom", "/end"]
        got = receive_until(search, lambda events: len(events) == 2)
        assert [path_of(event) for event in got] == ["/secret", "/secret"]
        got = receive_until(header, has_path("/end"))
        assert [path_of(event) for event in got] == ["/d", "/boom", "/secret", "/end"]
        got = receive_until(both, lambda events: [path_of(event) for event in events][-1:] == ["/end"])
        assert [path_of(event) for event in got] == ["/a", "/secret", "/c", "/d", "/secret", "/end"]
    finally:
        for socket in (errors, posts, search, header, both):
            socket.close()


def test_sampling_and_changing_filters(platform: Platform) -> None:
    platform.deploy("hello")
    with platform.tail("hello", [{"sampling_rate": 0.5}]) as socket:
        for number in range(200):
            platform.request("hello", f"/n{number}")
        # Markers go through the same sampling: send them until one arrives (each has even odds).
        got: list[dict[str, Any]] = []
        for attempt in range(40):
            platform.request("hello", f"/marker{attempt}")
            try:
                receive_until(socket, lambda events: any("/marker" in path_of(e) for e in events), 2, into=got)
                break
            except AssertionError:
                continue
        sampled = [event for event in got if path_of(event).startswith("/n")]
        assert 50 <= len(sampled) <= 150, len(sampled)
        # A new message replaces the filters: now everything, then only POSTs.
        socket.send(json.dumps({"filters": [{"method": ["POST"]}]}))
        platform.request("hello", "/get")
        platform.request("hello", "/post", method="POST")
        got = receive_until(socket, has_path("/post"))
        assert "/get" not in [path_of(event) for event in got]


# -- several edge nodes -------------------------------------------------------------------------------


def test_one_tail_sees_every_edge_node_on_sqlite(tmp_path: Path, spawn: Any) -> None:
    platform = Platform(tmp_path, spawn, edges=2)
    try:
        platform.deploy("hello")
        with platform.tail("hello") as socket:
            for index, edge in enumerate(platform.edges):
                platform.request("hello", f"/from{index}", edge=edge)
            events = receive_until(socket, lambda got: {path_of(event) for event in got} >= {"/from0", "/from1"})
        nodes = {path_of(event): event["node"] for event in events}
        assert nodes["/from0"] != nodes["/from1"]
        for index, edge in enumerate(platform.edges):
            assert nodes[f"/from{index}"].endswith(":" + edge.url.rsplit(":", 1)[1])
    finally:
        platform.api.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


def test_one_tail_sees_every_edge_node_on_nats(
    tmp_path: Path, spawn: Any, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, generate_secrets_key())
    platform = Platform(tmp_path, spawn, store=nats_server.url, edges=2)
    try:
        platform.deploy("hello")
        platform.deploy("other")
        with platform.tail("hello") as socket, platform.tail("hello", [{"status": "error"}]) as errors:
            for index, edge in enumerate(platform.edges):
                platform.request("hello", f"/from{index}", edge=edge)
                platform.request("other", f"/elsewhere{index}", edge=edge)
                platform.request("hello", "/boom", edge=edge)
            events = receive_until(socket, lambda got: len(got) == 4)
            failed = receive_until(errors, lambda got: len(got) == 2)
        assert sorted(path_of(event) for event in events) == ["/boom", "/boom", "/from0", "/from1"]
        assert {event["scriptName"] for event in events} == {"hello"}
        assert len({event["node"] for event in events}) == 2
        assert len({event["node"] for event in failed}) == 2
        assert all(event["exceptions"][0]["message"] == "kaboom" for event in failed)
        # and one request per edge and script from deploy(), which waits until each edge serves;
        # the two scripts' counts arrive independently, so wait for both before checking them
        counts = wait_for_analytics(
            platform,
            lambda result: totals(result).get("other") == (4, 0) and totals(result).get("hello", (0, 0)) >= (6, 0),
        )
        assert totals(counts)["hello"] == (6, 2)
    finally:
        platform.api.close()


# -- analytics ----------------------------------------------------------------------------------------


def totals(result: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {item["script"]: (item["requests"], item["errors"]) for item in result["scripts"]}


def wait_for_analytics(
    platform: Platform, done: Callable[[dict[str, Any]], bool], timeout: float = 15, **params: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = platform.api.get(f"/accounts/{platform.account_id}/workers/analytics", params=params)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        if done(result):
            return result
        assert time.monotonic() < deadline, f"analytics never got there: {totals(result)}"
        time.sleep(0.1)


def test_analytics_counts_requests_errors_and_cpu(platform: Platform) -> None:
    platform.deploy("hello")
    platform.deploy("quiet", "export default { fetch() { return new Response('q'); } };")
    # what deploy() sent to check the edges serve it
    base = wait_for_analytics(platform, lambda result: totals(result).get("hello") == (1, 0))
    for _ in range(5):
        platform.request("hello", "/")
    for _ in range(2):
        platform.request("hello", "/boom")
    result = wait_for_analytics(platform, lambda result: totals(result).get("hello") == (8, 2))
    assert base["since"] <= result["since"]
    hello = next(item for item in result["scripts"] if item["script"] == "hello")
    assert len(hello["series"]) == 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", hello["series"][0]["minute"])
    assert hello["series"][0]["minute"] == result["since"]
    assert sum(point["requests"] for point in hello["series"]) == 8
    assert sum(point["errors"] for point in hello["series"]) == 2
    assert hello["cpu_ms"] > 0
    assert abs(sum(point["cpu_ms"] for point in hello["series"]) - hello["cpu_ms"]) < 0.01
    assert totals(result)["quiet"] == (1, 0)

    short = platform.api.get(f"/accounts/{platform.account_id}/workers/analytics", params={"minutes": 5})
    assert len(next(item for item in short.json()["result"]["scripts"] if item["script"] == "hello")["series"]) == 5
    for bad in ("0", "121", "abc"):
        response = platform.api.get(f"/accounts/{platform.account_id}/workers/analytics", params={"minutes": bad})
        assert response.status_code == 400, bad
    other_id, other_token = platform.create_account("other")
    response = httpx.get(
        platform.control.url + API + f"/accounts/{platform.account_id}/workers/analytics",
        headers={"authorization": f"Bearer {other_token}"},
    )
    assert response.status_code == 403
    response = httpx.get(
        platform.control.url + API + f"/accounts/{other_id}/workers/analytics",
        headers={"authorization": f"Bearer {other_token}"},
    )
    assert response.json()["result"]["scripts"] == []


# -- the CLI --------------------------------------------------------------------------------------------


class Command:
    """A running ``warren`` client command; its stdout and stderr lines, as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warren.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait(self, lines: list[str], done: Callable[[list[str]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"stdout: {self.stdout}\nstderr: {self.stderr}")
                self._changed.wait(min(remaining, 0.1))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(15)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code


def cli_env(platform: Platform) -> dict[str, str]:
    return {
        "WARREN_API_URL": platform.control.url,
        "WARREN_API_TOKEN": platform.token,
        "WARREN_ACCOUNT_ID": platform.account_id,
        "WARREN_CONFIG_DIR": str(Path(platform.store).parent / "cli-config"),
    }


def test_warren_tail_prints_events_as_json_lines(platform: Platform) -> None:
    platform.deploy("hello")
    command = Command(["tail", "hello", "--format", "json", "--status", "error", "--method", "GET"], cli_env(platform))
    try:
        command.wait(command.stderr, lambda lines: any("waiting for logs" in line for line in lines))
        platform.request("hello", "/fine")
        platform.request("hello", "/boom", method="POST")
        platform.request("hello", "/boom")
        command.wait(command.stdout, lambda lines: len(lines) >= 1)
        event = json.loads(command.stdout[0])
        assert path_of(event) == "/boom" and event["event"]["request"]["method"] == "GET"
        assert event["exceptions"][0]["name"] == "TypeError"
    finally:
        code = command.stop()
    assert code == 0, command.stderr
    assert any("Successfully created tail" in line for line in command.stderr)
    assert len(command.stdout) == 1


def test_warren_tail_pretty_and_search(platform: Platform) -> None:
    platform.deploy("hello")
    command = Command(["tail", "hello", "--search", "needle"], cli_env(platform))
    try:
        command.wait(command.stderr, lambda lines: any("waiting for logs" in line for line in lines))
        platform.request("hello", "/plain")
        platform.request("hello", "/secret")
        command.wait(command.stdout, lambda lines: any("(warn)" in line for line in lines))
    finally:
        command.stop()
    heading, *logs = command.stdout
    assert re.fullmatch(
        r"GET http://hello\.demo\.workers\.test/secret - Ok @ \d+/\d+/\d{4}, \d+:\d\d:\d\d [AP]M", heading
    )
    assert logs == ["  (log) handling /secret { n: 1 }", "  (warn) needle in a haystack"]


def test_warren_status_summarises_analytics_and_a_node(tmp_path: Path, spawn: Any) -> None:
    platform = Platform(tmp_path, spawn, edges=0)
    edge = spawn(
        ["serve", "--store", platform.store, "--workers-domain", DOMAIN, "--processes", "1", "--admin-port", "0"]
    )
    platform.edges = [edge]
    try:
        platform.deploy("hello")
        for _ in range(3):
            platform.request("hello", "/boom")
        wait_for_analytics(platform, lambda result: totals(result).get("hello") == (4, 3))
        shown = subprocess.run(
            [sys.executable, "-m", "warren.cli", "status"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **cli_env(platform)},
        )
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("hello"))
        assert re.match(r"\s+hello\s+4\s+3\s+75\.0\s+\d+\.\d\s+\d+\.\d\d\s+\S+", row), shown.stdout

        metrics_url = re.search(r"Metrics on (http://\S+)/metrics", edge.output).group(1)  # type: ignore[union-attr]
        node = subprocess.run(
            [sys.executable, "-m", "warren.cli", "status", "--metrics", metrics_url, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert node.returncode == 0, node.stderr
        summary = json.loads(node.stdout)
        assert summary["node"].endswith(":" + edge.url.rsplit(":", 1)[1])
        assert summary["workers"]["demo/hello"]["requests"] == 4
        assert summary["workers"]["demo/hello"]["errors"] == 3
        (process,) = summary["processes"].values()
        assert process["warren_isolates_loaded"] >= 1
        assert process["warren_runtime_memory_bytes"] > 10 * 1024 * 1024
        assert summary["totals"]["warren_events_published_total"] >= 4
    finally:
        platform.api.close()
