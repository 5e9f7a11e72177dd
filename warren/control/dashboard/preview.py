"""Preview: run a worker's edited source once, in a runtime process of the control plane, without deploying it.

``POST /client/v4/accounts/{a}/workers/preview`` (docs/control-plane.md) is
answered by ``Previewer.run``. Each preview loads a fresh version under a key
of its own into a ``Supervisor`` whose scripts all have trust level
"untrusted", so a previewed script never shares a runtime process with
anything an edge node serves and never runs in the control-plane process. The
supervisor starts with the first preview and stops when idle or with the app.
Nothing is written to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from warren.store import validation as store_validation
from warren.store.errors import InvalidInput

if TYPE_CHECKING:
    # Imported when the first preview runs: the runtime's imports (V8 binding
    # included) would otherwise slow every start of the control plane and CLI.
    from warren.runtime import WorkerScript
    from warren.server.supervisor import Exchange, Supervisor

PREVIEW_TRUST_LEVEL = "untrusted"
PREVIEW_CPU_MS = 50  # as a deployed worker's default
PREVIEW_HOST = "preview.warren.invalid"
MAX_PREVIEW_REQUEST = 2 * store_validation.MAX_SCRIPT_BYTES + 1024 * 1024  # JSON escaping may double the source
MAX_RESPONSE_BODY = 1024 * 1024  # the rest of a larger body is dropped and ``truncated`` set
MAX_LOG_ENTRIES = 1000
RESPONSE_TIMEOUT_S = 30.0  # a preview waiting on a timer longer than this is cancelled
AFTER_RESPONSE_S = 1.0  # how long ctx.waitUntil work may add log lines to the answer
MAX_CONCURRENT = 4
QUEUE_TIMEOUT_S = 10.0
IDLE_STOP_S = 300.0  # the preview runtime process is stopped after this long without a preview

_KINDS = {".js": "esm", ".mjs": "esm", ".cjs": "esm", ".json": "json", ".txt": "text", ".html": "text"}
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# "    at fetch (worker.js:3:11)" or "    at worker.js:3:11"
_STACK_FRAME = re.compile(r"\(?([A-Za-z0-9._/-]+):(\d+):(\d+)\)?\s*$")


class PreviewBusy(Exception):
    """Too many previews are running; the client should retry."""


@dataclass(frozen=True)
class PreviewRequest:
    """A validated preview body."""

    main: str
    sources: dict[str, tuple[str, str]]  # module name -> (runtime module kind, source)
    compatibility_date: str
    variables: dict[str, Any]
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes | None


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"preview: {what} must be a string")
    return value


def parse(body: dict[str, Any]) -> PreviewRequest:
    """Check a preview body (the contract's shape); every problem is an ``InvalidInput``."""
    modules = body.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise InvalidInput("preview: 'modules' must be an object of module name -> source")
    main = store_validation.module_name(body.get("main", next(iter(modules))))
    if main not in modules:
        raise InvalidInput(f"preview: the main module {main!r} is not one of 'modules'")
    total = 0
    sources: dict[str, tuple[str, str]] = {}
    for name, source in modules.items():
        store_validation.module_name(name)
        source = _text(source, f"module {name!r}")
        kind = _KINDS.get(posixpath.splitext(name)[1].lower())
        if kind is None:
            raise InvalidInput(
                f"preview: module {name!r} is not a text module (.js, .mjs, .cjs, .json, .txt, .html); "
                "binary modules cannot be previewed"
            )
        total += len(source.encode("utf-8", "surrogatepass"))
        sources[name] = (kind, source)
    if total > store_validation.MAX_SCRIPT_BYTES:
        raise InvalidInput(f"preview: the modules add up to more than {store_validation.MAX_SCRIPT_BYTES} bytes")
    if sources[main][0] != "esm":
        raise InvalidInput(f"preview: the main module {main!r} must be JavaScript")
    compatibility_date = store_validation.compatibility_date(body.get("compatibility_date", ""))
    variables: dict[str, Any] = {}
    for binding in store_validation.bindings(body.get("bindings", [])):
        if binding["type"] == "plain_text":
            variables[binding["name"]] = binding["text"]
        elif binding["type"] == "json":
            variables[binding["name"]] = binding["json"]
        else:
            raise InvalidInput(f"preview: binding {binding['name']!r} of type {binding['type']} cannot be previewed")

    request = body.get("request", {})
    if not isinstance(request, dict):
        raise InvalidInput("preview: 'request' must be an object")
    method = _text(request.get("method", "GET"), "request.method").upper()
    if not _METHOD.fullmatch(method):
        raise InvalidInput(f"preview: {method!r} is not an HTTP method")
    path = _text(request.get("path", "/"), "request.path")
    if not path.startswith("/") or len(path) > 8192 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        raise InvalidInput("preview: request.path must start with '/' and be printable ASCII without spaces")
    raw_headers = request.get("headers", {})
    if not isinstance(raw_headers, dict):
        raise InvalidInput("preview: request.headers must be an object of name -> value")
    headers = [("host", PREVIEW_HOST)]
    for name, value in raw_headers.items():
        value = _text(value, f"header {name!r}")
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise InvalidInput(f"preview: header {name!r} is not a valid header")
        if name.lower() != "host":
            headers.append((name.lower(), value))
    body_text = request.get("body")
    data = _text(body_text, "request.body").encode("utf-8") if body_text is not None else None
    if data is not None and method in ("GET", "HEAD"):
        raise InvalidInput(f"preview: a {method} request cannot have a body")
    if data is not None:
        headers.append(("content-length", str(len(data))))

    return PreviewRequest(main, sources, compatibility_date, variables, method, path, headers, data)


def _script(preview: PreviewRequest) -> WorkerScript:
    from warren.runtime import Module, WorkerScript

    return WorkerScript(
        name="preview-" + uuid.uuid4().hex[:12],  # a name of its own, so its log lines are told apart
        source=preview.sources[preview.main][1],
        filename=preview.main,
        compatibility_date=preview.compatibility_date,
        vars=preview.variables,
        cpu_ms=PREVIEW_CPU_MS,
        modules=tuple(
            Module(name, kind, text) for name, (kind, text) in preview.sources.items() if name != preview.main
        ),
        trust_level=PREVIEW_TRUST_LEVEL,
    )


def _error(message: str, filename: str = "", line: int = 0, column: int = 0) -> dict[str, Any]:
    return {"message": message, "filename": filename, "line": line, "column": column}


def _uncaught(logs: list[dict[str, str]], modules: Iterable[str]) -> dict[str, Any] | None:
    """The error of the last "Uncaught …" log line, located at its innermost stack frame in the script's modules."""
    names = set(modules)
    for entry in reversed(logs):
        text = entry["message"]
        if entry["level"] != "error" or not text.startswith("Uncaught"):
            continue
        lines = text.splitlines()
        message = re.sub(r"^Uncaught (\(in [^)]*\) )?", "", lines[0])
        for frame in lines[1:]:
            match = _STACK_FRAME.search(frame.strip())
            if match and match.group(1) in names:
                return _error(message, match.group(1), int(match.group(2)), int(match.group(3)))
        return _error(message)
    return None


@dataclass
class _Collector:
    logs: list[dict[str, str]] = field(default_factory=list)
    dropped: int = 0


def _supervisor(on_log: Callable[[str, str, str], None]) -> Supervisor:
    from warren.server.supervisor import Supervisor

    class PreviewSupervisor(Supervisor):
        """Only the preview cordon: no idle "standard" runtime process beside it."""

        async def start(self) -> None:
            self._started = True
            await self._cordon(PREVIEW_TRUST_LEVEL)

    return PreviewSupervisor(processes=1, js_threads=2, idle_timeout=60.0, on_log=on_log)


class Previewer:
    """Runs previews in a supervisor of its own, started on first use and stopped when idle or by ``stop``."""

    def __init__(
        self,
        idle_stop_s: float = IDLE_STOP_S,
        max_concurrent: int = MAX_CONCURRENT,
        queue_timeout_s: float = QUEUE_TIMEOUT_S,
        response_timeout_s: float = RESPONSE_TIMEOUT_S,
    ) -> None:
        self.idle_stop_s = idle_stop_s
        self.queue_timeout_s = queue_timeout_s
        self.response_timeout_s = response_timeout_s
        self._supervisor: Supervisor | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._collectors: dict[str, _Collector] = {}

    @property
    def running(self) -> bool:
        """Whether the preview runtime is up (for tests and diagnostics)."""
        return self._supervisor is not None

    def _on_log(self, script: str, level: str, message: str) -> None:
        collector = self._collectors.get(script)
        if collector is None:
            return
        if len(collector.logs) >= MAX_LOG_ENTRIES:
            collector.dropped += 1
            return
        collector.logs.append({"level": level, "message": message})

    async def _ensure_started(self) -> Supervisor:
        async with self._lock:
            if self._supervisor is None:
                supervisor = _supervisor(self._on_log)
                await supervisor.start()
                self._supervisor = supervisor
            return self._supervisor

    async def stop(self) -> None:
        """Stop the preview runtime process, if it runs. A later preview starts it again."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        async with self._lock:
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                await supervisor.stop()

    def _stop_if_idle(self) -> None:
        self._idle_timer = None
        if self._running == 0 and self._supervisor is not None:
            asyncio.get_running_loop().create_task(self._stop_idle())

    async def _stop_idle(self) -> None:
        async with self._lock:
            # A preview that began since the timer fired counted itself first: it keeps the runtime.
            if self._running > 0 or self._supervisor is None:
                return
            supervisor, self._supervisor = self._supervisor, None
            await supervisor.stop()

    async def run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a preview body, run it once, and return the contract's result."""
        preview = parse(body)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except TimeoutError:
            raise PreviewBusy("too many previews are running; try again in a moment") from None
        self._running += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            return await self._run(preview)
        finally:
            self._running -= 1
            self._slots.release()
            if self._running == 0 and self.idle_stop_s > 0:
                self._idle_timer = asyncio.get_running_loop().call_later(self.idle_stop_s, self._stop_if_idle)

    async def _run(self, preview: PreviewRequest) -> dict[str, Any]:
        from warren.runtime import ScriptLoadError

        supervisor = await self._ensure_started()
        script = _script(preview)
        key = f"{script.name}@{script.version_id}"
        collector = self._collectors[script.name] = _Collector()
        result: dict[str, Any] = {"status": 0, "headers": [], "body": "", "logs": collector.logs, "error": None}
        loaded = False
        try:
            try:
                await supervisor.load(key, script, start=True)
                loaded = True
            except ScriptLoadError as exc:
                result.update(status=500, error=exc.to_dict())
                return result
            exchange = await supervisor.open_exchange(
                key, preview.method, f"http://{PREVIEW_HOST}{preview.path}", preview.headers, preview.body is not None
            )
            if preview.body is not None:
                if preview.body:
                    await exchange.send_body(preview.body)
                exchange.end_body()
            try:
                await asyncio.wait_for(self._collect(exchange, result), self.response_timeout_s)
            except TimeoutError:
                exchange.cancel()
                result.update(
                    status=result["status"] or 504,
                    error=_error(f"The worker did not finish its response within {self.response_timeout_s:g} s."),
                )
                return result
            # Lines logged by ctx.waitUntil work shortly after the response still belong to this preview.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exchange.completed.wait(), AFTER_RESPONSE_S)
            if exchange.metering.get("outcome") == "exception" or (result["error"] and result["status"] == 500):
                uncaught = _uncaught(collector.logs, preview.sources)
                result["error"] = uncaught or result["error"] or _error("The worker threw an exception.")
            return result
        finally:
            self._collectors.pop(script.name, None)
            if collector.dropped:
                collector.logs.append({"level": "warn", "message": f"{collector.dropped} more log lines were dropped"})
            collector.logs[:] = [entry for entry in collector.logs if not _is_runtime_notice(entry, key)]
            if loaded and self._supervisor is supervisor:
                await supervisor.retire(key)

    @staticmethod
    async def _collect(exchange: Exchange, result: dict[str, Any]) -> None:
        chunks: list[bytes] = []
        size = 0
        truncated = False
        while True:
            event = await exchange.next_event()
            kind = event[0]
            if kind == "head":
                result["status"] = event[1]
                result["headers"] = [[name, value] for name, value in event[2]]
            elif kind == "body":
                if size < MAX_RESPONSE_BODY:
                    chunks.append(event[1][: MAX_RESPONSE_BODY - size])
                size += len(event[1])
                if size > MAX_RESPONSE_BODY and not truncated:
                    truncated = True
                    exchange.cancel()  # nobody will read the rest
                    break
            elif kind == "end":
                break
            elif kind == "error":
                result["status"] = event[1]
                result["body"] = event[2]
                result["error"] = _error(str(event[2]))
                return
            else:  # aborted mid-response: the runtime process died
                result["error"] = _error("The preview's runtime process stopped during the response.")
                break
        result["body"] = b"".join(chunks).decode("utf-8", "replace")
        if truncated:
            result["truncated"] = True


def _is_runtime_notice(entry: dict[str, str], key: str) -> bool:
    # The runtime logs which code an isolate runs; in a preview that is noise, not the script's output.
    return entry["level"] == "info" and entry["message"].startswith(f"started {key} running code sha256")

