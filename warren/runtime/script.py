"""A Worker script and its preparation for the engine.

Module syntax (``export default {...}``) is turned into a function the
bootstrap calls with ``exports`` and ``require`` (js/compiler.js: a bundle's
few module statements rewritten where es-module-lexer shows that is all it has,
sucrase otherwise; both vendored) in an isolate of its own, so the engine only
ever runs classic scripts.
CommonJS modules are wrapped in the same function as they are; JSON, text,
data and wasm modules are handed to the bootstrap as data (wasm is compiled
there, by the engine's private compiler: tenants cannot compile bytes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from warren.engine import CpuLimitExceeded, Isolate, IsolateTerminated, ScriptError

DEFAULT_CPU_MS = 50
DEFAULT_MEMORY_MB = 128
# Facilities every worker has that work like bindings (calls to the node), without a name in env.
RUNTIME_BINDINGS: dict[str, dict[str, Any]] = {
    "__cache": {"type": "cache", "name": "__cache"},
    # ctx.storage of the Durable Objects a worker hosts (warren.bindings.durable_objects)
    "__objects": {"type": "durable_object_storage", "name": "__objects"},
}
DEFAULT_SUBREQUEST_LIMIT = 50  # fetch() and service-binding calls per invocation, as on Workers' free plan
STARTUP_CPU_MS = 1000  # the script's top level and the runtime's own set-up

# A script is a module if a line starts with an import or export statement,
# which is what wrangler's detection amounts to for a single file.
_MODULE_SYNTAX = re.compile(r"^[ \t]*(?:import[\s{*'\"]|export[\s{*])", re.M)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class ScriptLoadError(Exception):
    """The script could not be loaded: a syntax error, a throw at top level, no handler."""

    def __init__(self, message: str, filename: str = "", line: int = 0, column: int = 0) -> None:
        location = f"{filename}:{line}:{column}: " if filename and line else ""
        super().__init__(f"{location}{message}")
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "filename": self.filename, "line": self.line, "column": self.column}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScriptLoadError:
        return cls(str(data["message"]), str(data["filename"]), int(data["line"]), int(data["column"]))


MODULE_KINDS = ("esm", "commonjs", "json", "text", "wasm", "data")
# What a service-worker script's globals ([wasm_modules] etc.) may be bound to.
GLOBAL_MODULE_KINDS = ("wasm", "text", "data")
_GLOBAL_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class Module:
    """A module beside the main one. ``text`` is the source, or for wasm and data its bytes as latin-1."""

    name: str
    kind: str  # one of MODULE_KINDS
    text: str


@dataclass(frozen=True)
class WorkerScript:
    """Everything needed to start an instance of one version of a worker.

    ``source`` is the main module (or the service-worker script) named
    ``filename``; ``modules`` are the others it may import, by name.
    """

    name: str
    source: str
    filename: str = "worker.js"
    compatibility_date: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float = DEFAULT_CPU_MS
    memory_mb: int = DEFAULT_MEMORY_MB
    modules: tuple[Module, ...] = ()
    archive_hash: str = ""  # the control plane's content hash of this version, when it has one
    trust_level: str = "standard"  # runtime processes are shared only within a level
    # A service-worker script's [wasm_modules], [text_blobs], [data_blobs]: global name -> module name
    module_globals: dict[str, str] = field(default_factory=dict)
    # Bindings other than plain values ({"type": "kv_namespace", "name": ..., ...}): their
    # calls leave the isolate for the node (warren.bindings). account_id scopes them.
    bindings: tuple[dict[str, Any], ...] = ()
    account_id: str = ""
    subrequest_limit: int = DEFAULT_SUBREQUEST_LIMIT

    def binding(self, name: object) -> dict[str, Any] | None:
        """The spec of the binding (or runtime facility, like the Cache API) called ``name``."""
        for spec in self.bindings:
            if spec.get("name") == name:
                return spec
        return RUNTIME_BINDINGS.get(str(name))

    @property
    def code_hash(self) -> str:
        """What the runtime logs as the identity of the code it runs."""
        return self.archive_hash or self.content_hash

    @property
    def content_hash(self) -> str:
        """SHA-256 of the code: the main module, then each other module by name."""
        digest = hashlib.sha256(self.source.encode("utf-8", "surrogatepass"))
        for module in sorted(self.modules, key=lambda module: module.name):
            digest.update(f"\0{module.name}\0{module.kind}\0".encode())
            digest.update(module.text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    @property
    def version_id(self) -> str:
        """Changes whenever anything that affects an instance changes."""
        config = json.dumps(
            [
                self.name, self.filename, self.compatibility_date, self.vars, self.cpu_ms, self.memory_mb,
                list(self.bindings), self.account_id, self.subrequest_limit, self.module_globals,
            ],
            sort_keys=True,
        )
        return hashlib.sha256((self.content_hash + config).encode()).hexdigest()[:16]

    @property
    def is_module(self) -> bool:
        if _MODULE_SYNTAX.search(self.source):
            return True
        # A service-worker script has other modules only as the data behind its globals.
        return bool(self.modules) and not self.module_globals

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "filename": self.filename,
            "compatibility_date": self.compatibility_date,
            "vars": self.vars,
            "cpu_ms": self.cpu_ms,
            "memory_mb": self.memory_mb,
            "modules": [[module.name, module.kind, module.text] for module in self.modules],
            "archive_hash": self.archive_hash,
            "trust_level": self.trust_level,
            "module_globals": dict(self.module_globals),
            "bindings": list(self.bindings),
            "account_id": self.account_id,
            "subrequest_limit": self.subrequest_limit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerScript:
        return cls(
            name=str(data["name"]),
            source=str(data["source"]),
            filename=str(data.get("filename", "worker.js")),
            compatibility_date=str(data.get("compatibility_date", "")),
            vars=dict(data.get("vars", {})),
            cpu_ms=float(data.get("cpu_ms", DEFAULT_CPU_MS)),
            memory_mb=int(data.get("memory_mb", DEFAULT_MEMORY_MB)),
            modules=tuple(Module(str(n), str(k), str(t)) for n, k, t in data.get("modules", [])),
            archive_hash=str(data.get("archive_hash", "")),
            trust_level=str(data.get("trust_level", "standard")),
            module_globals={str(k): str(v) for k, v in dict(data.get("module_globals", {})).items()},
            bindings=tuple(dict(binding) for binding in data.get("bindings", [])),
            account_id=str(data.get("account_id", "")),
            subrequest_limit=int(data.get("subrequest_limit", DEFAULT_SUBREQUEST_LIMIT)),
        )


@dataclass(frozen=True)
class CompiledModule:
    """What the engine runs: ``script`` and ``esm`` are code (run_script); others are data."""

    name: str
    # "script" (a service-worker script), "esm" (a script registering an ES or CommonJS
    # module), "json", "text", "data", "wasm", or "globals" (JSON: a service-worker
    # script's global names -> module names, bound before the script runs)
    kind: str
    text: str


def escape_astral(source: str) -> str:
    """Write characters beyond U+FFFF as surrogate-pair escapes.

    stpyv8 mangles them on the way into V8; inside string literals, regular
    expressions and comments (where they occur in practice) the escape means the same.
    """

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group()) - 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    return _ASTRAL.sub(escape, source)


@functools.cache
def runtime_js(name: str) -> str:
    """Text of a file of the runtime's own JavaScript (js/ or vendor/)."""
    return resources.files("warren.runtime").joinpath(name).read_text("utf-8")


_WARM_MODULE = 'import data from "./data.js";\nexport const answer = () => data + 1;\nexport default { answer };\n'


class _Transformer:
    """One isolate running the compiler's JavaScript, used by one thread at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._isolate: Isolate | None = None

    def isolate(self) -> Isolate:
        if self._isolate is None or self._isolate.broken:
            if self._isolate is not None:
                self._isolate.dispose()
            isolate = Isolate()
            # Shared with the process's other transformer, and compiled from the caches the first leaves.
            isolate.run_shared_script(runtime_js("vendor/sucrase.js"), "warren:sucrase.js", cpu_budget_ms=5000)
            isolate.run_shared_script(runtime_js("js/compiler.js"), "warren:compiler.js")
            isolate.take_entry_point("__warrenTransform")
            # A module that needs sucrase, so that the caches hold its compiled functions too.
            isolate.call("__warrenTransform", _WARM_MODULE, "warren:warm.js", cpu_budget_ms=5000)
            isolate.cache_shared_scripts()
            self._isolate = isolate
        return self._isolate

    def close(self) -> None:
        with self.lock:
            if self._isolate is not None:
                self._isolate.dispose()
                self._isolate = None


class CodeCaches:
    """V8's code caches of large modules (``Isolate.code_cache``), by owner, name and text. Thread-safe.

    A worker's isolate makes one for a module once it has run a while (when it goes
    idle, or is evicted), so the functions its requests compiled are in it; the next
    isolate of the same owner (an account) to load the same text (the tenant back
    after an eviction, a Durable Object's next instance) compiles from it instead.
    Never across owners: a tenant timing its own restarts could otherwise learn that
    another account runs a module it guessed. Only caches made in this process are
    kept: V8 trusts their bytes. Bounded by size, least recently used out.
    """

    MIN_CHARS = 16 * 1024  # below this a compile takes well under a millisecond
    BUDGET_BYTES = 64 * 1024 * 1024  # caches and the texts they are kept by

    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self._lock = threading.Lock()
        self._caches: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._budget = budget_bytes

    @classmethod
    def wanted(cls, module: CompiledModule) -> bool:
        """Whether a module is code large enough to cache."""
        return module.kind in ("script", "esm") and len(module.text) >= cls.MIN_CHARS

    def get(self, owner: str, module: CompiledModule) -> bytes | None:
        key = (owner, module.name, module.text)
        with self._lock:
            cache = self._caches.get(key)
            if cache is not None:
                self._caches.move_to_end(key)
            return cache

    def keep(self, owner: str, module: CompiledModule, cache: bytes) -> None:
        size = len(cache) + len(module.text)
        if size > self._budget:
            return
        key = (owner, module.name, module.text)
        with self._lock:
            if key in self._caches:
                return
            self._caches[key] = cache
            self._bytes += size
            while self._bytes > self._budget:
                (_, _, text), dropped = self._caches.popitem(last=False)
                self._bytes -= len(dropped) + len(text)

    def drop(self, owner: str, module: CompiledModule) -> None:
        with self._lock:
            dropped = self._caches.pop((owner, module.name, module.text), None)
            if dropped is not None:
                self._bytes -= len(dropped) + len(module.text)

    def __len__(self) -> int:
        with self._lock:
            return len(self._caches)


class Compiler:
    """Turns ES modules into classic scripts, caching by content.

    Runs its JavaScript (js/compiler.js: es-module-lexer, and sucrase where the
    module needs more than its import and export statements rewritten) in an
    isolate of its own; the tenant's source is only data to it. Thread-safe.

    Large modules have a transformer of their own: sucrase may take seconds over
    megabytes, and a small script's cold start must not wait behind that. The
    process' code caches of what it compiled (``code_caches``) live here too.
    """

    # By size, not count: a runtime process may hold 10,000 small tenants, and an
    # evicted tenant's next start should not transform its modules again (~1 ms
    # for a small module; sucrase ~0.3 s for 1 MB of code, the lexer's path ~25 ms).
    CACHE_CHARS = 64 * 1024 * 1024
    LARGE_CHARS = 32 * 1024  # a module (or script, in all) this large is large

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the cache and the counts; never held while transforming
        self._transformers = {False: _Transformer(), True: _Transformer()}  # by "large"
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cached_chars = 0
        self.rewritten_modules = 0  # transformed by rewriting their module statements only, without sucrase
        self.code_caches = CodeCaches()

    @classmethod
    def is_large(cls, script: WorkerScript) -> bool:
        """Whether compiling ``script`` may take long (a runtime compiles it off the JS threads)."""
        return len(script.source) + sum(len(module.text) for module in script.modules) > cls.LARGE_CHARS

    def compile(self, script: WorkerScript) -> list[CompiledModule]:
        """The script's modules, ready for the engine, in the order they are loaded; raises ScriptLoadError.

        A module worker's main module comes first. A service-worker script comes
        last, after the data of its globals and the ``globals`` entry binding them.
        """
        if not script.is_module:
            main = CompiledModule(script.filename, "script", escape_astral(script.source))
            if not script.module_globals:
                return [main]
            return [*self._global_modules(script), main]
        if script.module_globals:
            raise ScriptLoadError(
                "[wasm_modules], [text_blobs] and [data_blobs] are for service-worker scripts; "
                "an ES module imports its files instead",
                script.filename,
            )
        compiled = [CompiledModule(script.filename, "esm", self._esm(script.filename, script.source))]
        compiled += [self._module(module) for module in script.modules]
        return compiled

    def _module(self, module: Module) -> CompiledModule:
        if module.kind == "esm":
            return CompiledModule(module.name, "esm", self._esm(module.name, module.text))
        if module.kind == "commonjs":
            # As Node runs it: not strict unless it says so, never transformed.
            text = f"__warrenDefine({json.dumps(module.name)}, function (exports, require, module) {{"
            return CompiledModule(module.name, "esm", f"{text}{escape_astral(module.text)}\n}});")
        if module.kind in MODULE_KINDS:
            text = module.text if module.kind in ("wasm", "data") else escape_astral(module.text)
            return CompiledModule(module.name, module.kind, text)
        raise ScriptLoadError(f"module {module.name} has an unknown type {module.kind!r}")

    def _global_modules(self, script: WorkerScript) -> list[CompiledModule]:
        by_name = {module.name: module for module in script.modules}
        for name, module_name in script.module_globals.items():
            module = by_name.get(module_name)
            if not _GLOBAL_NAME.fullmatch(name):
                raise ScriptLoadError(f"the global {name!r} is not a JavaScript identifier")
            if module is None or module.kind not in GLOBAL_MODULE_KINDS:
                raise ScriptLoadError(
                    f"the global {name} is bound to {module_name!r}, which is not a wasm, text or data module"
                )
        compiled = [self._module(module) for module in script.modules if module.kind in GLOBAL_MODULE_KINDS]
        compiled.append(CompiledModule("warren:globals", "globals", json.dumps(script.module_globals)))
        return compiled

    def _esm(self, filename: str, source: str) -> str:
        """One ES module as a classic script that registers it with the bootstrap."""
        source = escape_astral(source)
        key = hashlib.sha256(f"{filename}\0{source}".encode("utf-8", "surrogatepass")).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        transformer = self._transformers[len(source) > self.LARGE_CHARS]
        with transformer.lock:
            cached = self._cached(key)  # transformed while this thread waited
            if cached is not None:
                return cached
            try:
                output = transformer.isolate().call("__warrenTransform", source, filename, cpu_budget_ms=10_000)
            except IsolateTerminated as exc:
                kind = "CPU time" if isinstance(exc, CpuLimitExceeded) else "memory"
                raise ScriptLoadError(f"the script is too large to compile (compiler {kind} limit)") from None
            except ScriptError as exc:
                raise ScriptLoadError(str(exc)) from None
            result = json.loads(str(output))
            if "error" in result:
                message = re.sub(r"^Error transforming [^:]*: ", "", result["error"])
                message = re.sub(r" \(\d+:\d+\)$", "", message)
                raise ScriptLoadError(f"SyntaxError: {message}", filename, result["line"], result["column"])
            # The wrapper opens on the module's first line, so line numbers in
            # stack traces and errors stay those of the file.
            code = str(result["code"])
            wrapped = f"__warrenDefine({json.dumps(filename)}, function (exports, require, module) {{{code}\n}});"
            with self._lock:
                if result.get("fast"):
                    self.rewritten_modules += 1
                self._cache[key] = wrapped
                self._cached_chars += len(wrapped)
                while self._cached_chars > self.CACHE_CHARS and len(self._cache) > 1:
                    self._cached_chars -= len(self._cache.popitem(last=False)[1])
            return wrapped

    def _cached(self, key: str) -> str | None:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def close(self) -> None:
        for transformer in self._transformers.values():
            transformer.close()
