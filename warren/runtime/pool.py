"""Isolates with the runtime's own JavaScript already loaded, ready for a tenant.

Loading the Web APIs and the vendored bundle costs ~19 ms of CPU per isolate
here (mostly compiling and running the runtime's JavaScript: tr46's IDNA table
is built only for a non-ASCII host), against ~1 ms for a tenant's own small
script. The pool keeps a few isolates prepared in the
background, so a new script's cold start is only its own part. A prepared
isolate belongs to nobody until claimed: its host functions go through a
``HostRouter`` whose target is set by the Worker that takes it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from warren.engine import Isolate, IsolateTerminated, ScriptError
from warren.runtime.script import DEFAULT_MEMORY_MB, STARTUP_CPU_MS, runtime_js

ENTRY_POINT = "__warrenEnter"
DEFAULT_POOL_SIZE = 2
# New tenants arriving faster than that are served from a deeper pool: the target grows to
# the isolates taken in the last BURST_WINDOW_S (each ~2 MiB), up to MAX_POOL_SIZE.
MAX_POOL_SIZE = 8
BURST_WINDOW_S = 2.0
# Isolates with Durable Objects made too, for workers bound to a namespace: such a worker's
# cold start otherwise compiles and runs that part of the runtime (~0.65 ms here). Kept once
# a process has started one such worker, so processes without any hold none.
OBJECTS_POOL_SIZE = 1

# JavaScript's names for the host functions -> the Worker methods behind them
HOST_FUNCTIONS = {
    "log": "_host_log",
    "exception": "_host_exception",
    "op": "_host_op",
    "cancelOp": "_host_cancel_op",
    "respond": "_host_respond",
    "chunk": "_host_chunk",
    "fail": "_host_fail",
    "done": "_host_done",
    "crypto": "_host_crypto",
    "sink": "_host_sink",
    "write": "_host_write",
    "release": "_host_release",
    "abortBody": "_host_abort_body",
    "asset": "_host_asset",
    "callSync": "_host_call_sync",
    "webSocket": "_host_websocket",
}


@dataclass
class HostRouter:
    """Routes an isolate's host functions to the object that owns it (None: dropped)."""

    target: Any = None

    def functions(self) -> dict[str, Callable[..., Any]]:
        def route(method: str) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                target = self.target
                return getattr(target, method)(*args) if target is not None else None

            return call

        return {name: route(method) for name, method in HOST_FUNCTIONS.items()}


@dataclass
class PreparedIsolate:
    isolate: Isolate
    router: HostRouter = field(default_factory=HostRouter)
    objects: bool = False  # Durable Objects already made (``prepare_isolate(objects=True)``)


def prepare_isolate(memory_mb: int = DEFAULT_MEMORY_MB, objects: bool = False) -> PreparedIsolate:
    """A new isolate with the Web APIs, the vendored bundle and the bootstrap loaded. Blocking.

    ``objects``: with Durable Objects made as well, and what a worker bound to a namespace
    runs first (its binding, an id, a stub) compiled.
    """
    prepared = PreparedIsolate(Isolate(memory_mb), objects=objects)
    isolate = prepared.isolate
    isolate.expose_host_functions("__warrenHost", prepared.router.functions())
    try:
        for name in (
            "js/webapi.js",
            "js/crypto.js",
            "js/events.js",
            "js/blob.js",
            "js/encoding_streams.js",
            "js/cache.js",
            "js/html_rewriter.js",
            "js/services.js",
            "js/queues.js",
            "js/kv.js",
            "js/durable_objects.js",
            "js/websocket.js",
            "js/sockets.js",
            "js/bootstrap.js",
        ):
            isolate.run_shared_script(runtime_js(name), f"warren:{name}", cpu_budget_ms=STARTUP_CPU_MS)
        isolate.take_entry_point(ENTRY_POINT)
        isolate.call(ENTRY_POINT, 0, "init", cpu_budget_ms=STARTUP_CPU_MS)
        # The bundle needs TextEncoder/TextDecoder as it loads: after init.
        isolate.run_shared_script(runtime_js("vendor/web.js"), "warren:vendor/web.js", cpu_budget_ms=STARTUP_CPU_MS)
        isolate.run_shared_script(
            runtime_js("vendor/html_rewriter.js"), "warren:vendor/html_rewriter.js", cpu_budget_ms=STARTUP_CPU_MS
        )
        isolate.call(ENTRY_POINT, 0, "linkVendor", cpu_budget_ms=STARTUP_CPU_MS)
        isolate.call(ENTRY_POINT, 0, "warm", cpu_budget_ms=STARTUP_CPU_MS)
        # The process' first prepared isolate leaves code caches of the runtime's scripts,
        # with what the warm-up compiled: the next ones are prepared in ~6 ms, not ~22.
        isolate.cache_shared_scripts()
        if objects:  # after the caches: every other isolate would deserialize what this compiles
            isolate.call(ENTRY_POINT, 0, "objects", cpu_budget_ms=STARTUP_CPU_MS)
    except BaseException:
        isolate.dispose()
        raise
    return prepared


class IsolatePool:
    """A few prepared isolates, refilled in the background on an executor of their own.

    Used from the event loop only. ``take`` never waits: an empty pool means
    the caller prepares an isolate itself.
    """

    def __init__(
        self,
        executor: Executor,
        size: int = DEFAULT_POOL_SIZE,
        memory_mb: int = DEFAULT_MEMORY_MB,
        max_size: int = MAX_POOL_SIZE,
    ) -> None:
        self._executor = executor
        self.size = size  # kept prepared when tenants arrive slowly
        self.max_size = max(size, max_size) if size > 0 else 0  # 0: no pool at all
        self._recent_takes: deque[float] = deque()
        self.memory_mb = memory_mb
        self._ready: deque[PreparedIsolate] = deque()
        self._preparing = 0
        self._ready_objects: deque[PreparedIsolate] = deque()  # Durable Objects made (prepare_isolate)
        self._preparing_objects = 0
        self._objects_wanted = False  # a worker bound to Durable Objects has started here
        self._closed = False
        self.taken = 0
        self.missed = 0

    @property
    def target(self) -> int:
        """How many to keep prepared now: more while new tenants arrive in a burst."""
        horizon = time.monotonic() - BURST_WINDOW_S
        while self._recent_takes and self._recent_takes[0] < horizon:
            self._recent_takes.popleft()
        return min(self.max_size, max(self.size, len(self._recent_takes)))

    def take(self, memory_mb: int, objects: bool = False) -> PreparedIsolate | None:
        """A prepared isolate, or None; with ``objects``, one with Durable Objects made if there is one."""
        self._recent_takes.append(time.monotonic())
        prepared = None
        if objects and self.max_size > 0:
            self._objects_wanted = True
            if self._ready_objects and memory_mb == self.memory_mb:
                prepared = self._ready_objects.popleft()
        if prepared is None and self._ready and memory_mb == self.memory_mb:
            prepared = self._ready.popleft()
        if prepared is None:
            self.missed += 1
        else:
            self.taken += 1
        # Refilling now would compete with the tenant's own start for the cores;
        # the caller refills once its isolate runs.
        return prepared

    def give_back(self, prepared: PreparedIsolate) -> None:
        """An isolate taken but never claimed (its script failed to compile) goes back."""
        ready, target = (self._ready_objects, OBJECTS_POOL_SIZE) if prepared.objects else (self._ready, self.target)
        if self._closed or prepared.router.target is not None or len(ready) >= target:
            self._executor.submit(prepared.isolate.dispose)
        else:
            ready.appendleft(prepared)

    def refill(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        target = self.target
        while len(self._ready) + self._preparing < target:
            self._preparing += 1
            future = loop.run_in_executor(self._executor, prepare_isolate, self.memory_mb)
            future.add_done_callback(functools.partial(self._prepared, False))
        while self._objects_wanted and len(self._ready_objects) + self._preparing_objects < OBJECTS_POOL_SIZE:
            self._preparing_objects += 1
            future = loop.run_in_executor(self._executor, prepare_isolate, self.memory_mb, True)
            future.add_done_callback(functools.partial(self._prepared, True))

    def in_background(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run other background work on the pool's thread, in turn with the refills."""
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _prepared(self, objects: bool, future: asyncio.Future[PreparedIsolate]) -> None:
        if objects:
            self._preparing_objects -= 1
        else:
            self._preparing -= 1
        try:
            prepared = future.result()
        except (ScriptError, IsolateTerminated) as exc:  # the runtime's own JavaScript failed: say so once
            print(f"warren: preparing an isolate failed: {exc}", flush=True)
            return
        if self._closed:
            self._executor.submit(prepared.isolate.dispose)
        else:
            (self._ready_objects if prepared.objects else self._ready).append(prepared)

    def close(self) -> None:
        self._closed = True
        for ready in (self._ready, self._ready_objects):
            while ready:
                self._executor.submit(ready.popleft().isolate.dispose)
