"""V8 code caches: the runtime's scripts compiled once per process, a large tenant module once per
process as long as its cache is kept, and only ever from a cache this process made for that text."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Collect, WorkerHost
from warren.engine import Isolate, ScriptError, configure
from warren.runtime import IncomingRequest, WorkerScript
from warren.runtime.pool import prepare_isolate
from warren.runtime.script import CodeCaches, CompiledModule

configure()

LIBRARY = "\n".join(
    [f"function helper{n}(value) {{ return 'h{n}:' + String(value).padStart({n % 7}, '-'); }}" for n in range(600)]
    + [
        "globalThis.used = function (n) { return helper17(n) + helper401(n); };",
        "globalThis.fail = function () {\n  throw new RangeError('from the library');\n};",
    ]
)


def test_a_script_compiled_from_its_code_cache_runs_as_it_does_from_its_text() -> None:
    maker, user = Isolate(), Isolate()
    try:
        maker.run_script(LIBRARY, "lib.js")
        assert maker.run_script("used(3)", "call.js") == "h17:--3h401:-3"
        cache = maker.code_cache(LIBRARY, "lib.js")
        assert cache

        user.run_script(LIBRARY, "lib.js", code_cache=cache)
        assert user.code_cache_rejected is False
        assert user.run_script("used(3)", "call.js") == "h17:--3h401:-3"
        stack = user.run_script("(() => { try { fail(); } catch (e) { return e.stack; } })()", "call.js")
        assert "RangeError: from the library" in str(stack)
        assert "lib.js:603:" in str(stack)  # positions come from the text, as without a cache
    finally:
        maker.dispose()
        user.dispose()


def test_the_script_that_runs_is_the_one_compiled_from_the_cache() -> None:
    # The cache holds all 600 helpers compiled (they ran in the maker); an isolate whose
    # script came from it has their bytecode in its heap without running one. Had the
    # run compiled the text afresh instead, it would have none of it.
    maker, cached, plain = Isolate(), Isolate(), Isolate()
    try:
        maker.run_script(LIBRARY, "lib.js")
        maker.run_script("for (let n = 0; n < 600; n++) globalThis['helper' + n](n);", "x.js")
        cache = maker.code_cache(LIBRARY, "lib.js")
        cached.run_script(LIBRARY, "lib.js", code_cache=cache)
        plain.run_script(LIBRARY, "lib.js")
        for isolate in (cached, plain):
            isolate.compact()
        assert cached.code_cache_rejected is False
        assert cached.memory_bytes - plain.memory_bytes > 30 * 1024, (cached.memory_bytes, plain.memory_bytes)
    finally:
        for isolate in (maker, cached, plain):
            isolate.dispose()


def test_a_code_cache_holds_the_functions_that_ran_before_it_was_made() -> None:
    isolate = Isolate()
    try:
        isolate.run_script(LIBRARY, "lib.js")
        before = isolate.code_cache(LIBRARY, "lib.js")
        isolate.run_script("for (let n = 0; n < 600; n++) globalThis['helper' + n](n);", "x.js")
        after = isolate.code_cache(LIBRARY, "lib.js")
        assert before and after and len(after) > len(before)  # the helpers: compiled since
    finally:
        isolate.dispose()


def test_a_cache_of_another_text_or_no_cache_at_all_is_refused_and_the_text_runs() -> None:
    maker = Isolate()
    try:
        maker.run_script(LIBRARY, "lib.js")
        cache = maker.code_cache(LIBRARY, "lib.js")
    finally:
        maker.dispose()
    assert cache
    other = LIBRARY + "\nglobalThis.extra = 42;"
    for text, given in ((other, cache), (LIBRARY, b"\x00" * 64), (LIBRARY, cache[: len(cache) // 2])):
        isolate = Isolate()
        try:
            isolate.run_script(text, "lib.js", code_cache=given)
            assert isolate.code_cache_rejected is True
            assert isolate.run_script("used(3)", "call.js") == "h17:--3h401:-3"
        finally:
            isolate.dispose()


def test_a_syntax_error_is_reported_as_ever_when_a_cache_is_given() -> None:
    isolate = Isolate()
    try:
        with pytest.raises(ScriptError) as thrown:
            isolate.run_script("let a = 1;\nlet = = 2;", "broken.js", code_cache=b"\x00" * 64)
        assert thrown.value.name == "SyntaxError" and (thrown.value.filename, thrown.value.line) == ("broken.js", 2)
    finally:
        isolate.dispose()


def test_the_caches_are_kept_by_exact_text_not_by_length() -> None:
    # V8 checks a cache against its source's length only: a cache for another text of the
    # same length would run that other text's code. The store must never hand one out.
    caches = CodeCaches()
    first = CompiledModule("w.js", "esm", "a" * CodeCaches.MIN_CHARS)
    same_length = CompiledModule("w.js", "esm", "b" * CodeCaches.MIN_CHARS)
    small = CompiledModule("w.js", "esm", "c" * (CodeCaches.MIN_CHARS - 1))
    caches.keep("acct", first, b"cache of a")
    assert caches.get("acct", first) == b"cache of a"
    assert caches.get("acct", same_length) is None
    assert caches.get("other", first) is None  # never across accounts
    assert CodeCaches.wanted(first) and not CodeCaches.wanted(small)
    assert not CodeCaches.wanted(CompiledModule("d.json", "json", "1" * CodeCaches.MIN_CHARS))
    caches.drop("acct", first)
    assert caches.get("acct", first) is None and len(caches) == 0


def test_the_caches_stay_within_their_budget_least_recently_used_out() -> None:
    caches = CodeCaches(budget_bytes=50_000)  # room for two modules of 20,000 bytes (text and cache)
    modules = [CompiledModule(f"m{n}.js", "esm", str(n) * 10_000) for n in range(4)]
    for module in modules[:2]:
        caches.keep("a", module, b"x" * 10_000)
    assert caches.get("a", modules[0]) is not None  # used: the second is now the oldest
    caches.keep("b", modules[2], b"x" * 10_000)
    assert len(caches) == 2 and caches.get("a", modules[1]) is None and caches.get("a", modules[0]) is not None
    caches.keep("a", CompiledModule("huge.js", "esm", "z" * 60_000), b"x")  # larger than the budget: not kept
    assert len(caches) == 2


def test_a_shared_script_is_compiled_from_the_process_cache_once_one_isolate_made_it() -> None:
    text = (
        "globalThis.runs = (globalThis.runs || 0) + 1;\n"
        "try { null.x; } catch { globalThis.caught = true; }\n"  # caught by the script: it runs once
        "globalThis.twice = function (n) { return [n, n].join('+'); };"
    )
    first, second = Isolate(), Isolate()
    try:
        first.run_shared_script(text, "warren:test/cached.js")
        assert first.run_script("twice(2) + ' ' + runs + ' ' + caught", "x.js") == "2+2 1 true"
        assert first.cache_shared_scripts() == 1
        assert first.cache_shared_scripts() == 0  # each script once per isolate

        second.run_shared_script(text, "warren:test/cached.js")
        assert second.cache_shared_scripts() == 0  # the process has it: nothing to make
        assert second.run_script("twice(3) + ' ' + runs + ' ' + caught", "x.js") == "3+3 1 true"
    finally:
        first.dispose()
        second.dispose()


def test_prepared_isolates_after_the_first_compile_the_runtime_from_its_caches() -> None:
    prepare_isolate().isolate.dispose()  # the first of the process, if it is: makes the caches
    prepared = prepare_isolate()
    try:
        assert prepared.isolate.cache_shared_scripts() == 0  # every runtime script had its cache
    finally:
        prepared.isolate.dispose()


BUNDLE = (
    'import { DurableObject } from "cloudflare:workers";\n'
    + "".join(f"function part{n}(v) {{ return `#{n}:` + String(v).slice(0, {n % 5 + 1}); }}\n" for n in range(900))
    + "let served = 0;\n"
    + "export default { fetch() { served++; return new Response(part899('answer') + ' ' + served); } };\n"
)


async def _get(worker: object) -> bytes:
    reply = Collect()
    worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[attr-defined]
    assert await reply.finished == "ok"
    return reply.received


@pytest.mark.parametrize("leaves", ["compacted", "evicted"])
def test_a_large_worker_started_again_compiles_from_the_cache_its_last_isolate_left(leaves: str) -> None:
    async def scenario() -> None:
        assert len(BUNDLE) > CodeCaches.MIN_CHARS
        async with WorkerHost() as host:
            script = WorkerScript(name="big", source=BUNDLE)
            worker = await host.start(script)
            assert worker.code_cache_hits == 0
            assert await _get(worker) == b"#899:answe 1"
            if leaves == "compacted":  # idle a while: its garbage collected, its code cached
                assert await worker.compact()
                assert len(host.compiler.code_caches) == 1
            await worker.close(keep_code=True)  # an eviction
            assert len(host.compiler.code_caches) == 1

            # Another account's worker with the very same module compiles it from its text.
            stranger = await host.start(WorkerScript(name="big", source=BUNDLE, account_id="stranger"))
            assert stranger.code_cache_hits == 0
            await stranger.close()

            again = await host.start(script)
            assert again.code_cache_hits == 1
            assert await _get(again) == b"#899:answe 1"  # a new isolate: its own state, the same code

            small = await host.start(WorkerScript(name="small", source="export default { fetch() { return new Response('s'); } };"))
            await small.compact()
            await small.close(keep_code=True)
            assert len(host.compiler.code_caches) == 1  # small modules are compiled as they come

    asyncio.run(scenario())


def test_a_worker_closed_for_a_redeploy_leaves_no_cache() -> None:
    async def scenario() -> None:
        async with WorkerHost() as host:
            worker = await host.start(WorkerScript(name="big", source=BUNDLE))
            await worker.close()
            assert len(host.compiler.code_caches) == 0

    asyncio.run(scenario())
