// Build-time stubs for what html-rewriter-wasm's Node glue takes from Node
// (see README.md): util's TextEncoder/TextDecoder are the isolate's own; fs
// reads the wasm bytes from the host; assert is a minimal assert. The glue's
// `new WebAssembly.Module(bytes)` is rewritten (esbuild --define) to compile
// through the runtime's private compiler, since the engine refuses all other
// compilation from bytes.
let loadBytes = null;
let compile = null;

export function setWasm(loadWasmBytes, compileWasm) {
  loadBytes = loadWasmBytes;
  compile = compileWasm;
}

export const TextEncoder = globalThis.TextEncoder;
export const TextDecoder = globalThis.TextDecoder;

export function readFileSync() {
  return loadBytes();
}

export function join(...parts) {
  return parts.join("/");
}

export function assert(value, message) {
  if (!value) throw new Error(message || "html-rewriter-wasm: assertion failed");
}
assert.strictEqual = (a, b, message) => assert(a === b, message);

// Stands in for WebAssembly.Module in the glue: `new` on it returns the compiled module.
export function WasmModule(bytes) {
  return compile(bytes);
}
