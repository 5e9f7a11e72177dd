"""WebAssembly as on Workers: ``.wasm`` modules compiled by the host and handed over
as ``WebAssembly.Module``; every way for a worker to compile bytes itself refused
("Wasm code generation disallowed by embedder"); the C example in examples/wasm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from warren.engine import Isolate, ScriptError, configure

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "wasm"
REFUSED = "Wasm code generation disallowed by embedder"
# (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
ADD_WASM = bytes(
    [0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100,
     0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11]
)
ADD_JS = "new Uint8Array([" + ",".join(map(str, ADD_WASM)) + "])"


# -- the example -----------------------------------------------------------------------------


def test_the_c_example_serves_through_warren_dev(dev: Any, tmp_path: Path) -> None:
    for name in ("worker.js", "wrangler.toml", "digest.wasm"):
        shutil.copyfile(EXAMPLE / name, tmp_path / name)
    wasm = (EXAMPLE / "digest.wasm").read_bytes()
    assert wasm[:4] == b"\0asm" and len(wasm) < 8 * 1024  # committed, small
    server = dev({}, ".")

    assert server.get("/fib/90").text == "fib(90) = 2880067194370816120\n"
    assert server.get("/fib/0").text == "fib(0) = 0\n"
    assert server.get("/fib/94").status_code == 400
    assert server.get("/sha256", params={"text": "hello"}).text == hashlib.sha256(b"hello").hexdigest() + "\n"
    for size in (0, 55, 56, 64, 119, 200_000):  # padding edge cases, and more than one read of the body
        body = os.urandom(size)
        response = server.request("POST", "/sha256", content=body)
        assert response.status_code == 200 and response.text == hashlib.sha256(body).hexdigest() + "\n", size
    assert server.request("POST", "/sha256", content=wasm).text == hashlib.sha256(wasm).hexdigest() + "\n"
    assert server.request("POST", "/sha256", content=b"x" * (1024 * 1024 + 1)).status_code == 413
    assert server.get("/elsewhere").status_code == 404


def _wasm_exports(wasm: bytes) -> list[str]:
    configure()
    isolate = Isolate()
    try:
        data = ",".join(map(str, wasm))
        code = f"JSON.stringify(WebAssembly.Module.exports(__warrenCompileWasm(new Uint8Array([{data}]))))"
        return [entry["name"] for entry in json.loads(str(isolate.run_script(code, "exports.js")))]
    finally:
        isolate.dispose()


@pytest.mark.skipif(not (shutil.which("clang") and shutil.which("wasm-ld")), reason="needs clang and lld")
def test_the_build_script_rebuilds_the_committed_module(tmp_path: Path) -> None:
    for name in ("digest.c", "build.sh"):
        shutil.copy2(EXAMPLE / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "build.sh")], check=True, capture_output=True, timeout=120)
    rebuilt = (tmp_path / "digest.wasm").read_bytes()
    committed = (EXAMPLE / "digest.wasm").read_bytes()
    assert _wasm_exports(rebuilt) == _wasm_exports(committed) == [
        "memory", "input", "input_capacity", "digest", "sha256", "fib"
    ]


# -- modules compiled by the host ----------------------------------------------------------------


def test_an_imported_wasm_file_is_a_host_compiled_module(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "add.wasm").write_bytes(ADD_WASM)
    server = dev(
        {
            "worker.js": """
            import add from "./add.wasm";
            import again from "./add.wasm?module";
            export default {
              async fetch() {
                const instance = await WebAssembly.instantiate(add, {});
                const sync = new WebAssembly.Instance(again);
                return Response.json({
                  isModule: add instanceof WebAssembly.Module,
                  same: add === again,
                  exports: WebAssembly.Module.exports(add),
                  isInstance: instance instanceof WebAssembly.Instance,
                  sum: instance.exports.add(40, 2) + sync.exports.add(1, 1),
                });
              },
            };
            """
        }
    )
    assert server.get("/").json() == {
        "isModule": True,
        "same": True,
        "exports": [{"name": "add", "kind": "function"}],
        "isInstance": True,
        "sum": 44,
    }


def test_a_malformed_wasm_file_is_a_clear_load_error(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "broken.wasm").write_bytes(b"\0asm\x01\0\0\0\x01\xff")
    server = dev({"worker.js": 'import m from "./broken.wasm";\nexport default { fetch() { return new Response("x"); } };'})
    server.wait_for(r"CompileError: WebAssembly\.Module\(\)")
    assert server.get("/").status_code == 503
    assert server.process.poll() is None


def test_service_worker_globals_from_wasm_modules_text_blobs_and_data_blobs(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "add.wasm").write_bytes(ADD_WASM)
    (tmp_path / "blob.bin").write_bytes(bytes([0, 1, 254, 255]))
    server = dev(
        {
            "wrangler.toml": """
            name = "globals"
            main = "worker.js"
            [wasm_modules]
            ADD = "lib/add.wasm"
            [text_blobs]
            GREETING = "greeting.txt"
            [data_blobs]
            BLOB = "blob.bin"
            """,
            "greeting.txt": "héllo",
            "worker.js": """
            const add = new WebAssembly.Instance(ADD).exports.add;
            addEventListener("fetch", (event) => {
              event.respondWith(Response.json({
                sum: add(2, 3),
                isModule: ADD instanceof WebAssembly.Module,
                greeting: GREETING,
                blob: BLOB instanceof ArrayBuffer ? [...new Uint8Array(BLOB)] : String(BLOB),
              }));
            });
            """,
        },
        ".",
    )
    assert server.get("/").json() == {"sum": 5, "isModule": True, "greeting": "héllo", "blob": [0, 1, 254, 255]}


def test_wasm_modules_with_an_es_module_is_a_clear_error(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "add.wasm").write_bytes(ADD_WASM)
    server = dev(
        {
            "wrangler.toml": 'name = "x"\nmain = "worker.js"\n[wasm_modules]\nADD = "add.wasm"\n',
            "worker.js": "export default { fetch() { return new Response('x'); } };",
        },
        ".",
    )
    server.wait_for(r"\[wasm_modules\].*service-worker scripts")
    assert server.get("/").status_code == 503


# -- compiling bytes is refused ---------------------------------------------------------------------

# Every way a worker might compile WebAssembly from bytes; each entry is reported
# as "ok" (it compiled: a failure of the test) or the error it met.
ATTEMPTS = """
const bytes = ADD_BYTES;
async function attempt(compile) {
  try {
    const result = await compile();
    return "ok " + Object.prototype.toString.call(result);
  } catch (error) {
    return String(error && error.name) + ": " + String(error && error.message);
  }
}
async function attempts(hostModule) {
  const Module = WebAssembly.Module;
  class Sub extends WebAssembly.Module {}
  const paths = {
    moduleConstructor: () => new WebAssembly.Module(bytes),
    moduleOfBuffer: () => new WebAssembly.Module(bytes.buffer),
    moduleOfDataView: () => new WebAssembly.Module(new DataView(bytes.buffer)),
    reflectConstruct: () => Reflect.construct(Module, [bytes]),
    subclass: () => new Sub(bytes),
    prototypeConstructor: () => new Module.prototype.constructor(bytes),
    constructorOfHostModule: () => new (Object.getPrototypeOf(hostModule).constructor)(bytes),
    hostModuleConstructor: () => new hostModule.constructor(bytes),
    compile: () => WebAssembly.compile(bytes),
    compileBuffer: () => WebAssembly.compile(bytes.buffer),
    instantiateBytes: () => WebAssembly.instantiate(bytes),
    instantiateBuffer: () => WebAssembly.instantiate(bytes.buffer, {}),
    compileStreaming: () => WebAssembly.compileStreaming(new Response(bytes, { headers: { "content-type": "application/wasm" } })),
    instantiateStreaming: () => WebAssembly.instantiateStreaming(new Response(bytes, { headers: { "content-type": "application/wasm" } })),
    compileInTimer: () => new Promise((resolve, reject) => setTimeout(() => { try { resolve(new Module(bytes)); } catch (e) { reject(e); } }, 1)),
    compileInMicrotask: () => Promise.resolve().then(() => new Module(bytes)),
    privateCompiler: () => globalThis.__warrenCompileWasm(bytes),
  };
  const results = {};
  for (const [name, compile] of Object.entries(paths)) results[name] = await attempt(compile);
  return results;
}
""".replace("ADD_BYTES", ADD_JS)


def test_every_way_of_compiling_bytes_is_refused_and_the_process_survives(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "add.wasm").write_bytes(ADD_WASM)
    server = dev(
        {
            "worker.js": ATTEMPTS
            + """
            import hostModule from "./add.wasm";
            let atLoad = null;
            try { new WebAssembly.Module(bytes); atLoad = "compiled"; } catch (error) { atLoad = error.name + ": " + error.message; }
            export default {
              async fetch(request) {
                if (new URL(request.url).pathname === "/after") {
                  const { exports } = await WebAssembly.instantiate(hostModule);
                  return new Response(String(exports.add(20, 22)));
                }
                return Response.json({ atLoad, ...(await attempts(hostModule)) });
              },
            };
            """
        }
    )
    pid = server.process.pid
    results = server.get("/").json()
    assert results.pop("atLoad") == f"CompileError: WebAssembly.Module(): {REFUSED}"
    assert results.pop("privateCompiler").startswith("TypeError")  # not there to be called
    assert results.pop("prototypeConstructor").startswith("CompileError"), "the constructor is WebAssembly.Module"
    for path, outcome in results.items():
        assert outcome.startswith("CompileError: ") and outcome.endswith(REFUSED), (path, outcome)
    # a host-provided module still instantiates, and the process never went down
    assert server.get("/after").text == "42"
    assert server.process.pid == pid and server.process.poll() is None


def test_a_dynamic_import_compiles_with_the_real_compiler_despite_tampering(dev: Any, tmp_path: Path) -> None:
    (tmp_path / "add.wasm").write_bytes(ADD_WASM)
    server = dev(
        {
            "worker.js": """
            const bytes = ADD_BYTES;
            const RealModule = WebAssembly.Module;
            const RealInstance = WebAssembly.Instance;
            let sneaked = "no";
            const sneak = () => { try { new RealModule(bytes); sneaked = "yes"; } catch {} };
            export default {
              async fetch() {
                // Replace what the host's compile might use, each trying to compile bytes when touched.
                const saved = [globalThis.WebAssembly, globalThis.Uint8Array];
                const byteLength = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, "byteLength");
                globalThis.WebAssembly = { Module: function () { sneak(); return {}; } };
                globalThis.Uint8Array = function () { sneak(); return bytes; };
                Object.defineProperty(ArrayBuffer.prototype, "byteLength", { get() { sneak(); return 8; }, configurable: true });
                let module;
                try {
                  module = (await import("./add.wasm")).default;
                } finally {
                  [globalThis.WebAssembly, globalThis.Uint8Array] = saved;
                  Object.defineProperty(ArrayBuffer.prototype, "byteLength", byteLength);
                }
                const sum = new RealInstance(module).exports.add(1, 2);
                return new Response(JSON.stringify({ genuine: module instanceof RealModule, sneaked, sum }));
              },
            };
            """.replace("ADD_BYTES", ADD_JS)
        }
    )
    assert json.loads(server.get("/").text) == {"genuine": True, "sneaked": "no", "sum": 3}
    assert server.process.poll() is None


# -- the engine's gate ------------------------------------------------------------------------------


def test_the_engine_compiles_only_through_its_private_compiler() -> None:
    configure()
    isolate = Isolate()
    other = Isolate()
    try:
        isolate.run_script(f"globalThis.bytes = {ADD_JS}; globalThis.compile = __warrenCompileWasm;", "setup.js")
        with pytest.raises(ScriptError, match=REFUSED):
            isolate.run_script("new WebAssembly.Module(bytes)", "direct.js")
        assert isolate.run_script("new WebAssembly.Instance(compile(bytes)).exports.add(2, 2)", "gate.js") == 4
        # the gate closed again, also after a compile that failed
        with pytest.raises(ScriptError, match="CompileError"):
            isolate.run_script("compile(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 9]))", "bad.js")
        with pytest.raises(ScriptError, match=REFUSED):
            isolate.run_script("new WebAssembly.Module(bytes)", "after.js")
        # and it is per isolate
        other.run_script(f"globalThis.bytes = {ADD_JS};", "setup.js")
        with pytest.raises(ScriptError, match=REFUSED):
            other.run_script("new WebAssembly.Module(bytes)", "other.js")
    finally:
        isolate.dispose()
        other.dispose()
