"""The pool of prepared isolates: each tenant gets a fresh one, configured for it alone."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Collect, WorkerHost
from warren.runtime import IncomingRequest, ScriptLoadError, WorkerScript
from warren.runtime import pool as pool_module
from warren.runtime.pool import IsolatePool


def test_pooled_isolates_serve_one_tenant_each_with_its_own_env() -> None:
    async def scenario() -> None:
        runtime = WorkerHost(threads=2)
        pool = IsolatePool(ThreadPoolExecutor(1), size=2)
        pool.refill()
        for _ in range(1500):  # until both are prepared (30 s: a loaded machine prepares slowly)
            if len(pool._ready) == 2:
                break
            await asyncio.sleep(0.02)
        source = "globalThis.seen = (globalThis.seen ?? 0) + 1;\nexport default { fetch: (r, env) => new Response(env.WHO + ' ' + globalThis.seen) };"
        workers = [
            await runtime.start(WorkerScript(name=who, source=source, vars={"WHO": who}), pool=pool)
            for who in ("alice", "bob")
        ]
        assert [worker.cold_start_pooled for worker in workers] == [True, True]
        assert pool.taken == 2
        for index, worker in enumerate(workers):
            reply = Collect()
            worker.fetch(IncomingRequest(index + 1, "GET", "http://x/", []), reply)  # type: ignore[arg-type]
            assert await asyncio.wait_for(reply.finished, 10) == "ok"
            # a fresh global scope each: `seen` is 1 for both tenants
            assert reply.received == f"{['alice', 'bob'][index]} 1".encode()
        third = await runtime.start(WorkerScript(name="carol", source=source, vars={"WHO": "carol"}), pool=pool)
        assert third.cold_start_pooled is False  # the pool refills later: this one prepared its own
        await runtime.close()
        pool.close()

    asyncio.run(scenario())


def test_the_pool_deepens_while_new_tenants_arrive_in_a_burst() -> None:
    async def scenario() -> None:
        pool = IsolatePool(ThreadPoolExecutor(1), size=1, max_size=3)

        async def prepared(count: int) -> None:
            for _ in range(500):
                if len(pool._ready) >= count:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"only {len(pool._ready)} of {count} isolates prepared")

        pool.refill()
        await prepared(1)
        taken = [pool.take(pool.memory_mb) for _ in range(4)]  # four tenants at once: one was ready
        assert [item is not None for item in taken] == [True, False, False, False]
        assert pool.target == 3  # the burst, capped
        pool.refill()
        await prepared(3)
        assert len(pool._ready) == 3
        await asyncio.sleep(pool_module.BURST_WINDOW_S + 0.1)
        assert pool.target == 1  # quiet again: back to the base size
        for item in taken:
            if item is not None:
                item.isolate.dispose()
        pool.close()

    asyncio.run(scenario())


def test_a_prepared_isolate_keeps_nothing_of_its_warm_up() -> None:
    # Preparing an isolate runs a module through the load path and a fetch to it, so
    # that V8 has compiled them before a tenant's cold start; none of it may show.
    async def scenario() -> None:
        source = (
            "export default { async fetch(request, env) {\n"
            "  let warm = 'none';\n"
            "  try { await import('warren:warm'); warm = 'importable'; } catch (error) { warm = error.message; }\n"
            "  return new Response(JSON.stringify({ env: Object.keys(env), warm }));\n"
            "} };"
        )
        async with WorkerHost() as runtime:
            worker = await runtime.start(WorkerScript(name="w", source=source, vars={"ONLY": "1"}))
            reply = Collect()
            worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[arg-type]
            assert await asyncio.wait_for(reply.finished, 10) == "ok"
            expected = b'{"env":["ONLY"],"warm":"No such module \\"warren:warm\\", imported from \\"worker.js\\"."}'
            assert reply.received == expected
            with pytest.raises(ScriptLoadError, match="No event handlers were registered"):
                await runtime.start(WorkerScript(name="s", source="const nothing = 1;"))

    asyncio.run(scenario())


def test_a_worker_bound_to_durable_objects_gets_an_isolate_with_them_made() -> None:
    """Once a worker bound to a namespace has started, the pool keeps one isolate with Durable
    Objects made ahead; the next such worker takes it, others never do, and its warm-up (a
    namespace, an id, a stub) leaves nothing the tenant can see."""
    bound = (
        "export class Counter {}\n"
        "export default { fetch(request, env) {\n"
        "  const id = env.COUNTER.idFromName('a');\n"
        "  env.COUNTER.get(id);\n"
        "  return new Response(JSON.stringify({ id: id.toString(), env: Object.keys(env),\n"
        "    globals: Object.keys(globalThis).filter((name) => /warm|Objects/i.test(name)) }));\n"
        "} };"
    )
    plain = "export default { fetch: () => new Response('plain') };"
    binding = {"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}

    async def answer(worker: object) -> bytes:
        reply = Collect()
        worker.fetch(IncomingRequest(1, "GET", "http://x/", []), reply)  # type: ignore[attr-defined]
        assert await asyncio.wait_for(reply.finished, 10) == "ok"
        return reply.received

    async def ready(pool: IsolatePool, plain_count: int, objects_count: int) -> None:
        for _ in range(500):
            if len(pool._ready) >= plain_count and len(pool._ready_objects) >= objects_count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"prepared {len(pool._ready)} + {len(pool._ready_objects)} with objects")

    async def scenario() -> None:
        async with WorkerHost() as runtime:
            pool = IsolatePool(ThreadPoolExecutor(1), size=1)
            pool.refill()
            await ready(pool, 1, 0)
            first = await runtime.start(WorkerScript(name="p", source=plain), pool=pool)
            assert await answer(first) == b"plain"
            pool.refill()
            await ready(pool, 1, 0)
            await asyncio.sleep(0.3)
            assert len(pool._ready_objects) == 0  # nobody here is bound to Durable Objects

            script = WorkerScript(name="a", source=bound, bindings=(binding,))
            cold = await runtime.start(script, pool=pool)  # a plain isolate: Durable Objects made as it starts
            expected = await answer(cold)
            pool.refill()
            await ready(pool, 1, 1)
            other = await runtime.start(WorkerScript(name="q", source=plain), pool=pool)
            assert len(pool._ready_objects) == 1  # not for a worker without the binding
            assert await answer(other) == b"plain"

            again = await runtime.start(WorkerScript(name="a", source=bound, bindings=(binding,)), pool=pool)
            assert len(pool._ready_objects) == 0  # taken by the bound worker
            assert await answer(again) == expected  # the same id, nothing of the warm-up visible
            assert b'"env":["COUNTER"],"globals":[]' in expected
            pool.close()

    asyncio.run(scenario())
