// Security headers at the edge: the origin's response streams through
// unchanged, with a security policy added and the headers that advertise the
// origin's software removed.

// Set on every response, replacing what the origin sent: the edge owns the policy.
const SECURITY_HEADERS = {
  "Strict-Transport-Security": "max-age=63072000; includeSubDomains; preload",
  "X-Frame-Options": "DENY",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "strict-origin-when-cross-origin",
  "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
};

// They tell an attacker which versions to look up in a CVE database.
const REMOVED_HEADERS = ["Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version"];

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const upstream = env.ORIGIN.replace(/\/$/, "") + url.pathname + url.search;
    // Passing the request as init forwards its method, headers and (streamed) body.
    const response = await fetch(upstream, request);

    // new Response(body, response) keeps status and headers but makes the
    // headers mutable; the body is the origin's stream, never buffered here.
    const secured = new Response(response.body, response);
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      secured.headers.set(name, value);
    }
    // A CSP only means something to documents; JSON or images keep whatever they had.
    const type = response.headers.get("content-type") || "";
    if (type.startsWith("text/html")) {
      secured.headers.set("Content-Security-Policy", env.CONTENT_SECURITY_POLICY);
    }
    for (const name of REMOVED_HEADERS) {
      secured.headers.delete(name);
    }
    return secured;
  },
};
