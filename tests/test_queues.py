"""Queues (issue #10): producers, consumers, retries, the dead-letter queue, batching, durability.

Edge tests run ``warren control`` and ``warren serve`` as real processes on one store
(a SQLite file, or a real ``nats-server -js``); workers log what they receive, and
the nodes' output is the record. ``warren dev`` runs the same on its local store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceProcess
from tests.test_store_nats import KEY, NATS_SERVER, NO_NATS, NatsServer
from warren.store.nats import SECRETS_KEY_ENV

API = "/client/v4"
DOMAIN = "workers.test"

CONSUMER = """
export default {
  async queue(batch, env, ctx) {
    console.log(`batch ${batch.queue} size=${batch.messages.length}`);
    for (const message of batch.messages) {
      const body = message.body;
      console.log(`got ${batch.queue} ${message.id} attempts=${message.attempts} body=${JSON.stringify(body)}`);
      if (batch.queue === "jobs" && body.fail) message.retry();
      else if (batch.queue === "jobs" && body.later && message.attempts === 1) message.retry({ delaySeconds: 2 });
      else if (batch.queue === "jobs" && body.hang && message.attempts === 1) await new Promise(() => setTimeout(() => {}, 600000));
      else message.ack();
    }
  },
};
"""

PRODUCER = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname !== "/send") return new Response("producer");
    const count = Number(url.searchParams.get("n") ?? 1);
    const body = JSON.parse(url.searchParams.get("body") ?? "{}");
    if (count === 1) await env.JOBS.send(body);
    else await env.JOBS.sendBatch(Array.from({ length: count }, (_, i) => ({ body: { ...body, i } })));
    return new Response(`sent ${count}`);
  },
};
"""


class Platform:
    """``warren control`` and edge nodes on one store; an account "demo" and its API."""

    def __init__(self, store: str, tmp_path: Path, spawn: Any, nodes: int = 1) -> None:
        self.store = store
        self.spawn = spawn
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", store, "account", "create", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=tmp_path,
        )
        account = json.loads(created.stdout)
        self.account_id: str = account["account_id"]
        self.token: str = account["token"]
        self.control = spawn(["control", "--store", store])
        self.api = httpx.Client(
            base_url=self.control.url + API, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )
        self.started = 0
        self.nodes = [self.start_node() for _ in range(nodes)]

    def start_node(self) -> ServiceProcess:
        self.started += 1  # each node with a state directory of its own
        node: ServiceProcess = self.spawn(
            ["serve", "--store", self.store, "--workers-domain", DOMAIN, "--processes", "1",
             "--state-dir", f"node{self.started}"]
        )
        return node

    def close(self) -> None:
        self.api.close()

    def path(self, path: str) -> str:
        return f"/accounts/{self.account_id}{path}"

    def create_queue(self, name: str) -> dict[str, Any]:
        response = self.api.post(self.path("/queues"), json={"queue_name": name})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def upload(self, name: str, source: str, bindings: list[dict[str, Any]] | None = None) -> httpx.Response:
        metadata = {"main_module": "index.js", "bindings": bindings or []}
        files = {
            "metadata": (None, json.dumps(metadata), "application/json"),
            "index.js": ("index.js", source, "application/javascript+module"),
        }
        return self.api.put(self.path(f"/workers/scripts/{name}"), files=files)

    def consume(self, queue: str, script: str, dead_letter_queue: str = "", **settings: int) -> None:
        body = {"script_name": script, "type": "worker", "dead_letter_queue": dead_letter_queue, "settings": settings}
        response = self.api.post(self.path(f"/queues/{queue}/consumers"), json=body)
        assert response.status_code == 200, response.text

    def send(self, node: ServiceProcess, count: int = 1, **body: Any) -> None:
        query = {"n": str(count), "body": json.dumps(body)}
        response = httpx.get(node.url + "/send", params=query, headers={"host": f"producer.demo.{DOMAIN}"}, timeout=30)
        assert response.status_code == 200 and response.text == f"sent {count}", response.text

    def wait_served(self, script: str) -> None:
        deadline = time.monotonic() + 15
        for node in self.nodes:
            while httpx.get(node.url + "/", headers={"host": f"{script}.demo.{DOMAIN}"}, timeout=30).status_code == 404:
                assert time.monotonic() < deadline, f"{script} is not served"
                time.sleep(0.05)


def received(nodes: list[ServiceProcess]) -> list[tuple[int, str, str, int, Any]]:
    """(node, queue, message id, attempts, body) of every message a consumer was given."""
    found = []
    for index, node in enumerate(nodes):
        for match in re.finditer(r"got (\S+) (\S+) attempts=(\d+) body=(.*)$", node.output, re.M):
            found.append((index, match.group(1), match.group(2), int(match.group(3)), json.loads(match.group(4))))
    return found


def wait_until(condition: Any, timeout: float, what: str, nodes: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; output:\n" + "\n---\n".join(node.output for node in nodes))
        time.sleep(0.05)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "nats"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "warren.db")
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)
    server: NatsServer = request.getfixturevalue("nats_server")
    return server.url


@pytest.fixture
def platform(store_url: str, tmp_path: Path, spawn: Any) -> Iterator[Any]:
    made: list[Platform] = []

    def make(nodes: int = 1) -> Platform:
        made.append(Platform(store_url, tmp_path, spawn, nodes))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _producer_and_consumer(platform: Platform, dead_letter: bool = True, **settings: int) -> None:
    platform.create_queue("jobs")
    if dead_letter:
        platform.create_queue("jobs-dlq")
    assert platform.upload("consumer", CONSUMER).is_success
    producer = platform.upload("producer", PRODUCER, [{"type": "queue", "name": "JOBS", "queue_name": "jobs"}])
    assert producer.is_success, producer.text
    platform.consume("jobs", "consumer", "jobs-dlq" if dead_letter else "", **settings)
    if dead_letter:
        platform.consume("jobs-dlq", "consumer", batch_size=10, max_wait_ms=100)
    platform.wait_served("producer")


def test_a_failing_message_is_retried_then_dead_lettered(platform: Any) -> None:
    edge: Platform = platform()
    _producer_and_consumer(edge, batch_size=10, max_wait_ms=200, max_retries=2)
    node = edge.nodes[0]
    edge.send(node, tag="good")
    edge.send(node, tag="bad", fail=True)

    def dead_lettered() -> bool:
        return any(queue == "jobs-dlq" for _, queue, *_ in received(edge.nodes))

    wait_until(dead_lettered, 30, "the failing message never reached the dead-letter queue", edge.nodes)
    got = received(edge.nodes)
    good = [entry for entry in got if entry[4].get("tag") == "good"]
    bad = [entry for entry in got if entry[4].get("tag") == "bad"]
    assert [(queue, attempts) for _, queue, _, attempts, _ in good] == [("jobs", 1)]
    # Delivered 1 + max_retries times on its queue, then once on the dead-letter queue, body intact.
    assert [(queue, attempts) for _, queue, _, attempts, _ in bad] == [("jobs", 1), ("jobs", 2), ("jobs", 3), ("jobs-dlq", 1)]
    assert len({message_id for _, _, message_id, _, _ in bad}) == 1
    assert bad[-1][4] == {"tag": "bad", "fail": True}
    node.wait_for(r"queue jobs: 1 message\(s\) moved to jobs-dlq")
    time.sleep(1.0)
    assert len(received(edge.nodes)) == len(got)  # nothing more: the dead letter was acked
    queues = {queue["queue_name"]: queue for queue in edge.api.get(edge.path("/queues")).json()["result"]}
    assert queues["jobs"]["backlog_count"] == 0 and queues["jobs-dlq"]["backlog_count"] == 0
    assert queues["jobs"]["consumers"][0]["settings"]["max_retries"] == 2
    assert queues["jobs"]["consumers"][0]["dead_letter_queue"] == "jobs-dlq"


def test_three_nodes_deliver_each_message_once(platform: Any) -> None:
    edge: Platform = platform(nodes=3)
    _producer_and_consumer(edge, dead_letter=False, batch_size=5, max_wait_ms=100)
    for round_number in range(6):
        edge.send(edge.nodes[round_number % 3], count=10, round=round_number)

    wait_until(lambda: len(received(edge.nodes)) >= 60, 45, "not every message was delivered", edge.nodes)
    time.sleep(1.0)
    got = received(edge.nodes)
    counts = Counter(message_id for _, _, message_id, _, _ in got)
    assert len(counts) == 60 and set(counts.values()) == {1}, counts
    assert sorted((body["round"], body["i"]) for *_, body in got) == [(r, i) for r in range(6) for i in range(10)]
    sizes = [
        int(size) for node in edge.nodes for size in re.findall(r"batch jobs size=(\d+)", node.output)
    ]
    assert sum(sizes) == 60 and max(sizes) <= 5


def test_batch_size_and_batch_timeout(tmp_path: Path, spawn: Any) -> None:
    edge = Platform(str(tmp_path / "warren.db"), tmp_path, spawn)
    try:
        _producer_and_consumer(edge, dead_letter=False, batch_size=4, max_wait_ms=1500)
        node = edge.nodes[0]
        start = len(node.lines)
        sent = time.monotonic()
        edge.send(node, count=10, kind="burst")
        # Full batches go at once; the last two wait for the batch timeout.
        node.wait_for(r"queue jobs: batch of 4 ", timeout=10, start=start)
        full = time.monotonic() - sent
        node.wait_for(r"queue jobs: batch of 2 ", timeout=10, start=start)
        partial = time.monotonic() - sent
        assert full < 1.2, full
        assert 1.4 <= partial < 4.0, partial
        assert re.findall(r"queue jobs: batch of (\d+) ", "\n".join(node.lines[start:])) == ["4", "4", "2"]

        # One message alone waits for the timeout too.
        start = len(node.lines)
        sent = time.monotonic()
        edge.send(node, kind="single")
        node.wait_for(r"queue jobs: batch of 1 ", timeout=10, start=start)
        assert 1.4 <= time.monotonic() - sent < 4.0

        # retry({ delaySeconds: 2 }) holds the message back that long.
        start = len(node.lines)
        edge.send(node, kind="later", later=True)
        node.wait_for(r"got jobs \S+ attempts=1 body=.*later", timeout=10, start=start)
        first = time.monotonic()
        node.wait_for(r"got jobs \S+ attempts=2 body=.*later", timeout=10, start=start)
        assert time.monotonic() - first >= 1.9
    finally:
        edge.close()


def test_messages_survive_an_edge_node_restart(
    tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARREN_QUEUE_LEASE_S", "2")
    edge = Platform(str(tmp_path / "warren.db"), tmp_path, spawn, nodes=0)
    try:
        # Sent while no edge node runs: the store keeps them.
        edge.create_queue("jobs")
        for index in range(3):
            message = {"body": {"tag": "early", "i": index}, "content_type": "json"}
            assert edge.api.post(edge.path("/queues/jobs/messages"), json=message).is_success
        assert edge.upload("consumer", CONSUMER).is_success
        assert edge.upload("producer", PRODUCER, [{"type": "queue", "name": "JOBS", "queue_name": "jobs"}]).is_success
        edge.consume("jobs", "consumer", batch_size=10, max_wait_ms=200)
        first = edge.start_node()
        edge.nodes = [first]
        wait_until(lambda: len(received([first])) == 3, 20, "the early messages were not delivered", [first])

        # A batch in progress when its node dies is delivered again, to the next node.
        edge.wait_served("producer")
        edge.send(first, count=2, hang=True)
        first.wait_for(r"got jobs \S+ attempts=1 body=.*hang.*\"i\":0")
        first.process.kill()  # SIGKILL: no goodbye, the leases are simply not extended any more
        first.process.wait(10)
        second = edge.start_node()
        edge.nodes = [second]
        wait_until(
            lambda: len([entry for entry in received([second]) if entry[4].get("hang")]) == 2,
            20, "the interrupted batch was not delivered again", [second],
        )
        again = [entry for entry in received([second]) if entry[4].get("hang")]
        assert sorted((body["i"], attempts) for *_, attempts, body in again) == [(0, 2), (1, 2)]
        second.wait_for(r"queue jobs: batch of 2 \(ok\): 2 acked")
    finally:
        edge.close()


def test_queues_in_dev(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": """
                name = "qw"
                main = "index.js"
                [[queues.producers]]
                binding = "JOBS"
                queue = "jobs"
                [[queues.consumers]]
                queue = "jobs"
                max_batch_size = 3
                max_batch_timeout = 0.2
                max_retries = 1
                dead_letter_queue = "jobs-dlq"
                [[queues.consumers]]
                queue = "jobs-dlq"
                max_batch_timeout = 0
            """,
            "index.js": """
                export default {
                  async fetch(request, env) {
                    await env.JOBS.send({ n: 1, fail: true });
                    await env.JOBS.sendBatch([
                      { body: "text", contentType: "text" },
                      { body: new Uint8Array([7, 8]), contentType: "bytes" },
                      { body: { when: new Date(0), big: 2n ** 70n, map: new Map([[1, "x"]]) } },
                    ]);
                    const errors = [];
                    for (const attempt of [
                      () => env.JOBS.send("x".repeat(128 * 1024 + 1), { contentType: "text" }),
                      () => env.JOBS.sendBatch(Array.from({ length: 101 }, () => ({ body: 1 }))),
                      () => env.JOBS.send(1, { contentType: "yaml" }),
                      () => env.JOBS.send(1, { delaySeconds: 50000 }),
                      () => env.JOBS.send(1, { contentType: "text" }),
                      () => env.JOBS.sendBatch([{ body: "y".repeat(100000), contentType: "text" }, { body: "y".repeat(100000), contentType: "text" }, { body: "y".repeat(100000), contentType: "text" }]),
                    ]) {
                      try { await attempt(); errors.push("sent"); } catch (error) { errors.push(error.name); }
                    }
                    return Response.json(errors);
                  },
                  async queue(batch) {
                    for (const message of batch.messages) {
                      const body = message.body;
                      const shown = body instanceof ArrayBuffer ? [...new Uint8Array(body)]
                        : body && body.map ? [body.when.getTime(), String(body.big), body.map.get(1)] : body;
                      console.log(`got ${batch.queue} attempts=${message.attempts} ${JSON.stringify(shown)} ${message.timestamp instanceof Date}`);
                      if (body && body.fail) message.retry(); else message.ack();
                    }
                  },
                };
            """,
        },
        ".",
    )
    assert server.get("/").json() == ["RangeError", "RangeError", "TypeError", "RangeError", "TypeError", "RangeError"]
    server.wait_for(r'got jobs-dlq attempts=1 \{"n":1,"fail":true\} true', timeout=20)
    output = server.output
    assert re.search(r'got jobs attempts=1 \{"n":1,"fail":true\}', output)
    assert re.search(r'got jobs attempts=2 \{"n":1,"fail":true\}', output)
    assert 'got jobs attempts=1 "text" true' in output
    assert "got jobs attempts=1 [7,8] true" in output
    assert 'got jobs attempts=1 [0,"1180591620717411303424","x"] true' in output
    assert "Created local queue jobs-dlq" in output


def test_queue_commands_api_and_deploy(tmp_path: Path, spawn: Any) -> None:
    edge = Platform(str(tmp_path / "warren.db"), tmp_path, spawn, nodes=0)
    env = dict(
        os.environ,
        WARREN_API_URL=edge.control.url,
        WARREN_API_TOKEN=edge.token,
        WARREN_CONFIG_DIR=str(tmp_path),
    )

    def warren(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "warren.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )

    try:
        created = warren("queues", "create", "jobs")
        assert created.returncode == 0 and created.stdout.startswith("✔ Created queue jobs"), created.stderr
        assert warren("queues", "create", "jobs").returncode == 1  # taken
        bad = warren("queues", "create", "Bad Name")
        assert bad.returncode == 1 and "invalid queue name" in bad.stderr
        assert edge.api.post(edge.path("/queues"), json={"queue_name": "jobs"}).status_code == 409

        # A producer binding must name a queue of the account.
        missing = edge.upload("producer", PRODUCER, [{"type": "queue", "name": "JOBS", "queue_name": "nope"}])
        assert missing.status_code == 400 and "queue 'nope' does not exist" in missing.text
        bad_delay = edge.upload(
            "producer", PRODUCER, [{"type": "queue", "name": "JOBS", "queue_name": "jobs", "delivery_delay": -1}]
        )
        assert bad_delay.status_code == 400

        project = tmp_path / "consumer"
        project.mkdir()
        (project / "index.js").write_text(CONSUMER)
        (project / "wrangler.toml").write_text(
            'name = "consumer"\nmain = "index.js"\n'
            '[[queues.producers]]\nbinding = "JOBS"\nqueue = "jobs"\n'
            '[[queues.consumers]]\nqueue = "jobs"\nmax_batch_size = 7\nmax_batch_timeout = 2.5\nmax_retries = 9\n'
            'retry_delay = 30\n'
        )
        deployed = warren("deploy", "--no-bundle", cwd=project)
        assert deployed.returncode == 0, deployed.stderr
        assert "consumer of   jobs" in deployed.stdout
        queue = edge.api.get(edge.path("/queues/jobs")).json()["result"]
        assert queue["consumers"][0]["script"] == "consumer"
        assert queue["consumers"][0]["settings"] == {
            "batch_size": 7, "max_wait_time_ms": 2500, "max_retries": 9, "retry_delay": 30,
        }
        versions = edge.api.get(edge.path("/workers/scripts/consumer/versions")).json()["result"]
        assert {"type": "queue", "name": "JOBS", "queue_name": "jobs"} in versions[0]["bindings"]

        # One consumer per queue.
        other = edge.api.post(edge.path("/queues/jobs/consumers"), json={"script_name": "other", "type": "worker"})
        assert other.status_code == 409
        bad_settings = edge.api.post(
            edge.path("/queues/jobs/consumers"), json={"script_name": "consumer", "settings": {"batch_size": 1000}}
        )
        assert bad_settings.status_code == 400

        listed = warren("queues", "list")
        assert re.search(r"^jobs\s+[0-9a-f]{32}\s+consumer consumer\s+backlog 0$", listed.stdout, re.M), listed.stdout
        assert warren("queues", "consumer", "remove", "jobs", "consumer").returncode == 0
        added = warren("queues", "consumer", "add", "jobs", "consumer", "--batch-size", "3", "--message-retries", "1")
        assert added.returncode == 0, added.stderr
        settings = edge.api.get(edge.path("/queues/jobs")).json()["result"]["consumers"][0]["settings"]
        assert settings["batch_size"] == 3 and settings["max_retries"] == 1

        (project / "wrangler.toml").write_text(
            'name = "consumer"\nmain = "index.js"\n[[queues.consumers]]\nqueue = "ghost"\n'
        )
        ghost = warren("deploy", "--no-bundle", cwd=project)
        assert ghost.returncode == 1 and "queue ghost does not exist" in ghost.stderr

        deleted = warren("queues", "delete", "jobs", "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(warren("queues", "list", "--json").stdout) == []
        assert edge.api.get(edge.path("/queues/jobs")).status_code == 404
    finally:
        edge.close()


# -- the store itself, both backends ---------------------------------------------------------------


def _store(url: str) -> Any:
    from warren.store.open import open_store

    return open_store(url)


def test_queue_store_contract(store_url: str) -> None:
    import asyncio

    from warren.store import Conflict, InvalidInput, NotFound, OutgoingMessage, QueueConsumer

    async def body() -> None:
        first, second = _store(store_url), _store(store_url)
        await first.open()
        await second.open()
        try:
            account = await first.create_account("queues")
            other = await first.create_account("others")
            jobs = await first.create_queue(account.id, "jobs")
            dlq = await first.create_queue(account.id, "jobs-dlq")
            with pytest.raises(Conflict):
                await second.create_queue(account.id, "jobs")
            with pytest.raises(InvalidInput):
                await first.create_queue(account.id, "Not A Name")
            await first.create_queue(other.id, "jobs")  # names are per account
            assert [queue.name for queue in await second.list_queues(account.id)] == ["jobs", "jobs-dlq"]
            assert (await second.get_queue(account.id, jobs.id)) == (await second.get_queue(account.id, "jobs"))
            assert await second.get_queue(other.id, jobs.id) is None  # another account's id

            consumer = QueueConsumer(script="worker", batch_size=5, max_retries=1, dead_letter_queue="jobs-dlq")
            updated = await first.put_queue_consumer(account.id, jobs.id, consumer)
            assert updated.consumers[0].script == "worker" and updated.consumers[0].batch_size == 5
            with pytest.raises(Conflict):
                await first.put_queue_consumer(account.id, jobs.id, QueueConsumer(script="another"))
            with pytest.raises(InvalidInput):
                await first.put_queue_consumer(account.id, jobs.id, QueueConsumer(script="worker", batch_size=0))
            assert [(q.name, c.script) for q, c in await second.queue_consumers()] == [("jobs", "worker")]

            sent = await first.queue_send(account.id, jobs.id, [OutgoingMessage(b"one", "text"),
                                                                  OutgoingMessage(b"\x00\xff", "bytes"),
                                                                  OutgoingMessage(b"later", "text", delay_s=2)])
            assert len(sent) == 3 and await first.queue_backlog(account.id, jobs.id) == 3
            # A message is leased to one receiver: the second store gets nothing while the first holds them.
            got = await first.queue_receive(account.id, jobs.id, 10, 30)
            assert [(m.body, m.content_type, m.attempts) for m in got] == [(b"one", "text", 1), (b"\x00\xff", "bytes", 1)]
            assert await second.queue_receive(account.id, jobs.id, 10, 30) == []
            await first.queue_retry(account.id, jobs.id, [(got[0], 0)])
            await first.queue_ack(account.id, jobs.id, [got[1]])
            again = await second.queue_receive(account.id, jobs.id, 10, 30)
            assert [(m.id, m.body, m.attempts) for m in again] == [(got[0].id, b"one", 2)]
            await second.queue_dead_letter(account.id, jobs.id, again, dlq.id)
            dead = await first.queue_receive(account.id, dlq.id, 10, 30)
            assert [(m.id, m.body, m.attempts) for m in dead] == [(got[0].id, b"one", 1)]
            await first.queue_ack(account.id, dlq.id, dead)
            await asyncio.sleep(2.1)  # the delayed one comes due
            later = await second.queue_receive(account.id, jobs.id, 10, 30)
            assert [m.body for m in later] == [b"later"]
            await second.queue_ack(account.id, jobs.id, later)
            assert await first.queue_backlog(account.id, jobs.id) == 0

            assert await first.delete_queue_consumer(account.id, jobs.id, "worker")
            assert not await first.delete_queue_consumer(account.id, jobs.id, "worker")
            assert await second.queue_consumers() == []
            assert await first.delete_queue(account.id, jobs.id)
            assert not await first.delete_queue(account.id, jobs.id)
            assert await second.get_queue(account.id, "jobs") is None
            with pytest.raises(NotFound):
                await second.queue_send(account.id, jobs.id, [OutgoingMessage(b"x", "text")])
        finally:
            await first.close()
            await second.close()

    asyncio.run(body())
