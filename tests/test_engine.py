"""The engine layer on its own: isolates, entry points, limits, threads."""

from __future__ import annotations

import threading
import time

import pytest

from warren.engine import CpuLimitExceeded, EngineError, Isolate, MemoryLimitExceeded, ScriptError, configure

configure()


def test_entry_points_and_host_functions_carry_only_primitives() -> None:
    isolate = Isolate()
    calls: list[tuple[object, ...]] = []
    isolate.expose_host_functions("__h", {"note": lambda *args: calls.append(args) or "noted"})
    isolate.run_script(
        "const h = __h; delete globalThis.__h;"
        "globalThis.entry = (a, b) => h.note(a, b) + ':' + h.note({});",
        "boot.js",
    )
    isolate.take_entry_point("entry")
    assert isolate.call("entry", "x", 2, cpu_budget_ms=50) == "noted:noted"
    assert calls == [("x", 2), (None,)]
    assert isolate.run_script("typeof entry", "probe.js") == "undefined"
    assert isolate.run_script("globalThis.o = {}; o", "object.js") is None  # objects never cross
    with pytest.raises(EngineError):
        isolate.take_entry_point("missing")
    isolate.dispose()


def test_python_errors_in_host_functions_do_not_reach_javascript() -> None:
    isolate = Isolate()

    def broken() -> None:
        raise RuntimeError("python internals")

    isolate.expose_host_functions("__h", {"broken": broken})
    assert isolate.run_script("String(__h.broken())", "x.js") == "null"
    isolate.dispose()


def test_script_errors_carry_file_and_line() -> None:
    isolate = Isolate()
    with pytest.raises(ScriptError) as syntax:
        isolate.run_script("let a = 1;\nlet = = 2;", "broken.js")
    assert syntax.value.name == "SyntaxError"
    assert (syntax.value.filename, syntax.value.line) == ("broken.js", 2)
    with pytest.raises(ScriptError) as thrown:
        isolate.run_script("\n\nthrow new RangeError('nope')", "throws.js")
    assert (thrown.value.name, thrown.value.message, thrown.value.line) == ("RangeError", "nope", 3)
    isolate.dispose()


def test_cpu_budget_terminates_and_marks_the_isolate_broken() -> None:
    isolate = Isolate()
    started = time.monotonic()
    with pytest.raises(CpuLimitExceeded):
        isolate.run_script("for (;;) {}", "spin.js", cpu_budget_ms=30)
    assert time.monotonic() - started < 0.5
    assert isolate.broken
    isolate.dispose()


def test_cpu_budget_does_not_count_time_blocked_in_the_host() -> None:
    isolate = Isolate()
    isolate.expose_host_functions("__h", {"block": lambda: time.sleep(0.2)})
    isolate.run_script("__h.block(); 1", "wait.js", cpu_budget_ms=30)
    assert isolate.last_cpu_seconds < 0.03
    isolate.dispose()


def test_heap_limit_terminates_instead_of_aborting() -> None:
    isolate = Isolate()
    with pytest.raises(MemoryLimitExceeded):
        isolate.run_script("const keep = []; for (;;) keep.push(new Array(1e5).fill({}));", "hog.js", cpu_budget_ms=60_000)
    isolate.dispose()
    survivor = Isolate()
    assert survivor.run_script("6 * 7", "ok.js") == 42
    survivor.dispose()


def test_array_buffer_memory_counts_against_the_limit() -> None:
    isolate = Isolate(memory_limit_mb=64)
    with pytest.raises(MemoryLimitExceeded):
        isolate.run_script("globalThis.b = new Uint8Array(100 * 1024 * 1024); 1", "buffers.js", cpu_budget_ms=5000)
    isolate.dispose()


def test_two_isolates_run_at_the_same_time_on_two_threads() -> None:
    # If JavaScript held the GIL, the two spans of execution could not overlap.
    spans: dict[str, list[float]] = {"a": [], "b": []}
    isolates = []
    for name in spans:
        isolate = Isolate()
        isolate.expose_host_functions("__h", {"mark": lambda name=name: spans[name].append(time.monotonic())})
        isolates.append(isolate)
    spin = "__h.mark(); (() => { let s = 0; for (let i = 0; i < 1.5e8; i++) s += i; return s; })(); __h.mark(); 1"
    threads = [
        threading.Thread(target=isolate.run_script, args=(spin, "p.js"), kwargs={"cpu_budget_ms": 20_000})
        for isolate in isolates
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for isolate in isolates:
        isolate.dispose()
    (a_start, a_end), (b_start, b_end) = spans["a"], spans["b"]
    assert a_start < b_end and b_start < a_end, f"no overlap: {spans}"


def test_an_isolate_moves_between_threads() -> None:
    isolate = Isolate()
    isolate.run_script("globalThis.n = 1", "a.js")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(isolate.run_script("++n", "b.js")))
    thread.start()
    thread.join()
    assert results == [2]
    isolate.dispose()
