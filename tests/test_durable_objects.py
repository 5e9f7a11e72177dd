"""Durable Objects on one node (issue #8), against real servers.

``warren dev`` (a real process) serves workers exporting object classes; an
in-process edge (``Edge`` with the node's real ``DurableObjects``) is used where
a test needs short timeouts (eviction, alarm backoff) or to redeploy a script
in the middle of a call. Storage is the real per-object SQLite files; every
request is real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Edge, ServiceProcess
from warren.bindings.durable_objects import DurableObjects, id_from_name, object_id_valid
from warren.config import ConfigError, load_project, uploaded_durable_object
from warren.runtime import WorkerScript

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "counter"

CONFIG = """\
name = "objects"
main = "worker.js"
compatibility_date = "2025-01-01"

[[durable_objects.bindings]]
name = "THING"
class_name = "Thing"

[[durable_objects.bindings]]
name = "OLD"
class_name = "Old"

[[durable_objects.bindings]]
name = "GATE"
class_name = "Gate"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Thing"]
new_classes = ["Old"]

[[migrations]]
tag = "v2"
new_sqlite_classes = ["Gate"]
"""

WORKER = r"""
import { DurableObject } from "cloudflare:workers";

export class Thing extends DurableObject {
  async storage() {
    const s = this.ctx.storage;
    const out = {};
    await s.put("a", 1);
    await s.put({ b: { nested: [1, 2] }, c: new Map([["k", new Date(5)]]), "p/1": 1, "p/2": 2, q: new Uint8Array([7, 8]) });
    out.a = await s.get("a");
    out.missing = (await s.get("nope")) === undefined;
    out.many = [...(await s.get(["zz", "b", "a"])).entries()];
    out.list = [...(await s.list()).keys()];
    out.prefix = [...(await s.list({ prefix: "p/" })).keys()];
    out.reverse = [...(await s.list({ reverse: true, limit: 2 })).keys()];
    out.range = [...(await s.list({ startAfter: "a", end: "p/2" })).keys()];
    out.start = [...(await s.list({ start: "p/1", limit: 1 })).keys()];
    out.date = (await s.get("c")).get("k").getTime();
    out.bytes = [...(await s.get("q"))];
    out.deleted = await s.delete("a");
    out.deletedAgain = await s.delete("a");
    out.deletedMany = await s.delete(["a", "b", "c"]);
    const errors = {};
    try { await s.get(Array.from({ length: 129 }, (_, i) => "k" + i)); } catch (e) { errors.tooMany = e.name; }
    try { await s.put("x".repeat(2049), 1); } catch (e) { errors.longKey = e.name; }
    try { await s.put("x", undefined); } catch (e) { errors.undef = e.name; }
    try { await s.put("y", () => 1); } catch (e) { errors.fn = e.name; }
    try { await s.put("z", "v".repeat(2 * 1024 * 1024 + 10)); } catch (e) { errors.big = e.name; }
    try { await s.list({ start: "a", startAfter: "b" }); } catch (e) { errors.both = e.name; }
    out.errors = errors;
    await s.deleteAll();
    out.afterDeleteAll = [...(await s.list()).keys()];
    return out;
  }

  async transactions() {
    const s = this.ctx.storage;
    await s.put("t", 1);
    await s.transaction(async (txn) => { await txn.put("t", 2); await txn.put("u", 9); txn.rollback(); });
    const afterRollback = [await s.get("t"), await s.get("u")];
    let thrown = null;
    try {
      await s.transaction(async (txn) => { await txn.put("t", 3); await txn.delete("t"); throw new Error("boom"); });
    } catch (e) { thrown = e.message; }
    const afterThrow = await s.get("t");
    const inside = await s.transaction(async (txn) => {
      await txn.put("t", 4);
      await txn.put("v", 5);
      const nested = await txn.get(["t", "v", "w"]);
      const deleted = await txn.delete("missing");
      return { get: await txn.get("t"), many: [...nested.entries()], list: [...(await txn.list()).entries()], deleted };
    });
    return { afterRollback, thrown, afterThrow, inside, committed: [await s.get("t"), await s.get("v")] };
  }

  sql() {
    const sql = this.ctx.storage.sql;
    sql.exec("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT, data BLOB, score REAL)");
    const insert = sql.exec("INSERT INTO people (name, data, score) VALUES (?, ?, ?), (?, ?, ?)",
      "ann", new Uint8Array([1, 2, 3]), 1.5, "bob", null, 2);
    const cursor = sql.exec("SELECT id, name, data, score FROM people ORDER BY id");
    const columns = cursor.columnNames;
    const rows = cursor.toArray().map((r) => [r.id, r.name, r.data === null ? null : [...new Uint8Array(r.data)], r.score]);
    const one = sql.exec("SELECT count(*) AS n FROM people").one();
    const raw = sql.exec("SELECT name FROM people ORDER BY id").raw().toArray();
    const iterated = [...sql.exec("SELECT name FROM people ORDER BY id DESC")].map((r) => r.name);
    const multi = sql.exec("UPDATE people SET score = score + 1; SELECT sum(score) AS s FROM people").one().s;
    const errors = {};
    for (const [name, query] of [["cf", "SELECT * FROM _cf_KV"], ["begin", "BEGIN"], ["syntax", "SELEC oops"],
        ["attach", "ATTACH DATABASE '/tmp/x.db' AS x"], ["pragma", "PRAGMA journal_mode = DELETE"]]) {
      try { sql.exec(query); errors[name] = "allowed"; } catch (e) { errors[name] = e.message; }
    }
    try { sql.exec("SELECT 1 WHERE 0").one(); } catch (e) { errors.none = e.message; }
    try {
      this.ctx.storage.transactionSync(() => { sql.exec("INSERT INTO people (name) VALUES ('zed')"); throw new Error("undo"); });
    } catch (e) { errors.sync = e.message; }
    const kept = this.ctx.storage.transactionSync(() => { sql.exec("INSERT INTO people (name) VALUES ('cy')"); return "kept"; });
    return {
      written: insert.rowsWritten, columns, rows, one, raw, iterated, multi, errors, kept,
      names: sql.exec("SELECT name FROM people ORDER BY id").toArray().map((r) => r.name),
      size: sql.databaseSize > 0,
    };
  }

  async mixed() {
    // The KV API and SQL share one file: both survive, and deleteAll() clears both.
    await this.ctx.storage.put("kv", "value");
    this.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS t (x)");
    this.ctx.storage.sql.exec("INSERT INTO t VALUES (1)");
    const before = [await this.ctx.storage.get("kv"), this.ctx.storage.sql.exec("SELECT count(*) AS n FROM t").one().n];
    await this.ctx.storage.deleteAll();
    let table;
    try { this.ctx.storage.sql.exec("SELECT * FROM t"); table = "still there"; } catch (e) { table = e.message; }
    return { before, after: await this.ctx.storage.get("kv"), table };
  }

  async bump(by = 1) {
    const value = ((await this.ctx.storage.get("n")) ?? 0) + by;
    await this.ctx.storage.put("n", value);
    return value;
  }

  throws() { throw new RangeError("nope"); }
  badWrite() {
    // Not awaited: the output gate still holds the answer until the write is done, and it fails.
    this.ctx.storage.put("\ud800", 1);
    return "answered anyway";
  }
  returnsFunction() { return () => 1; }
  echo(...args) { return args; }
  spin() { for (;;) {} }

  async fetch(request) {
    const body = await request.text();
    return new Response(`${request.method} ${new URL(request.url).pathname} ${body} ${this.ctx.id.name}`, {
      status: 201, headers: { "x-thing": request.headers.get("x-in") },
    });
  }
}

export class Old {
  constructor(state, env) { this.state = state; this.env = env; }
  async fetch(request) {
    const n = ((await this.state.storage.get("n")) ?? 0) + 1;
    await this.state.storage.put("n", n);
    let sql;
    try { this.state.storage.sql; sql = "available"; } catch (e) { sql = e.message; }
    return Response.json({ n, sql, id: this.state.id.toString() });
  }
}

// Counts events delivered while another event of the object is suspended.
export class Gate extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.busy = 0;
    this.overlaps = 0;
  }
  async gated() {
    if (this.busy) this.overlaps++;
    this.busy++;
    const value = ((await this.ctx.storage.get("n")) ?? 0) + 1;
    this.busy--;
    await this.ctx.storage.put("n", value);
    return value;
  }
  async ungated() {
    if (this.busy) this.overlaps++;
    this.busy++;
    await new Promise((resolve) => setTimeout(resolve, 5));
    this.busy--;
    return 0;
  }
  overlapCount() { return this.overlaps; }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, what, arg] = url.pathname.split("/");
    const stub = env.THING.getByName(arg || "x");
    const caught = async (promise) => {
      try { return { value: await promise }; } catch (e) { return { name: e.name, message: e.message, remote: e.remote ?? null }; }
    };
    switch (what) {
      case "storage": return Response.json(await stub.storage());
      case "transactions": return Response.json(await stub.transactions());
      case "sql": return Response.json(await stub.sql());
      case "mixed": return Response.json(await stub.mixed());
      case "bump": return Response.json(await stub.bump());
      case "errors": return Response.json({
        throws: await caught(stub.throws()),
        missing: await caught(stub.nothing()),
        reserved: await caught(stub.constructor()),
        badArgument: await caught(stub.echo(() => 1)),
        badResult: await caught(stub.returnsFunction()),
        old: await caught(env.OLD.getByName("o").foo()),
        badWrite: await caught(stub.badWrite()),
        echo: await caught(stub.echo(1, "two", [3], { four: new Map([[5, 6]]) }, null, undefined)),
      });
      case "spin": return Response.json(await caught(stub.spin()));
      case "fetch": {
        const response = await stub.fetch("https://thing/some/path", { method: "POST", body: "hi", headers: { "x-in": "in" } });
        return new Response(`${response.status} ${response.headers.get("x-thing")} ${await response.text()}`);
      }
      case "old": return env.OLD.get(env.OLD.idFromName("o")).fetch("https://old/");
      case "big": {
        const response = await stub.fetch("https://thing/big", { method: "PUT", body: "x".repeat(300000) });
        return new Response(response.body, { headers: { "x-status": String(response.status) } });
      }
      case "ids": {
        const a = env.THING.idFromName("a");
        const unique = env.THING.newUniqueId();
        const out = {
          a: a.toString(), name: a.name, same: a.equals(env.THING.idFromName("a")),
          differs: a.equals(env.THING.idFromName("b")), uniqueName: unique.name ?? null,
          unique: unique.toString(), fromString: env.THING.idFromString(a.toString()).equals(a),
          otherNamespace: env.OLD.idFromName("a").toString() !== a.toString(),
        };
        for (const [name, bad] of [["short", () => env.THING.idFromString("00")],
            ["foreign", () => env.THING.idFromString(env.OLD.idFromName("a").toString())],
            ["wrongGet", () => env.THING.get(env.OLD.idFromName("a"))],
            ["notAnId", () => env.THING.get("a")]]) {
          try { bad(); out[name] = "accepted"; } catch (e) { out[name] = e.name; }
        }
        return Response.json(out);
      }
      case "gated": return Response.json(await env.GATE.getByName(arg).gated());
      case "ungated": return Response.json(await env.GATE.getByName(arg).ungated());
      case "overlaps": return Response.json(await env.GATE.getByName(arg).overlapCount());
    }
    return new Response("no such route", { status: 404 });
  },
};
"""


def _post_many(url: str, count: int, method: str = "POST") -> list[httpx.Response]:
    """``count`` concurrent requests (pools of 10: one big httpx pool is itself the bottleneck)."""

    async def run() -> list[httpx.Response]:
        clients = [
            httpx.AsyncClient(limits=httpx.Limits(max_connections=10), timeout=httpx.Timeout(120, pool=None))
            for _ in range(20)
        ]
        try:
            return await asyncio.gather(
                *(clients[index % len(clients)].request(method, url) for index in range(count))
            )
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(run())


def _runtime_processes(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"warren.server.runtime_process" in cmdline:
            found.append(int(entry.name))
    return found


def _start_dev(directory: Path) -> ServiceProcess:
    return ServiceProcess(["dev", str(directory), "--no-watch"], directory)


@pytest.fixture(scope="module")
def objects_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    directory = tmp_path_factory.mktemp("objects")
    (directory / "wrangler.toml").write_text(CONFIG)
    (directory / "worker.js").write_text(WORKER)
    process = _start_dev(directory)
    yield process
    process.stop()


# --- the example: a counter, 1,000 concurrent increments ----------------------------------------


def test_counter_example_counts_1000_concurrent_increments_exactly_and_keeps_them(tmp_path: Path) -> None:
    project = tmp_path / "counter"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".warren"))
    server = _start_dev(project)
    try:
        started = time.perf_counter()
        responses = _post_many(server.url + "/hits", 1000)
        elapsed = time.perf_counter() - started
        assert {response.status_code for response in responses} == {200}
        # Each increment saw the one before it: every value from 1 to 1,000 exactly once.
        assert sorted(response.json()["value"] for response in responses) == list(range(1, 1001))
        assert server.get("/hits").json() == {"name": "hits", "value": 1000}
        assert server.get("/other").json() == {"name": "other", "value": 0}
        print(f"1,000 concurrent increments in {elapsed:.2f} s")
    finally:
        server.stop()
    # The storage is in the project's .warren/state, and outlives the process.
    assert list((project / ".warren" / "state" / "durable_objects").glob("*/*.sqlite"))
    again = _start_dev(project)
    try:
        assert again.get("/hits").json()["value"] == 1000
        assert again.request("POST", "/hits?by=5").json()["value"] == 1005
    finally:
        again.stop()


# --- the storage API ---------------------------------------------------------------------------------


def test_storage_get_put_delete_list_and_limits(objects_dev: ServiceProcess) -> None:
    result = objects_dev.get("/storage/s1").json()
    assert result["a"] == 1 and result["missing"] is True
    assert result["many"] == [["a", 1], ["b", {"nested": [1, 2]}]]  # found keys only, in key order
    assert result["list"] == ["a", "b", "c", "p/1", "p/2", "q"]
    assert result["prefix"] == ["p/1", "p/2"]
    assert result["reverse"] == ["q", "p/2"]
    assert result["range"] == ["b", "c", "p/1"]
    assert result["start"] == ["p/1"]
    assert result["date"] == 5 and result["bytes"] == [7, 8]
    assert (result["deleted"], result["deletedAgain"], result["deletedMany"]) == (True, False, 2)
    assert result["errors"] == {
        "tooMany": "RangeError",
        "longKey": "RangeError",
        "undef": "TypeError",
        "fn": "DataCloneError",
        "big": "RangeError",
        "both": "TypeError",
    }
    assert result["afterDeleteAll"] == []


def test_transaction_commits_atomically_and_rolls_back(objects_dev: ServiceProcess) -> None:
    result = objects_dev.get("/transactions/t1").json()
    assert result["afterRollback"] == [1, None]  # txn.rollback(): nothing of it was written
    assert result["thrown"] == "boom" and result["afterThrow"] == 1  # a throw rolls back too
    # Inside, reads see the transaction's own writes.
    assert result["inside"] == {
        "get": 4,
        "many": [["t", 4], ["v", 5]],
        "list": [["t", 4], ["v", 5]],
        "deleted": False,
    }
    assert result["committed"] == [4, 5]


def test_sql_api_cursor_errors_and_transaction_sync(objects_dev: ServiceProcess) -> None:
    result = objects_dev.get("/sql/q1").json()
    assert result["written"] == 2
    assert result["columns"] == ["id", "name", "data", "score"]
    assert result["rows"] == [[1, "ann", [1, 2, 3], 1.5], [2, "bob", None, 2]]
    assert result["one"] == {"n": 2}
    assert result["raw"] == [["ann"], ["bob"]]
    assert result["iterated"] == ["bob", "ann"]
    assert result["multi"] == 5.5  # several statements: the last one's rows
    errors = result["errors"]
    assert "SQLITE_AUTH" in errors["cf"] and "SQLITE_AUTH" in errors["begin"]
    assert "SQLITE_AUTH" in errors["attach"] and "SQLITE_AUTH" in errors["pragma"]
    assert "syntax error" in errors["syntax"]
    assert errors["none"] == "Expected exactly one result from SQL query, but got no results."
    assert errors["sync"] == "undo"
    assert result["kept"] == "kept"
    assert result["names"] == ["ann", "bob", "cy"]  # zed was rolled back, cy committed
    assert result["size"] is True


def test_kv_and_sql_share_the_objects_database(objects_dev: ServiceProcess) -> None:
    result = objects_dev.get("/mixed/m1").json()
    assert result["before"] == ["value", 1]
    assert "after" not in result  # undefined: the key is gone
    assert "no such table" in result["table"]


# --- ids, stubs, RPC, fetch and errors -------------------------------------------------------------


def test_ids_are_deterministic_per_namespace_and_checked(objects_dev: ServiceProcess) -> None:
    ids = objects_dev.get("/ids").json()
    assert ids["a"] == id_from_name("objects", "Thing", "a")  # the node computes the same id
    assert object_id_valid("objects", "Thing", ids["unique"])
    assert not object_id_valid("objects", "Old", ids["unique"])
    assert ids["name"] == "a" and ids["uniqueName"] is None
    assert ids["same"] is True and ids["differs"] is False and ids["fromString"] is True
    assert ids["otherNamespace"] is True
    assert ids["short"] == "TypeError" and ids["foreign"] == "TypeError"
    assert ids["wrongGet"] == "TypeError" and ids["notAnId"] == "TypeError"


def test_rpc_results_and_errors_reach_the_caller(objects_dev: ServiceProcess) -> None:
    result = objects_dev.get("/errors/e1").json()
    assert result["throws"] == {"name": "RangeError", "message": "nope", "remote": True}
    assert result["missing"]["name"] == "TypeError" and '"nothing"' in result["missing"]["message"]
    assert result["reserved"]["name"] == "TypeError"
    assert result["badArgument"]["name"] == "DataCloneError"
    assert result["badResult"]["name"] == "DataCloneError"
    assert result["old"]["name"] == "TypeError" and "does not extend DurableObject" in result["old"]["message"]
    assert result["echo"] == {"value": [1, "two", [3], {"four": {}}, None, None]}
    assert result["badWrite"]["name"] == "TypeError" and "Unicode" in result["badWrite"]["message"]
    objects_dev.wait_for("Uncaught RangeError: nope")  # the object's exception is in its log


def test_fetch_to_an_object_and_the_old_constructor_form(objects_dev: ServiceProcess) -> None:
    assert objects_dev.get("/fetch/named").text == "201 in POST /some/path hi named"
    big = objects_dev.get("/big/large")  # bodies past 64 KB both ways, by handle
    assert big.headers["x-status"] == "201"
    assert big.text == "PUT /big " + "x" * 300000 + " large"
    first = objects_dev.get("/old")  # the front worker returns the object's Response as it is
    assert first.status_code == 200
    assert first.json()["n"] == 1
    assert first.json()["id"] == id_from_name("objects", "Old", "o")
    # A class from new_classes is key-value backed: no SQL.
    assert "SQL is not enabled" in first.json()["sql"]
    assert objects_dev.get("/old").json()["n"] == 2


def test_cpu_limit_in_an_object_resets_it_and_keeps_its_storage(objects_dev: ServiceProcess) -> None:
    assert objects_dev.get("/bump/cpu").json() == 1
    # The object runs in its worker's isolate, here the caller's too: the isolate is
    # discarded, so the calling request fails as well, and is told to retry.
    failed = objects_dev.get("/spin/cpu")
    assert failed.status_code == 503
    objects_dev.wait_for("exceeded its CPU time limit")
    assert objects_dev.get("/bump/cpu").json() == 2  # a new instance, the same storage


# --- the input gate ------------------------------------------------------------------------------------


def test_input_gate_holds_events_while_storage_is_pending(objects_dev: ServiceProcess) -> None:
    responses = _post_many(objects_dev.url + "/gated/g1", 200, "GET")
    assert sorted(response.json() for response in responses) == list(range(1, 201))
    assert objects_dev.get("/overlaps/g1").json() == 0
    # Awaiting anything else (a timer) lets the next event in, as on Workers: the
    # same count shows overlaps then, so the one above is not vacuous.
    _post_many(objects_dev.url + "/ungated/g2", 50, "GET")
    assert objects_dev.get("/overlaps/g2").json() > 0


# --- alarms ----------------------------------------------------------------------------------------------

ALARM_CONFIG = """\
name = "alarms"
main = "worker.js"

[[durable_objects.bindings]]
name = "CLOCK"
class_name = "Clock"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Clock"]
"""

ALARM_WORKER = """
import { DurableObject } from "cloudflare:workers";

export class Clock extends DurableObject {
  async arm(ms) {
    await this.ctx.storage.setAlarm(Date.now() + ms);
    return this.ctx.storage.getAlarm();
  }
  async alarm(info) {
    const fired = (await this.ctx.storage.get("fired")) ?? [];
    fired.push({ retryCount: info.retryCount, isRetry: info.isRetry, during: await this.ctx.storage.getAlarm() });
    await this.ctx.storage.put("fired", fired);
    const failures = (await this.ctx.storage.get("failures")) ?? 0;
    if (fired.length <= failures) throw new Error(`failing on purpose (${fired.length})`);
  }
  async state() {
    return { fired: (await this.ctx.storage.get("fired")) ?? [], alarm: await this.ctx.storage.getAlarm() };
  }
  async failFirst(count) { await this.ctx.storage.put("failures", count); }
  async cancel() { await this.ctx.storage.deleteAlarm(); }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const parts = url.pathname.split("/");
    const [what, name] = [parts.at(-2), parts.at(-1)];
    const clock = env.CLOCK.getByName(name);
    if (what === "arm") return Response.json(await clock.arm(Number(url.searchParams.get("ms"))));
    if (what === "fail") return Response.json(await clock.failFirst(Number(url.searchParams.get("count"))));
    if (what === "cancel") return Response.json(await clock.cancel());
    return Response.json(await clock.state());
  },
};
"""


def _alarm_project(tmp_path: Path) -> Path:
    project = tmp_path / "alarms"
    project.mkdir()
    (project / "wrangler.toml").write_text(ALARM_CONFIG)
    (project / "worker.js").write_text(ALARM_WORKER)
    return project


def _wait_for_fired(server: Any, name: str, count: int, timeout: float) -> dict[str, Any]:
    """The object's state once its alarm ran ``count`` times and is no longer set (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = server.get(f"/state/{name}").json()
        if (len(state["fired"]) >= count and state["alarm"] is None) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_alarm_fires_once_and_can_be_cancelled(tmp_path: Path) -> None:
    server = _start_dev(_alarm_project(tmp_path))
    try:
        before = int(time.time() * 1000)
        scheduled = server.get("/arm/a?ms=400").json()
        assert before + 300 <= scheduled <= int(time.time() * 1000) + 500
        assert server.get("/state/a").json() == {"fired": [], "alarm": scheduled}
        state = _wait_for_fired(server, "a", 1, 10)
        # During its handler an alarm is no longer "set"; once it succeeded it is gone.
        assert state == {"fired": [{"retryCount": 0, "isRetry": False, "during": None}], "alarm": None}
        server.get("/arm/b?ms=300")
        server.get("/cancel/b")
        time.sleep(1.0)
        assert server.get("/state/b").json() == {"fired": [], "alarm": None}
        assert server.get("/state/a").json()["fired"] == state["fired"]  # once, not again
    finally:
        server.stop()


def test_alarm_fires_after_the_runtime_process_is_killed(tmp_path: Path) -> None:
    server = _start_dev(_alarm_project(tmp_path))
    try:
        server.get("/arm/k?ms=2500")
        runtimes = _runtime_processes(server.process.pid)
        assert runtimes
        for pid in runtimes:
            os.kill(pid, signal.SIGKILL)
        server.wait_for("runtime process died", timeout=10)
        state = _wait_for_fired(server, "k", 1, 15)
        assert [entry["retryCount"] for entry in state["fired"]] == [0]
        assert state["alarm"] is None
    finally:
        server.stop()


def test_alarm_and_state_survive_a_restart_of_the_server(tmp_path: Path) -> None:
    project = _alarm_project(tmp_path)
    server = _start_dev(project)
    try:
        server.get("/fail/r?count=0")
        scheduled = server.get("/arm/r?ms=2500").json()
    finally:
        server.stop()
    assert int(time.time() * 1000) < scheduled  # stopped before it was due
    again = _start_dev(project)
    try:
        state = _wait_for_fired(again, "r", 1, 15)
        assert [entry["retryCount"] for entry in state["fired"]] == [0]
        assert state["alarm"] is None
    finally:
        again.stop()


# --- in process: eviction, backoff, fencing -------------------------------------------------------------


class ObjectsEdge:
    """An in-process edge (tests.conftest.Edge) with the node's real DurableObjects."""

    def __init__(self, edge: Edge, state: Path, **options: Any) -> None:
        self.edge = edge
        supervisor = edge.supervisor
        self.objects = DurableObjects(
            supervisor, state, lambda _account, script: supervisor.deployments.get(script), **options
        )
        self.objects.register(supervisor.bindings)
        edge._run(self.objects.start())

    def deploy(self, name: str, source: str, class_name: str, cpu_ms: float = 50) -> None:
        binding = {"type": "durable_object_namespace", "name": "OBJ", "class_name": class_name, "script_name": name}
        script = WorkerScript(name=name, source=textwrap.dedent(source), cpu_ms=cpu_ms, bindings=(binding,))
        self.edge._run(self.edge.supervisor.deploy(script))

    def get(self, path: str) -> httpx.Response:
        return self.edge.get(path)

    def stop(self) -> None:
        self.edge._run(self.objects.stop())


class _Prefixed:
    def __init__(self, harness: ObjectsEdge, prefix: str) -> None:
        self.harness, self.prefix = harness, prefix

    def get(self, path: str) -> httpx.Response:
        return self.harness.get(self.prefix + path)


@pytest.fixture
def objects_edge(edge: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[ObjectsEdge] = []

    def start(**options: Any) -> ObjectsEdge:
        harness = ObjectsEdge(edge({}), tmp_path / "state", **options)
        made.append(harness)
        return harness

    yield start
    for harness in made:
        harness.stop()


EVICTION_WORKER = """
import { DurableObject } from "cloudflare:workers";
let constructed = 0;
export class Visits extends DurableObject {
  constructor(ctx, env) { super(ctx, env); constructed++; this.inMemory = 0; }
  async visit() {
    this.inMemory++;
    const stored = ((await this.ctx.storage.get("n")) ?? 0) + 1;
    await this.ctx.storage.put("n", stored);
    return { stored, inMemory: this.inMemory, constructed };
  }
}
export default {
  async fetch(request, env) {
    return Response.json(await env.OBJ.getByName("v").visit());
  },
};
"""


def test_an_idle_object_is_evicted_and_its_state_survives(objects_edge: Any) -> None:
    harness = objects_edge(idle_timeout=0.3)
    harness.deploy("visits", EVICTION_WORKER, "Visits")
    assert harness.get("/visits").json() == {"stored": 1, "inMemory": 1, "constructed": 1}
    assert harness.get("/visits").json() == {"stored": 2, "inMemory": 2, "constructed": 1}
    deadline = time.monotonic() + 10
    while harness.objects.active_objects() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness.objects.active_objects() == 0
    # A new instance (constructed again, memory fresh) over the same storage.
    assert harness.get("/visits").json() == {"stored": 3, "inMemory": 1, "constructed": 2}


def test_a_failing_alarm_is_retried_with_backoff_then_given_up(objects_edge: Any) -> None:
    harness = objects_edge(alarm_retry_base=0.2, alarm_retries=2)
    harness.deploy("alarms", ALARM_WORKER.replace("env.CLOCK", "env.OBJ"), "Clock")
    harness.get("/alarms/fail/x?count=10")
    harness.get("/alarms/arm/x?ms=0")
    state = _wait_for_fired(_Prefixed(harness, "/alarms"), "x", 3, 10)
    # Three attempts (the first and two retries, 0.2 s then 0.4 s later), then no more.
    assert [(f["retryCount"], f["isRetry"]) for f in state["fired"]] == [(0, False), (1, True), (2, True)]
    assert state["alarm"] is None
    time.sleep(1.0)
    assert len(harness.get("/alarms/state/x").json()["fired"]) == 3
    assert any("giving up" in message for _, _, message in harness.edge.logs)

    # One failure, then success: retried once, then done.
    harness.get("/alarms/fail/y?count=1")
    harness.get("/alarms/arm/y?ms=0")
    state = _wait_for_fired(_Prefixed(harness, "/alarms"), "y", 2, 10)
    time.sleep(0.5)
    assert [f["retryCount"] for f in harness.get("/alarms/state/y").json()["fired"]] == [0, 1]


LOADER_WORKER = """
import { DurableObject } from "cloudflare:workers";
export class Loader extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.value = null;
    ctx.blockConcurrencyWhile(async () => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      this.value = ((await ctx.storage.get("boots")) ?? 0) + 1;
      await ctx.storage.put("boots", this.value);
    });
  }
  read() { return this.value; }
}
export default {
  async fetch(request, env) { return Response.json(await env.OBJ.getByName("l").read()); },
};
"""


def test_block_concurrency_while_holds_events_until_the_constructor_is_done(objects_edge: Any) -> None:
    harness = objects_edge()
    harness.deploy("loader", LOADER_WORKER, "Loader")
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(harness.get("/loader").json())) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [1] * 20  # none saw the object before it had loaded, and it loaded once


FENCING_WORKER = """
import { DurableObject } from "cloudflare:workers";
export class Slot extends DurableObject {
  async slow() {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await this.ctx.storage.put("writer", "VERSION");
    return "wrote";
  }
  async write() { await this.ctx.storage.put("writer", "VERSION"); return "wrote"; }
  async read() { return (await this.ctx.storage.get("writer")) ?? null; }
}
export default {
  async fetch(request, env) {
    const what = new URL(request.url).pathname.split("/")[2];
    try {
      return Response.json(await env.OBJ.getByName("s")[what]());
    } catch (e) {
      return Response.json({ error: e.message });
    }
  },
};
"""


def test_a_redeployed_script_fences_off_the_old_instance(objects_edge: Any) -> None:
    harness = objects_edge()
    harness.deploy("slots", FENCING_WORKER.replace("VERSION", "v1"), "Slot")
    result: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: result.update(slow=harness.get("/slots/slow").json()))
    slow.start()
    time.sleep(0.5)  # the v1 instance is now waiting inside slow()
    harness.deploy("slots", FENCING_WORKER.replace("VERSION", "v2"), "Slot")
    assert harness.get("/slots/write").json() == "wrote"
    slow.join(10)
    # The old instance's write came after the new version took the object over: refused.
    assert "error" in result["slow"]
    assert harness.get("/slots/read").json() == "v2"


# --- configuration ------------------------------------------------------------------------------------


def test_wrangler_durable_object_bindings_and_migrations(tmp_path: Path) -> None:
    (tmp_path / "worker.js").write_text("export class A {}\nexport class B {}\nexport default { fetch() {} };\n")
    config = tmp_path / "wrangler.toml"
    config.write_text(textwrap.dedent("""\
        name = "w"
        main = "worker.js"
        [[durable_objects.bindings]]
        name = "A"
        class_name = "A"
        [[durable_objects.bindings]]
        name = "B"
        class_name = "Renamed"
        [[durable_objects.bindings]]
        name = "C"
        class_name = "Elsewhere"
        script_name = "other"
        [[migrations]]
        tag = "v1"
        new_classes = ["A"]
        new_sqlite_classes = ["B"]
        [[migrations]]
        tag = "v2"
        renamed_classes = [{ from = "B", to = "Renamed" }]
    """))
    project = load_project(tmp_path)
    assert project.durable_objects == [
        {"type": "durable_object_namespace", "name": "A", "class_name": "A", "script_name": "w", "sqlite": False},
        {"type": "durable_object_namespace", "name": "B", "class_name": "Renamed", "script_name": "w", "sqlite": True},
        {"type": "durable_object_namespace", "name": "C", "class_name": "Elsewhere", "script_name": "other"},
    ]
    assert any("other" in warning for warning in project.warnings)
    assert project.script().binding("A") is not None
    # What `warren deploy` uploads: Cloudflare's shape, script_name only for another worker's class.
    assert [uploaded_durable_object(spec, "w") for spec in project.durable_objects] == [
        {"type": "durable_object_namespace", "name": "A", "class_name": "A"},
        {"type": "durable_object_namespace", "name": "B", "class_name": "Renamed"},
        {"type": "durable_object_namespace", "name": "C", "class_name": "Elsewhere", "script_name": "other"},
    ]

    for bad, message in [
        ('[[migrations]]\nnew_classes = ["A"]\n', "needs 'tag'"),
        ('[[migrations]]\ntag = "a"\n[[migrations]]\ntag = "a"\n', "used twice"),
        ('[[migrations]]\ntag = "a"\nnew_classes = ["A"]\nnew_sqlite_classes = ["A"]\n', "already exists"),
        ('[[migrations]]\ntag = "a"\ndeleted_classes = ["Nope"]\n', "no earlier migration"),
        ('[[durable_objects.bindings]]\nname = "X"\n', "class_name"),
        ('[[durable_objects.bindings]]\nname = "not valid"\nclass_name = "A"\n', "identifier"),
    ]:
        config.write_text(f'name = "w"\nmain = "worker.js"\n{bad}')
        with pytest.raises(ConfigError, match=message):
            load_project(tmp_path)


# --- warren serve: objects of a deployed script, called from another script -----------------------


def test_edge_node_serves_objects_across_scripts_and_keeps_them(tmp_path: Path, spawn: Any) -> None:
    store = tmp_path / "warren.db"
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", "demo", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    account = json.loads(created.stdout)
    control = spawn(["control", "--store", str(store)])
    api = httpx.Client(
        base_url=f"{control.url}/client/v4/accounts/{account['account_id']}/workers/scripts",
        headers={"authorization": f"Bearer {account['token']}"},
        timeout=30,
    )

    def upload(name: str, source: str, bindings: list[dict[str, Any]]) -> None:
        files = {
            "metadata": (None, json.dumps({"main_module": "index.js", "bindings": bindings}), "application/json"),
            "index.js": ("index.js", source, "application/javascript+module"),
        }
        response = api.put(f"/{name}", files=files)
        assert response.status_code == 200, response.text

    counter_source = (EXAMPLE / "worker.js").read_text()
    upload("counter", counter_source, [{"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}])
    front = """
export default {
  async fetch(request, env) {
    const name = new URL(request.url).pathname.slice(1);
    return Response.json({ via: "front", value: await env.REMOTE.getByName(name).increment(2) });
  },
};
"""
    upload("front", front, [
        {"type": "durable_object_namespace", "name": "REMOTE", "class_name": "Counter", "script_name": "counter"},
    ])
    bad = api.put("/bad", files={
        "metadata": (None, json.dumps({"main_module": "index.js", "bindings": [
            {"type": "durable_object_namespace", "name": "X", "class_name": "not a class"}]}), "application/json"),
        "index.js": ("index.js", front, "application/javascript+module"),
    })
    assert bad.status_code == 400 and "class_name" in bad.text

    def host(script: str) -> dict[str, str]:
        return {"host": f"{script}.demo.workers.test"}

    def serve() -> ServiceProcess:
        node: ServiceProcess = spawn(["serve", "--store", str(store), "--workers-domain", "workers.test"])
        deadline = time.monotonic() + 20
        while node.get("/", headers=host("front")).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        return node

    node = serve()
    assert node.request("POST", "/shared", headers=host("counter")).json() == {"name": "shared", "value": 1}
    # The same object, reached from the other script through script_name.
    assert node.get("/shared", headers=host("front")).json() == {"via": "front", "value": 3}
    node.stop()
    # The node kept it in its state directory (the working directory's .warren/state here).
    assert list((tmp_path / ".warren" / "state" / "durable_objects").glob("*/*.sqlite"))
    node = serve()
    assert node.get("/shared", headers=host("counter")).json() == {"name": "shared", "value": 3}
    node.stop()
    api.close()


def test_ids_of_names_of_every_length_match_the_nodes() -> None:
    """The isolate's HMAC (JavaScript, with the key's blocks compressed ahead) against the node's
    (Python's hmac) for names across SHA-256 block boundaries: an id that changed would orphan
    every object stored under it."""
    from tests.conftest import Collect, WorkerHost
    from warren.runtime import IncomingRequest

    names = ["", "a", "é", "名前", *("x" * n for n in (46, 47, 55, 56, 63, 64, 110, 111, 119, 120, 1000))]
    source = (
        "export class Thing {}\n"
        f"const names = {json.dumps(names)};\n"
        "export default { fetch(request, env) {\n"
        "  return Response.json(names.map((name) => env.THING.idFromName(name).toString()));\n"
        "} };"
    )
    binding = {"type": "durable_object_namespace", "name": "THING", "class_name": "Thing", "script_name": "shop"}

    async def scenario() -> bytes:
        async with WorkerHost() as host:
            worker = await host.start(WorkerScript(name="shop", source=source, bindings=(binding,)))
            reply = Collect()
            worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)
            assert await asyncio.wait_for(reply.finished, 10) == "ok"
            return reply.received

    assert json.loads(asyncio.run(scenario())) == [id_from_name("shop", "Thing", name) for name in names]
