// The compiler isolate's entry point (warren/runtime/script.py): an ES module's
// text in, a CommonJS-shaped body for the bootstrap's define() out.
//
// sucrase does the general case. It tokenizes the whole module, which costs
// ~0.3 ms per KB (a 1 MB bundle: 0.3 s) on a cold start. A bundle built by
// wrangler/esbuild has little module syntax: a final `export { x as default }`
// and perhaps an import of "cloudflare:workers". For such a module,
// es-module-lexer finds that syntax (~5 ms per MB) and only those statements are
// rewritten (a data file's default import, "./x.wasm", counts as little as the
// runtime's module). Anything more goes to sucrase, with its exports rewritten here
// first: sucrase gets some export forms wrong. Line numbers are kept either way.
(function () {
  "use strict";
  const sucrase = globalThis.__warrenSucrase;
  const lexer = globalThis.__warrenModuleLexer;
  delete globalThis.__warrenSucrase;
  delete globalThis.__warrenModuleLexer;

  const PROLOGUE = '"use strict";Object.defineProperty(exports, "__esModule", {value: true});';
  // Modules the runtime provides (bootstrap.js, requireFrom): no cycles, never reassigned.
  const BUILTIN_MODULES = new Set(["cloudflare:workers", "cloudflare:sockets"]);
  // The worker's files that are data (wrangler's default module rules): they import
  // nothing (no cycle reaches them) and their default export never changes.
  const DATA_MODULE = /\.(?:wasm|wasm\?module|txt|html|bin|json)$/;
  // A default import as sucrase binds it: a CommonJS module's exports, or an ES module's default.
  const DEFAULT_OF = "((m) => m && m.__esModule ? m.default : m)";
  const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  // Past this, a statement is left to sucrase: the regular expressions below then
  // never see a long tenant-made string (this isolate is every tenant's compiler;
  // one that backtracks on such a string holds it up for everyone).
  const STATEMENT_LIMIT = 4096;

  function newlines(text) {
    let count = 0;
    for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) count += 1;
    return "\n".repeat(count);
  }

  // `{ A, B as C }` or `* as N` (what a bundle imports from a builtin) as a
  // destructuring pattern; null for anything else (a default import, say).
  function importPattern(clause) {
    clause = clause.trim();
    const namespace = /^\*\s+as\s+([A-Za-z_$][A-Za-z0-9_$]*)$/.exec(clause);
    if (namespace) return namespace[1];
    if (!clause.startsWith("{") || !clause.endsWith("}")) return null;
    const parts = [];
    for (const item of clause.slice(1, -1).split(",")) {
      const words = item.trim().split(/\s+/).filter((word) => word !== "");
      if (words.length === 0) continue;  // a trailing comma
      if (words.length === 1 && IDENTIFIER.test(words[0])) parts.push(words[0]);
      else if (words.length === 3 && words[1] === "as" && IDENTIFIER.test(words[0]) && IDENTIFIER.test(words[2])) {
        parts.push(`${words[0]}: ${words[2]}`);
      } else return null;
    }
    return `{ ${parts.join(", ")} }`;
  }

  // The module as a CommonJS body, or null when the fast path does not apply. With
  // `withImports` false, only its exports are rewritten, and its imports left for sucrase.
  function rewriteBundle(code, withImports) {
    if (code.startsWith("#!")) return null;
    let imports, exports;
    try {
      [imports, exports] = lexer.parse(code);
    } catch (error) {
      return null;  // sucrase reports the syntax error, with its position
    }
    const edits = [];  // [start, end, replacement], not overlapping
    // An ES module's imports are bound before any of it runs: their bindings go first,
    // wherever the statements stand (esbuild leaves an import where its module began).
    const bindings = [];
    for (const found of withImports ? imports : []) {
      if (found.type !== "static" || found.typeOnly || found.attributes !== null) return null;
      const data = DATA_MODULE.test(found.specifier) && found.specifier.startsWith(".");
      if (!BUILTIN_MODULES.has(found.specifier) && !data) return null;
      if (found.importEnd - found.importStart > STATEMENT_LIMIT) return null;
      const statement = code.slice(found.importStart, found.importEnd);
      const shape = /^import\s*([\s\S]*?)\s*from\s*(["'])([^"']*)\2\s*;?$/.exec(statement);
      if (shape === null || shape[3] !== found.specifier) return null;
      const required = `require(${JSON.stringify(found.specifier)})`;
      if (data) {  // import name from "./file.wasm"
        const name = shape[1].trim();
        if (!IDENTIFIER.test(name)) return null;
        bindings.push(`const ${name} = ${DEFAULT_OF}(${required});`);
      } else {
        const pattern = importPattern(shape[1]);
        if (pattern === null) return null;
        bindings.push(`const ${pattern} = ${required};`);
      }
      edits.push([found.importStart, found.importEnd, newlines(statement)]);
    }
    const getters = [];
    const names = new Set();
    const statements = new Map();  // exportStart -> its exports
    for (const found of exports) {
      if (found.type !== "direct" || found.typeOnly || names.has(found.name)) return null;
      names.add(found.name);
      if (!statements.has(found.exportStart)) statements.set(found.exportStart, []);
      statements.get(found.exportStart).push(found);
    }
    for (const [start, members] of statements) {
      const head = /^export(\s+default\b)?\s*/.exec(code.slice(start, start + 64));
      if (head === null) return null;
      const after = start + head[0].length;
      if (head[1] === undefined && code[after] === "{") {  // export { a, b as c };
        let lastName = start;
        for (const member of members) lastName = Math.max(lastName, member.end);
        const close = code.indexOf("}", lastName);
        if (close === -1 || close - lastName > 256) return null;
        if (!/^\s*,?\s*$/.test(code.slice(lastName, close))) return null;
        let end = close + 1;
        const semicolon = /^[ \t]*;/.exec(code.slice(end, end + 64));
        if (semicolon) end += semicolon[0].length;
        if (/^\s*from\b/.test(code.slice(end, end + 256))) return null;
        edits.push([start, end, newlines(code.slice(start, end))]);
      } else if (head[1] !== undefined) {
        if (members.length !== 1) return null;
        // Named here, not by the lexer, which reads `class extends Base` as a class named "extends".
        const declared = /^(?:(?:async\s+)?function\b\s*\*?\s*|class\s+)([A-Za-z_$][A-Za-z0-9_$]*)?/
          .exec(code.slice(after, after + 256));
        const name = declared === null || declared[1] === "extends" ? undefined : declared[1];
        const lexed = members[0].localName;
        if (name === undefined && lexed !== undefined && lexed !== "extends") return null;  // unsure: sucrase
        if (name === undefined) {  // an expression, or an anonymous function or class
          edits.push([start, after, "exports.default = "]);
          continue;
        }
        if (name !== lexed) return null;
        edits.push([start, after, ""]);  // export default function f() {}
      } else if (/^(?:const|let|var|function|async\s+function|class)\b/.test(code.slice(after, after + 16))) {
        edits.push([start, after, ""]);  // export <declaration>
      } else {
        return null;
      }
      for (const member of members) {
        if (member.localName === undefined || !IDENTIFIER.test(member.localName)) return null;
        // A getter keeps the binding live, as an ES module's export is.
        getters.push(`Object.defineProperty(exports, ${JSON.stringify(member.name)}, ` +
          `{enumerable: true, get: () => ${member.localName}});`);
      }
    }
    edits.sort((a, b) => a[0] - b[0]);
    let out = "";
    let at = 0;
    for (const [start, end, replacement] of edits) {
      if (start < at) return null;
      out += code.slice(at, start) + replacement;
      at = end;
    }
    out += code.slice(at);
    // What is left must be a plain script: no module syntax the lexer can see.
    try {
      const [left, exported] = lexer.parse(out);
      if ((withImports && left.length !== 0) || exported.length !== 0) return null;
    } catch (error) {
      return null;
    }
    return PROLOGUE + bindings.join("") + getters.join("") + out;
  }

  globalThis.__warrenTransform = function (code, filePath) {
    const rewritten = rewriteBundle(code, true);
    if (rewritten !== null) return JSON.stringify({ code: rewritten, fast: true });
    // Its exports rewritten here all the same: sucrase gets some export forms wrong
    // (alangpierce/sucrase#455, #671, #543; tests/test_module_transform.py).
    const input = rewriteBundle(code, false) ?? code;
    try {
      const options = { transforms: ["imports"], filePath };
      return JSON.stringify({ code: sucrase.transform(input, options).code });
    } catch (e) {
      const loc = e.loc || {};
      return JSON.stringify({ error: String(e.message), line: loc.line || 0, column: loc.column || 0 });
    }
  };
})();
