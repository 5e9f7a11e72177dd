"""The Cache API: caches.default and caches.open() on the node, honouring HTTP caching headers."""

from __future__ import annotations

from typing import Any

CACHE_WORKER = """
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const cache = url.searchParams.get("named") ? await caches.open("mine") : caches.default;
    const key = "https://example.com/item/" + url.searchParams.get("key");
    if (url.pathname === "/put") {
      const headers = JSON.parse(url.searchParams.get("headers") || "{}");
      const status = Number(url.searchParams.get("status") || 200);
      try {
        await cache.put(key, new Response("body of " + url.searchParams.get("key"), { status, headers }));
        return new Response("put");
      } catch (error) {
        return new Response(error.name + ": " + error.message);
      }
    }
    if (url.pathname === "/delete") return new Response(String(await cache.delete(key)));
    const found = await cache.match(new Request(key, { headers: request.headers }));
    if (found === undefined) return new Response("miss", { status: 404 });
    const headers = new Headers(found.headers);
    headers.set("x-cached-status", String(found.status));
    return new Response(found.status === 304 ? null : await found.text(), { headers });
  },
};
"""


def _put(server: Any, key: str, headers: str = '{"cache-control": "max-age=60"}', **params: Any) -> str:
    return str(server.get("/put", params={"key": key, "headers": headers, **params}).text)


def test_put_match_delete(dev: Any) -> None:
    server = dev({"worker.js": CACHE_WORKER})
    assert server.get("/match", params={"key": "a"}).text == "miss"
    assert _put(server, "a") == "put"
    hit = server.get("/match", params={"key": "a"})
    assert hit.text == "body of a"
    assert hit.headers["cf-cache-status"] == "HIT"
    assert server.get("/delete", params={"key": "a"}).text == "true"
    assert server.get("/delete", params={"key": "a"}).text == "false"
    assert server.get("/match", params={"key": "a"}).text == "miss"


def test_named_caches_are_separate(dev: Any) -> None:
    server = dev({"worker.js": CACHE_WORKER})
    assert _put(server, "n", named="1") == "put"
    assert server.get("/match", params={"key": "n", "named": "1"}).text == "body of n"
    assert server.get("/match", params={"key": "n"}).text == "miss"


def test_uncacheable_responses(dev: Any) -> None:
    server = dev({"worker.js": CACHE_WORKER})
    assert _put(server, "ns", '{"cache-control": "no-store"}') == "put"
    assert server.get("/match", params={"key": "ns"}).text == "miss"
    assert _put(server, "cookie", '{"cache-control": "max-age=60", "set-cookie": "a=1"}') == "put"
    assert server.get("/match", params={"key": "cookie"}).text == "miss"
    # private=Set-Cookie stores the response without its cookie
    assert _put(server, "pc", '{"cache-control": "max-age=60, private=Set-Cookie", "set-cookie": "a=1"}') == "put"
    stored = server.get("/match", params={"key": "pc"})
    assert stored.text == "body of pc" and "set-cookie" not in stored.headers
    assert _put(server, "vary", '{"cache-control": "max-age=60", "vary": "*"}').startswith("TypeError")
    assert _put(server, "partial", status=206).startswith("TypeError")
    # no directives: Cloudflare's default edge TTL by status (none for 500)
    assert _put(server, "err", "{}", status=500) == "put"
    assert server.get("/match", params={"key": "err"}).text == "miss"
    assert _put(server, "ok", "{}") == "put"
    assert server.get("/match", params={"key": "ok"}).text == "body of ok"


def test_non_get_is_refused(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch() {
                try { await caches.default.put(new Request("https://x/", { method: "POST" }), new Response("x")); }
                catch (error) { return new Response(error.name); }
                return new Response("stored");
              },
            };
            """
        }
    )
    assert server.get("/").text == "TypeError"


def test_conditional_and_range_requests(dev: Any) -> None:
    server = dev({"worker.js": CACHE_WORKER})
    headers = '{"cache-control": "max-age=60", "etag": "\\"v1\\"", "last-modified": "Wed, 21 Oct 2015 07:28:00 GMT"}'
    assert _put(server, "c", headers) == "put"
    assert server.get("/match", params={"key": "c"}, headers={"if-none-match": '"v1"'}).headers["x-cached-status"] == "304"
    assert server.get("/match", params={"key": "c"}, headers={"if-none-match": '"v2"'}).headers["x-cached-status"] == "200"
    since = {"if-modified-since": "Thu, 22 Oct 2015 07:28:00 GMT"}
    assert server.get("/match", params={"key": "c"}, headers=since).headers["x-cached-status"] == "304"
    ranged = server.get("/match", params={"key": "c"}, headers={"range": "bytes=0-3"})
    assert ranged.headers["x-cached-status"] == "206"
    assert ranged.text == "body"
    assert ranged.headers["content-range"] == "bytes 0-3/9"


def test_tenants_do_not_share_a_cache(edge: Any) -> None:
    writer = """
    export default {
      async fetch() {
        await caches.default.put("https://shared.example/secret", new Response("mine", { headers: { "cache-control": "max-age=60" } }));
        return new Response("stored");
      },
    };
    """
    reader = """
    export default {
      async fetch() {
        const found = await caches.default.match("https://shared.example/secret");
        return new Response(found ? await found.text() : "miss");
      },
    };
    """
    server = edge({"writer": writer, "reader": reader})
    assert server.get("/writer/").text == "stored"
    assert server.get("/reader/").text == "miss"
