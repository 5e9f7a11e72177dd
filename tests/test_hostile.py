"""Hostile-script battery: one tenant attacks, its neighbour in the same runtime process keeps serving.

Every case runs a hostile worker and a plain neighbour worker in one runtime
process (``processes=1``; two JS threads on this 2-core machine). A separate
load-generator process hammers the hostile worker while this process sends the
neighbour one request at a time and times each. The checks are about
containment, not speed: every neighbour request succeeds, from the same
isolate (its counter never restarts), its p99 latency stays under a generous
bound, the hostile requests fail the way the README promises, and the runtime
process survives unless the case is one that may abort V8 (then the crash is
blamed on the hostile worker and the neighbour's requests are replayed).

Two tests at the end guard fixes of faults the battery found: a neighbour
running JavaScript when another script aborted V8 was blamed with it (and
quarantined after three such crashes), and timers a finished request left
behind were never released inside the isolate.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

# The neighbour counts its requests: a body of "neighbour N" for the N-th
# request proves that its isolate was never discarded or restarted.
NEIGHBOUR = """
let served = 0;
export default { fetch() { served++; return new Response("neighbour " + served); } };
"""

# Containment bound for the neighbour's p99 latency, for every case where the
# runtime process survives (one case states its own). A neighbour request needs
# one short slice on a JS thread; the hostile worker runs at most one slice at a
# time (slices of one isolate are serialised) and each slice is stopped at its
# CPU limit (50 ms by default), so the neighbour waits at most for the runtime's
# event loop and the other JS thread. Measured here the p99 is 6-50 ms; 1 s is
# 20x that, room for a loaded 2-core CI machine, and still fails if containment
# breaks: a blocked JS thread or event loop stalls the neighbour for the whole
# hammering (2 s) or until its client gives up.
NEIGHBOUR_P99_S = 1.0
# When the hostile script aborts V8, the neighbour's in-flight request is
# replayed on a fresh runtime process once the dying one has printed V8's report
# and exited: p99 0.2-0.25 s measured here (max 0.4 s). 5 s is more than 10x
# that and still far below a hang.
NEIGHBOUR_P99_AFTER_CRASH_S = 5.0
NEIGHBOUR_TIMEOUT_S = 15.0  # past this a neighbour request counts as failed
HAMMER_SECONDS = 2.0

CPU_LIMIT = "exceeded its CPU time limit"
MEMORY_LIMIT = "exceeded its memory limit"
RESTARTED = "restarted because another request to it exceeded a limit"
THREW = "Worker threw exception"
CRASHED = "runtime process crashed"
CRASHED_MESSAGE = "The worker's runtime process crashed while handling this request."
QUARANTINED = "quarantined"

# The load generator: its own process, so its HTTP work does not compete for
# this process's GIL with the server it measures. It prints one line when its
# client is ready, then a JSON summary.
HAMMER = r"""
import asyncio, collections, json, sys, time
import httpx

async def main(urls, connections, total, seconds):
    statuses = collections.Counter()
    bodies = collections.Counter()
    errors = collections.Counter()
    # httpx's pool scans its connections for every request it queues (measured
    # here: 60 requests/s through one pool of 200), so the connections are
    # spread over pools of at most 10, one client each.
    per_client = min(10, connections)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    # no pool timeout: a request waits for one of its client's connections as long as it must
    timeout = httpx.Timeout(30.0, pool=None)
    clients = [httpx.AsyncClient(limits=limits, timeout=timeout) for _ in range(-(-connections // per_client))]
    left = [total]

    async def one(client, url):
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            return
        statuses[str(response.status_code)] += 1
        bodies[response.text.strip()[:100]] += 1

    async def keep_going(client, url):
        # one task per connection, sending its requests one after another
        while (left[0] > 0) if total else (time.monotonic() - started < seconds):
            left[0] -= 1
            await one(client, url)

    try:
        print("ready", flush=True)
        started = time.monotonic()
        await asyncio.gather(
            *(keep_going(clients[index % len(clients)], urls[index % len(urls)]) for index in range(connections))
        )
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            await client.aclose()
    print(json.dumps({"statuses": statuses, "bodies": bodies, "errors": errors, "elapsed": elapsed}), flush=True)

asyncio.run(main(sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


@dataclass
class Hammered:
    statuses: dict[str, int]
    bodies: dict[str, int]
    errors: dict[str, int]
    elapsed: float

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


@dataclass
class Neighbour:
    latencies: list[float]
    failures: list[str]
    bodies: list[str]  # of the 200 responses, in order

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _pid(harness: Any) -> int:
    (process,) = harness.supervisor.processes()
    return int(process.process.pid)


def _measure(
    harness: Any, hostile: str, connections: int = 8, total: int = 0, seconds: float = HAMMER_SECONDS
) -> tuple[Hammered, Neighbour]:
    """Hammer ``/hostile`` from another process; meanwhile time ``/neighbour``, one request at a time."""
    hammer = subprocess.Popen(
        [sys.executable, "-c", HAMMER, f"{harness.url}/{hostile}", str(connections), str(total), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latencies: list[float] = []
    failures: list[str] = []
    bodies: list[str] = []
    try:
        assert hammer.stdout is not None
        assert hammer.stdout.readline().strip() == "ready", hammer.communicate()[1]
        with httpx.Client(timeout=NEIGHBOUR_TIMEOUT_S) as client:
            while hammer.poll() is None or len(latencies) + len(failures) < 50:
                started = time.perf_counter()
                try:
                    response = client.get(f"{harness.url}/neighbour")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    bodies.append(response.text)
                else:
                    failures.append(f"{response.status_code} {response.text.strip()}")
                time.sleep(0.005)
        out, err = hammer.communicate(timeout=120)
    finally:
        if hammer.poll() is None:
            hammer.kill()
            hammer.communicate()
    assert hammer.returncode == 0, err
    return Hammered(**json.loads(out.strip().splitlines()[-1])), Neighbour(latencies, failures, bodies)


def _assert_neighbour_contained(neighbour: Neighbour, bound: float, same_isolate: bool) -> None:
    assert not neighbour.failures, f"{len(neighbour.failures)} neighbour requests failed: {neighbour.failures[:5]}"
    if same_isolate:
        # one isolate all along: its counter was never reset
        first = int(neighbour.bodies[0].split()[1])
        assert neighbour.bodies == [f"neighbour {first + index}" for index in range(len(neighbour.bodies))]
    else:
        assert all(body.startswith("neighbour ") for body in neighbour.bodies), neighbour.bodies
    assert neighbour.p99 < bound, (
        f"neighbour p99 {neighbour.p99 * 1000:.0f} ms over {bound * 1000:.0f} ms "
        f"(max {max(neighbour.latencies) * 1000:.0f} ms, {len(neighbour.latencies)} requests)"
    )


def _assert_crashes_blame_the_hostile(harness: Any, neighbour: Neighbour) -> Neighbour:
    """Every crash names the hostile worker alone, so no neighbour request was lost to one.

    The thread whose isolate aborts marks itself on the activity board (V8's
    out-of-memory handler), so a neighbour mid-slice on the other JS thread is
    not blamed: its request is replayed. Guarded on its own, deterministically,
    by test_a_neighbour_running_javascript_is_not_blamed_for_a_crash.
    """
    crashes = harness.supervisor.crashes
    for crash in crashes:
        assert crash.scripts == ["hostile"], crashes
    return neighbour


def _hostile_cpu_ms(harness: Any) -> list[float]:
    """CPU charged to each hostile request stopped at its CPU limit."""
    return [m["cpu_ms"] for name, m in harness.metering if name == "hostile" and m.get("outcome") == "exceededCpu"]


def _report(case: str, harness: Any, hammered: Hammered, neighbour: Neighbour) -> None:
    # printed with `pytest -s`: the figures quoted in the battery's report
    ordered = sorted(neighbour.latencies)
    charged = _hostile_cpu_ms(harness)
    print(
        f"\n[{case}] hostile: {hammered.total} requests in {hammered.elapsed:.1f} s {dict(hammered.statuses)}"
        f" errors={dict(hammered.errors)} crashes={len(harness.supervisor.crashes)}"
        f" max CPU charged={max(charged, default=0):.0f} ms; neighbour: {len(ordered)} requests,"
        f" p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, p99 {neighbour.p99 * 1000:.1f} ms,"
        f" max {ordered[-1] * 1000:.1f} ms"
    )


@dataclass(frozen=True)
class Case:
    source: str
    statuses: frozenset[int]  # the status of every hostile response is one of these
    messages: tuple[str, ...]  # and its body carries one of these
    decisive: tuple[str, ...]  # at least one hostile body carries one of these: the limit that was hit
    cpu_ms: float = 50
    neighbour_p99_s: float = NEIGHBOUR_P99_S
    # Can abort V8 (an allocation no headroom satisfies, as the README warns):
    # then the crash must be blamed on the hostile worker and the neighbour's
    # in-flight requests replayed.
    may_abort: bool = False


def _case(source: str, status: int, *messages: str, **options: Any) -> Case:
    """A case with one status; its first message is the one some response must carry."""
    return Case(textwrap.dedent(source), frozenset({status}), messages, messages[:1], **options)


STOPPED_FOR_CPU = (CPU_LIMIT, RESTARTED)  # the request that ran out, and the others in flight on that isolate
STOPPED_FOR_MEMORY = (MEMORY_LIMIT, RESTARTED)

CASES = {
    "infinite loop": _case("export default { fetch() { for (;;) {} } };", 503, *STOPPED_FOR_CPU),
    # Date.now() does not advance while a script runs: this never ends either
    "busy wait on Date.now": _case(
        """
        export default {
          fetch() {
            const until = Date.now() + 200;
            while (Date.now() < until) {}
            return new Response("waited");
          },
        };
        """,
        503, *STOPPED_FOR_CPU,
    ),
    # s += s builds ropes (cons strings): V8's maximum string length comes after
    # ~29 doublings and its RangeError is uncaught: 500, and the isolate lives on
    "string growth s += s": _case('export default { fetch() { let s = "x"; for (;;) s += s; } };', 500, THREW),
    # the same, flattened at every step: real copies of 2^n bytes. The CPU limit
    # usually stops it; when it does not (it overruns under load), the next step
    # is a 128 MB string, one allocation no headroom satisfies, and V8 aborts.
    "string growth, flattened": Case(
        'export default { fetch() { let s = "x"; for (;;) { s += s; s.charCodeAt(s.length - 1); } } };',
        frozenset({503}),
        (*STOPPED_FOR_CPU, MEMORY_LIMIT, CRASHED, QUARANTINED),
        (CPU_LIMIT, MEMORY_LIMIT, CRASHED),
        may_abort=True,
    ),
    "1 GB Uint8Array": _case(
        """
        export default {
          fetch() { globalThis.held = new Uint8Array(1024 * 1024 * 1024); return new Response("held"); },
        };
        """,
        503, *STOPPED_FOR_MEMORY,
    ),
    # 2 GB of buffers, untouched (so cheap in CPU), kept alive: caught after the
    # slice; under load the 40 allocations now and then take 50 ms of CPU first
    "forty 50 MB Uint8Arrays kept alive": Case(
        """
        export default {
          fetch() {
            const keep = [];
            for (let i = 0; i < 40; i++) keep.push(new Uint8Array(50 * 1024 * 1024));
            globalThis.held = keep;
            return new Response("held " + keep.length);
          },
        };
        """,
        frozenset({503}), (*STOPPED_FOR_MEMORY, CPU_LIMIT), (MEMORY_LIMIT,),
    ),
    # written to and kept alive, without end: each costs CPU, so the CPU limit
    # usually comes first; the buffers die with the isolate either way
    "50 MB Uint8Arrays filled and kept, without end": Case(
        "export default { fetch() { const keep = []; for (;;) keep.push(new Uint8Array(50 * 1024 * 1024).fill(1)); } };",
        frozenset({503}), (*STOPPED_FOR_CPU, MEMORY_LIMIT), (CPU_LIMIT, MEMORY_LIMIT),
    ),
    "deep recursion": _case(
        "function down(n) { return down(n + 1) + 1; }\nexport default { fetch() { return new Response(String(down(0))); } };",
        500, THREW,
    ),
    # catching the stack overflow and recursing again: exponential work at the stack limit
    "recursion that catches its stack overflow": _case(
        "function down() { try { return down(); } catch { return down(); } }\nexport default { fetch() { return new Response(String(down())); } };",
        503, *STOPPED_FOR_CPU,
    ),
    "three million chained promises": _case(
        """
        export default {
          async fetch() {
            let p = Promise.resolve();
            for (let i = 0; i < 3e6; i++) p = p.then(() => {});
            await p;
            return new Response("settled");
          },
        };
        """,
        503, *STOPPED_FOR_CPU,
    ),
    "three million concurrent promises": _case(
        """
        export default {
          async fetch() {
            await Promise.all(Array.from({ length: 3e6 }, () => new Promise((resolve) => queueMicrotask(resolve))));
            return new Response("settled");
          },
        };
        """,
        503, *STOPPED_FOR_CPU,
    ),
    "microtask loop that never drains": _case(
        "export default { fetch() { const again = () => Promise.resolve().then(again); again(); return new Response('never'); } };",
        503, *STOPPED_FOR_CPU,
    ),
    # A million timers asked for: the 10,001st throws RangeError. The 10,000 calls
    # into the host cost ~40 ms of CPU here, so under load some requests run out
    # of their 50 ms first.
    "timer flood": Case(
        """
        export default {
          fetch() {
            let made = 0;
            try {
              for (let i = 0; i < 1e6; i++) { setTimeout(() => {}, 60_000); made++; }
            } catch (e) {
              return new Response(e.name + " after " + made);
            }
            return new Response("made a million timers");
          },
        };
        """,
        frozenset({200, 503}), ("RangeError after 10000", *STOPPED_FOR_CPU, MEMORY_LIMIT), ("RangeError after 10000",),
    ),
    # 10,000 zero-delay timers that re-arm as they fire: a flood of small slices
    # through the runtime's event loop, until the request's CPU time runs out.
    # The 10,000 expire together, and the runtime's event loop handles them in
    # one go, with nobody's CPU time counting it: a neighbour request arriving
    # then waits for all of them (0.2-0.5 s measured here). That wait is bounded
    # only by the cap of 10,000 pending operations per worker; the bound here is
    # 2 s, 4x the worst measured, and still less than the hammering lasts, so an
    # event loop the flood held for good would fail it.
    "timer churn": _case(
        """
        export default {
          async fetch() {
            let fired = 0;
            await new Promise((resolve) => {
              const tick = () => { if (++fired >= 1e7) resolve(); else setTimeout(tick, 0); };
              for (let i = 0; i < 10000; i++) setTimeout(tick, 0);
            });
            return new Response("fired " + fired);
          },
        };
        """,
        503, *STOPPED_FOR_CPU, neighbour_p99_s=2.0,
    ),
    # A tenant that allocates to its memory limit on every request. Its CPU
    # limit is 5 s, so that memory, not CPU, is what stops it, every time.
    "heap to the memory limit on every request": _case(
        "export default { fetch() { const keep = []; for (;;) keep.push(new Array(100000).fill({ x: 1 })); } };",
        503, *STOPPED_FOR_MEMORY, cpu_ms=5000,
    ),
    "buffers to the memory limit on every request": _case(
        """
        export default {
          fetch() {
            const buffer = new Uint8Array(200 * 1024 * 1024);
            buffer.fill(7);
            globalThis.held = buffer;
            return new Response("held");
          },
        };
        """,
        503, *STOPPED_FOR_MEMORY, cpu_ms=5000,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_worker_does_not_hurt_its_neighbour(edge: Any, name: str) -> None:
    case = CASES[name]
    harness = edge({"neighbour": NEIGHBOUR}, processes=1)
    harness.deploy("hostile", case.source, cpu_ms=case.cpu_ms)  # the same runtime process: there is one
    assert harness.get("/neighbour").text == "neighbour 1"
    pid = _pid(harness)

    hammered, neighbour = _measure(harness, "hostile")
    _report(name, harness, hammered, neighbour)

    # the hostile requests fail as the README says, and none is lost
    assert not hammered.errors, hammered.errors
    assert {int(status) for status in hammered.statuses} <= case.statuses, hammered.statuses
    for body in hammered.bodies:
        assert any(message in body for message in case.messages), body
    assert any(message in body for body in hammered.bodies for message in case.decisive), hammered.bodies
    # The CPU limit is enforced by a watchdog thread; under this load it lets a
    # slice overrun (up to ~160 ms charged for 50 ms, measured here). One that
    # stopped working would let a loop run until the client gave up (30 s).
    assert max(_hostile_cpu_ms(harness), default=0) < 20 * case.cpu_ms

    if case.may_abort and harness.supervisor.crashes:
        neighbour = _assert_crashes_blame_the_hostile(harness, neighbour)
        _assert_neighbour_contained(neighbour, NEIGHBOUR_P99_AFTER_CRASH_S, same_isolate=False)
        assert harness.get("/neighbour").text.startswith("neighbour ")
        return
    # contained inside the runtime process: it never died, the neighbour's isolate lived on
    assert harness.supervisor.crashes == []
    assert _pid(harness) == pid
    _assert_neighbour_contained(neighbour, case.neighbour_p99_s, same_isolate=True)
    assert harness.get("/neighbour").text == f"neighbour {len(neighbour.bodies) + 2}"


# Where the 10,000 requests go. Each holds one timer, so 200 at once stay far
# below the 10,000 pending host operations a worker may have.
SLOW = """
export default {
  async fetch() {
    await new Promise((resolve) => setTimeout(resolve, 50));
    return new Response("slow");
  },
};
"""


def test_ten_thousand_requests_to_one_worker_do_not_starve_its_neighbour(edge: Any) -> None:
    harness = edge({"neighbour": NEIGHBOUR, "hostile": SLOW}, processes=1)
    assert harness.get("/neighbour").text == "neighbour 1"
    pid = _pid(harness)

    hammered, neighbour = _measure(harness, "hostile", connections=200, total=10_000)
    _report("10,000 requests, 200 connections", harness, hammered, neighbour)

    # every one of the 10,000 is served
    assert hammered.errors == {}
    assert hammered.statuses == {"200": 10_000}
    assert hammered.bodies == {"slow": 10_000}
    # The neighbour shares both event loops (supervisor and runtime) with 200
    # requests in flight; the same 1 s bound holds (see NEIGHBOUR_P99_S).
    _assert_neighbour_contained(neighbour, NEIGHBOUR_P99_S, same_isolate=True)
    assert harness.supervisor.crashes == []
    assert _pid(harness) == pid


# Aborts V8, and with it the runtime process: the flattened string growth of
# the battery, with a CPU limit long enough to reach the 128 MB step every time.
V8_ABORT = 'export default { fetch() { let s = "x"; for (;;) { s += s; s.charCodeAt(s.length - 1); } } };\n'


def test_a_worker_that_aborts_v8_is_blamed_quarantined_and_its_neighbour_keeps_serving(edge: Any) -> None:
    harness = edge({"neighbour": NEIGHBOUR}, processes=1)
    harness.deploy("hostile", V8_ABORT, cpu_ms=1000)
    assert harness.get("/neighbour").text == "neighbour 1"

    # Long enough for three crash-and-restart cycles (each ~1-2 s here, mostly the
    # new runtime process starting) even on a loaded machine.
    hammered, neighbour = _measure(harness, "hostile", connections=4, seconds=8)
    _report("V8 abort", harness, hammered, neighbour)

    # three crashes, each blamed on the hostile worker, then it is quarantined
    assert len(harness.supervisor.crashes) == 3, harness.supervisor.crashes
    assert not hammered.errors, hammered.errors
    assert set(hammered.statuses) == {"503"}, hammered.statuses
    assert all(CRASHED in body or QUARANTINED in body for body in hammered.bodies), hammered.bodies
    assert sum(count for body, count in hammered.bodies.items() if CRASHED in body) >= 3
    assert any(QUARANTINED in body for body in hammered.bodies)
    # The neighbour lost its isolate with each process, never a request: its
    # in-flight ones are replayed on the new process.
    neighbour = _assert_crashes_blame_the_hostile(harness, neighbour)
    _assert_neighbour_contained(neighbour, NEIGHBOUR_P99_AFTER_CRASH_S, same_isolate=False)
    assert harness.get("/neighbour").text.startswith("neighbour ")


# A neighbour whose requests run ~2 s of JavaScript (well within its own CPU limit of 30 s).
BUSY = """
export default {
  fetch() {
    let x = 0;
    for (let i = 0; i < 1.5e9; i++) x += i % 7;
    return new Response("busy " + x);
  },
};
"""


def test_a_neighbour_running_javascript_is_not_blamed_for_a_crash(edge: Any) -> None:
    harness = edge({"busy": BUSY}, processes=1, cpu_ms=30_000)
    busy_statuses = []
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        for version in range(3):
            # a new version each round, as a tenant may deploy: its crash count starts again
            harness.deploy("hostile", V8_ABORT + f"// version {version}\n", cpu_ms=1000)
            busy = pool.submit(client.get, f"{harness.url}/busy")
            time.sleep(0.3)  # the busy request is now running its JavaScript, for ~1.5 s more
            crash = client.get(f"{harness.url}/hostile")
            assert crash.status_code == 503 and CRASHED in crash.text
            busy_statuses.append(busy.result().status_code)
    crashes = harness.supervisor.crashes
    assert len(crashes) == 3 and all("hostile" in crash.scripts for crash in crashes)
    # What should happen: only the worker whose thread aborted is blamed; the
    # busy neighbour's request had no response yet and is replayed, like any
    # other worker's; and it is never quarantined.
    assert [crash.scripts for crash in crashes] == [["hostile"]] * 3
    assert busy_statuses == [200] * 3
    assert harness.get("/busy").status_code == 200


# Sets 9,000 timers of a minute and answers at once: the timers are cancelled
# when the request finishes, and never fire.
LEAVES_TIMERS = """
export default {
  fetch() {
    for (let i = 0; i < 9000; i++) setTimeout(() => {}, 60_000);
    return new Response("set 9000 timers");
  },
};
"""


def test_timers_of_finished_requests_are_released(edge: Any) -> None:
    harness = edge({"timers": LEAVES_TIMERS}, processes=1, cpu_ms=1000)
    with httpx.Client(timeout=30) as client:
        statuses = [client.get(f"{harness.url}/timers").status_code for _ in range(70)]
    # 70 requests leave 630,000 cancelled timers behind; none of them is live
    assert statuses == [200] * 70, f"first failure at request {next(i for i, s in enumerate(statuses) if s != 200) + 1}"
