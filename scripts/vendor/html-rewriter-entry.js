// Entry for warren/runtime/vendor/html_rewriter.js (see README.md).
// Defines globalThis.__warrenHTMLRewriterLib(wasmBytes, compileWasm): the first
// call compiles lol-html (html-rewriter-wasm) and returns its module; later
// calls return the same. Nothing runs until a worker first uses HTMLRewriter,
// so isolates that never do pay only for parsing this file.
import { setWasm } from "./stubs/html-rewriter-host.js";

let lib = null;
globalThis.__warrenHTMLRewriterLib = function (loadWasmBytes, compileWasm) {
  if (lib === null) {
    setWasm(loadWasmBytes, compileWasm);
    lib = require("html-rewriter-wasm");
  }
  return lib;
};
