"""Service bindings (issue #10): one worker calling another on the same node, by fetch and by RPC.

``warren dev --service`` runs the callee beside the caller; ``warren control`` and
``warren serve`` (real processes sharing a SQLite store) resolve a binding within
the caller's account. Every call goes through the supervisor as an exchange with
no HTTP round trip; the chain depth and the subrequest limit are enforced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

API = "/client/v4"
DOMAIN = "workers.test"

CALLER_TOML = """
name = "caller"
main = "index.js"

[[services]]
binding = "AUTH"
service = "auth-worker"

[[services]]
binding = "ADMIN"
service = "auth-worker"
entrypoint = "Admin"
"""

CALLER = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/fetch") {
      const answer = await env.AUTH.fetch("http://auth.internal/check?who=ann", {
        method: "PUT", body: "secret", headers: { "x-token": "t1" },
      });
      return Response.json({
        status: answer.status, body: await answer.text(), header: answer.headers.get("x-auth"),
      });
    }
    if (url.pathname === "/big") {
      const answer = await env.AUTH.fetch("http://auth.internal/big");
      return url.searchParams.has("read") ? new Response(`read ${(await answer.arrayBuffer()).byteLength}`) : answer;
    }
    if (url.pathname === "/forward") {
      // The incoming request itself, body and all, handed on.
      return env.AUTH.fetch(request);
    }
    if (url.pathname === "/rpc") {
      const sum = await env.AUTH.add(40, 2);
      const value = await env.AUTH.echo({
        list: [1, "two", null, undefined, 3n, NaN, -0],
        when: new Date(1700000000000),
        map: new Map([["k", new Set([1, 2])]]),
        bytes: new Uint16Array([513, 1027]),
        nested: { deep: { er: /ab+c/gi } },
      });
      const errors = {};
      for (const method of ["failRange", "failCustom", "nope", "constructor", "ctx", "secretField"]) {
        try {
          await env.AUTH[method]("boom");
          errors[method] = "no error";
        } catch (error) {
          errors[method] = `${error.name}: ${error.message} (Error: ${error instanceof Error}, Range: ${error instanceof RangeError})`;
        }
      }
      try {
        await env.AUTH.echo(() => 1);
      } catch (error) {
        errors.sendFunction = `${error.name}: ${error.message}`;
      }
      try {
        const loop = {};
        loop.self = loop;
        await env.AUTH.echo(loop);
      } catch (error) {
        errors.sendCycle = error.name;
      }
      try {
        await env.AUTH.giveFunction();
      } catch (error) {
        errors.returnFunction = `${error.name}: ${error.message}`;
      }
      const admin = await env.ADMIN.whoami();
      const adminPage = await (await env.ADMIN.fetch("http://admin.internal/")).text();
      const notThenable = (await env.AUTH) === env.AUTH;
      return Response.json({
        sum,
        list: [value.list[1], value.list[2], value.list.length, value.list[3] === undefined, 3 in value.list,
               typeof value.list[4], value.list[4] === 3n, Number.isNaN(value.list[5]), Object.is(value.list[6], -0)],
        when: value.when instanceof Date && value.when.getTime(),
        map: value.map instanceof Map && [...value.map.get("k")],
        bytes: value.bytes instanceof Uint16Array && [...value.bytes],
        regexp: String(value.nested.deep.er),
        errors, admin, adminPage, notThenable,
      });
    }
    return new Response("caller");
  },
};
"""

AUTH_TOML = """
name = "auth-worker"
main = "index.js"
"""

AUTH = """
import { WorkerEntrypoint } from "cloudflare:workers";

export class Admin extends WorkerEntrypoint {
  whoami() { return "admin entrypoint"; }
  fetch() { return new Response("admin page"); }
}

class AuthError extends Error {
  constructor(message) { super(message); this.name = "AuthError"; }
}

export default class extends WorkerEntrypoint {
  constructor(ctx, env) {
    super(ctx, env);
    this.secretField = () => "never callable";
  }
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/big") return new Response("x".repeat(3 * 1024 * 1024));
    console.log(`auth saw ${request.method} ${url.pathname}`);
    return new Response(
      `${request.method} ${url.pathname}${url.search} token=${request.headers.get("x-token")} body=${await request.text()}`,
      { status: 201, headers: { "x-auth": "ok" } },
    );
  }
  add(a, b) { return a + b; }
  echo(value) { return value; }
  failRange(message) { throw new RangeError(message); }
  failCustom(message) { throw new AuthError(`custom ${message}`); }
  giveFunction() { return () => 1; }
}
"""


def test_fetch_and_rpc_round_trip_through_a_service_binding(dev: Any) -> None:
    server = dev(
        {
            "caller/wrangler.toml": CALLER_TOML,
            "caller/index.js": CALLER,
            "auth/wrangler.toml": AUTH_TOML,
            "auth/index.js": AUTH,
        },
        "caller",
        "--service",
        "auth",
    )
    fetched = server.get("/fetch").json()
    assert fetched == {"status": 201, "body": "PUT /check?who=ann token=t1 body=secret", "header": "ok"}
    server.wait_for(r"\[auth-worker\] auth saw PUT /check")

    forwarded = server.request("POST", "/forward?x=1", content=b"a body of bytes", headers={"x-token": "t2"})
    assert forwarded.status_code == 201
    assert forwarded.text == "POST /forward?x=1 token=t2 body=a body of bytes"

    # Over 1 MiB: the callee's response is taken with flow control; passed on, or read in JavaScript.
    big = server.get("/big")
    assert big.status_code == 200 and len(big.content) == 3 * 1024 * 1024 and set(big.content) == {ord("x")}
    assert server.get("/big?read").text == f"read {3 * 1024 * 1024}"

    result = server.get("/rpc").json()
    assert result["sum"] == 42
    assert result["list"] == ["two", None, 7, True, True, "bigint", True, True, True]
    assert result["when"] == 1700000000000
    assert result["map"] == [1, 2]
    assert result["bytes"] == [513, 1027]
    assert result["regexp"] == "/ab+c/gi"
    errors = result["errors"]
    assert errors["failRange"] == "RangeError: boom (Error: true, Range: true)"
    assert errors["failCustom"] == "AuthError: custom boom (Error: true, Range: false)"
    assert errors["nope"].startswith('TypeError: The RPC receiver does not implement the method "nope".')
    # Neither the constructor nor properties the instance set itself are RPC methods.
    for method in ("constructor", "ctx", "secretField"):
        assert errors[method].startswith(f'TypeError: The RPC receiver does not implement the method "{method}".')
    assert errors["sendFunction"].startswith("DataCloneError:")
    assert errors["sendCycle"] == "DataCloneError"
    assert errors["returnFunction"].startswith("DataCloneError:")
    assert result["admin"] == "admin entrypoint"
    assert result["adminPage"] == "admin page"
    assert result["notThenable"] is True
    # The callee's invocations are in the log like any other, and a method that threw is an exception there.
    server.wait_for(r"POST /add 200 ok")
    server.wait_for(r"POST /failRange 200 exception")


def test_a_missing_service_is_a_clear_error(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": 'name = "lonely"\nmain = "index.js"\n[[services]]\nbinding = "GONE"\nservice = "nobody"\n',
            "index.js": """
                export default {
                  async fetch(request, env) {
                    try { await env.GONE.fetch("http://x/"); return new Response("reached"); }
                    catch (error) { return new Response(`${error.name}: ${error.message}`, { status: 502 }); }
                  },
                };
            """,
        },
        ".",
    )
    response = server.get("/")
    assert response.status_code == 502
    assert response.text == 'Error: The service "nobody" is not available: no worker of that name is running.'


DEEP_TOML = 'name = "deep"\nmain = "index.js"\n[[services]]\nbinding = "SELF"\nservice = "deep"\n'
DEEP = """
export default {
  async fetch(request, env) {
    const n = Number(new URL(request.url).searchParams.get("n"));
    if (n === 0) return new Response("bottom");
    try {
      const answer = await env.SELF.fetch(`http://deep/?n=${n - 1}`);
      return new Response(`${n} ${await answer.text()}`, { status: answer.status });
    } catch (error) {
      return new Response(`${n} ${error.name}: ${error.message}`, { status: 508 });
    }
  },
};
"""


def test_a_chain_of_32_calls_works_and_a_deeper_one_is_refused(dev: Any) -> None:
    server = dev({"wrangler.toml": DEEP_TOML, "index.js": DEEP}, ".")
    ok = server.get("/?n=32")
    assert ok.status_code == 200
    assert ok.text.endswith("2 1 bottom") and ok.text.startswith("32 31 ")
    refused = server.get("/?n=33")
    assert refused.status_code == 508
    # 33 workers deep: the 33rd call, made at depth 32, is the one refused.
    assert refused.text.endswith("1 Error: Subrequest depth limit exceeded: more than 32 nested calls.")
    assert refused.text.startswith("33 32 ")


def test_service_calls_count_toward_the_subrequest_limit(dev: Any) -> None:
    server = dev(
        {
            "caller/wrangler.toml": CALLER_TOML,
            "caller/index.js": """
                export default {
                  async fetch(request, env) {
                    const count = Number(new URL(request.url).searchParams.get("n"));
                    let done = 0;
                    try {
                      for (let i = 0; i < count; i++) {
                        if (i % 2) await env.AUTH.add(i, 1); else await (await env.AUTH.fetch("http://a/")).text();
                        done++;
                      }
                      return new Response(`made ${done}`);
                    } catch (error) {
                      return new Response(`made ${done}, then ${error.message}`, { status: 429 });
                    }
                  },
                };
            """,
            "auth/wrangler.toml": AUTH_TOML,
            "auth/index.js": AUTH,
        },
        "caller",
        "--service",
        "auth-worker=auth",
    )
    assert server.get("/?n=50").text == "made 50"
    refused = server.get("/?n=60")
    assert refused.status_code == 429
    assert refused.text == "made 50, then Too many subrequests."


# -- on an edge node: bindings resolve within the caller's account ------------------------------


def _account(store: Path, name: str) -> dict[str, str]:
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", name, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    account: dict[str, str] = json.loads(created.stdout)
    return account


def _upload(api: httpx.Client, account_id: str, name: str, source: str, bindings: list[Any]) -> httpx.Response:
    files = {
        "metadata": (None, json.dumps({"main_module": "index.js", "bindings": bindings}), "application/json"),
        "index.js": ("index.js", source, "application/javascript+module"),
    }
    return api.put(f"/accounts/{account_id}/workers/scripts/{name}", files=files)


def test_on_the_edge_a_service_is_the_script_of_that_name_in_the_callers_account(tmp_path: Path, spawn: Any) -> None:
    store = tmp_path / "warren.db"
    demo, other = _account(store, "demo"), _account(store, "other")
    control = spawn(["control", "--store", str(store)])
    edge = spawn(["serve", "--store", str(store), "--workers-domain", DOMAIN, "--processes", "1"])

    def api(account: dict[str, str]) -> httpx.Client:
        return httpx.Client(
            base_url=control.url + API, headers={"authorization": f"Bearer {account['token']}"}, timeout=30
        )

    callee = "export default { fetch(r) { return new Response('callee of ' + ACCOUNT); } };"
    with api(demo) as demo_api, api(other) as other_api:
        assert _upload(demo_api, demo["account_id"], "callee", callee.replace("ACCOUNT", "'demo'"), []).is_success
        assert _upload(other_api, other["account_id"], "callee", callee.replace("ACCOUNT", "'other'"), []).is_success
        assert _upload(other_api, other["account_id"], "private", callee.replace("ACCOUNT", "'private'"), []).is_success
        caller = """
            export default {
              async fetch(request, env) {
                const which = new URL(request.url).pathname === "/private" ? env.PRIVATE : env.CALLEE;
                try { return new Response(await (await which.fetch("http://x/")).text()); }
                catch (error) { return new Response(error.message, { status: 502 }); }
              },
            };
        """
        bindings = [
            {"type": "service", "name": "CALLEE", "service": "callee", "environment": "production"},
            {"type": "service", "name": "PRIVATE", "service": "private"},
        ]
        uploaded = _upload(demo_api, demo["account_id"], "caller", caller, bindings)
        assert uploaded.is_success, uploaded.text
        version = demo_api.get(
            f"/accounts/{demo['account_id']}/workers/scripts/caller/versions/{uploaded.json()['result']['version_id']}"
        ).json()["result"]
        # Stored as the metadata said, less what warren has no use for (environments).
        assert version["bindings"] == [
            {"type": "service", "name": "CALLEE", "service": "callee"},
            {"type": "service", "name": "PRIVATE", "service": "private"},
        ]
        bad = _upload(demo_api, demo["account_id"], "bad", caller, [{"type": "service", "name": "X", "service": "A B"}])
        assert bad.status_code == 400 and "invalid script name" in bad.text

    host = f"caller.demo.{DOMAIN}"
    for _ in range(200):
        response = httpx.get(edge.url + "/", headers={"host": host}, timeout=30)
        if response.status_code == 200:
            break
        time.sleep(0.05)
    assert response.text == "callee of demo"
    # "other" has a script named "private"; demo has none, and another account's is out of reach.
    private = httpx.get(edge.url + "/private", headers={"host": host}, timeout=30)
    assert private.status_code == 502
    assert private.text == 'The service "private" is not available: no worker of that name is running.'
