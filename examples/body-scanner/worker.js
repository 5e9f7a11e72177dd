// Data-loss prevention at the edge: the origin's response body is scanned for
// secrets (AWS access key ids, and any tokens configured in SECRET_TOKENS)
// before it reaches the client. A response that contains one is replaced by
// a 403, and a webhook is told (from ctx.waitUntil, so the client does not
// wait for it) which URL leaked what kind of secret, never the secret itself.
//
// The body is read as a stream and scanned chunk by chunk; the last bytes of
// each chunk are kept so that a secret split across two chunks is still found.
// Bodies up to BUFFER_LIMIT bytes are held until scanned, so a leak can be
// answered with a clean 403. A longer body cannot wait that long: it is
// streamed, always holding back the bytes a secret could still be starting
// in, and if a secret shows up later the response is broken off before it,
// and the webhook is told.

const BUFFER_LIMIT = 1024 * 1024;
const AWS_ACCESS_KEY_ID = "AKIA[0-9A-Z]{16}";
const AWS_KEY_LENGTH = 20;

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function concat(a, b) {
  if (a.length === 0) return b;
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

class Scanner {
  constructor(env) {
    const tokens = String(env.SECRET_TOKENS || "").split(",").map((t) => t.trim()).filter(Boolean);
    this.pattern = new RegExp([AWS_ACCESS_KEY_ID, ...tokens.map(escapeRegExp)].join("|"));
    // A secret that ends in the next chunk starts in the last (longest - 1)
    // characters of this one. Secrets are ASCII, so that is as many bytes.
    this.overlap = Math.max(AWS_KEY_LENGTH, ...tokens.map((t) => t.length)) - 1;
    // UTF-8 decoding never turns a byte below 0x80 into anything but itself,
    // whatever surrounds it, so ASCII secrets are found in any body, text or not.
    this.decoder = new TextDecoder();
    this.tail = ""; // the last characters scanned, scanned again with the next chunk
    this.held = new Uint8Array(0); // the last bytes, not yet known to be clean
    this.found = null;
  }

  // Returns the bytes now known to be clean, or null once a secret is found.
  push(chunk) {
    const text = this.tail + this.decoder.decode(chunk, { stream: true });
    const match = this.pattern.exec(text);
    if (match !== null) {
      this.found = match[0];
      return null;
    }
    this.tail = text.slice(-this.overlap);
    const bytes = concat(this.held, chunk);
    const safe = Math.max(0, bytes.length - this.overlap);
    this.held = bytes.slice(safe);
    return bytes.subarray(0, safe);
  }

  // The bytes still held back, once the body has ended without a secret.
  finish() {
    return this.held;
  }

  // What the webhook may know: the kind of secret and its first characters.
  describe() {
    const kind = new RegExp(`^${AWS_ACCESS_KEY_ID}$`).test(this.found) ? "aws-access-key-id" : "configured-token";
    return { kind, redacted: this.found.slice(0, 4) + "*".repeat(Math.max(0, this.found.length - 4)) };
  }
}

function notify(env, ctx, request, scanner, action) {
  const report = { url: request.url, method: request.method, action, ...scanner.describe() };
  console.warn(`body-scanner: ${report.kind} in the response to ${request.method} ${request.url}; ${action}`);
  ctx.waitUntil(
    fetch(env.WEBHOOK_URL, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(report),
    }).then(
      (response) => { if (!response.ok) console.error(`body-scanner: webhook answered ${response.status}`); },
      (error) => console.error(`body-scanner: webhook failed: ${error.message}`),
    ),
  );
}

function blocked() {
  return new Response("Forbidden: this response was blocked because it contained a secret.\n", {
    status: 403,
    headers: { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" },
  });
}

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const response = await fetch(env.ORIGIN.replace(/\/$/, "") + url.pathname + url.search, request);
    if (response.body === null) return response;

    const scanner = new Scanner(env);
    const reader = response.body.getReader();
    const clean = []; // scanned bytes not sent yet
    let size = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        clean.push(scanner.finish());
        const headers = new Headers(response.headers);
        headers.delete("content-length"); // the body is re-sent from the chunks read
        return new Response(new Blob(clean), { status: response.status, statusText: response.statusText, headers });
      }
      const safe = scanner.push(value);
      if (safe === null) {
        await reader.cancel();
        notify(env, ctx, request, scanner, "blocked with 403");
        return blocked();
      }
      clean.push(safe);
      size += safe.length;
      if (size > BUFFER_LIMIT) break;
    }

    // Too long to hold: stream what is scanned, keep scanning the rest.
    const { readable, writable } = new TransformStream();
    const writer = writable.getWriter();
    (async () => {
      try {
        for (const chunk of clean) await writer.write(chunk);
        clean.length = 0;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const safe = scanner.push(value);
          if (safe === null) {
            await reader.cancel();
            notify(env, ctx, request, scanner, "response broken off");
            await writer.abort(new Error("a secret was found in the response body"));
            return;
          }
          await writer.write(safe);
        }
        await writer.write(scanner.finish());
        await writer.close();
      } catch (error) {
        await writer.abort(error).catch(() => {});
      }
    })();
    const headers = new Headers(response.headers);
    headers.delete("content-length");
    return new Response(readable, { status: response.status, statusText: response.statusText, headers });
  },
};
