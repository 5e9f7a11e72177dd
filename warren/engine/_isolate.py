"""Isolates on stpyv8, with a CPU-time watchdog and a heap-limit guard.

stpyv8 has no CPU limit, no near-heap-limit hook and no thread-safe way to
terminate another thread's isolate (its ``terminateAllThreads`` acts on the
calling thread's isolate, and segfaults elsewhere). V8 itself has all three,
and the stpyv8 extension exports V8's symbols, so this module calls
``v8::Isolate::TerminateExecution`` (documented as callable from any thread),
``AddNearHeapLimitCallback`` and ``GetHeapStatistics`` through ctypes, on the
isolate pointer read once while the isolate is entered.

The runtime's own JavaScript is compiled from external strings (V8 reads the
text from memory outside its heap) that every isolate of the process shares:
about 0.8 MB of source each isolate would otherwise copy into its own heap.
stpyv8 only compiles from its own copies, so ``run_shared_script`` makes the
few V8 calls itself (a handle scope, a try/catch, compile, run), against the
layouts of the pinned V8 version; any other version falls back to a copy.

Code caches (V8's serialized bytecode of a script, with every function compiled
so far) come from the same calls: ``code_cache`` serializes what an isolate has
compiled of a script, and ``run_script``/``run_shared_script`` compile from one.
The runtime's own scripts are cached once per process, after the first isolate
prepared with them has run its warm-up; a prepared isolate then takes ~6 ms
instead of ~22. Only caches made in this process are ever consumed: V8 trusts
their bytes.

WebAssembly is compiled only where the host allows it, as on Workers: V8 asks
``SetAllowWasmCodeGenerationCallback``'s callback before every compilation
from bytes (``WebAssembly.compile``, ``instantiate(bytes)``, ``new
WebAssembly.Module``), and the answer is no unless the isolate's own private
``compileWasm`` function has opened its gate for the one call it makes.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Primitive = str | int | float | bool | None

_DEFAULT_HEAP_LIMIT_MB = 128
_WATCHDOG_INTERVAL_S = 0.001
# When V8 nears the heap limit it asks for more room; we grant this much so the
# termination we just requested can unwind the script instead of V8 aborting.
_OOM_HEADROOM_BYTES = 64 * 1024 * 1024
_OOM_MAX_GRANTS = 3


class EngineError(Exception):
    """A failure of the engine itself (misuse, binding error)."""


class ScriptError(EngineError):
    """JavaScript threw, or failed to compile. Carries where, when known."""

    def __init__(
        self,
        name: str,
        message: str,
        filename: str = "",
        line: int = 0,
        column: int = 0,
        stack: str = "",
    ) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.stack = stack

    def location(self) -> str:
        if not self.filename:
            return ""
        return f"{self.filename}:{self.line}:{self.column}"


class IsolateTerminated(EngineError):
    """Execution was terminated; the isolate must be disposed."""


class CpuLimitExceeded(IsolateTerminated):
    pass


class MemoryLimitExceeded(IsolateTerminated):
    pass


# --- process-wide V8 set-up ---------------------------------------------------

_v8: Any = None
_api: _V8Api | None = None
_configure_lock = threading.Lock()
_heap_limit_mb = _DEFAULT_HEAP_LIMIT_MB


def configure(heap_limit_mb: int = _DEFAULT_HEAP_LIMIT_MB) -> None:
    """Set V8's flags and start its platform. Once per process, before any isolate.

    V8 freezes its flags at initialisation, so the heap limit is per process;
    code generation from strings (eval, new Function) is refused everywhere.
    """
    global _v8, _api, _heap_limit_mb
    with _configure_lock:
        if _v8 is not None:
            if heap_limit_mb != _heap_limit_mb:
                raise EngineError("the engine is already configured with another heap limit")
            return
        import _STPyV8  # the only import of the binding in warren

        # Async wasm compilation finishes through a task posted to V8's
        # platform, which nothing pumps between our slices: compile in-line.
        # No Sparkplug: its baseline code is ~90 KiB per isolate (most of it for
        # functions the runtime runs once as it prepares an isolate), and neither
        # hello nor a Web-API-heavy handler ran slower without it (bench/README.md).
        _STPyV8.JSEngine.setFlags(
            "--disallow-code-generation-from-strings --no-wasm-async-compilation --no-sparkplug"
            f" --max-old-space-size={heap_limit_mb}"
        )
        _STPyV8._JSError._jsclass = _BindingError
        _install_icu_data()
        platform = _STPyV8.JSPlatform()
        platform.init()
        _api = _V8Api(_STPyV8.__file__, str(_STPyV8.JSEngine.version))
        _v8 = _STPyV8
        _v8._warren_platform = platform  # keep it alive for the process' lifetime
        _heap_limit_mb = heap_limit_mb
        _Watchdog.instance()


def _install_icu_data() -> None:
    # stpyv8 looks for icudtl.dat in a data folder its own module normally fills
    # on import; we do not import that module (it starts V8 with default flags).
    target = Path(os.path.expanduser("~/.local/share/stpyv8/icudtl.dat"))
    if target.exists() or Path("/usr/share/stpyv8/icudtl.dat").exists():
        return
    for entry in sys.path:
        source = Path(entry) / "stpyv8-icu" / "icudtl.dat"
        if source.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            except OSError:
                pass
            return


class _BindingError(Exception):
    """What stpyv8 raises for a JavaScript exception (it wraps its own object)."""

    def __init__(self, impl: Any) -> None:
        super().__init__()
        self.impl = impl

    def __str__(self) -> str:
        return str(self.impl)


_OOMErrorCallback = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)

_NearHeapLimitCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t
)

# bool (*)(Local<Context>, Local<String>); the arguments are not read.
_AllowWasmCodeGenerationCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)


class _V8Api:
    """The few V8 C++ entry points stpyv8 does not expose, called by symbol."""

    def __init__(self, library_path: str, version: str) -> None:
        # Calls that return at once keep the GIL (PyDLL): releasing and taking it
        # back around each costs ~35 us while another thread runs Python, and
        # one runs with every slice. Calls that run for long release it (CDLL).
        lib = ctypes.PyDLL(library_path)
        slow = ctypes.CDLL(library_path)
        self.get_current = lib._ZN2v87Isolate10GetCurrentEv
        self.get_current.restype = ctypes.c_void_p
        self.get_current.argtypes = []
        self.terminate = lib._ZN2v87Isolate18TerminateExecutionEv
        self.terminate.argtypes = [ctypes.c_void_p]
        self.cancel_terminate = lib._ZN2v87Isolate24CancelTerminateExecutionEv
        self.cancel_terminate.argtypes = [ctypes.c_void_p]
        self.add_near_heap_limit = lib._ZN2v87Isolate24AddNearHeapLimitCallbackEPFmPvmmES1_
        self.add_near_heap_limit.argtypes = [ctypes.c_void_p, _NearHeapLimitCallback, ctypes.c_void_p]
        self.low_memory_notification = slow._ZN2v87Isolate21LowMemoryNotificationEv
        self.low_memory_notification.argtypes = [ctypes.c_void_p]
        self.set_oom_handler = lib._ZN2v87Isolate18SetOOMErrorHandlerEPFvPKcRKNS_10OOMDetailsEE
        self.set_oom_handler.argtypes = [ctypes.c_void_p, _OOMErrorCallback]
        self.heap_statistics = lib._ZN2v87Isolate17GetHeapStatisticsEPNS_14HeapStatisticsE
        self.heap_statistics.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.set_allow_wasm_codegen = lib[
            "_ZN2v87Isolate34SetAllowWasmCodeGenerationCallbackEPFbNS_5LocalINS_7ContextEEENS1_INS_6StringEEEE"
        ]
        self.set_allow_wasm_codegen.argtypes = [ctypes.c_void_p, _AllowWasmCodeGenerationCallback]
        self.shared: _SharedSourceApi | None = None
        if version == _V8_VERSION_CHECKED:
            try:
                self.shared = _SharedSourceApi(lib, slow)
            except (AttributeError, ValueError):  # a symbol missing: every isolate copies the text
                self.shared = None


# The V8 version whose object layouts _SharedSourceApi was checked against (stpyv8 is pinned to it).
_V8_VERSION_CHECKED = "13.1.201.22"


class _Source(ctypes.Structure):
    # v8::ScriptCompiler::Source (V8 13.1), built here as its inline constructor would from a
    # ScriptOrigin: the text, the origin's fields, the cached data (owned by the caller: this
    # struct is never destroyed by V8, so its unique_ptrs never free it). V8 may write fields
    # past these (compilation details): the slack takes them.
    _fields_ = [
        ("source_string", ctypes.c_void_p),
        ("resource_name", ctypes.c_void_p),
        ("line_offset", ctypes.c_int),
        ("column_offset", ctypes.c_int),
        ("options", ctypes.c_int),
        ("source_map_url", ctypes.c_void_p),
        ("host_defined_options", ctypes.c_void_p),
        ("cached_data", ctypes.c_void_p),
        ("consume_cache_task", ctypes.c_void_p),
        ("compile_hint_callback", ctypes.c_void_p),
        ("compile_hint_callback_data", ctypes.c_void_p),
        ("slack", ctypes.c_char * 128),
    ]


class _CachedData(ctypes.Structure):
    # v8::ScriptCompiler::CachedData: data, length, rejected, buffer policy (0: not owned).
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("length", ctypes.c_int),
        ("rejected", ctypes.c_bool),
        ("buffer_policy", ctypes.c_int),
    ]


_CONSUME_CODE_CACHE = 1  # v8::ScriptCompiler::kConsumeCodeCache


class _SharedSourceApi:
    """Compiling and running a script whose source is an external one-byte string.

    The resource V8 reads the text through is a copy of V8's own
    ``SimpleStringResource<char>`` (vtable, cached data, data, length) whose
    ``Dispose`` is replaced by a no-op: the text belongs to this module for the
    process' lifetime, not to any isolate, so no isolate's teardown frees it.
    """

    _VTABLE = "_ZTVN2v88internal20SimpleStringResourceIcNS_6String29ExternalOneByteStringResourceEEE"
    # offset to top, type info, 2 destructors, IsCacheable, Unaccount, Dispose, Lock, Unlock, data, length
    _VTABLE_WORDS = 11
    _DISPOSE, _LOCK = 6, 7
    _SCOPE_BYTES = 64  # v8::HandleScope is 3 words, v8::TryCatch 6: room to spare
    _TRY_CATCH_BYTES = 256

    def __init__(self, lib: ctypes.CDLL, slow: ctypes.CDLL) -> None:
        pointer = ctypes.c_void_p

        def function(symbol: str, restype: Any, *argtypes: Any, releases_gil: bool = False) -> Any:
            found = (slow if releases_gil else lib)[symbol]
            found.restype = restype
            found.argtypes = list(argtypes)
            return found

        self.scope_open = function("_ZN2v811HandleScopeC1EPNS_7IsolateE", None, pointer, pointer)
        self.scope_close = function("_ZN2v811HandleScopeD1Ev", None, pointer)
        self.current_context = function("_ZN2v87Isolate17GetCurrentContextEv", pointer, pointer)
        self.try_open = function("_ZN2v88TryCatchC1EPNS_7IsolateE", None, pointer, pointer)
        self.try_close = function("_ZN2v88TryCatchD1Ev", None, pointer)
        self.caught = function("_ZNK2v88TryCatch9HasCaughtEv", ctypes.c_bool, pointer)
        self.new_external = function(
            "_ZN2v86String18NewExternalOneByteEPNS_7IsolateEPNS0_29ExternalOneByteStringResourceE",
            pointer, pointer, pointer,
        )
        self.new_utf8 = function(
            "_ZN2v86String11NewFromUtf8EPNS_7IsolateEPKcNS_13NewStringTypeEi",
            pointer, pointer, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
        )
        self.run = function("_ZN2v86Script3RunENS_5LocalINS_7ContextEEE", pointer, pointer, pointer, releases_gil=True)
        self.compile_source = function(
            "_ZN2v814ScriptCompiler7CompileENS_5LocalINS_7ContextEEEPNS0_6SourceENS0_14CompileOptionsENS0_13NoCacheReasonE",
            pointer, pointer, pointer, ctypes.c_int, ctypes.c_int, releases_gil=True,
        )
        self.unbound_script = function("_ZN2v86Script16GetUnboundScriptEv", pointer, pointer)
        self.create_code_cache = function(
            "_ZN2v814ScriptCompiler15CreateCodeCacheENS_5LocalINS_13UnboundScriptEEE",
            ctypes.POINTER(_CachedData), pointer, releases_gil=True,
        )
        # V8 allocates the CachedData it returns with new (its buffer with new[], freed by the destructor).
        self.cached_data_destroy = function("_ZN2v814ScriptCompiler10CachedDataD1Ev", None, pointer)
        self.operator_delete = function("_ZdlPv", None, pointer)
        original = (ctypes.c_void_p * self._VTABLE_WORDS).from_address(
            ctypes.addressof(ctypes.c_void_p.in_dll(lib, self._VTABLE))
        )
        self._vtable = (ctypes.c_void_p * self._VTABLE_WORDS)(*original)
        self._vtable[self._DISPOSE] = original[self._LOCK]  # Lock() does nothing
        self._sources: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._code_caches: dict[tuple[str, str], bytes] = {}  # of the shared scripts, by (filename, source)
        self._lock = threading.Lock()

    def resource(self, source: str, filename: str) -> tuple[int, int] | None:
        """(address of the resource, bytes) for this text, made once per process; None unless latin-1."""
        key = (filename, source)
        with self._lock:
            made = self._sources.get(key)
            if made is None:
                try:
                    data = source.encode("latin-1")
                except UnicodeEncodeError:
                    return None
                text = ctypes.create_string_buffer(data, len(data))
                resource = (ctypes.c_void_p * 4)(
                    ctypes.addressof(self._vtable) + 2 * ctypes.sizeof(ctypes.c_void_p),  # past offset and type info
                    None,
                    ctypes.addressof(text),
                    len(data),
                )
                made = self._sources[key] = (text, resource)
        return ctypes.addressof(made[1]), len(source)

    def shared_code_cache(self, filename: str, source: str) -> bytes | None:
        with self._lock:
            return self._code_caches.get((filename, source))

    def keep_shared_code_cache(self, filename: str, source: str, cache: bytes) -> None:
        with self._lock:
            self._code_caches.setdefault((filename, source), cache)

    def drop_shared_code_cache(self, filename: str, source: str) -> None:
        with self._lock:
            self._code_caches.pop((filename, source), None)

    @contextmanager
    def handle_scope(self, isolate: int) -> Iterator[None]:
        scope = ctypes.create_string_buffer(self._SCOPE_BYTES)
        self.scope_open(scope, isolate)
        try:
            yield
        finally:
            self.scope_close(scope)

    @contextmanager
    def try_catch(self, isolate: int) -> Iterator[None]:
        """A v8::TryCatch around calls that run no JavaScript (compiling, serializing).

        Not around a run: V8 tells a throw that JavaScript catches from one for the
        TryCatch by comparing the TryCatch's C stack position with the script's frames,
        and this generator's frame opens it deeper than the call that would run them.
        """
        trying = ctypes.create_string_buffer(self._TRY_CATCH_BYTES)
        self.try_open(trying, isolate)
        try:
            yield
        finally:
            self.try_close(trying)

    def compile_in_scope(self, isolate: int, source: int, filename: str, cache: bytes | None) -> tuple[int, bool]:
        """(the script, or 0 if it did not compile; whether V8 rejected ``cache``), inside a handle scope.

        The origin is the one stpyv8 gives a script it evaluates (the name, line and column 0),
        so that the isolate's compilation cache finds this script when stpyv8 compiles the same text.
        """
        context = self.current_context(isolate)
        name = self.new_utf8(isolate, filename.encode(), 0, -1)
        if not (context and source and name):
            return 0, False
        described = _Source(source_string=source, resource_name=name)
        cached: _CachedData | None = None
        if cache is not None:
            data = ctypes.create_string_buffer(cache, len(cache))
            cached = _CachedData(ctypes.addressof(data), len(cache), False, 0)
            described.cached_data = ctypes.addressof(cached)
        options = _CONSUME_CODE_CACHE if cached is not None else 0
        script = self.compile_source(context, ctypes.byref(described), options, 0)
        return script or 0, cached is not None and cached.rejected

    def new_source(self, isolate: int, source: str) -> int:
        """A V8 string of ``source`` (a copy in the isolate's heap), inside a handle scope."""
        data = source.encode("utf-8", "surrogatepass")
        return self.new_utf8(isolate, data, 0, len(data)) or 0

    def serialize(self, script: int) -> bytes | None:
        """The code cache of a compiled script: its bytecode and every function compiled so far."""
        unbound = self.unbound_script(script)
        made = self.create_code_cache(unbound) if unbound else None
        if not made:
            return None
        try:
            return ctypes.string_at(made.contents.data, made.contents.length)
        finally:
            self.cached_data_destroy(made)
            self.operator_delete(made)

    def run_script(self, isolate: int, resource: int, filename: str, cache: bytes | None) -> tuple[bool, bool]:
        """Compile and run in the entered isolate's current context: (False if it threw or was
        terminated; whether V8 rejected ``cache``)."""
        with self.handle_scope(isolate):
            trying = ctypes.create_string_buffer(self._TRY_CATCH_BYTES)
            self.try_open(trying, isolate)  # here, as deep as the run below (see try_catch)
            try:
                source = self.new_external(isolate, resource)
                script, rejected = self.compile_in_scope(isolate, source or 0, filename, cache)
                context = self.current_context(isolate)
                return bool(script and self.run(script, context)) and not self.caught(trying), rejected
            finally:
                self.try_close(trying)


# v8::HeapStatistics is a struct of size_t fields; these are the indices we read
# (V8 13.1). The buffer is larger than the struct so a longer layout cannot overflow it.
_HEAP_USED = 4
_HEAP_EXTERNAL = 7
_HEAP_STATS_WORDS = 32

_isolates_by_pointer: dict[int, Isolate] = {}


def _on_near_heap_limit(data: int, current_limit: int, initial_limit: int) -> int:
    isolate = _isolates_by_pointer.get(data)
    if isolate is None or isolate._oom_grants >= _OOM_MAX_GRANTS:
        return current_limit  # V8 aborts the process; the supervisor contains it
    isolate._oom_grants += 1
    isolate._kill("memory")
    return current_limit + _OOM_HEADROOM_BYTES


# Kept at module level: V8 holds the pointer for as long as any isolate lives.
_near_heap_limit = _NearHeapLimitCallback(_on_near_heap_limit)

_fatal_hook: Callable[[], None] | None = None


def set_abort_hook(hook: Callable[[], None] | None) -> None:
    """Call ``hook`` on the thread whose isolate is about to abort the process (out of memory).

    The process dies right after; the hook has a moment to record which
    thread it was (a neighbour running JavaScript at the same time is innocent).
    """
    global _fatal_hook
    _fatal_hook = hook


def _on_oom(location: bytes | None, details: int | None) -> None:
    hook = _fatal_hook
    if hook is not None:
        try:
            hook()
        except Exception:
            pass
    print(f"warren: V8 out of memory in {location.decode(errors='replace') if location else '?'}", file=sys.stderr)


_oom_error = _OOMErrorCallback(_on_oom)


def _on_wasm_codegen(context: int | None, source: int | None) -> bool:
    # Runs on the thread compiling, inside the isolate: GetCurrent is that isolate.
    assert _api is not None
    isolate = _isolates_by_pointer.get(_api.get_current() or 0)
    return isolate is not None and isolate._wasm_gate_open


_allow_wasm_codegen = _AllowWasmCodeGenerationCallback(_on_wasm_codegen)


# --- CPU watchdog -------------------------------------------------------------


_thread_state = threading.local()


def _thread_clock() -> int:
    """The calling thread's CPU clock, looked up once per thread."""
    clock: int | None = getattr(_thread_state, "clock", None)
    if clock is None:
        clock = _thread_state.clock = time.pthread_getcpuclockid(threading.get_ident())
    return clock


class _Slice:
    """Where one thread holding an isolate runs its slices of JavaScript, one at a time.

    A slot lives as long as the thread's hold on the isolate (one call, or a
    session of many), so the watchdog learns of it once; each slice sets its
    own CPU budget and start through ``_Watchdog.start``, and ``running`` says
    whether a slice is running now (only then can it be terminated).
    """

    __slots__ = ("budget_s", "clock_id", "cpu_start", "isolate", "running")

    def __init__(self, isolate: Isolate, clock_id: int) -> None:
        self.isolate = isolate
        self.clock_id = clock_id
        self.cpu_start = 0.0
        self.budget_s = 0.0
        self.running = False

    def cpu_used(self) -> float:
        return time.clock_gettime(self.clock_id) - self.cpu_start


class _Watchdog:
    """One thread per process that terminates slices past their CPU budget.

    It measures the CPU clock of the thread running the slice, so time the
    script spends waiting (for I/O, for the GIL, for a core) is never counted.
    A slice cannot use more CPU than wall time, so the watchdog sleeps until
    the earliest moment some slice could be over budget, checks, and sleeps
    again for what is left: a 50 ms budget costs a wake-up or two, not fifty.
    """

    _instance: _Watchdog | None = None

    def __init__(self) -> None:
        self._slices: set[_Slice] = set()
        self._lock = threading.Lock()  # taken directly where no wait is needed: Condition's own methods cost more
        self._wakeup = threading.Condition(self._lock)
        self._sleeping_until = float("inf")
        thread = threading.Thread(target=self._run, name="warren-cpu-watchdog", daemon=True)
        thread.start()

    @classmethod
    def instance(cls) -> _Watchdog:
        if cls._instance is None:
            cls._instance = _Watchdog()
        return cls._instance

    def start(self, slot: _Slice, budget_s: float) -> None:
        """A slice starts in ``slot`` with this budget; its CPU time counts from now.

        Budget and start change under the lock the watchdog reads them under,
        so it never judges a slice by another one's budget.
        """
        with self._lock:
            slot.cpu_start = time.clock_gettime(slot.clock_id)
            slot.budget_s = budget_s
            slot.running = True
            self._slices.add(slot)
            if time.monotonic() + budget_s < self._sleeping_until:
                self._wakeup.notify()

    def remove(self, slot: _Slice) -> None:
        with self._lock:
            self._slices.discard(slot)

    def _run(self) -> None:
        with self._wakeup:
            while True:
                soonest = float("inf")
                for running in list(self._slices):
                    if not running.running:  # its thread is between two slices
                        continue
                    try:
                        left = running.budget_s - running.cpu_used()
                    except OSError:  # the thread ended between snapshot and read
                        continue
                    if left <= 0:
                        running.isolate._kill("cpu", running)
                        self._slices.discard(running)
                    else:
                        soonest = min(soonest, left)
                wait = None if soonest == float("inf") else max(soonest, _WATCHDOG_INTERVAL_S)
                self._sleeping_until = float("inf") if wait is None else time.monotonic() + wait
                self._wakeup.wait(wait)


# --- the isolate --------------------------------------------------------------

_ERROR_TEXT = re.compile(
    r"^(?:(?P<name>[A-Za-z]*Error|Uncaught [A-Za-z]+):\s*)?(?P<message>.*?)"
    r"\s*\(\s*(?P<file>[^@]*?)\s*@\s*(?P<line>\d+)\s*:\s*(?P<col>\d+)\s*\)",
    re.S,
)


def _script_error(exc: BaseException) -> ScriptError:
    impl = getattr(exc, "impl", None)
    if impl is not None:
        try:
            return ScriptError(
                str(impl.name),
                str(impl.message),
                str(impl.scriptName or ""),
                int(impl.lineNum),
                int(impl.startCol) + 1,
                str(impl.stackTrace or ""),
            )
        except (AttributeError, TypeError, ValueError):
            pass
    text = str(exc)
    # stpyv8 maps some JS errors to Python's built-in classes; its text is
    # "Name: message ( file @ line : col )  -> source line".
    text = re.sub(r"^([A-Za-z]*Error): (?=\1:)", "", text)
    match = _ERROR_TEXT.match(text)
    if not match:
        return ScriptError(type(exc).__name__, text)
    name = match.group("name") or type(exc).__name__
    return ScriptError(
        name,
        match.group("message"),
        match.group("file"),
        int(match.group("line")),
        int(match.group("col")) + 1,
    )


def _primitive(value: Any) -> Primitive:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (_v8.JSNull, _v8.JSUndefined)):
        return None
    raise EngineError(f"an entry point returned a non-primitive value ({type(value).__name__})")


HostFunction = Callable[..., Primitive]

# Entry points are called through a script, not through stpyv8's function
# objects: a call through those aborts the process (ToLocalChecked on an empty
# result) when the watchdog terminates it, while a script evaluation unwinds.
# The script's arguments are packed as JSON into a box that only the engine
# and the trampoline hold, which empties it as it reads, so a tenant calling
# the trampoline itself gets nothing. The engine fills the box from Python:
# each call back into Python from the JS thread takes the GIL, and waits for
# it while the event loop's thread runs (a dozen such calls per request cost
# more than the request's JavaScript). Long strings and numbers JSON cannot
# carry follow one call back each ({} marks where), from a queue only the engine fills.
_CALL_SOURCE = "__warrenCall()"
_TRAMPOLINE = """(function (next) {
  "use strict";
  const entries = new Map();
  const parse = JSON.parse;
  const apply = Reflect.apply;
  const box = Object.create(null);
  Object.defineProperty(globalThis, "__warrenCall", { value: function () {
    const packed = box.packed;
    box.packed = undefined;
    if (typeof packed !== "string") return undefined;
    const items = parse(packed);
    for (let i = 0; i < items.length; i++) {
      if (items[i] !== null && typeof items[i] === "object") items[i] = next();
    }
    const op = items[0];
    if (op === "take") {
      const name = items[1];
      const fn = globalThis[name];
      if (typeof fn !== "function" || entries.has(name)) return "missing";
      entries.set(name, fn);
      delete globalThis[name];
      return "ok";
    }
    if (op === "call") {
      const fn = entries.get(items[1]);
      const args = [];
      for (let i = 2; i < items.length; i++) args[i - 2] = items[i];
      if (fn === undefined) throw new Error("unknown entry point");
      return apply(fn, undefined, args);
    }
    return undefined;
  } });
  return box;
})"""
# Strings longer than this cross on their own: JSON would escape a latin-1 body's upper half six-fold.
_PACKED_STRING_LIMIT = 4096
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps writes a string as
_float_text = float.__repr__  # and a float, and an int
_int_text = int.__repr__


def _pack_items(items: tuple[Primitive, ...]) -> tuple[str, list[Primitive]]:
    """The JSON the trampoline parses, and the items that follow it one by one.

    Written item by item as ``json.dumps`` would (a JSON encoder is built anew
    on each of its calls, which costs more than the writing): {} marks an item
    that follows on its own.
    """
    parts: list[str] = []
    separate: list[Primitive] = []
    item: Any
    for item in items:
        kind = type(item)
        if not (kind is str or kind is float or kind is int or kind is bool or item is None):
            # What the engine never passes: a subclass as its base type, anything else as null.
            item = _primitive_value(item)
            kind = type(item)
        if kind is str:
            if len(item) > _PACKED_STRING_LIMIT:
                separate.append(item)
                parts.append("{}")
            else:
                parts.append(_json_string(item))
        elif kind is float:
            if math.isfinite(item):
                parts.append(_float_text(item))
            else:
                separate.append(item)
                parts.append("{}")
        elif kind is int:
            parts.append(_int_text(item))
        elif item is None:
            parts.append("null")
        else:
            parts.append("true" if item else "false")
    return "[" + ",".join(parts) + "]", separate


def _primitive_value(item: Any) -> Primitive:
    for base in (bool, int, float, str):
        if isinstance(item, base):
            return base(item)
    return None


# The only way to compile WebAssembly in an isolate: opens the gate that
# _on_wasm_codegen reads for one call of a constructor captured before any
# other script ran. Nothing between opening and closing runs JavaScript (V8
# reads the bytes of a buffer source without calling getters). The runtime's
# bootstrap takes __warrenCompileWasm off the global object before tenant code runs.
_WASM_COMPILER = """(function (gate) {
  "use strict";
  const WasmModule = WebAssembly.Module;
  Object.defineProperty(globalThis, "__warrenCompileWasm", { configurable: true, value: function compileWasm(bytes) {
    gate(true);
    try { return new WasmModule(bytes); } finally { gate(false); }
  } });
})"""


_PLAIN_TYPES = frozenset({str, bool, int, float, type(None)})


def _guard_host_function(name: str, function: HostFunction) -> Callable[..., Primitive]:
    # A Python exception or object must never reach tenant code: stpyv8 would
    # wrap it, and a wrapped Python object exposes its class and globals.
    def guarded(*args: Any) -> Primitive:
        plain: Any = args
        for arg in args:
            if type(arg) not in _PLAIN_TYPES:
                # Objects would hand Python a handle into the isolate that could outlive it.
                plain = [arg if arg is None or isinstance(arg, (str, bool, int, float)) else None for arg in args]
                del args, arg
                break
        try:
            result = function(*plain)
        except Exception as exc:
            print(f"warren: host function {name} failed: {exc!r}", file=sys.stderr)
            return None
        if result is None or isinstance(result, (str, bool, int, float)):
            return result
        return None

    return guarded


class Isolate:
    """One V8 isolate with one context.

    Any thread may use it, one at a time (a V8 Locker and a Python lock are
    taken around each use, or once around a ``session`` of several). ``call``
    and ``run_script`` run JavaScript under a CPU budget; past it, or past the
    heap limit, they raise a subclass of ``IsolateTerminated`` and the isolate
    must be disposed.

    WebAssembly cannot be compiled from bytes, except by the function
    ``globalThis.__warrenCompileWasm(bytes)`` that every new isolate has: code
    that runs untrusted scripts must take it off the global object first (the
    runtime's bootstrap does).
    """

    def __init__(self, memory_limit_mb: int = _DEFAULT_HEAP_LIMIT_MB) -> None:
        if _v8 is None or _api is None:
            configure()
        assert _v8 is not None and _api is not None
        self._lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._memory_limit_bytes = memory_limit_mb * 1024 * 1024
        self._pending: deque[Primitive] = deque()
        self._slice: _Slice | None = None  # while a slice runs: the slot it runs in
        self._slot: _Slice | None = None  # the slot of the thread that last ran a slice
        self._owner: int | None = None  # the thread holding the isolate entered
        self._heap_stats = (ctypes.c_size_t * _HEAP_STATS_WORDS)()
        self._pumped = False  # V8's tasks for the isolate have run since it was entered
        self._call_engine: Any = None
        self._call_script: Any = None
        self._box: Any = None
        self._killed: str | None = None
        self._oom_grants = 0
        self._wasm_gate_open = False
        self._disposed = False
        self.last_cpu_seconds = 0.0
        self.memory_bytes = 0
        self._shared_source_bytes = 0  # V8 counts external strings as the isolate's; they are the process'
        self._shared_scripts_run: list[tuple[str, str]] = []  # (filename, source), until cache_shared_scripts
        self.code_cache_rejected = False  # by V8, on the last run_script given one
        self._iso = _v8.JSIsolate(True)
        self._ctx: Any = None
        with self._entered():
            self._ptr: int = _api.get_current()
            self._ctx = _v8.JSContext(None)
            self._ctx.enter()
            _isolates_by_pointer[self._ptr] = self
            _api.add_near_heap_limit(self._ptr, _near_heap_limit, self._ptr)
            _api.set_oom_handler(self._ptr, _oom_error)
            _api.set_allow_wasm_codegen(self._ptr, _allow_wasm_codegen)
            # Takes only primitives and a Python function: stpyv8 keeps a
            # process-wide cache of JS objects handed back into V8, keyed by
            # address, which goes stale when an isolate is disposed.
            self._define = self._ctx.eval(
                "(function (holderName, name, fn) {"
                ' "use strict";'
                " const call = fn;"
                " Object.defineProperty(globalThis[holderName], name,"
                "  {value: function (...args) { return call(...args); }});"
                "})"
            )
            # One Python function for both: handing stpyv8 a second one costs a
            # quarter of a millisecond per isolate.
            engine = _guard_host_function("engine", self._engine_call)
            install = self._ctx.eval(_TRAMPOLINE)
            self._box = install(engine)
            install = self._ctx.eval(_WASM_COMPILER)
            install(engine)
            del install
            # The trampoline's script, compiled once: ``eval`` would compile it
            # again (a cache hit, but with the GIL given up and taken back) on
            # every call. The script object refers to the engine object it came from.
            self._call_engine = _v8.JSEngine()
            self._call_script = self._call_engine.compile(_CALL_SOURCE, "warren:call")
            self._ctx.leave()

    # -- entering --

    @contextmanager
    def _entered(self) -> Iterator[None]:
        if self._owner == threading.get_ident():  # inside this thread's session: entered already
            yield
            return
        if self._disposed:
            raise EngineError("isolate is disposed")
        assert _v8 is not None
        with self._lock:
            locker = _v8.JSLocker(self._iso)
            locker.enter()
            self._iso.enter()
            context = self._ctx
            if context is not None:
                context.enter()
            self._owner = threading.get_ident()
            self._pumped = False
            try:
                yield
            finally:
                self._owner = None
                if self._slot is not None:
                    _Watchdog.instance().remove(self._slot)
                if context is not None:
                    context.leave()
                self._iso.leave()
                locker.leave()

    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the isolate on this thread for several calls.

        Each call inside still runs under its own CPU budget, is charged its
        own CPU time and has its memory checked; what it saves is taking and
        giving back the isolate (V8's Locker, the isolate, the context) around
        each one. Other threads wait for the session to end, so keep it to one
        batch of work; dispose the isolate after it, not inside. On a disposed
        isolate it holds nothing, and each call raises as it would outside.
        """
        if self._disposed:
            yield
            return
        with self._entered():
            yield

    def _run(self, cpu_budget_ms: float, action: Callable[..., Any], argument: Any = None) -> Primitive:
        """``action(argument)`` as one slice: under the budget, charged, its memory checked."""
        if self._owner == threading.get_ident():
            return self._run_entered(cpu_budget_ms, action, argument)
        with self._entered():
            return self._run_entered(cpu_budget_ms, action, argument)

    def _run_entered(self, cpu_budget_ms: float, action: Callable[..., Any], argument: Any) -> Primitive:
        assert _api is not None
        watchdog = _Watchdog.instance()
        slot = self._slot
        clock = _thread_clock()
        if slot is None or slot.clock_id != clock:
            if slot is not None:
                watchdog.remove(slot)
            slot = self._slot = _Slice(self, clock)
        self._slice = slot
        watchdog.start(slot, cpu_budget_ms / 1000.0)
        failure: BaseException | None = None
        result: Any = None
        try:
            result = action(argument)
        except BaseException as exc:
            failure = exc
        finally:
            # A slice terminated inside compileWasm never ran its finally.
            self._wasm_gate_open = False
            with self._kill_lock:
                slot.running = False
                self._slice = None
            self.last_cpu_seconds = slot.cpu_used()
        killed = self._killed
        if killed is not None:
            _api.cancel_terminate(self._ptr)
        else:
            self.memory_bytes = self._measure_memory()
            if self.memory_bytes > self._memory_limit_bytes:
                # Dead ArrayBuffers count until a collection frees them;
                # only live memory over the limit fails the script.
                _api.low_memory_notification(self._ptr)
                self.memory_bytes = self._measure_memory()
            if self.memory_bytes > self._memory_limit_bytes:
                killed = self._killed = "memory"
        if killed == "cpu":
            raise CpuLimitExceeded(f"script exceeded its CPU time limit ({cpu_budget_ms:g} ms)")
        if killed is not None:
            raise MemoryLimitExceeded("script exceeded its memory limit")
        if failure is not None:
            if isinstance(failure, EngineError):
                raise failure
            raise _script_error(failure) from None
        return _primitive(result)

    def _kill(self, reason: str, only: _Slice | None = None) -> None:
        """Terminate running JavaScript. Safe from any thread."""
        assert _api is not None
        with self._kill_lock:
            running = self._slice
            if running is None or not running.running:
                if reason == "memory":  # raised inside a GC on the JS thread itself
                    self._killed = reason
                    _api.terminate(self._ptr)
                return
            if only is not None and running is not only:
                return
            if self._killed is None:
                self._killed = reason
            _api.terminate(self._ptr)

    def _measure_memory(self) -> int:
        assert _api is not None
        stats = self._heap_stats
        _api.heap_statistics(self._ptr, stats)
        return int(stats[_HEAP_USED] + max(0, stats[_HEAP_EXTERNAL] - self._shared_source_bytes))

    # -- public interface --

    @property
    def broken(self) -> bool:
        """True once execution was terminated: the isolate must be disposed."""
        return self._killed is not None or self._disposed

    def run_script(
        self, source: str, filename: str, *, cpu_budget_ms: float = 1000.0, code_cache: bytes | None = None
    ) -> Primitive:
        """Compile and run a classic script; returns its completion value if primitive.

        ``code_cache`` (what ``code_cache`` returned for this text and name, in this
        process) spares V8 compiling what it holds: the script is compiled from it
        first, and the compile that runs it finds that in the isolate's compilation
        cache. If V8 refuses it, ``code_cache_rejected`` is set and the text is compiled.
        """
        shared = _api.shared if code_cache is not None and _api is not None else None

        def action(_: None) -> Any:
            assert _v8 is not None
            if shared is None:
                result = self._ctx.eval(source, filename)
            else:
                with shared.handle_scope(self._ptr):
                    with shared.try_catch(self._ptr):  # a compile error is the compile below's to report
                        text = shared.new_source(self._ptr, source)
                        self.code_cache_rejected = shared.compile_in_scope(self._ptr, text, filename, code_cache)[1]
                    result = self._ctx.eval(source, filename)  # inside the scope, which keeps that script alive
            return result if isinstance(result, (str, bool, int, float)) or result is None else None

        return self._run(cpu_budget_ms, action)

    def code_cache(self, source: str, filename: str) -> bytes | None:
        """V8's code cache of a script this isolate has run, with every function compiled so far.

        The text is compiled again, which the isolate's compilation cache answers with
        the script already there. None where the engine cannot make one.
        """
        shared = _api.shared if _api is not None else None
        if shared is None:
            return None
        made: list[bytes | None] = [None]

        def action(_: None) -> None:
            assert shared is not None
            with shared.handle_scope(self._ptr), shared.try_catch(self._ptr):
                script = shared.compile_in_scope(self._ptr, shared.new_source(self._ptr, source), filename, None)[0]
                made[0] = shared.serialize(script) if script else None

        self._run(1000.0, action)
        return made[0]

    def run_shared_script(self, source: str, filename: str, *, cpu_budget_ms: float = 1000.0) -> None:
        """Run a classic script of the runtime's own, its text shared with every isolate of the process.

        For trusted text that the process keeps running (each distinct text is
        kept until the process exits). The completion value is dropped. Where
        sharing is unavailable (text not latin-1, another V8), it runs as
        ``run_script`` would.
        """
        shared = _api.shared if _api is not None else None
        made = shared.resource(source, filename) if shared is not None else None
        if shared is None or made is None:
            self.run_script(source, filename, cpu_budget_ms=cpu_budget_ms)
            return
        resource, size = made
        cache = shared.shared_code_cache(filename, source)

        def action(_: None) -> None:
            assert shared is not None
            ran, rejected = shared.run_script(self._ptr, resource, filename, cache)
            if rejected:
                shared.drop_shared_code_cache(filename, source)
            if ran:
                self._shared_source_bytes += size
                self._shared_scripts_run.append((filename, source))
                return
            if self._killed is None:
                # It threw: run the copy that stpyv8 reports errors for (the isolate is lost anyway).
                self._ctx.eval(source, filename)

        self._run(cpu_budget_ms, action)

    def cache_shared_scripts(self) -> int:
        """Make the process' code caches of the shared scripts this isolate ran, where none is yet.

        Call it once the isolate has run what every isolate will (the caches hold every
        function compiled by then). Returns how many were made; later isolates compile from them.
        """
        shared = _api.shared if _api is not None else None
        run, self._shared_scripts_run = self._shared_scripts_run, []
        if shared is None:
            return 0
        missing = [(filename, source) for filename, source in run if not shared.shared_code_cache(filename, source)]
        if not missing:
            return 0
        made = 0

        def action(_: None) -> None:
            nonlocal made
            assert shared is not None
            with shared.handle_scope(self._ptr), shared.try_catch(self._ptr):
                for filename, source in missing:
                    resource = shared.resource(source, filename)
                    text = shared.new_external(self._ptr, resource[0]) if resource is not None else 0
                    script = shared.compile_in_scope(self._ptr, text or 0, filename, None)[0]
                    cache = shared.serialize(script) if script else None
                    if cache:
                        shared.keep_shared_code_cache(filename, source, cache)
                        made += 1

        self._run(1000.0, action)
        return made

    def expose_host_functions(self, global_name: str, functions: dict[str, HostFunction]) -> None:
        """Make ``globalThis[global_name]`` an object of JS functions calling into Python.

        The object is meant to be captured by trusted bootstrap code and then
        deleted from the global; tenant code never sees a Python object.
        """

        def action(_: None) -> None:
            self._ctx.eval(f"globalThis[{global_name!r}] = Object.create(null); undefined")
            for name, function in functions.items():
                self._define(global_name, name, _guard_host_function(name, function))
            self._ctx.eval(f"Object.freeze(globalThis[{global_name!r}])")

        self._run(1000.0, action)

    def _engine_call(self, gate: Primitive = None) -> Primitive:
        """The engine's own host function: with no argument, the trampoline's next
        queued item; with a boolean, opens or closes the wasm gate."""
        if gate is None:
            return self._next_pending()
        self._wasm_gate_open = gate is True
        return None

    def _next_pending(self) -> Primitive:
        return self._pending.popleft() if self._pending else None

    def _trampoline(self, cpu_budget_ms: float, *items: Primitive) -> Primitive:
        return self._run(cpu_budget_ms, self._call_packed, _pack_items(items))

    def _call_packed(self, packing: tuple[str, list[Primitive]]) -> Any:
        packed, separate = packing
        self._box.packed = packed
        if separate:
            self._pending.extend(separate)
        try:
            if self._pumped:
                return self._call_script.run()
            # ``eval`` also runs the tasks V8 posted for the isolate (FinalizationRegistry
            # callbacks, GC jobs): once per hold of the isolate, under a slice's budget.
            self._pumped = True
            return self._ctx.eval(_CALL_SOURCE, "warren:call")
        finally:
            if separate:
                self._pending.clear()

    def take_entry_point(self, global_name: str) -> None:
        """Move a global function into the engine's private table of entry points."""
        if self._trampoline(1000.0, "take", global_name) != "ok":
            raise EngineError(f"no global function {global_name}")

    def call(self, entry_point: str, *args: Primitive, cpu_budget_ms: float) -> Primitive:
        """Call an entry point with primitive arguments under a CPU budget."""
        return self._trampoline(cpu_budget_ms, "call", entry_point, *args)

    def compact(self) -> None:
        """Collect all garbage now (V8's low-memory notification): for an isolate gone idle."""
        assert _api is not None
        with self._entered():
            _api.low_memory_notification(self._ptr)
            self.memory_bytes = self._measure_memory()

    def terminate(self) -> None:
        """Stop whatever JavaScript is running now. Safe from any thread."""
        self._kill("terminated")

    def dispose(self) -> None:
        """Free the isolate. It must not be running; afterwards it cannot be used."""
        if self._disposed:
            return
        if self._owner == threading.get_ident():
            raise EngineError("an isolate cannot be disposed inside its session")
        assert _v8 is not None
        with self._lock:
            # Every handle into the isolate must be released while it is
            # entered and before V8 disposes it, or its destructor touches freed memory.
            locker = _v8.JSLocker(self._iso)
            locker.enter()
            self._iso.enter()
            self._pending.clear()
            self._define = None
            self._box = None
            self._call_script = None
            self._call_engine = None
            self._ctx = None
            self._iso.leave()
            locker.leave()
            del locker
            _isolates_by_pointer.pop(self._ptr, None)
            self._disposed = True
            self._iso = None
