"""A Worker script and its preparation for the engine.

Module syntax (``export default {...}``) is turned into a function the
bootstrap calls with ``exports`` and ``require``, by sucrase (vendored) running
in an isolate of its own, so the engine only ever runs classic scripts.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class WorkerScript:
    """Everything needed to start an instance of one version of a worker."""

    name: str
    source: str
    filename: str = "worker.js"
    compatibility_date: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float = DEFAULT_CPU_MS
    memory_mb: int = DEFAULT_MEMORY_MB

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def version_id(self) -> str:
        """Changes whenever anything that affects an instance changes."""
        config = json.dumps(
            [self.name, self.filename, self.compatibility_date, self.vars, self.cpu_ms, self.memory_mb],
            sort_keys=True,
        )
        return hashlib.sha256((self.content_hash + config).encode()).hexdigest()[:16]

    @property
    def is_module(self) -> bool:
        return bool(_MODULE_SYNTAX.search(self.source))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "filename": self.filename,
            "compatibility_date": self.compatibility_date,
            "vars": self.vars,
            "cpu_ms": self.cpu_ms,
            "memory_mb": self.memory_mb,
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
        )


def escape_astral(source: str) -> str:
    """Write characters beyond U+FFFF as surrogate-pair escapes.

    stpyv8 mangles them on the way into V8; inside string literals, regular
    expressions and comments (where they occur in practice) the escape means the same.
    """

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group()) - 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    return _ASTRAL.sub(escape, source)


def runtime_js(name: str) -> str:
    """Text of a file of the runtime's own JavaScript (js/ or vendor/)."""
    return resources.files("warren.runtime").joinpath(name).read_text("utf-8")


class Compiler:
    """Turns module syntax into a classic script, caching by content.

    Runs sucrase (trusted code) in its own isolate; the tenant's source is only
    data to it. Thread-safe.
    """

    _CACHE_SIZE = 256

    def __init__(self) -> None:
        self._isolate: Isolate | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()

    def _ready_isolate(self) -> Isolate:
        if self._isolate is None or self._isolate.broken:
            if self._isolate is not None:
                self._isolate.dispose()
            isolate = Isolate()
            isolate.run_script(runtime_js("vendor/sucrase.js"), "warren:sucrase.js", cpu_budget_ms=5000)
            isolate.run_script(
                """globalThis.__warrenTransform = function (code, filePath) {
                  try {
                    const options = {transforms: ["imports"], filePath};
                    return JSON.stringify({code: __warrenSucrase.transform(code, options).code});
                  } catch (e) {
                    const loc = e.loc || {};
                    return JSON.stringify({error: String(e.message), line: loc.line || 0, column: loc.column || 0});
                  }
                }""",
                "warren:compiler.js",
            )
            isolate.take_entry_point("__warrenTransform")
            self._isolate = isolate
        return self._isolate

    def to_classic_script(self, script: WorkerScript) -> str:
        """The script's source, ready for the engine; raises ScriptLoadError."""
        source = escape_astral(script.source)
        if not script.is_module:
            return source
        key = script.content_hash
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            try:
                output = self._ready_isolate().call(
                    "__warrenTransform", source, script.filename, cpu_budget_ms=10_000
                )
            except IsolateTerminated as exc:
                kind = "CPU time" if isinstance(exc, CpuLimitExceeded) else "memory"
                raise ScriptLoadError(f"the script is too large to compile (compiler {kind} limit)") from None
            except ScriptError as exc:
                raise ScriptLoadError(str(exc)) from None
            result = json.loads(str(output))
            if "error" in result:
                message = re.sub(r"^Error transforming [^:]*: ", "", result["error"])
                message = re.sub(r" \(\d+:\d+\)$", "", message)
                raise ScriptLoadError(
                    f"SyntaxError: {message}", script.filename, result["line"], result["column"]
                )
            # The wrapper opens on the script's first line, so line numbers in
            # stack traces and errors stay those of the file.
            code = str(result["code"])
            wrapped = "__warrenDefine(function (exports, require, module) {" + code + "\n});"
            self._cache[key] = wrapped
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
            return wrapped

    def close(self) -> None:
        with self._lock:
            if self._isolate is not None:
                self._isolate.dispose()
                self._isolate = None
