// A landing page per country: request.cf.country (from the edge's GeoIP
// database) picks /pages/{country}.html on the origin, e.g. /pages/nz.html;
// a country without a page of its own, or a visitor whose country is
// unknown, gets /pages/default.html. The chosen page is kept in the node's
// cache (caches.default) per country, so the origin is asked once per
// country, not once per visitor.

// What the cache answers carries cf-cache-status: HIT; what this worker
// fetched carries MISS.
function withHeaders(response, headers) {
  const copy = new Response(response.body, response);
  for (const [name, value] of Object.entries(headers)) copy.headers.set(name, value);
  return copy;
}

async function fetchPage(env, name) {
  return fetch(`${env.ORIGIN.replace(/\/$/, "")}/pages/${name}.html`, { headers: { accept: "text/html" } });
}

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname !== "/") return new Response("Not found\n", { status: 404 });
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }

    // Without a GeoIP database there is no country; Cloudflare's "XX"
    // (unknown) and "T1" (Tor) have no page either.
    const country = request.cf && request.cf.country;
    const known = typeof country === "string" && /^[A-Z]{2}$/.test(country) && country !== "XX" && country !== "T1";
    const wanted = known ? country.toLowerCase() : "default";

    // One cache entry per country (or "default"): the key is a URL of its own.
    const cacheKey = new Request(`${url.origin}/__geo-page/${wanted}`);
    const cache = caches.default;
    const cached = await cache.match(cacheKey);
    if (cached !== undefined) return cached;

    let page = wanted;
    let response = await fetchPage(env, page);
    if (response.status === 404 && page !== "default") {
      await response.body?.cancel(); // not needed: let the origin connection go
      page = "default";
      response = await fetchPage(env, page);
    }
    if (!response.ok) {
      // Errors are passed on but never cached: the next visitor tries again.
      return withHeaders(response, { "cache-control": "no-store", "cf-cache-status": "BYPASS" });
    }

    const headers = {
      "content-type": response.headers.get("content-type") || "text/html; charset=utf-8",
      "cache-control": `public, max-age=${Number(env.CACHE_SECONDS)}`,
      "x-geo-country": known ? country : "unknown",
      "x-geo-page": page,
    };
    const fresh = new Response(response.body, { status: 200, headers });
    // The cache reads one copy of the body while the client reads the other.
    ctx.waitUntil(cache.put(cacheKey, fresh.clone()));
    return withHeaders(fresh, { "cf-cache-status": "MISS" });
  },
};
