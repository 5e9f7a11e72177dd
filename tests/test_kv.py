"""Workers KV through real workers: every call and error on ``warren dev`` (SQLite under
``.warren/state``), 20 MiB values streamed by handle, and the consistency model on two real
edge nodes sharing one SQLite store, with injectable clocks instead of sleeps (TTL expiry,
cacheTtl staleness bounds, change notifications, last-write-wins convergence).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Edge, ServiceProcess
from warren.bindings import BindingHost
from warren.bindings.kv import KVHandler
from warren.runtime import WorkerScript
from warren.store import SQLiteStore, Store

MiB = 1024 * 1024

WORKER = r"""
async function show(value) {
  if (value instanceof Map) {
    return { map: [...value].map(([k, v]) => [k, v]) };
  }
  if (value instanceof ArrayBuffer) return { arrayBuffer: [...new Uint8Array(value)] };
  if (value instanceof ReadableStream) return { stream: await new Response(value).text() };
  if (value === undefined) return { undefined: true };
  if (value !== null && typeof value === "object" && value.value instanceof ReadableStream) {
    return { withStream: await new Response(value.value).text(), metadata: value.metadata };
  }
  return { value };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const q = (name) => url.searchParams.get(name);
    const kv = env[q("ns") || "KV"];
    try {
      switch (url.pathname.replace(/^\/w(?=\/)/, "")) {  // the edge harness routes by /w
        case "/call": {
          const args = JSON.parse(q("args") || "[]");
          return Response.json(await show(await kv[q("m")](...args)));
        }
        case "/put-body": {
          await kv.put(q("key"), request.body, JSON.parse(q("options") || "{}"));
          return Response.json({ ok: true });
        }
        case "/put-bytes": {
          const size = Number(q("size"));
          const bytes = new Uint8Array(size);
          for (let i = 0; i < Math.min(size, 1000); i++) bytes[i] = i % 251;
          const value = { u8: bytes, ab: bytes.buffer, dv: new DataView(bytes.buffer, 1, size - 2) }[q("kind")];
          await kv.put(q("key"), value);
          return Response.json({ ok: true });
        }
        case "/put-js-stream": {
          const parts = JSON.parse(q("parts"));
          const stream = new ReadableStream({
            start(controller) {
              for (const part of parts) controller.enqueue(new TextEncoder().encode(part));
              controller.close();
            },
          });
          await kv.put(q("key"), stream);
          return Response.json({ ok: true });
        }
        case "/put-used-stream": {
          await request.text();
          await kv.put(q("key"), request.body);
          return Response.json({ ok: true });
        }
        case "/huge": {
          const big = "é".repeat(Number(q("size")));
          const what = q("what");
          if (what === "key") await kv.get(big);
          if (what === "put") await kv.put(big, "v");
          if (what === "metadata") await kv.put("k", "v", { metadata: big });
          if (what === "prefix") await kv.list({ prefix: big });
          if (what === "bulk") await kv.get(["a", big]);
          if (what === "cursor") await kv.list({ cursor: big });
          return Response.json({ ok: true });
        }
                case "/put-object": {
          await kv.put(q("key"), { an: "object" });
          return Response.json({ ok: true });
        }
        case "/put-number": {
          await kv.put(q("key"), 42);
          return Response.json({ ok: true });
        }
        case "/stream": {
          const value = await kv.get(q("key"), "stream");
          return value === null ? new Response("missing", { status: 404 }) : new Response(value);
        }
        case "/read-stream": {
          const value = await kv.get(q("key"), { type: "stream", cacheTtl: 60 });
          let total = 0, chunks = 0, largest = 0;
          for await (const chunk of value) {
            total += chunk.byteLength;
            chunks += 1;
            largest = Math.max(largest, chunk.byteLength);
          }
          return Response.json({ total, chunks, largest });
        }
        case "/many": {
          const count = Number(q("count"));
          let done = 0;
          try {
            for (let i = 0; i < count; i++) {
              await kv.get("k" + (i % 7));
              done += 1;
            }
          } catch (error) {
            return Response.json({ done, error: { name: error.name, message: error.message } });
          }
          return Response.json({ done });
        }
        case "/shape": {
          return Response.json({
            string: Object.prototype.toString.call(kv),
            methods: ["get", "getWithMetadata", "put", "delete", "list"].map((m) => typeof kv[m]),
            keys: Object.keys(kv),
            construct: (() => { try { new kv.constructor(); return "constructed"; } catch (e) { return e.name + ": " + e.message; } })(),
          });
        }
      }
      return new Response("no such test", { status: 404 });
    } catch (error) {
      return Response.json({ error: { name: error.name, message: error.message } });
    }
  },
};
"""

CONFIG = """
name = "kv-test"
main = "worker.js"

[[kv_namespaces]]
binding = "KV"
id = "test-namespace"

[[kv_namespaces]]
binding = "LOCAL"
"""


def start_dev(directory: Path, *args: str) -> ServiceProcess:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "worker.js").write_text(WORKER)
    (directory / "wrangler.toml").write_text(textwrap.dedent(CONFIG))
    return ServiceProcess(["dev", ".", "--no-watch", *args], directory)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_dev(tmp_path_factory.mktemp("kv") / "project")
    yield process
    process.stop()


def call(server: Any, method: str, *args: Any, ns: str = "KV") -> Any:
    response = server.get("/call", params={"m": method, "args": json.dumps(args), "ns": ns})
    assert response.status_code == 200, response.text
    return response.json()


def error_of(result: Any) -> tuple[str, str]:
    assert "error" in result, result
    return result["error"]["name"], result["error"]["message"]


# -- the API -----------------------------------------------------------------------------------


def test_binding_object_looks_like_workers(server: ServiceProcess) -> None:
    shape = server.get("/shape").json()
    assert shape["string"] == "[object KvNamespace]"
    assert shape["methods"] == ["function"] * 5
    assert shape["keys"] == []
    assert shape["construct"] == "TypeError: Illegal constructor"


def test_put_get_text_json_arraybuffer_stream(server: ServiceProcess) -> None:
    assert call(server, "put", "api:text", "héllo ☃") == {"undefined": True}
    assert call(server, "get", "api:text") == {"value": "héllo ☃"}
    assert call(server, "get", "api:text", "text") == {"value": "héllo ☃"}
    assert call(server, "get", "api:text", {"type": "arrayBuffer"}) == {"arrayBuffer": list("héllo ☃".encode())}
    assert call(server, "get", "api:text", "stream") == {"stream": "héllo ☃"}
    call(server, "put", "api:json", json.dumps({"a": [1, 2, {"b": None}]}))
    assert call(server, "get", "api:json", "json") == {"value": {"a": [1, 2, {"b": None}]}}
    assert call(server, "get", "api:json", {"type": "json", "cacheTtl": 30}) == {"value": {"a": [1, 2, {"b": None}]}}
    # Missing keys are null whatever the type.
    for kind in ("text", "json", "arrayBuffer", "stream"):
        assert call(server, "get", "api:missing", kind) == {"value": None}
    # An empty value is a value.
    call(server, "put", "api:empty", "")
    assert call(server, "get", "api:empty") == {"value": ""}
    assert call(server, "get", "api:empty", "arrayBuffer") == {"arrayBuffer": []}


def test_get_with_metadata(server: ServiceProcess) -> None:
    call(server, "put", "meta:a", "v", {"metadata": {"owner": "ann", "n": [1, 2]}})
    assert call(server, "getWithMetadata", "meta:a") == {
        "value": {"value": "v", "metadata": {"owner": "ann", "n": [1, 2]}, "cacheStatus": None}
    }
    call(server, "put", "meta:b", "w")
    assert call(server, "getWithMetadata", "meta:b") == {"value": {"value": "w", "metadata": None, "cacheStatus": None}}
    assert call(server, "getWithMetadata", "meta:none") == {
        "value": {"value": None, "metadata": None, "cacheStatus": None}
    }
    streamed = call(server, "getWithMetadata", "meta:a", "stream")
    assert streamed == {"withStream": "v", "metadata": {"owner": "ann", "n": [1, 2]}}
    # A later put without metadata drops it.
    call(server, "put", "meta:a", "v2")
    assert call(server, "getWithMetadata", "meta:a")["value"]["metadata"] is None


def test_bulk_get_returns_a_map(server: ServiceProcess) -> None:
    call(server, "put", "bulk:1", "one", {"metadata": {"i": 1}})
    call(server, "put", "bulk:2", '{"two": 2}')
    assert call(server, "get", ["bulk:1", "bulk:2", "bulk:none"]) == {
        "map": [["bulk:1", "one"], ["bulk:2", '{"two": 2}'], ["bulk:none", None]]
    }
    assert call(server, "get", ["bulk:2"], "json") == {"map": [["bulk:2", {"two": 2}]]}
    assert call(server, "getWithMetadata", ["bulk:1", "bulk:none"]) == {
        "map": [["bulk:1", {"value": "one", "metadata": {"i": 1}}], ["bulk:none", None]]
    }
    assert call(server, "get", ["bulk:1", "bulk:2"], {"type": "json"})["error"]["message"] == (
        "KV GET_BULK failed: 400 At least one of the requested keys corresponds to a non-json value"
    )
    assert error_of(call(server, "get", ["bulk:1"], "arrayBuffer")) == (
        "Error",
        'KV GET_BULK failed: 400 "arrayBuffer" is not a valid type. Use "json" or "text"',
    )
    assert error_of(call(server, "get", [f"k{i}" for i in range(101)])) == (
        "Error",
        "KV GET_BULK failed: 400 You can request a maximum of 100 keys",
    )
    assert error_of(call(server, "get", [])) == ("Error", "KV GET_BULK failed: 400 You must request a minimum of 1 key")
    assert call(server, "get", [f"bulk:{i}" for i in range(100)])["map"][0] == ["bulk:0", None]


def test_put_values_of_every_type(server: ServiceProcess) -> None:
    for kind, size in (("u8", 10), ("ab", 10), ("dv", 10), ("u8", 200_000)):
        response = server.get("/put-bytes", params={"key": f"bytes:{kind}{size}", "kind": kind, "size": size})
        assert response.json() == {"ok": True}
        expected = bytes(i % 251 for i in range(min(size, 1000))) + bytes(max(0, size - 1000))
        if kind == "dv":
            expected = expected[1:-1]
        stored = server.get("/stream", params={"key": f"bytes:{kind}{size}"})
        assert stored.content == expected
    # A stream made in JavaScript, and a request body (passed by handle).
    parts = ["ab", "cd", "é" * 3]
    assert server.get("/put-js-stream", params={"key": "stream:js", "parts": json.dumps(parts)}).json() == {"ok": True}
    assert call(server, "get", "stream:js") == {"value": "abcdééé"}
    body = os.urandom(300_000)
    assert server.request("POST", "/put-body", params={"key": "stream:body"}, content=body).json() == {"ok": True}
    assert server.get("/stream", params={"key": "stream:body"}).content == body
    # Numbers are strings; objects are refused as Workers refuses them.
    assert server.get("/put-number", params={"key": "number"}).json() == {"ok": True}
    assert call(server, "get", "number") == {"value": "42"}
    assert error_of(server.get("/put-object", params={"key": "object"}).json()) == (
        "TypeError",
        "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.",
    )
    used = server.request("POST", "/put-used-stream", params={"key": "used"}, content=b"abc").json()
    assert used["error"]["name"] == "TypeError"


def test_delete(server: ServiceProcess) -> None:
    call(server, "put", "del:a", "x")
    assert call(server, "delete", "del:a") == {"undefined": True}
    assert call(server, "get", "del:a") == {"value": None}
    assert call(server, "delete", "del:never") == {"undefined": True}
    assert "del:a" not in [key["name"] for key in call(server, "list", {"prefix": "del:"})["value"]["keys"]]


def test_list_in_utf8_byte_order_with_prefix_limit_and_cursor(server: ServiceProcess) -> None:
    # UTF-16 order would put "\U0001f600" (a surrogate pair) before "\uff61"; UTF-8 byte order puts it after.
    names = ["order:b", "order:a", "order:\uff61", "order:\U0001f600", "order:Z", "order:é", "order:aa", "order:a/b"]
    for index, name in enumerate(names):
        call(server, "put", name, "v", {"metadata": {"i": index}} if index % 2 else {})
    expected = sorted(names, key=lambda name: name.encode("utf-8"))
    listed = call(server, "list", {"prefix": "order:"})["value"]
    assert [key["name"] for key in listed["keys"]] == expected
    assert listed["list_complete"] is True and "cursor" not in listed and listed["cacheStatus"] is None
    # expiration and metadata only where they are set
    assert listed["keys"][expected.index("order:b")] == {"name": "order:b"}
    assert listed["keys"][expected.index("order:a")] == {"name": "order:a", "metadata": {"i": 1}}
    # Pages.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        options: dict[str, Any] = {"prefix": "order:", "limit": 3}
        if cursor:
            options["cursor"] = cursor
        page = call(server, "list", options)["value"]
        pages += 1
        seen += [key["name"] for key in page["keys"]]
        if page["list_complete"]:
            assert "cursor" not in page
            break
        assert isinstance(page["cursor"], str) and page["cursor"]
        cursor = page["cursor"]
    assert seen == expected and pages == 3
    # A prefix matches bytes, not characters' starts.
    assert [key["name"] for key in call(server, "list", {"prefix": "order:a"})["value"]["keys"]] == [
        "order:a",
        "order:a/b",
        "order:aa",
    ]
    assert call(server, "list", {"prefix": "nothing-here:"})["value"] == {
        "keys": [],
        "list_complete": True,
        "cacheStatus": None,
    }
    # limit 0 (or less) means the default, as in workerd.
    assert len(call(server, "list", {"prefix": "order:", "limit": 0})["value"]["keys"]) == len(names)


def test_list_shows_expiration(server: ServiceProcess) -> None:
    at = int(time.time()) + 3600
    call(server, "put", "exp:abs", "v", {"expiration": at})
    call(server, "put", "exp:ttl", "v", {"expirationTtl": 120, "metadata": {"m": True}})
    keys = {key["name"]: key for key in call(server, "list", {"prefix": "exp:"})["value"]["keys"]}
    assert keys["exp:abs"] == {"name": "exp:abs", "expiration": at}
    assert abs(keys["exp:ttl"]["expiration"] - (time.time() + 120)) < 5
    assert keys["exp:ttl"]["metadata"] == {"m": True}


def test_binding_without_an_id_is_local_to_dev(server: ServiceProcess) -> None:
    call(server, "put", "same-key", "in LOCAL", ns="LOCAL")
    call(server, "put", "same-key", "in KV")
    assert call(server, "get", "same-key", ns="LOCAL") == {"value": "in LOCAL"}
    assert call(server, "get", "same-key") == {"value": "in KV"}


# -- every error -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,name", [("get", "GET"), ("put", "PUT"), ("delete", "DELETE")])
def test_key_errors(server: ServiceProcess, method: str, name: str) -> None:
    args: list[Any] = ["v"] if method == "put" else []
    assert error_of(call(server, method, "", *args)) == ("TypeError", "Key name cannot be empty.")
    assert error_of(call(server, method, ".", *args)) == ("TypeError", '"." is not allowed as a key name.')
    assert error_of(call(server, method, "..", *args)) == ("TypeError", '".." is not allowed as a key name.')
    assert error_of(call(server, method, "x" * 513, *args)) == (
        "Error",
        f"KV {name} failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
    )
    # Bytes, not characters: 171 three-byte characters are 513 bytes.
    assert error_of(call(server, method, "☃" * 171, *args))[1].endswith("length of 513 exceeds key length limit of 512.")
    assert "error" not in call(server, method, "x" * 512, *args)


def test_huge_arguments_are_refused_in_the_isolate(server: ServiceProcess) -> None:
    size = 1024 * 1024  # characters of two UTF-8 bytes each
    expected = {
        "key": "KV GET failed: 414 UTF-8 encoded length of 2097152 exceeds key length limit of 512.",
        "put": "KV PUT failed: 414 UTF-8 encoded length of 2097152 exceeds key length limit of 512.",
        "metadata": "KV PUT failed: 413 Metadata length of 2097154 exceeds limit of 1024.",
        "prefix": "KV GET failed: 414 UTF-8 encoded length of 2097152 exceeds key length limit of 512.",
        "bulk": "KV GET_BULK failed: 414 UTF-8 encoded length of 2097152 exceeds key length limit of 512.",
    }
    for what, message in expected.items():
        assert error_of(server.get("/huge", params={"what": what, "size": size}).json()) == ("Error", message), what
    assert error_of(server.get("/huge", params={"what": "cursor", "size": size}).json())[1].startswith(
        "KV GET failed: 400 Invalid cursor"
    )


def test_value_size_limit(server: ServiceProcess) -> None:
    limit = 25 * MiB
    # In JavaScript (refused before it leaves the isolate) ...
    result = server.get("/put-bytes", params={"key": "big:js", "kind": "u8", "size": limit + 1}).json()
    assert error_of(result) == ("Error", f"KV PUT failed: 413 Value length of {limit + 1} exceeds limit of {limit}.")
    # ... and a request body passed by handle, counted on the host.
    body = b"\0" * (limit + 7)
    result = server.request("POST", "/put-body", params={"key": "big:body"}, content=body).json()
    assert error_of(result) == ("Error", f"KV PUT failed: 413 Value length of {limit + 7} exceeds limit of {limit}.")
    assert call(server, "get", "big:body") == {"value": None}


def test_metadata_size_limit(server: ServiceProcess) -> None:
    metadata = {"key": "x" * (1024 - len('{"key":""}'))}
    assert call(server, "put", "meta:max", "v", {"metadata": metadata}) == {"undefined": True}
    metadata["key"] += "x"
    assert error_of(call(server, "put", "meta:over", "v", {"metadata": metadata})) == (
        "Error",
        "KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024.",
    )


def test_expiration_errors(server: ServiceProcess) -> None:
    now = int(time.time())
    cases = [
        ({"expirationTtl": 30}, "KV PUT failed: 400 Invalid expiration_ttl of 30. Expiration TTL must be at least 60."),
        (
            {"expirationTtl": 0},
            "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0.",
        ),
        (
            {"expirationTtl": "soon"},
            "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0.",
        ),
        (
            {"expiration": now - 10},
            f"KV PUT failed: 400 Invalid expiration of {now - 10}. Please specify integer greater than the "
            "current number of seconds since the UNIX epoch.",
        ),
        (
            {"expiration": now + 30},
            f"KV PUT failed: 400 Invalid expiration of {now + 30}. Expiration times must be at least 60 seconds "
            "in the future.",
        ),
    ]
    for options, message in cases:
        assert error_of(call(server, "put", "exp:bad", "v", options)) == ("Error", message), options
    assert call(server, "put", "exp:ok", "v", {"expirationTtl": 60}) == {"undefined": True}
    assert call(server, "get", "exp:bad") == {"value": None}


def test_get_and_list_option_errors(server: ServiceProcess) -> None:
    assert error_of(call(server, "get", "k", {"cacheTtl": 10})) == (
        "Error",
        "KV GET failed: 400 Invalid cache_ttl of 10. Cache TTL must be at least 30.",
    )
    call(server, "put", "typed", "v")
    assert error_of(call(server, "get", "typed", "blob")) == (
        "TypeError",
        'Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".',
    )
    assert error_of(call(server, "get", "typed", "json"))[0] == "SyntaxError"
    assert error_of(call(server, "list", {"limit": 1001})) == (
        "Error",
        "KV GET failed: 400 Invalid key_count_limit of 1001. Please specify an integer less than 1000.",
    )
    assert error_of(call(server, "list", {"prefix": "p" * 513})) == (
        "Error",
        "KV GET failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
    )
    assert error_of(call(server, "list", {"cursor": "not a cursor!"}))[1].startswith("KV GET failed: 400 Invalid cursor")


# -- 20 MiB values by handle -------------------------------------------------------------------------


def _cpu_of(server: ServiceProcess, path: str, start: int) -> float:
    match = server.wait_for(re.escape(path) + r"\S* 200 ok cpu=([\d.]+)ms", start=start)
    return float(match.group(1))


def test_twenty_mib_stream_in_and_out_without_buffering_in_javascript(server: ServiceProcess) -> None:
    value = os.urandom(20 * MiB)
    start = len(server.lines)
    put = server.request("POST", "/put-body", params={"key": "huge"}, content=value)
    assert put.json() == {"ok": True}
    put_cpu = _cpu_of(server, "POST /put-body", start)
    start = len(server.lines)
    with httpx.stream("GET", server.url + "/stream", params={"key": "huge"}, timeout=60) as response:
        digest = hashlib.sha256()
        size = 0
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == len(value) and digest.hexdigest() == hashlib.sha256(value).hexdigest()
    get_cpu = _cpu_of(server, "GET /stream", start)
    # Read in JavaScript: chunk by chunk (256 KiB at most), never the whole value at once.
    start = len(server.lines)
    counted = server.get("/read-stream", params={"key": "huge"}).json()
    assert counted["total"] == len(value) and counted["largest"] <= 256 * 1024 and counted["chunks"] >= 80
    read_cpu = _cpu_of(server, "GET /read-stream", start)
    print(f"20 MiB: put cpu {put_cpu} ms, get-as-response cpu {get_cpu} ms, read in JS cpu {read_cpu} ms")
    # The default limit is 50 ms: the value itself never costs the worker CPU time.
    assert put_cpu < 15 and get_cpu < 15
    assert read_cpu < 40


# -- persistence ----------------------------------------------------------------------------------------


def test_dev_persists_kv_data_across_restarts(tmp_path: Path) -> None:
    project = tmp_path / "project"
    first = start_dev(project)
    try:
        call(first, "put", "survives", "a restart", {"metadata": {"v": 1}})
    finally:
        first.stop()
    assert (project / ".warren" / "state" / "kv.sqlite3").is_file()
    second = start_dev(project)
    try:
        assert call(second, "getWithMetadata", "survives")["value"]["metadata"] == {"v": 1}
        assert call(second, "get", "survives") == {"value": "a restart"}
    finally:
        second.stop()
    # --persist-to keeps it elsewhere.
    elsewhere = tmp_path / "state"
    third = start_dev(project, "--persist-to", str(elsewhere))
    try:
        assert call(third, "get", "survives") == {"value": None}
        call(third, "put", "there", "yes")
    finally:
        third.stop()
    assert (elsewhere / "kv.sqlite3").is_file()



def test_a_second_process_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """`warren dev` holds its state directory as an edge node does: a second `dev` of the
    project (or a `warren serve` started there) would write the same KV file, Durable
    Objects and queues. The second stops with a clear error; the first serves on."""
    project = tmp_path / "project"
    first = start_dev(project)
    try:
        call(first, "put", "kept", "by the first")
        second = subprocess.run(
            [sys.executable, "-m", "warren.cli", "dev", ".", "--no-watch", "--port", "0"],
            cwd=project, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"the state directory {project / '.warren' / 'state'} is in use by another warren process" in second.stderr
        assert f"(pid {first.process.pid})" in second.stderr
        assert "--persist-to" in second.stderr
        assert "Ready on" not in second.stdout
        # An edge node started in the project directory is refused the same directory.
        node = subprocess.run(
            [sys.executable, "-m", "warren.cli", "serve", "--store", str(tmp_path / "store.db"), "--port", "0"],
            cwd=project, capture_output=True, text=True, timeout=60,
        )
        assert node.returncode == 1, node.stdout + node.stderr
        assert f"(pid {first.process.pid}); give each node" in node.stderr
        assert call(first, "get", "kept") == {"value": "by the first"}
    finally:
        first.stop()
    # Once the first has stopped, the directory is free again (the kernel's lock went with it).
    again = start_dev(project)
    try:
        assert call(again, "get", "kept") == {"value": "by the first"}
    finally:
        again.stop()

# -- two nodes, one store, clocks of their own ------------------------------------------------------------


class Clock:
    """A node's clock that tests move by hand (seconds since the epoch)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class KVNode:
    """A real edge (supervisor, runtime process, HTTP) whose KV handler reads the shared store file."""

    def __init__(self, store: Store, name: str, clock: Clock, notifications: bool = True) -> None:
        self.bindings = BindingHost()
        self.edge = Edge({}, bindings=self.bindings)
        self.store = store
        self.edge._run(self.store.open())
        self.kv = KVHandler(self.store, name, clock=clock, notifications=notifications)
        self.edge._run(self.kv.start())
        self.bindings.register("kv_namespace", self.kv)
        self.cpu: list[tuple[str, float]] = []
        done = self.edge.supervisor.on_done

        def record(name: str, exchange: Any, outcome: str, cpu_ms: float, wall_ms: float) -> None:
            self.cpu.append((name, cpu_ms))
            done(name, exchange, outcome, cpu_ms, wall_ms)

        self.edge.supervisor.on_done = record
        script = WorkerScript(
            name="w",
            source=textwrap.dedent(WORKER),
            cpu_ms=2000,
            bindings=({"type": "kv_namespace", "name": "KV", "namespace_id": "shared"},),
        )
        self.edge._run(self.edge.supervisor.deploy(script))

    def call(self, method: str, *args: Any) -> Any:
        response = self.edge.get("/w/call", params={"m": method, "args": json.dumps(args)})
        assert response.status_code == 200, response.text
        return response.json()

    def value(self, key: str, cache_ttl: int | None = None) -> Any:
        options = {"cacheTtl": cache_ttl} if cache_ttl is not None else {}
        return self.call("get", key, options)["value"]

    def stop(self) -> None:
        self.edge._run(self.kv.close())
        self.edge._run(self.store.close())
        self.edge.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Any]:
    started: list[KVNode] = []

    def start(name: str, clock: Clock, notifications: bool = True) -> KVNode:
        node = KVNode(SQLiteStore(tmp_path / "shared.db"), name, clock, notifications)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def test_ttl_expiry_on_the_nodes_clock(nodes: Any) -> None:
    clock = Clock()
    node = nodes("node-a", clock)
    node.call("put", "ttl", "short-lived", {"expirationTtl": 60, "metadata": {"x": 1}})
    node.call("put", "abs", "until then", {"expiration": int(clock.now) + 90})
    node.call("put", "forever", "stays")
    assert node.value("ttl") == "short-lived"
    assert [key["name"] for key in node.call("list")["value"]["keys"]] == ["abs", "forever", "ttl"]
    clock.advance(59)
    assert node.value("ttl") == "short-lived"
    clock.advance(2)  # 61 s after the put: gone from get (cached or not) and from list
    assert node.value("ttl") is None
    assert node.call("getWithMetadata", "ttl")["value"] == {"value": None, "metadata": None, "cacheStatus": None}
    assert [key["name"] for key in node.call("list")["value"]["keys"]] == ["abs", "forever"]
    assert node.call("get", ["ttl", "abs"])["map"] == [["ttl", None], ["abs", "until then"]]
    clock.advance(30)
    assert node.value("abs") is None and node.value("forever") == "stays"
    assert [key["name"] for key in node.call("list")["value"]["keys"]] == ["forever"]
    # Expiration is checked against the node's clock too.
    assert node.call("put", "late", "v", {"expiration": int(time.time()) + 30})["error"]["message"].endswith(
        "Please specify integer greater than the current number of seconds since the UNIX epoch."
    )


def test_a_write_is_visible_at_once_on_its_node(nodes: Any) -> None:
    clock = Clock()
    a = nodes("node-a", clock, notifications=False)
    a.call("put", "mine", "v1")
    assert a.value("mine") == "v1"  # cached now
    a.call("put", "mine", "v2")
    assert a.value("mine") == "v2"  # no clock movement, no notification: the node's own write
    a.call("delete", "mine")
    assert a.value("mine") is None
    assert a.value("never") is None  # a miss is cached ...
    a.call("put", "never", "now")
    assert a.value("never") == "now"  # ... and replaced by the node's own write


def test_other_node_may_be_stale_within_cache_ttl_and_is_fresh_after(nodes: Any) -> None:
    """Without change notifications, staleness is bounded by cacheTtl on the reading node's clock."""
    clock_a, clock_b = Clock(), Clock()
    a = nodes("node-a", clock_a)
    b = nodes("node-b", clock_b, notifications=False)
    a.call("put", "k", "v1")
    assert b.value("k") == "v1"  # b reads the store and caches for its reads' cacheTtl
    assert b.value("k", 30) == "v1"
    a.call("put", "k", "v2")
    assert a.value("k") == "v2"
    # Within the bound b may answer from its copy (and here does: nothing told it otherwise).
    assert b.value("k") == "v1"
    clock_b.advance(29)
    assert b.value("k") == "v1" and b.value("k", 30) == "v1"
    clock_b.advance(1.5)  # the copy is 30.5 s old: a read with cacheTtl 30 must not use it ...
    assert b.value("k", 30) == "v2"
    a.call("put", "k", "v3")
    assert b.value("k") == "v2"  # ... and the re-read was cached afresh
    clock_b.advance(60)  # past the default cacheTtl (60 s)
    assert b.value("k") == "v3"
    # A miss cached on b is bounded the same way.
    assert b.value("later") is None
    a.call("put", "later", "here")
    assert b.value("later") is None
    clock_b.advance(60)
    assert b.value("later") == "here"


def test_change_notification_refreshes_other_nodes_before_cache_ttl(nodes: Any) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = nodes("node-a", clock_a)
    b = nodes("node-b", clock_b)
    a.call("put", "n", "v1")
    assert b.value("n") == "v1"
    a.call("put", "n", "v2")
    # b's clock never moves: only the notification (SQLite: polled every 0.1 s) can refresh it.
    deadline = time.monotonic() + 5
    while b.value("n") != "v2":
        assert time.monotonic() < deadline, "the change notification never reached node b"
        time.sleep(0.05)
    assert b.kv.invalidations >= 1
    a.call("delete", "n")
    deadline = time.monotonic() + 5
    while b.value("n") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_same_stamp_tie_is_broken_by_node_id_whatever_the_arrival_order(nodes: Any) -> None:
    frozen = time.time()
    a = nodes("node-a", Clock(frozen), notifications=False)
    b = nodes("node-b", Clock(frozen), notifications=False)
    b.call("put", "tie", "from b")
    a.call("put", "tie", "from a")  # the same stamp, arriving later: loses to the greater node id
    assert a.value("tie") == "from b"  # a's own write lost, so a reads the store
    assert b.value("tie") == "from b"


def test_last_write_wins_by_timestamp_not_arrival(nodes: Any) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = nodes("node-a", clock_a, notifications=False)
    b = nodes("node-b", clock_b, notifications=False)
    clock_a.advance(10)  # a's clock runs 10 s ahead
    a.call("put", "skew", "from a, stamped later")
    b.call("put", "skew", "from b, arrived later")
    assert b.value("skew") == "from a, stamped later"
    assert a.value("skew") == "from a, stamped later"
    clock_b.advance(11)  # b's writes are now stamped after a's
    b.call("put", "skew", "from b, stamped later still")
    clock_a.advance(61)
    assert a.value("skew") == "from b, stamped later still"


def test_two_nodes_writing_one_key_converge_to_one_value(nodes: Any) -> None:
    import concurrent.futures

    clock_a, clock_b = Clock(), Clock()
    a = nodes("node-a", clock_a)
    b = nodes("node-b", clock_b)

    def write(node: KVNode, label: str, index: int) -> None:
        result = node.call("put", "contended", f"{label}-{index}")
        assert result == {"undefined": True}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(write, node, label, i) for i in range(20) for node, label in ((a, "a"), (b, "b"))]
        for future in futures:
            future.result()
    # Quiescence: notifications settle both caches (their clocks do not move).
    stored = a.edge._run(a.store.kv_get("shared", "contended"))
    deadline = time.monotonic() + 5
    while not (a.value("contended") == b.value("contended") == stored.value.decode()):
        assert time.monotonic() < deadline, (a.value("contended"), b.value("contended"), stored)
        time.sleep(0.05)
    # Both stores (one file) hold the one record the greatest stamp made.
    assert b.edge._run(b.store.kv_get("shared", "contended")) == stored
    assert stored.writer in ("node-a", "node-b")


def test_more_than_a_thousand_operations_in_one_invocation(nodes: Any) -> None:
    node = nodes("node-a", Clock())
    assert node.edge.get("/w/many", params={"count": 1000}).json() == {"done": 1000}
    result = node.edge.get("/w/many", params={"count": 1001}).json()
    assert result == {
        "done": 1000,
        "error": {"name": "Error", "message": "Too many API requests by single worker invocation."},
    }
    assert [m for name, m in node.edge.metering if m.get("kv_ops")][-1]["kv_ops"] == 1001


def test_node_cache_stays_within_its_bound(nodes: Any) -> None:
    node = nodes("node-a", Clock())
    node.kv.cache_bytes = 512 * 1024
    for index in range(12):
        node.edge.get("/w/put-bytes", params={"key": f"fill{index}", "kind": "u8", "size": 100_000})
        node.value(f"fill{index}")
    assert node.kv._cached_bytes <= 512 * 1024
    assert node.value("fill0") is not None  # evicted entries are read again


class GatedStore(SQLiteStore):
    """The real SQLite store, whose reads wait for the test to open a gate (to order a race)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate: Any = None

    async def kv_get(self, namespace_id: str, key: str) -> Any:
        found = await super().kv_get(namespace_id, key)
        if self.gate is not None:
            await self.gate.wait()
        return found


def test_a_read_in_flight_during_a_write_never_hides_the_write(tmp_path: Path) -> None:
    """A read that started before this node's write must neither be cached nor answer later reads,
    also for values too large to cache."""
    import asyncio

    from warren.bindings import BindingCall

    async def run() -> None:
        store = GatedStore(tmp_path / "race.db")
        await store.open()
        handler = KVHandler(store, "node-a", notifications=False)
        spec = {"type": "kv_namespace", "name": "KV", "namespace_id": "race"}
        script = WorkerScript(name="w", source="", bindings=(spec,))

        def call(method: str, args: dict[str, Any], data: bytes | None = None) -> Any:
            return handler(BindingCall(script, "w", spec, method, args, data))

        for size in (10, 2 * MiB):
            key = f"k{size}"
            await call("put", {"key": key}, b"old")
            handler.flush()
            store.gate = asyncio.Event()
            slow = asyncio.ensure_future(call("get", {"key": key}))  # reads "old", then waits at the gate
            await asyncio.sleep(0.2)
            await call("put", {"key": key}, b"n" * size)
            after = asyncio.ensure_future(call("get", {"key": key}))  # issued after the write
            await asyncio.sleep(0.2)
            store.gate.set()
            assert (await slow).data == b"old"  # it raced the write: either answer is fine for it
            assert (await after).data == b"n" * size
            store.gate = None
            assert (await call("get", {"key": key})).data == b"n" * size
        await store.close()

    asyncio.run(run())
