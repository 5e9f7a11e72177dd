"""What the runtime's own JavaScript leaves in every isolate's heap (issue #4).

The vendored URL package's IDNA mapping table (tr46) is ~1.4 MB of heap once
built. The bundle builds it on the first host that needs UTS #46 processing
(non-ASCII), not as it loads: preparing an isolate and serving requests to
ASCII hosts must leave it unbuilt. Measured through the engine's heap
statistics after a full collection, with a wide margin.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tests.conftest import Collect, WorkerHost
from warren.runtime import IncomingRequest, WorkerScript

# The table's share of the heap is ~1.46 MiB (V8 13.1); half of it is the margin.
IDNA_TABLE_BYTES_AT_LEAST = 750 * 1024

# Answers with the host that the URL parser makes of ?host=... (as the worker sees it).
HOST_ECHO = """
export default {
  fetch(request) {
    const host = new URL(request.url).searchParams.get("host");
    return new Response(new URL("http://" + host + "/path?q=a b").host);
  },
};
"""


def test_the_idna_table_is_built_only_for_a_non_ascii_host() -> None:
    async def scenario() -> None:
        runtime = WorkerHost()
        worker = await runtime.start(WorkerScript(name="hosts", source=HOST_ECHO))
        request_id = 0

        async def host_of(host: str) -> str:
            nonlocal request_id
            request_id += 1
            reply = Collect()
            url = f"http://Tenant.Example/?host={quote(host)}"
            worker.fetch(IncomingRequest(request_id, "GET", url, [("host", "Tenant.Example")]), reply)  # type: ignore[arg-type]
            assert await asyncio.wait_for(reply.finished, 10) == "ok"
            assert reply.status == 200
            return reply.received.decode()

        async def heap_after_gc() -> int:
            await worker.compact()
            return worker.memory_bytes

        try:
            assert await host_of("WWW.Example.COM") == "www.example.com"
            assert await host_of("api-2.example.org.") == "api-2.example.org."
            ascii_only = await heap_after_gc()
            assert await host_of("bücher.example") == "xn--bcher-kva.example"
            assert await host_of("ÄÖÜ.example") == "xn--4ca0bs.example"
            with_idna = await heap_after_gc()
            # Had the table been built already, the first non-ASCII host would add
            # only tr46's compiled code, a small fraction of this.
            assert with_idna - ascii_only >= IDNA_TABLE_BYTES_AT_LEAST, (ascii_only, with_idna)
        finally:
            await runtime.close()

    asyncio.run(scenario())
