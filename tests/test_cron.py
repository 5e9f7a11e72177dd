"""Cron triggers (issue #10): stored with the script, fired once per occurrence across edge nodes.

Three real ``warren serve`` processes follow one store (a SQLite file, then a real
``nats-server -js``) with a clock that runs 60 times faster (``WARREN_TEST_CLOCK``),
so a cron minute passes every second: each occurrence must run the worker's
``scheduled()`` handler exactly once, on one of the nodes. Also: the schedules API,
``warren deploy`` sending ``[triggers] crons``, and the claim itself on both stores.
"""

from __future__ import annotations

import asyncio
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

from tests.test_store_nats import KEY, NATS_SERVER, NO_NATS, NatsServer
from warren.store import SQLiteStore, Store
from warren.store.nats import SECRETS_KEY_ENV, NATSStore
from warren.triggers import ScaledClock, occurrences

API = "/client/v4"
DOMAIN = "workers.test"
SPEED = 60.0
FIRED = re.compile(r"⏰ ticker: cron '([^']+)' at \S+ \(scheduledTime (\d+)\): (\S+)")
TICKER = """
export default {
  fetch() { return new Response("ticker"); },
  async scheduled(controller, env, ctx) {
    controller.noRetry();
    console.log(`fired ${controller.cron} ${controller.scheduledTime}`);
  },
};
"""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


def test_occurrences_are_utc_and_bounded() -> None:
    start = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    minutes = occurrences("* * * * *", start, start + 300)
    assert minutes == [1_700_000_040.0 + 60 * n for n in range(5)]
    assert occurrences("0 0 * * *", start, start + 3600) == []
    assert occurrences("0 23 * * *", start, start + 3600) == [1_700_002_800.0]  # 23:00 UTC, whatever the host's zone
    assert len(occurrences("* * * * *", start, start + 86400, limit=10)) == 10  # a long pause fires the latest few
    clock = ScaledClock(time.time() - 10, 6.0)  # started 10 s ago, 6x: 60 s of clock time have passed
    assert clock.now() - (time.time() - 10) == pytest.approx(60, abs=1)
    assert clock.to_real(60) == 10


async def _claim_race(stores: list[Store]) -> list[list[bool]]:
    for store in stores:
        await store.open()
    try:
        account = await stores[0].create_account("racer")
        rounds = []
        for minute in range(5):
            moment = 1_700_000_040_000 + minute * 60_000
            rounds.append(
                list(await asyncio.gather(*(store.claim_cron(account.id, "w", "* * * * *", moment) for store in stores)))
            )
        # Another cron of the same script at the same time is another occurrence.
        rounds.append(
            list(await asyncio.gather(*(store.claim_cron(account.id, "w", "*/2 * * * *", 1_700_000_040_000)
                                         for store in stores)))
        )
        return rounds
    finally:
        for store in stores:
            await store.close()


def test_one_claim_wins_per_occurrence_on_sqlite(tmp_path: Path) -> None:
    rounds = asyncio.run(_claim_race([SQLiteStore(tmp_path / "warren.db") for _ in range(3)]))
    assert [claims.count(True) for claims in rounds] == [1] * 6


def test_one_claim_wins_per_occurrence_on_nats(nats_server: NatsServer) -> None:
    rounds = asyncio.run(_claim_race([NATSStore(nats_server.url, secrets_key=KEY) for _ in range(3)]))
    assert [claims.count(True) for claims in rounds] == [1] * 6


# -- three edge nodes ----------------------------------------------------------------------------


class Cluster:
    """``warren control`` and three ``warren serve`` on one store, their triggers on a fast clock."""

    def __init__(self, store: str, tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WARREN_TEST_CLOCK", f"{time.time()}:{SPEED}")
        created = subprocess.run(
            [sys.executable, "-m", "warren.cli", "control", "--store", store, "account", "create", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=tmp_path,
            env=dict(os.environ),
        )
        account = json.loads(created.stdout)
        self.account_id = account["account_id"]
        self.control = spawn(["control", "--store", store])
        self.nodes = [
            spawn(["serve", "--store", store, "--workers-domain", DOMAIN, "--processes", "1", "--state-dir", f"node{n}"])
            for n in range(3)
        ]
        self.api = httpx.Client(
            base_url=self.control.url + API, headers={"authorization": f"Bearer {account['token']}"}, timeout=30
        )

    def script(self, path: str = "") -> str:
        return f"/accounts/{self.account_id}/workers/scripts/ticker{path}"

    def deploy_ticker(self, crons: list[str]) -> None:
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js"}), "application/json"),
            "index.js": ("index.js", TICKER, "application/javascript+module"),
        }
        assert self.api.put(self.script(), files=files).is_success
        answer = self.api.put(self.script("/schedules"), json=[{"cron": cron} for cron in crons])
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == {"schedules": [{"cron": cron} for cron in crons]}

    def fired(self, outputs: list[str] | None = None) -> list[tuple[int, str, int, str]]:
        """(node, cron, scheduled time ms, outcome) of every occurrence a node claimed and ran."""
        outputs = outputs if outputs is not None else [node.output for node in self.nodes]
        return [
            (index, match.group(1), int(match.group(2)), match.group(3))
            for index, output in enumerate(outputs)
            for match in FIRED.finditer(output)
        ]

    def close(self) -> None:
        self.api.close()


def _check_each_occurrence_fired_once(cluster: Cluster) -> None:
    cluster.deploy_ticker(["* * * * *", "*/2 * * * *"])
    deadline = time.monotonic() + 30
    while len([f for f in cluster.fired() if f[1] == "* * * * *"]) < 10:
        assert time.monotonic() < deadline, "the crons did not fire:\n" + "\n".join(n.output for n in cluster.nodes)
        time.sleep(0.2)
    time.sleep(2.0)  # a few more minutes of clock time, from all three nodes
    outputs = [node.output for node in cluster.nodes]
    fired = cluster.fired(outputs)
    newest = max(moment for _, _, moment, _ in fired)

    for cron, step in (("* * * * *", 60_000), ("*/2 * * * *", 120_000)):
        times = Counter(moment for _, which, moment, _ in fired if which == cron)
        duplicates = {moment: count for moment, count in times.items() if count > 1}
        assert not duplicates, f"{cron} fired more than once at {duplicates}"
        assert all(moment % step == 0 for moment in times), f"{cron} fired off its schedule: {sorted(times)}"
        # No occurrence skipped between the first and the last (the newest may still be running).
        settled = sorted(moment for moment in times if moment <= max(times) - 2 * step)
        assert settled == list(range(settled[0], settled[-1] + step, step)), f"{cron} skipped: {settled}"
    assert {outcome for *_, outcome in fired} == {"ok"}
    # Each claim ran the worker once, on the node that made it (the last ones may be running still).
    settled_at = newest - 240_000
    for index, output in enumerate(outputs):
        claimed = Counter((cron, moment) for who, cron, moment, _ in fired if who == index and moment <= settled_at)
        ran = Counter(
            (match.group(1), int(match.group(2)))
            for match in re.finditer(r"fired (\S+ \S+ \S+ \S+ \S+) (\d+)", output)
            if int(match.group(2)) <= settled_at
        )
        assert claimed == ran


def test_three_nodes_on_sqlite_fire_each_occurrence_once(
    tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(str(tmp_path / "warren.db"), tmp_path, spawn, monkeypatch)
    try:
        _check_each_occurrence_fired_once(cluster)
    finally:
        cluster.close()


def test_three_nodes_on_nats_fire_each_occurrence_once(
    tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch, nats_server: NatsServer
) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, KEY)
    cluster = Cluster(nats_server.url, tmp_path, spawn, monkeypatch)
    try:
        _check_each_occurrence_fired_once(cluster)
    finally:
        cluster.close()


def test_schedules_api_and_deploy(tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
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
    project = tmp_path / "project"
    project.mkdir()
    (project / "index.js").write_text(TICKER)
    (project / "wrangler.toml").write_text(
        'name = "ticker"\nmain = "index.js"\n[triggers]\ncrons = ["*/5 * * * *", "0 12 * * MON"]\n'
    )
    env = dict(os.environ, WARREN_API_URL=control.url, WARREN_API_TOKEN=account["token"], WARREN_CONFIG_DIR=str(tmp_path))
    deployed = subprocess.run(
        [sys.executable, "-m", "warren.cli", "deploy", "--no-bundle"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )
    assert deployed.returncode == 0, deployed.stderr
    assert "schedules     */5 * * * *, 0 12 * * MON" in deployed.stdout
    with httpx.Client(
        base_url=control.url + API, headers={"authorization": f"Bearer {account['token']}"}, timeout=30
    ) as api:
        _check_schedules(api, account["account_id"], project, env, store)


def _check_schedules(api: httpx.Client, account_id: str, project: Path, env: dict[str, str], store: Path) -> None:
    account = {"account_id": account_id}
    schedules = f"/accounts/{account['account_id']}/workers/scripts/ticker/schedules"
    assert api.get(schedules).json()["result"] == {"schedules": [{"cron": "*/5 * * * *"}, {"cron": "0 12 * * MON"}]}

    bad = api.put(schedules, json=[{"cron": "every minute"}])
    assert bad.status_code == 400 and "is not a cron expression" in bad.json()["errors"][0]["message"]
    assert api.put(schedules, json={"cron": "* * * * *"}).status_code == 400
    too_many = api.put(schedules, json=[{"cron": f"{minute} * * * *"} for minute in range(11)])
    assert too_many.status_code == 400
    assert api.get(f"/accounts/{account['account_id']}/workers/scripts/nothing/schedules").status_code == 404

    # A config without crons clears them, as wrangler's deploy does.
    (project / "wrangler.toml").write_text('name = "ticker"\nmain = "index.js"\n')
    assert subprocess.run(
        [sys.executable, "-m", "warren.cli", "deploy", "--no-bundle"], cwd=project, env=env, capture_output=True,
        timeout=60,
    ).returncode == 0
    assert api.get(schedules).json()["result"] == {"schedules": []}

    # Deleting the script removes its triggers with it.
    assert api.put(schedules, json=[{"cron": "* * * * *"}]).is_success
    assert api.delete(f"/accounts/{account['account_id']}/workers/scripts/ticker").is_success
    assert asyncio.run(_all_schedules(store)) == []


async def _all_schedules(path: Path) -> list[tuple[str, str, list[str]]]:
    async with SQLiteStore(path) as store:
        return await store.all_schedules()
