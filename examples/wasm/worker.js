// SHA-256 and Fibonacci numbers computed by WebAssembly compiled from C
// (digest.c, built by build.sh). The .wasm file is imported as a module: the
// host compiles it and the worker receives a WebAssembly.Module, as on
// Cloudflare Workers, where compiling WebAssembly from bytes is not allowed.
import digestModule from "./digest.wasm";

let wasmExports = null;

async function wasm() {
  if (wasmExports === null) {
    const instance = await WebAssembly.instantiate(digestModule, {});
    wasmExports = instance.exports;
  }
  return wasmExports;
}

async function sha256(bytes) {
  const { memory, input, input_capacity, sha256: hash, digest } = await wasm();
  if (bytes.length > input_capacity()) return null;
  new Uint8Array(memory.buffer, input(), bytes.length).set(bytes);
  hash(bytes.length);
  return [...new Uint8Array(memory.buffer, digest(), 32)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const text = { headers: { "content-type": "text/plain; charset=utf-8" } };
    const fib = url.pathname.match(/^\/fib\/(\d{1,4})$/);
    if (fib) {
      const n = Number(fib[1]);
      if (n > 93) return new Response("n must be 93 or less (the answer is a 64-bit integer)\n", { status: 400, ...text });
      return new Response(`fib(${n}) = ${(await wasm()).fib(n)}\n`, text);
    }
    if (url.pathname === "/sha256") {
      const bytes = request.method === "POST"
        ? new Uint8Array(await request.arrayBuffer())
        : new TextEncoder().encode(url.searchParams.get("text") ?? "");
      const hex = await sha256(bytes);
      if (hex === null) return new Response("at most 1 MiB, please\n", { status: 413, ...text });
      return new Response(hex + "\n", text);
    }
    return new Response("try /fib/90 or /sha256?text=hello (or POST a body to /sha256)\n", { status: 404, ...text });
  },
};
