"""The pieces of observability on their own: events and their bounds, redaction, filters,
the publisher against real stores (down, locked, full), the stores' event rings (SQLite,
and a real NATS JetStream), what the runtime reports per invocation, and the metrics.

The end-to-end path (edge nodes -> store -> control plane -> WebSocket) is tests/test_tail.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from tests.test_store_nats import NATS_SERVER, NO_NATS, NatsServer
from warren.cli.tail import build_filters, format_pretty
from warren.observability import EventPublisher, FilterError, TailFilter, build_event, redact_headers
from warren.observability.analytics import analytics_result, minute_of
from warren.observability.events import LOGS_TRUNCATED, MAX_EXCEPTIONS, MAX_LOG_CHARS
from warren.server.metrics import Metrics
from warren.server.supervisor import Exchange
from warren.store import SQLiteStore, Store
from warren.store import sqlite as sqlite_module
from warren.store.nats import NATSStore, generate_secrets_key


def event(
    script: str = "hello",
    outcome: str = "ok",
    method: str = "GET",
    url: str = "http://hello.example/",
    logs: list[dict[str, Any]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    started_ms: int | None = None,
    cpu_ms: float = 1.25,
) -> dict[str, Any]:
    return build_event(
        script_name=script,
        version="v1",
        node="node-a",
        outcome=outcome,
        started_ms=started_ms if started_ms is not None else int(time.time() * 1000),
        cpu_ms=cpu_ms,
        wall_ms=3.0,
        head={"method": method, "url": url, "headers": headers or []},
        status=200 if outcome == "ok" else 500,
        logs=logs or [],
    )


# -- the event ------------------------------------------------------------------------------------


def test_headers_that_may_carry_credentials_are_redacted() -> None:
    headers = redact_headers(
        [
            ("Authorization", "Bearer x"),
            ("Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("X-API-Key", "k"),
            ("Proxy-Authorization", "Basic y"),
            ("X-Auth-User", "u"),
            ("X-My-Token", "t"),
            ("X-Client-Secret", "s"),
            ("Accept", "text/html"),
            ("Accept", "application/json"),
            ("X-Request-Id", "abc"),
        ]
    )
    assert headers == {
        "authorization": "REDACTED",
        "cookie": "REDACTED",
        "set-cookie": "REDACTED",
        "x-api-key": "REDACTED",
        "proxy-authorization": "REDACTED",
        "x-auth-user": "REDACTED",
        "x-my-token": "REDACTED",
        "x-client-secret": "REDACTED",
        "accept": "text/html, application/json",
        "x-request-id": "abc",
    }


def test_an_event_is_bounded_whatever_the_script_did() -> None:
    line = "x" * 10_000
    built = build_event(
        script_name="hostile",
        version="v1",
        node="n",
        outcome="exception",
        started_ms=1,
        cpu_ms=2,
        wall_ms=3,
        head={"method": "get", "url": "http://h/" + "a" * 100_000, "headers": [("h", "v")]},
        status=500,
        logs=[{"level": "shout", "message": line, "timestamp": 5}] * 100,
        exceptions=[{"name": "Error", "message": "m" * 100_000, "stack": "s"}] * 50,
    )
    assert sum(len(part) for entry in built["logs"] for part in entry["message"]) <= MAX_LOG_CHARS + len(LOGS_TRUNCATED)
    assert built["logs"][-1]["message"] == [LOGS_TRUNCATED]
    assert {entry["level"] for entry in built["logs"][:-1]} == {"log"}  # an unknown level reads as log
    assert len(built["exceptions"]) == MAX_EXCEPTIONS
    assert len(built["exceptions"][0]["message"]) < 10_000
    assert len(built["event"]["request"]["url"]) < 20_000
    assert built["event"]["request"]["method"] == "GET"
    assert built["outcome"] == "exception"
    scheduled = build_event(
        script_name="cron",
        version="",
        node="n",
        outcome="weird",
        started_ms=1,
        cpu_ms=0,
        wall_ms=0,
        head={"event": "scheduled", "cron": "*/5 * * * *", "scheduled_time": 60_000},
        status=0,
    )
    assert scheduled["event"] == {"cron": "*/5 * * * *", "scheduledTime": 60_000}
    assert scheduled["outcome"] == "unknown"


def test_pretty_printing_is_wranglers() -> None:
    boom = event(outcome="exception", logs=[{"level": "log", "message": ["a", "b"], "timestamp": 1}])
    boom["exceptions"] = [{"name": "TypeError", "message": "kaboom", "stack": "", "timestamp": 1}]
    lines = format_pretty(boom).splitlines()
    assert re.fullmatch(r"GET http://hello\.example/ - Exception Thrown @ \d+/\d+/\d{4}, \d+:\d\d:\d\d [AP]M", lines[0])
    assert lines[1:] == ["  (log) a b", "  TypeError: kaboom"]
    cron = build_event(
        script_name="c", version="", node="n", outcome="ok", started_ms=1, cpu_ms=0, wall_ms=0,
        head={"event": "scheduled", "cron": "0 * * * *", "scheduled_time": 1_700_000_000_000}, status=0,
    )  # fmt: skip
    assert re.fullmatch(r'"0 \* \* \* \*" @ \d+/\d+/2023, .* - Ok', format_pretty(cron))
    assert build_filters(("error", "ok"), ("post",), "x", 0.5, "X-A: b", "v1") == {
        "filters": [
            {"sampling_rate": 0.5},
            {"outcome": ["exceededCpu", "exceededMemory", "exception", "ok", "unknown"]},
            {"method": ["POST"]},
            {"header": {"key": "X-A", "query": "b"}},
            {"query": "x"},
            {"scriptVersion": "v1"},
        ]
    }


# -- filters --------------------------------------------------------------------------------------


def test_filters_are_anded_and_malformed_ones_say_why() -> None:
    ok_get = event(logs=[{"level": "log", "message": ["Hello Needle"], "timestamp": 1}])
    failed_post = event(outcome="exceededCpu", method="POST", headers=[("X-Flag", "on"), ("Authorization", "x")])
    assert TailFilter.parse('{"filters": []}').matches(ok_get)
    errors = TailFilter.parse({"filters": [{"status": "error"}]})
    assert not errors.matches(ok_get) and errors.matches(failed_post)
    narrowed = TailFilter.parse({"filters": [{"outcome": ["ok", "exceededCpu"]}, {"status": "error"}]})
    assert narrowed.outcomes == frozenset({"exceededCpu"})
    assert TailFilter.parse({"filters": [{"method": ["get"]}]}).matches(ok_get)
    assert not TailFilter.parse({"filters": [{"method": ["get"]}]}).matches(failed_post)
    assert TailFilter.parse({"filters": [{"query": "needle"}]}).matches(ok_get)
    assert TailFilter.parse({"filters": [{"query": "hello.example"}]}).matches(failed_post)  # the URL too
    assert TailFilter.parse({"filters": [{"header": {"key": "x-flag"}}]}).matches(failed_post)
    assert TailFilter.parse({"filters": [{"header": {"key": "X-Flag", "query": "on"}}]}).matches(failed_post)
    assert not TailFilter.parse({"filters": [{"header": {"key": "X-Flag", "query": "off"}}]}).matches(failed_post)
    # a credential cannot be probed through a filter: its value is gone before filtering
    assert not TailFilter.parse({"filters": [{"header": {"key": "authorization", "query": "x"}}]}).matches(failed_post)
    assert TailFilter.parse({"filters": [{"scriptVersion": "v1"}]}).matches(ok_get)
    assert not TailFilter.parse({"filters": [{"sampling_rate": 0}]}).matches(ok_get)
    assert TailFilter.parse({"filters": [{"client_ip": ["self"]}], "debug": False}).matches(ok_get)
    for bad, why in [
        ("nope", "JSON"),
        ("[]", "object"),
        ({"filters": {}}, "list"),
        ({"filters": [{"status": "fine"}]}, "ok, error or canceled"),
        ({"filters": [{"outcome": ["fine"]}]}, "unknown outcome"),
        ({"filters": [{"method": []}]}, "method"),
        ({"filters": [{"sampling_rate": 2}]}, "sampling_rate"),
        ({"filters": [{"sampling_rate": True}]}, "sampling_rate"),
        ({"filters": [{"header": "x"}]}, "header filter"),
        ({"filters": [{"method": ["GET"], "query": "x"}]}, "one key"),
        ({"filters": [{"query": "x" * 5000}]}, "at most"),
    ]:
        with pytest.raises(FilterError, match=why):
            TailFilter.parse(bad)  # type: ignore[arg-type]


def test_analytics_fill_every_minute() -> None:
    now = 1_700_000_000_000
    this_minute = minute_of(now)
    rows = [
        ("a", this_minute, 3, 1, 1.5),
        ("a", this_minute - 120_000, 2, 0, 0.5),
        ("a", this_minute - 3_600_000, 9, 9, 9.0),  # outside the window
        ("gone", this_minute, 1, 0, 0.1),  # a deleted script still counts
    ]
    result = analytics_result(rows, ["a", "b"], 5, now)
    assert [item["script"] for item in result["scripts"]] == ["a", "b", "gone"]
    a = result["scripts"][0]
    assert (a["requests"], a["errors"], a["cpu_ms"]) == (5, 1, 2.0)
    assert [point["requests"] for point in a["series"]] == [0, 0, 2, 0, 3]
    assert result["since"] == a["series"][0]["minute"]
    assert result["scripts"][1]["requests"] == 0 and len(result["scripts"][1]["series"]) == 5


# -- the publisher ----------------------------------------------------------------------------------


def test_the_publisher_batches_and_never_waits_for_a_slow_or_dead_store(tmp_path: Path) -> None:
    async def body() -> None:
        store = SQLiteStore(tmp_path / "w.db", busy_timeout_ms=3000)
        await store.open()
        reports: list[str] = []
        publisher = EventPublisher(
            store, flush_interval=0.02, publish_timeout=0.3, max_queued=50, report=reports.append
        )
        publisher.start()
        for _ in range(10):
            assert publisher.submit("acc", event())
        await wait_until(lambda: publisher.published == 10)
        assert publisher.dropped == 0
        stats = await store.event_stats("acc", 0)
        assert [(script, requests) for script, _, requests, _, _ in stats] == [("hello", 10)]

        # Another process holds the write lock: publishing stalls, requests must not.
        other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        started = time.perf_counter()
        accepted = [publisher.submit("acc", event()) for _ in range(200)]
        assert time.perf_counter() - started < 1.0  # 200 submits, none waiting out the lock (5 s)
        assert accepted.count(False) >= 150  # the queue holds 50
        await wait_until(lambda: publisher.dropped >= 200 - 50 + 1)  # a batch timed out too
        assert reports and "dropped" in reports[0]
        other.execute("ROLLBACK")
        other.close()
        before = publisher.published
        publisher.submit("acc", event())
        await wait_until(lambda: publisher.published == before + 1)

        # The store is gone: events are dropped and counted; nothing raises.
        await store.close()
        dropped = publisher.dropped
        publisher.submit("acc", event())
        await wait_until(lambda: publisher.dropped == dropped + 1)
        await publisher.stop()

    asyncio.run(body())


async def wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# -- the stores ---------------------------------------------------------------------------------------


async def follow_some(store: Store, count: int, script: str | None = None, since_ms: int | None = None) -> Any:
    """Start following; returns (task gathering ``count`` events, the list)."""
    got: list[dict[str, Any]] = []

    async def follow() -> None:
        async for item in store.follow_events("acc", script, since_ms):
            got.append(item)
            if len(got) == count:
                return

    return asyncio.get_running_loop().create_task(follow()), got


async def check_store(store: Store) -> None:
    revision = await store.revision()
    before = int(time.time() * 1000)
    # A follower starts from the time it is given, however late it subscribes.
    everything, got_all = await follow_some(store, 3, since_ms=before)
    only_b, got_b = await follow_some(store, 1, "b", since_ms=before)
    await store.publish_events("acc", [event("a"), event("b", "exception", cpu_ms=2.5)])
    await store.publish_events("other", [event("a")])
    await store.publish_events("acc", [event("a", started_ms=before - 120_000)])
    await asyncio.wait_for(asyncio.gather(everything, only_b), 10)
    assert [item["scriptName"] for item in got_all] == ["a", "b", "a"]
    assert [item["outcome"] for item in got_b] == ["exception"]
    # started after the events were published: those since its time
    replay, got_replay = await follow_some(store, 3, since_ms=before)
    await asyncio.wait_for(replay, 10)
    assert [item["scriptName"] for item in got_replay] == ["a", "b", "a"]
    stats = sorted(await store.event_stats("acc", minute_of(before) - 180_000))
    by_script: dict[str, list[int]] = {}
    for script, _, requests, errors, _ in stats:
        by_script.setdefault(script, [0, 0])
        by_script[script][0] += requests
        by_script[script][1] += errors
    assert by_script == {"a": [2, 0], "b": [1, 1]}
    assert await store.event_stats("acc", minute_of(before) + 60_000) == []
    assert await store.revision() == revision  # events are not configuration: edge nodes do not reload


def test_sqlite_event_ring(tmp_path: Path) -> None:
    async def body() -> None:
        async with SQLiteStore(tmp_path / "w.db") as store:
            await check_store(store)
        connection = sqlite3.connect(tmp_path / "w.db")
        (rows,) = connection.execute("SELECT COUNT(*) FROM event_batches").fetchone()
        connection.close()
        assert rows == 4  # a row per call and script: (acc, a), (acc, b), (other, a), (acc, a)

    asyncio.run(body())


def numbered(script: str, number: int) -> dict[str, Any]:
    return event(script, url=f"http://hello.example/{number}")


def number_of(item: dict[str, Any]) -> int:
    return int(item["event"]["request"]["url"].rsplit("/", 1)[1])


def test_sqlite_event_batches_are_followed_in_order_across_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small rows and reads, so that calls span several rows and followers several reads.
    monkeypatch.setattr(sqlite_module, "EVENTS_PER_ROW", 4)
    monkeypatch.setattr(sqlite_module, "EVENTS_READ_BATCH", 3)

    async def body() -> None:
        async with SQLiteStore(tmp_path / "w.db") as one, SQLiteStore(tmp_path / "w.db") as two:
            before = int(time.time() * 1000)
            calls: list[list[dict[str, Any]]] = []
            number = 0
            for size in (1, 9, 4, 13, 2):  # scripts interleaved within each call
                call = []
                for i in range(size):
                    number += 1
                    call.append(numbered("a" if i % 3 else "b", number))
                calls.append(call)
            total = sum(len(call) for call in calls)
            everything, got_all = await follow_some(one, total, since_ms=before)
            only_a, got_a = await follow_some(two, sum(1 for c in calls for e in c if e["scriptName"] == "a"), "a")
            for index, call in enumerate(calls):
                await (one if index % 2 else two).publish_events("acc", call)
                await two.publish_events("other", [numbered("a", 0)])
            await asyncio.wait_for(asyncio.gather(everything, only_a), 10)
            # One call's events grouped by script, in publish order within each; calls in order.
            expected = [
                number_of(e)
                for call in calls
                for script in dict.fromkeys(e["scriptName"] for e in call)
                for e in call
                if e["scriptName"] == script
            ]
            assert [number_of(item) for item in got_all] == expected
            assert [number_of(item) for item in got_a] == [
                number_of(e) for call in calls for e in call if e["scriptName"] == "a"
            ]
            # "received at or after since_ms": a follower from after the first calls sees only the last.
            await asyncio.sleep(0.01)
            since = int(time.time() * 1000)
            later, got_later = await follow_some(one, 3, "b", since_ms=since)
            await two.publish_events("acc", [numbered("a", 101), numbered("b", 102), numbered("b", 103)])
            await one.publish_events("acc", [numbered("b", 104)])
            await asyncio.wait_for(later, 10)
            assert [number_of(item) for item in got_later] == [102, 103, 104]
        connection = sqlite3.connect(tmp_path / "w.db")
        sizes = [n for (n,) in connection.execute("SELECT json_array_length(data) FROM event_batches ORDER BY id")]
        connection.close()
        assert sum(sizes) == total + len(calls) + 4 and max(sizes) == 4

    asyncio.run(body())


def test_sqlite_event_ring_keeps_a_malformed_event(tmp_path: Path) -> None:
    async def body() -> None:
        async with SQLiteStore(tmp_path / "w.db") as store:
            malformed = event(logs=[{"level": "log", "message": ["half a pair: \ud800"], "timestamp": 1}])
            assert malformed["logs"][0]["message"] == ["half a pair: \ud800"]  # orjson refuses this one
            before = int(time.time() * 1000)
            await store.publish_events("acc", [numbered("hello", 1), malformed, numbered("hello", 3)])
            got, items = await follow_some(store, 3, since_ms=before)
            await asyncio.wait_for(got, 10)
            assert items[1]["logs"][0]["message"] == ["half a pair: \ud800"]
            assert [number_of(items[0]), number_of(items[2])] == [1, 3]

    asyncio.run(body())


def test_sqlite_event_ring_is_bounded_in_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "EVENTS_MAX_COUNT", 250)
    monkeypatch.setattr(sqlite_module, "EVENTS_PRUNE_EVERY_MS", 0)

    def kept() -> list[int]:
        connection = sqlite3.connect(tmp_path / "w.db")
        rows = connection.execute("SELECT data FROM event_batches ORDER BY id").fetchall()
        connection.close()
        return [number_of(item) for (data,) in rows for item in json.loads(data)]

    async def body() -> None:
        async with SQLiteStore(tmp_path / "w.db") as one, SQLiteStore(tmp_path / "w.db") as two:
            for call in range(30):  # 1,110 events in rows of 37, from two nodes
                events = [numbered("hello", call * 37 + i + 1) for i in range(37)]
                await (one if call % 2 else two).publish_events("acc", events)
            # The newest 250 are numbers 861..1110; the row holding 860 goes whole (rows are kept whole).
            assert kept() == list(range(889, 1111))
            followed, items = await follow_some(one, 222, since_ms=0)
            await asyncio.wait_for(followed, 10)
            assert [number_of(item) for item in items] == list(range(889, 1111))

            # The age bound: rows received more than EVENTS_MAX_AGE_MS ago go.
            await asyncio.sleep(0.01)
            monkeypatch.setattr(sqlite_module, "EVENTS_MAX_AGE_MS", 5)
            await one.publish_events("acc", [numbered("hello", 2000)])
            assert kept() == [2000]

    asyncio.run(body())


def test_sqlite_event_ring_ignores_an_old_events_table(tmp_path: Path) -> None:
    # Files written before events were batched have a row per event in ``events``.
    connection = sqlite3.connect(tmp_path / "w.db")
    connection.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL,"
        " script TEXT NOT NULL, received INTEGER NOT NULL, data TEXT NOT NULL)"
    )
    connection.execute("CREATE INDEX events_by_account ON events (account_id, id)")
    connection.execute("CREATE INDEX events_by_received ON events (received)")
    connection.execute(
        "INSERT INTO events (account_id, script, received, data) VALUES ('acc', 'a', ?, ?)",
        (int(time.time() * 1000) + 60_000, json.dumps(numbered("a", 1))),
    )
    connection.commit()
    connection.close()

    async def body() -> None:
        async with SQLiteStore(tmp_path / "w.db") as store:
            await check_store(store)  # the old row (received in a minute, script a) would be an extra "a"

    asyncio.run(body())
    connection = sqlite3.connect(tmp_path / "w.db")
    assert connection.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
    connection.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


def test_nats_event_streams(nats_server: NatsServer) -> None:
    async def body() -> None:
        async with NATSStore(nats_server.url, secrets_key=generate_secrets_key()) as store:
            await check_store(store)
            assert store._js is not None
            info = await store._js.stream_info("warren_logs_acc")
            assert info.config.max_age == 3600
            assert info.config.max_bytes == 64 * 1024 * 1024
            assert info.config.subjects == ["warren.logs.acc.>"]
            with pytest.raises(ValueError):
                await store.publish_events("bad.account", [event()])

    asyncio.run(body())


# -- what the runtime reports, and the metrics -----------------------------------------------------------


def test_the_runtime_reports_timestamped_logs_structured_exceptions_and_isolates(edge: Any) -> None:
    source = """
    export default {
      async fetch(request, env, ctx) {
        console.info("one");
        setTimeout(() => { throw new SyntaxError("from a timer"); }, 0);
        await new Promise((resolve) => setTimeout(resolve, 5));
        console.warn("two");
        throw new RangeError("out of range");
      },
    };
    """
    harness = edge({"thrower": source, "fine": "export default { fetch() { return new Response('ok'); } };"})
    exchanges: list[Exchange] = []
    recorded = harness.supervisor.on_done

    def keep(name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        exchanges.append(exchange)
        recorded(name, exchange, outcome, cpu_ms, wall_ms)

    harness.supervisor.on_done = keep
    before = int(time.time() * 1000)
    assert harness.get("/thrower").status_code == 500
    assert harness.get("/fine").text == "ok"
    deadline = time.monotonic() + 10
    while len(exchanges) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thrower = next(exchange for exchange in exchanges if exchange.name == "thrower")
    assert [entry["level"] for entry in thrower.logs] == ["info", "error", "warn", "error"]
    assert thrower.logs[0]["message"] == "one" and thrower.logs[2]["message"] == "two"
    assert "from a timer" in thrower.logs[1]["message"] and "out of range" in thrower.logs[3]["message"]
    assert all(before <= entry["timestamp"] <= int(time.time() * 1000) for entry in thrower.logs)
    assert thrower.started_ms >= before
    exceptions = thrower.metering["exceptions"]
    assert [(item["name"], item["message"]) for item in exceptions] == [
        ("SyntaxError", "from a timer"),
        ("RangeError", "out of range"),
    ]
    assert "out of range" in exceptions[1]["stack"]
    # ... and the console output still reaches the node's log
    assert ("thrower", "info", "one") in harness.logs
    fine = next(exchange for exchange in exchanges if exchange.name == "fine")
    assert fine.logs == [] and "exceptions" not in fine.metering
    assert fine.metering["isolates"] == 2


def test_metrics_per_worker_node_and_runtime_process(edge: Any) -> None:
    harness = edge(
        {"counter": "export default { fetch() { return new Response('1'); } };",
         "boom": "export default { fetch() { throw new Error('x'); } };"},
        idle_timeout=1.0,
    )  # fmt: skip
    metrics = Metrics(harness.supervisor, node="node-7")
    harness.supervisor.on_done = metrics.observe
    assert harness.get("/counter").status_code == 200
    assert harness.get("/boom").status_code == 500

    def scrape() -> str:
        return generate_latest(metrics.registry).decode()

    # on_done is called once a response has gone out: on a busy machine, after the client has it
    deadline = time.monotonic() + 15
    while 'warren_errors_total{node="node-7",worker="boom"}' not in (text := scrape()):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'warren_requests_total{node="node-7",outcome="ok",worker="counter"} 1.0' in text
    assert 'warren_errors_total{node="node-7",worker="boom"} 1.0' in text
    assert 'warren_cpu_ms_count{node="node-7",worker="counter"} 1.0' in text
    assert 'warren_subrequests_total{node="node-7",worker="counter"} 0.0' in text
    assert 'warren_kv_operations_total{node="node-7",worker="counter"} 0.0' in text
    assert re.search(r'warren_isolates_loaded\{node="node-7",process="standard-0"\} 2\.0', text), text
    memory = re.search(r'warren_runtime_memory_bytes\{node="node-7",process="standard-0"\} (\S+)', text)
    assert memory is not None and float(memory.group(1)) > 20 * 1024 * 1024
    # idle for a second, both isolates are evicted: the node's metrics say so
    deadline = time.monotonic() + 15
    while 'warren_isolate_evictions_total{node="node-7",process="standard-0"} 2.0' not in (text := scrape()):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert 'warren_isolates_loaded{node="node-7",process="standard-0"} 0.0' in text


def test_warren_dev_still_prints_console_output_and_serves_the_metrics(dev: Any) -> None:
    server = dev(
        {
            "worker.js": "export default { fetch() { console.log('hello from the console'); return new Response('hi'); } };"
        },
        "worker.js",
        "--admin-port",
        "0",
    )
    assert server.get("/").text == "hi"
    server.wait_for(r"^\[worker\] hello from the console$")
    metrics_url = re.search(r"Metrics on (http://\S+)", server.output).group(1)  # type: ignore[union-attr]
    text = httpx.get(metrics_url, timeout=10).text
    assert re.search(r'warren_requests_total\{node="[^"]+",outcome="ok",worker="worker"\} 1\.0', text), text
    assert "warren_cpu_ms_bucket" in text and "warren_isolates_loaded" in text
