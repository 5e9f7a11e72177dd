"""Handlers, env, waitUntil and the Web APIs a Worker script sees, over real HTTP."""

from __future__ import annotations

import time
from typing import Any

HELLO_MODULE = """
export default {
  async fetch(request, env, ctx) {
    return new Response("hello from an isolate");
  },
};
"""

HELLO_SERVICE_WORKER = """
addEventListener("fetch", (event) => {
  event.respondWith(new Response("hello from a service worker", { headers: { "x-syntax": "sw" } }));
});
"""


def test_hello_module_syntax(dev: Any) -> None:
    server = dev({"worker.js": HELLO_MODULE})
    response = server.get("/")
    assert response.status_code == 200
    assert response.text == "hello from an isolate"
    assert response.headers["content-type"] == "text/plain;charset=UTF-8"


def test_hello_service_worker_syntax(dev: Any) -> None:
    server = dev({"worker.js": HELLO_SERVICE_WORKER})
    response = server.get("/")
    assert response.status_code == 200
    assert response.text == "hello from a service worker"
    assert response.headers["x-syntax"] == "sw"


def test_request_is_seen_by_the_worker(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const url = new URL(request.url);
                const body = await request.text();
                return Response.json({
                  method: request.method,
                  path: url.pathname,
                  q: url.searchParams.get("q"),
                  header: request.headers.get("x-test"),
                  body,
                }, { status: 201, headers: { "set-cookie": "a=1" } });
              },
            };
            """
        }
    )
    response = server.request("POST", "/some/path?q=%C3%A9t%C3%A9", content="päyload".encode(), headers={"X-Test": "yes"})
    assert response.status_code == 201
    assert response.json() == {"method": "POST", "path": "/some/path", "q": "été", "header": "yes", "body": "päyload"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["set-cookie"] == "a=1"


def test_binary_bodies_round_trip(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const bytes = new Uint8Array(await request.arrayBuffer());
                const reversed = bytes.slice().reverse();
                return new Response(reversed, { headers: { "x-length": String(bytes.length) } });
              },
            };
            """
        }
    )
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    response = server.request("PUT", "/", content=payload)
    assert response.status_code == 200
    assert response.headers["x-length"] == str(len(payload))
    assert response.content == payload[::-1]


def test_small_bodies_read_every_way(dev: Any) -> None:
    # Small bodies reach the worker whole with the event (up to 64 KiB), larger ones stream
    # from the host: both read the same through every reader.
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const how = new URL(request.url).searchParams.get("how");
                const copy = request.clone();
                let bytes;
                if (how === "stream") {
                  const reader = request.body.getReader();
                  const parts = [];
                  for (;;) { const { done, value } = await reader.read(); if (done) break; parts.push(...value); }
                  bytes = new Uint8Array(parts);
                } else if (how === "text") {
                  bytes = new TextEncoder().encode(await request.text());
                } else {
                  bytes = new Uint8Array(await request.arrayBuffer());
                }
                const again = new Uint8Array(await copy.arrayBuffer());
                let sum = 0;
                for (const byte of bytes) sum = (sum * 31 + byte) >>> 0;
                return Response.json({ length: bytes.length, sum, same: again.length === bytes.length, used: request.bodyUsed });
              },
            };
            """
        }
    )

    def expected(payload: bytes) -> int:
        total = 0
        for byte in payload:
            total = (total * 31 + byte) & 0xFFFFFFFF
        return total

    for size in (1, 255, 64 * 1024, 64 * 1024 + 1):
        payload = bytes(index % 256 for index in range(size))
        for how in ("buffer", "stream"):
            answer = server.request("POST", f"/?how={how}", content=payload).json()
            assert answer == {"length": size, "sum": expected(payload), "same": True, "used": True}, (size, how)
    text = "héllo wörld ✓".encode()
    answer = server.request("POST", "/?how=text", content=text).json()
    assert answer["length"] == len(text) and answer["sum"] == expected(text)


def test_env_vars_from_wrangler_toml(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": """
            name = "vars-test"
            main = "src/index.js"
            compatibility_date = "2024-09-23"

            [vars]
            GREETING = "bonjour"
            SETTINGS = { level = 3 }
            """,
            "src/index.js": """
            export default {
              fetch(request, env) {
                return new Response(env.GREETING + " " + env.SETTINGS.level);
              },
            };
            """,
        },
        ".",
    )
    assert server.get("/").text == "bonjour 3"
    assert "[vars-test]" in server.output or "Ready on" in server.output


def test_service_worker_script_sees_its_bindings_as_globals(dev: Any) -> None:
    # As on Workers: a script without modules has no env argument, its bindings are globals.
    server = dev(
        {
            "wrangler.toml": """
            name = "sw-globals"
            main = "worker.js"

            [vars]
            GREETING = "hi"

            [[kv_namespaces]]
            binding = "STORE"
            id = "store"
            """,
            "worker.js": """
            const atTopLevel = typeof GREETING;
            addEventListener("fetch", (event) => event.respondWith((async () => {
              await STORE.put("k", GREETING + "!");
              return new Response([atTopLevel, GREETING, await STORE.get("k")].join(" "));
            })()));
            """,
        },
        ".",
    )
    assert server.get("/").text == "string hi hi!"


def test_module_top_level_env_import_sees_vars(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            import { env } from "cloudflare:workers";
            const seen = env.X;
            export default { fetch: () => new Response("top level " + seen + ", globals " + typeof X) };
            """
        },
        "worker.js",
        "--var",
        "X:set",
    )
    assert server.get("/").text == "top level set, globals undefined"


def test_wrangler_jsonc_and_cli_var(dev: Any) -> None:
    server = dev(
        {
            "wrangler.jsonc": """
            // comments and trailing commas are allowed, as in wrangler
            {
              "name": "jsonc-test",
              "main": "worker.js",
              "vars": { "A": "from-config", },
              "d1_databases": [],
            }
            """,
            "worker.js": "export default { fetch: (r, env) => new Response(env.A + ',' + env.B) };",
        },
        ".",
        "--var",
        "B:from-cli",
    )
    assert server.get("/").text == "from-config,from-cli"
    assert "ignoring 'd1_databases'" in server.output


def test_wait_until_runs_after_the_response(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            let finished = 0;
            export default {
              async fetch(request, env, ctx) {
                if (new URL(request.url).pathname === "/count") return new Response(String(finished));
                ctx.waitUntil(new Promise((resolve) => setTimeout(() => { finished++; console.log("background done"); resolve(); }, 1500)));
                return new Response("sent");
              },
            };
            """
        }
    )
    started = time.monotonic()
    response = server.get("/")
    assert response.text == "sent"
    assert time.monotonic() - started < 1.5, "the response waited for waitUntil"
    assert server.get("/count").text == "0"
    server.wait_for("background done", timeout=5)
    assert server.get("/count").text == "1"


def test_console_output_is_printed_by_dev(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                console.log("plain", 42, { nested: [1, 2] });
                console.error("bad thing");
                return new Response("ok");
              },
            };
            """
        }
    )
    assert server.get("/").status_code == 200
    server.wait_for(r"plain 42 \{ nested: \[ 1, 2 \] \}")
    server.wait_for("error: bad thing")
    server.wait_for(r"GET / 200 ok cpu=")


def test_uncaught_exception_is_500_and_logged_not_leaked(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                throw new Error("secret internal detail");
              },
            };
            """
        }
    )
    response = server.get("/")
    assert response.status_code == 500
    assert "secret internal detail" not in response.text
    server.wait_for("Error: secret internal detail")
    assert server.get("/").status_code == 500  # and the server is still there


def test_a_handler_that_never_responds_gets_an_error(dev: Any) -> None:
    server = dev({"worker.js": "export default { fetch() { return new Promise(() => {}); } };"})
    response = server.get("/")
    assert response.status_code == 500
    server.wait_for("will never generate a response")


def test_non_response_return_is_500(dev: Any) -> None:
    server = dev({"worker.js": "export default { fetch() { return 'not a response'; } };"})
    assert server.get("/").status_code == 500
    server.wait_for("did not resolve to 'Response'")


def test_cloudflare_workers_import_and_entrypoint_class(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            import { WorkerEntrypoint } from "cloudflare:workers";
            export default class extends WorkerEntrypoint {
              async fetch(request) {
                return new Response("entrypoint " + (this.env.X ?? "none"));
              }
            }
            """
        },
        "worker.js",
        "--var",
        "X:set",
    )
    assert server.get("/").text == "entrypoint set"


def test_clock_does_not_advance_during_execution(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch() {
                const a = Date.now(), p = performance.now();
                let x = 0; for (let i = 0; i < 3e6; i++) x += i;
                const b = Date.now(), q = performance.now();
                await new Promise((r) => setTimeout(r, 20));
                const c = Date.now();
                return Response.json({ same: a === b && p === q, advanced: c > b, isDate: new Date().getTime() === c });
              },
            };
            """
        }
    )
    assert server.get("/").json() == {"same": True, "advanced": True, "isDate": True}


def test_web_apis_of_the_foundation(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request, env, ctx) {
                ctx.passThroughOnException();
                const results = {};
                results.encoded = Array.from(new TextEncoder().encode("é€"));
                results.decoded = new TextDecoder().decode(new Uint8Array([0xf0, 0x9f, 0x98, 0x80]));
                results.base64 = btoa("hello") + " " + atob("aGVsbG8=");
                const original = { when: new Date(0), list: new Map([["a", new Set([1])]]) };
                original.self = original;
                const copy = structuredClone(original);
                results.clone = copy !== original && copy.self === copy && copy.list.get("a").has(1) && copy.when.getTime() === 0;
                const url = new URL("https://例え.jp/a/../b?x=1#h");
                url.searchParams.append("y", "z w");
                results.url = url.href;
                const headers = new Headers([["Set-Cookie", "a=1"], ["set-cookie", "b=2"], ["X-A", " v "]]);
                results.cookies = headers.getSetCookie();
                results.xa = headers.get("x-a");
                results.order = await new Promise((resolve) => {
                  const seen = [];
                  setTimeout(() => { seen.push("timeout"); resolve(seen); }, 0);
                  queueMicrotask(() => seen.push("microtask"));
                  seen.push("sync");
                });
                queueMicrotask(() => { throw new Error("thrown in a microtask"); });
                results.wasm = typeof WebAssembly.instantiate;
                return Response.json(results);
              },
            };
            """
        }
    )
    results = server.get("/").json()
    assert results == {
        "encoded": [195, 169, 226, 130, 172],
        "decoded": "\U0001F600",
        "base64": "aGVsbG8= hello",
        "clone": True,
        "url": "https://xn--r8jz45g.jp/b?x=1&y=z+w#h",
        "cookies": ["a=1", "b=2"],
        "xa": "v",
        "order": ["sync", "microtask", "timeout"],
        "wasm": "function",
    }
    server.wait_for("thrown in a microtask")


def test_webassembly_from_bytes_is_refused(dev: Any) -> None:
    # As on Workers: only .wasm modules (compiled by the host) run; tests/test_wasm.py has the rest.
    # (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
    server = dev(
        {
            "worker.js": """
            const bytes = new Uint8Array([0,97,115,109,1,0,0,0,1,7,1,96,2,127,127,1,127,3,2,1,0,7,7,1,3,97,100,100,0,0,10,9,1,7,0,32,0,32,1,106,11]);
            export default {
              async fetch() {
                try {
                  await WebAssembly.instantiate(bytes);
                  return new Response("compiled");
                } catch (error) {
                  return new Response(error.name + ": " + error.message);
                }
              },
            };
            """
        }
    )
    refused = "CompileError: WebAssembly.instantiate(): Wasm code generation disallowed by embedder"
    assert server.get("/").text == refused


def test_emoji_in_script_source_survive(dev: Any) -> None:
    server = dev({"worker.js": "export default { fetch() { return new Response('smile 😀 ' + '😀'.length); } };"})
    assert server.get("/").text == "smile 😀 2"


def test_multiple_modules_with_relative_imports_json_text_and_wasm(dev: Any, tmp_path: Any) -> None:
    wasm = bytes([0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100,
                  0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "add.wasm").write_bytes(wasm)
    server = dev(
        {
            "src/index.js": """
            import { greet } from "./lib/greet.js";
            import config from "./config.json";
            import banner from "./banner.txt";
            import addModule from "./add.wasm";
            const add = new WebAssembly.Instance(addModule).exports.add;
            export default {
              fetch() { return new Response(`${greet(config.who)} ${banner.trim()} ${add(2, 3)}`); },
            };
            """,
            "src/lib/greet.js": """
            import { punctuation } from "../util/punctuation.js";
            export function greet(who) { return "hello " + who + punctuation; }
            """,
            "src/util/punctuation.js": 'export const punctuation = "!";',
            "src/config.json": '{"who": "modules"}',
            "src/banner.txt": "from text\n",
            "wrangler.toml": 'name = "modules"\nmain = "src/index.js"\n',
        },
        ".",
    )
    assert server.get("/").text == "hello modules! from text 5"


def test_a_missing_module_is_a_load_error(dev: Any) -> None:
    server = dev({"worker.js": 'import { x } from "./nowhere.js";\nexport default { fetch() { return new Response(x); } };'})
    server.wait_for('No such module "./nowhere.js"')


def test_crypto_random(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch() {
                const a = crypto.getRandomValues(new Uint8Array(32));
                const b = crypto.getRandomValues(new Uint32Array(4));
                let tooBig = "allowed";
                try { crypto.getRandomValues(new Uint8Array(65537)); } catch (e) { tooBig = e.name; }
                return Response.json({ distinct: a.some((x) => x !== 0) && b.some((x) => x !== 0), uuid: crypto.randomUUID(), tooBig });
              },
            };
            """
        }
    )
    first, second = server.get("/").json(), server.get("/").json()
    assert first["distinct"] and first["tooBig"] == "QuotaExceededError"
    import re

    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", first["uuid"])
    assert first["uuid"] != second["uuid"]
