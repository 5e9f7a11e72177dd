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


def _session_isolate(memory_limit_mb: int = 128) -> Isolate:
    isolate = Isolate(memory_limit_mb=memory_limit_mb)
    isolate.run_script(
        "globalThis.work = (ms) => { const end = Date.now() + ms; let n = 0; while (Date.now() < end) n++; return ms; };"
        "globalThis.spin = () => { for (;;) {} };"
        "globalThis.later = (n) => { Promise.resolve(n).then((v) => { globalThis.settled = v; }); };"
        "globalThis.read = () => globalThis.settled;"
        "globalThis.hold = (mb) => { globalThis.held = new Uint8Array(mb * 1024 * 1024); return mb; };",
        "session.js",
    )
    for name in ("work", "spin", "later", "read", "hold"):
        isolate.take_entry_point(name)
    return isolate


def test_calls_in_a_session_are_each_charged_their_own_cpu_and_a_terminated_one_ends_only_itself() -> None:
    isolate = _session_isolate()
    charged: list[float] = []
    measured: list[float] = []
    with isolate.session():
        for ms in (40, 5):
            before = time.thread_time()
            assert isolate.call("work", ms, cpu_budget_ms=500) == ms
            measured.append(time.thread_time() - before)
            charged.append(isolate.last_cpu_seconds)
        started = time.monotonic()
        with pytest.raises(CpuLimitExceeded):
            isolate.call("spin", cpu_budget_ms=30)
        charged.append(isolate.last_cpu_seconds)
        assert time.monotonic() - started < 0.5
        with pytest.raises(EngineError):
            isolate.dispose()  # not while this thread holds it
    # Each call is charged the CPU time it used itself, not the session's so far.
    for used, around in zip(charged, measured, strict=False):
        assert around - 0.003 < used <= around
    assert charged[1] < charged[0]
    assert 0.03 <= charged[2] < 0.2
    assert isolate.broken
    isolate.dispose()


def test_a_slice_in_a_session_past_its_own_budget_is_stopped_though_the_session_has_time_left() -> None:
    isolate = _session_isolate()
    with isolate.session():
        isolate.call("work", 1, cpu_budget_ms=10_000)  # a generous budget first: the watchdog sleeps long
        started = time.monotonic()
        with pytest.raises(CpuLimitExceeded):
            isolate.call("spin", cpu_budget_ms=20)
        assert time.monotonic() - started < 0.5
    isolate.dispose()


def test_a_session_keeps_promises_the_memory_limit_and_other_threads_waiting() -> None:
    isolate = _session_isolate(memory_limit_mb=64)
    ran_at: list[float] = []
    with isolate.session():
        isolate.call("later", 7, cpu_budget_ms=100)
        isolate.call("later", 8, cpu_budget_ms=100)  # compiled once, run again: microtasks still run after it
        assert isolate.call("read", cpu_budget_ms=100) == 8
        other = threading.Thread(target=lambda: ran_at.append(isolate.run_script("1", "other.js") and time.monotonic()))
        other.start()
        time.sleep(0.1)
        assert ran_at == []  # another thread waits for the session to end
        ended = time.monotonic()
    other.join()
    assert ran_at and ran_at[0] >= ended
    with isolate.session():
        assert isolate.call("hold", 8, cpu_budget_ms=1000) == 8
        with pytest.raises(MemoryLimitExceeded):  # the call that crossed the limit is the one that fails
            isolate.call("hold", 100, cpu_budget_ms=5000)
    isolate.dispose()
