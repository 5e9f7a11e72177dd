"""Several runtime processes: a worker stays in one, and trust levels never share one."""

from __future__ import annotations

import concurrent.futures
import tempfile
import textwrap
import time
from typing import Any

import httpx

from warren.runtime import WorkerScript

COUNTER = "let n = 0;\nexport default { fetch() { n++; return new Response(String(n)); } };"


def _pid(harness: Any, name: str) -> int:
    key = harness.supervisor.deployments[name]
    process = harness._run(harness.supervisor._process_for(key))
    return int(process.process.pid)


def test_a_worker_lives_in_one_process_and_workers_spread_over_them(edge: Any) -> None:
    scripts = {f"w{index}": COUNTER for index in range(12)}
    harness = edge(scripts, processes=3)
    assert len(harness.supervisor.processes()) == 3
    for name in scripts:
        # a counter that keeps counting: every request reached the same isolate
        assert [harness.get(f"/{name}").text for _ in range(5)] == ["1", "2", "3", "4", "5"]
    used = {_pid(harness, name) for name in scripts}
    assert len(used) >= 2, "twelve workers all hashed to one of three processes"


def test_trust_levels_run_in_separate_processes(edge: Any) -> None:
    harness = edge({"standard": COUNTER}, processes=1)
    untrusted = WorkerScript(
        name="untrusted",
        source="export default { fetch() { return new Response(String(new Array(60000000).fill(1.5).length)); } };",
        trust_level="untrusted",
    )
    harness._run(harness.supervisor.deploy(untrusted))
    slow = WorkerScript(
        name="slow",
        source=textwrap.dedent(
            """
            export default { async fetch() { await new Promise((r) => setTimeout(r, 1500)); return new Response("slow"); } };
            """
        ),
    )
    harness._run(harness.supervisor.deploy(slow))
    assert len(harness.supervisor.processes()) == 2
    assert _pid(harness, "untrusted") != _pid(harness, "standard") == _pid(harness, "slow")
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.get, harness.url + "/slow")
        time.sleep(0.3)
        assert client.get(harness.url + "/untrusted").status_code == 503  # its own process died
        assert in_flight.result().text == "slow"  # not even retried: another process
    assert harness.get("/standard").text == "1"
    assert [crash.scripts for crash in harness.supervisor.crashes] == [["untrusted"]]


def test_the_activity_board_has_no_name_on_disk(edge: Any) -> None:
    # A supervisor killed with SIGKILL cleans nothing up: the board on which the runtime
    # writes which script it is running must not be a file that outlives both processes.
    harness = edge({"w": COUNTER}, processes=1)
    assert harness.get("/w").text == "1"
    [runtime] = harness.supervisor.processes()
    assert runtime.process is not None
    temp = tempfile.gettempdir()
    with open(f"/proc/{runtime.process.pid}/maps") as maps:
        mapped = [line.split(maxsplit=5)[-1].strip() for line in maps if f" {temp}/" in line]
    boards = [path for path in mapped if "warren-activity-" in path or path.startswith(f"{temp}/#")]
    assert boards, f"the runtime maps no activity board: {mapped}"
    assert all(path.endswith("(deleted)") for path in boards), boards
