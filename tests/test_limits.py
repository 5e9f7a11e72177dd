"""Every limit, attacked by a script that tries to break it, over real HTTP."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

INFINITE_LOOP = """
export default {
  fetch(request) {
    if (new URL(request.url).pathname === "/spin") { while (true) {} }
    return new Response("still alive");
  },
};
"""


def test_infinite_loop_is_stopped_at_the_cpu_limit_and_the_next_request_works(dev: Any) -> None:
    server = dev({"worker.js": INFINITE_LOOP})
    started = time.monotonic()
    response = server.get("/spin")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "CPU time limit" in response.text
    assert elapsed < 2.0, f"took {elapsed:.2f}s for a 50 ms CPU limit"
    assert server.get("/").text == "still alive"
    server.wait_for("exceededCpu")


def test_busy_wait_on_the_clock_is_a_cpu_limit_too(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                const until = Date.now() + 200;
                while (Date.now() < until) {}
                return new Response("waited");
              },
            };
            """
        }
    )
    response = server.get("/")
    assert response.status_code == 503


def test_cpu_limit_counts_cpu_not_waiting(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": 'name = "waits"\nmain = "worker.js"\n[limits]\ncpu_ms = 30\n',
            "worker.js": """
            export default {
              async fetch() {
                for (let i = 0; i < 10; i++) await new Promise((r) => setTimeout(r, 50));
                return new Response("waited 500 ms of wall time");
              },
            };
            """,
        },
        ".",
    )
    response = server.get("/")
    assert response.status_code == 200
    assert response.text == "waited 500 ms of wall time"


def test_cpu_limit_from_wrangler_toml_is_enforced(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": 'name = "budget"\nmain = "worker.js"\n[limits]\ncpu_ms = 400\n',
            "worker.js": """
            export default {
              fetch(request) {
                const n = Number(new URL(request.url).searchParams.get("n"));
                let x = 0; for (let i = 0; i < n; i++) x += i % 7;
                return new Response(String(x));
              },
            };
            """,
        },
        ".",
    )
    # ~100 ms of work: over the default 50 ms, under the configured 400 ms
    assert server.get("/?n=30000000").status_code == 200
    assert server.get("/?n=3000000000").status_code == 503


def test_cpu_is_summed_over_the_slices_of_one_request(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch() {
                for (let round = 0; round < 100; round++) {
                  let x = 0; for (let i = 0; i < 2e6; i++) x += i;
                  await new Promise((r) => setTimeout(r, 1));
                }
                return new Response("should not get here");
              },
            };
            """
        }
    )
    assert server.get("/").status_code == 503


def test_memory_limit_fails_the_request_cleanly_and_other_workers_are_unaffected(edge: Any) -> None:
    harness = edge(
        {
            "hog": """
            export default {
              fetch(request) {
                const kind = new URL(request.url).searchParams.get("kind");
                const keep = [];
                if (kind === "heap") { for (;;) keep.push(new Array(100000).fill({ x: 1 })); }
                const buffer = new Uint8Array(200 * 1024 * 1024); buffer.fill(7);
                globalThis.held = buffer;
                return new Response(String(buffer.length));
              },
            };
            """,
            "calm": """
            let served = 0;
            export default { fetch() { served++; return new Response("calm " + served); } };
            """,
        },
        cpu_ms=20_000,  # so that memory, not CPU, is the limit reached
    )
    assert harness.get("/calm").text == "calm 1"
    heap = harness.get("/hog?kind=heap")
    assert heap.status_code == 503
    assert "memory limit" in heap.text
    buffers = harness.get("/hog?kind=buffer")
    assert buffers.status_code == 503
    assert "memory limit" in buffers.text
    # same process, same isolate for the calm worker: its state survived
    assert harness.get("/calm").text == "calm 2"
    assert harness.supervisor.crashes == []
    assert ("hog", "exceededMemory") in harness.done


def test_v8_abort_kills_only_the_runtime_process_and_it_recovers(edge: Any) -> None:
    harness = edge(
        {
            # One allocation larger than any heap we would grant: V8 aborts the process.
            "crash": "export default { fetch() { return new Response(String(new Array(60000000).fill(1.5).length)); } };",
            "slow": """
            export default {
              async fetch() {
                await new Promise((r) => setTimeout(r, 1500));
                return new Response("slow but fine");
              },
            };
            """,
            "hello": "export default { fetch() { return new Response('hello'); } };",
        }
    )
    assert harness.get("/hello").text == "hello"
    with httpx.Client(timeout=60) as client:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(client.get, harness.url + "/slow")
            time.sleep(0.3)  # the slow request is in flight in the runtime process
            crash = client.get(harness.url + "/crash")
            assert crash.status_code == 503
            assert "crashed" in crash.text
            slow_response = slow.result()
    assert slow_response.status_code == 200, "an in-flight request of another worker is retried"
    assert slow_response.text == "slow but fine"
    assert harness.get("/hello").text == "hello"
    assert len(harness.supervisor.crashes) == 1
    assert harness.supervisor.crashes[0].scripts == ["crash"]


def test_eval_and_new_function_are_refused(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                const results = {};
                for (const [name, attempt] of Object.entries({
                  eval: () => eval("1 + 1"),
                  indirectEval: () => (0, globalThis.eval)("1 + 1"),
                  newFunction: () => new Function("return 1")(),
                  functionCtorViaProto: () => (function () {}).constructor("return 1")(),
                  asyncFunctionCtor: () => (async function () {}).constructor("return 1"),
                  setTimeoutString: () => setTimeout("globalThis.pwned = 1", 0),
                })) {
                  try { attempt(); results[name] = "allowed"; } catch (e) { results[name] = e.name; }
                }
                return Response.json(results);
              },
            };
            """
        }
    )
    results = server.get("/").json()
    assert results == {
        "eval": "EvalError",
        "indirectEval": "EvalError",
        "newFunction": "EvalError",
        "functionCtorViaProto": "EvalError",
        "asyncFunctionCtor": "EvalError",
        "setTimeoutString": "TypeError",
    }


def test_host_objects_are_not_reachable_from_the_script(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                const names = Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith("__"));
                // the engine's call trampoline is visible, but yields nothing when a script calls it
                return Response.json({ names, call: String(globalThis.__warrenCall()) });
              },
            };
            """
        }
    )
    assert server.get("/").json() == {"names": ["__warrenCall"], "call": "undefined"}


def test_request_body_over_100_mb_is_413(dev: Any) -> None:
    server = dev({"worker.js": "export default { async fetch(r) { return new Response(String((await r.arrayBuffer()).byteLength)); } };"})
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {101 * 1024 * 1024}\r\n\r\n".encode())
        assert connection.recv(4096).startswith(b"HTTP/1.1 413 ")

    def chunks():  # no content-length: the limit is counted as the body streams
        block = b"x" * (1024 * 1024)
        for _ in range(101):
            yield block

    streamed = httpx.post(server.url + "/", content=chunks(), timeout=60)
    assert streamed.status_code == 413
    assert server.get("/").status_code == 200


def test_large_bodies_do_not_count_their_transfer_against_the_cpu_limit(dev: Any) -> None:
    # Moving 60 MB in and 30 MB out of the isolate costs the runtime ~300 ms of
    # CPU here, three times the worker's limit; the script's own work (copying
    # each body once) is a third of it.
    server = dev(
        {
            "wrangler.toml": 'name = "bodies"\nmain = "worker.js"\n[limits]\ncpu_ms = 100\n',
            "worker.js": """
            export default {
              async fetch(request) {
                const size = (await request.arrayBuffer()).byteLength;
                const out = new Uint8Array(30 * 1024 * 1024);
                out[0] = 1; out[out.length - 1] = 2;
                return new Response(out, { headers: { "x-received": String(size) } });
              },
            };
            """,
        },
        ".",
    )
    response = httpx.post(server.url + "/", content=b"y" * (60 * 1024 * 1024), timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-received"] == str(60 * 1024 * 1024)
    assert response.headers["content-length"] == str(30 * 1024 * 1024)
    assert len(response.content) == 30 * 1024 * 1024
    assert response.content[0] == 1 and response.content[-1] == 2


def test_headers_over_128_kb_are_431(dev: Any) -> None:
    server = dev({"worker.js": HELLO})
    big = {f"x-h{i}": "v" * 1000 for i in range(140)}
    response = server.get("/", headers=big)
    assert response.status_code == 431
    assert server.get("/", headers={f"x-h{i}": "v" * 1000 for i in range(60)}).status_code == 200


HELLO = "export default { fetch() { return new Response('hi'); } };"


def test_timer_flood_is_refused_and_the_worker_keeps_serving(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch(request) {
                if (new URL(request.url).pathname === "/ok") return new Response("ok");
                let made = 0;
                try {
                  for (let i = 0; i < 1e6; i++) { setTimeout(() => {}, 60_000); made++; }
                } catch (e) {
                  return new Response(`${e.name} after ${made}`);
                }
                return new Response("made a million timers");
              },
            };
            """
        }
    )
    assert server.get("/").text == "RangeError after 10000"
    assert server.get("/ok").text == "ok"  # the flood's timers died with its invocation


def test_log_flood_is_truncated(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                const line = "x".repeat(1000);
                for (let i = 0; i < 10000; i++) console.log(i, line);
                console.log("y".repeat(100000));
                return new Response("logged");
              },
            };
            """
        }
    )
    assert server.get("/").text == "logged"
    server.wait_for("Log limit reached")
    time.sleep(0.3)
    logged = [line for line in server.lines if "xxxxxxxxxx" in line]
    assert 200 <= len(logged) <= 300, len(logged)


def test_hostile_scripts_of_other_shapes_are_contained(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            function recurse() { return recurse() + 1; }
            export default {
              async fetch(request, env, ctx) {
                const path = new URL(request.url).pathname;
                if (path === "/recurse") {
                  try { recurse(); } catch (e) { return new Response(e.name); }
                }
                if (path === "/microtasks") {
                  const again = () => Promise.resolve().then(again);
                  again();
                  return new Response("never sent: the microtask queue never drains");
                }
                if (path === "/after-response") {
                  ctx.waitUntil(new Promise(() => setTimeout(() => { for (;;) {} }, 0)));
                  return new Response("sent");
                }
                return new Response("fine");
              },
            };
            """
        }
    )
    assert server.get("/recurse").text == "RangeError"
    assert server.get("/microtasks").status_code == 503
    assert server.get("/").text == "fine"
    server.wait_for("exceeded its CPU time limit")
    start = len(server.lines)
    assert server.get("/after-response").text == "sent"  # the runaway timer is stopped after the response
    server.wait_for("exceeded its CPU time limit", start=start)
    assert server.get("/").text == "fine"


def test_runaway_top_level_code_fails_the_load_not_the_server(dev: Any) -> None:
    server = dev({"worker.js": "for (;;) {}\nexport default { fetch() { return new Response('x'); } };"})
    server.wait_for("Script startup exceeded CPU time limit")
    assert server.get("/").status_code == 503


def test_a_script_that_subverts_the_runtime_cannot_split_a_response(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            const realStringify = JSON.stringify;
            export default {
              fetch(request) {
                const mode = new URL(request.url).pathname;
                JSON.stringify = (value) => mode === "/split"
                  ? realStringify([["x-a", "1\\r\\nSet-Cookie: stolen=1"]])
                  : "not json";
                return new Response("tampered");
              },
            };
            """
        }
    )
    split = server.get("/split")
    assert split.status_code == 500
    assert "set-cookie" not in split.headers
    assert server.get("/garbage").status_code == 500


def test_a_script_that_keeps_crashing_the_runtime_is_quarantined_until_redeployed(edge: Any) -> None:
    crasher = "export default { fetch() { return new Response(String(new Array(60000000).fill(1.5).length)); } };"
    harness = edge({"crash": crasher, "hello": "export default { fetch() { return new Response('hello'); } };"}, heap_mb=32)
    for _ in range(3):
        response = harness.get("/crash")
        assert response.status_code == 503 and "crashed" in response.text
        assert harness.get("/hello").text == "hello"
    quarantined = harness.get("/crash")
    assert quarantined.status_code == 503
    assert "quarantined" in quarantined.text
    assert len(harness.supervisor.crashes) == 3  # refused without running: no fourth crash
    harness.deploy("crash", "export default { fetch() { return new Response('fixed'); } };")
    assert harness.get("/crash").text == "fixed"


def test_idle_isolates_are_evicted_and_start_again_on_demand(edge: Any) -> None:
    harness = edge(
        {"counter": "let n = 0;\nexport default { fetch() { n++; return new Response(String(n)); } };"},
        idle_timeout=2.0,  # long enough that a loaded machine never evicts between the first two requests
    )
    assert harness.get("/counter").text == "1"
    assert harness.get("/counter").text == "2"  # the same isolate: its state is kept while used
    deadline = time.monotonic() + 10
    while not any("evicted" in message for _, _, message in harness.logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("evicted" in message for _, _, message in harness.logs), harness.logs
    assert harness.get("/counter").text == "1"  # a new isolate, started on demand
    assert harness.metering[-1][1]["cold"] is True
