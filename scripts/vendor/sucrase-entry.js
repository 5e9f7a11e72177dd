// Entry for warren/runtime/vendor/sucrase.js (see README.md): the compiler's bundle.
// Its only effects are to define globalThis.__warrenSucrase and
// globalThis.__warrenModuleLexer.
import { transform } from "sucrase";
// The asm.js build: it parses synchronously and needs no WebAssembly.
import { parse } from "es-module-lexer/js";

globalThis.__warrenSucrase = { transform };
globalThis.__warrenModuleLexer = { parse };
