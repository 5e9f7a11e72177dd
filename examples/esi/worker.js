// Edge Side Includes: the origin's HTML names fragments with
// <esi:include src="/fragments/header.html"></esi:include>, and the edge
// replaces each with the fragment, fetched from the same origin, while the
// page streams through HTMLRewriter. What comes before an include reaches the
// client before the include is fetched.
//
// Supported: src, alt (tried when src fails), onerror="continue" (a failed
// include disappears instead of leaving an HTML comment), includes inside
// fragments (up to MAX_DEPTH), and <esi:remove> (fallback content for clients
// that see the page without ESI, removed here).
//
// HTMLRewriter (lol-html) follows HTML's rules, where a "/>" does not close a
// non-void element: <esi:include src="x"/> would swallow everything after it.
// So the page first goes through closeEsiTags(), a small streaming text pass
// that rewrites <esi:include .../> to <esi:include ...></esi:include>.

const MAX_DEPTH = 3;

function bytesToBinary(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return text;
}

function binaryToBytes(text) {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Works on bytes (one char per byte) so that multi-byte UTF-8 split across
// chunks is passed through untouched; the tags it looks for are ASCII.
function closeEsiTags() {
  const TAG = "<esi:include";
  const MAX_TAG = 4096; // a "tag" longer than this is not one: stop holding it back
  let carry = "";
  return new TransformStream({
    transform(chunk, controller) {
      let text = carry + bytesToBinary(chunk);
      carry = "";
      // Hold back a tag that may be an <esi:include but is not finished yet.
      const open = text.lastIndexOf("<");
      if (open !== -1 && text.indexOf(">", open) === -1 && text.length - open < MAX_TAG) {
        const start = text.slice(open, open + TAG.length).toLowerCase();
        if (TAG.startsWith(start) || start === TAG) {
          carry = text.slice(open);
          text = text.slice(0, open);
        }
      }
      controller.enqueue(binaryToBytes(text.replace(/<esi:include\b([^>]*?)\s*\/>/gi, "<esi:include$1></esi:include>")));
    },
    flush(controller) {
      if (carry) controller.enqueue(binaryToBytes(carry));
    },
  });
}

// The fragment's HTML, or null if it could not be fetched. Only the page's own
// origin is asked: an include must not make the edge fetch arbitrary URLs.
async function fetchFragment(src, pageUrl, depth) {
  let url;
  try {
    url = new URL(src, pageUrl);
  } catch {
    return null;
  }
  if (url.origin !== pageUrl.origin) {
    console.warn(`esi: ${src} refused: not on ${pageUrl.origin}`);
    return null;
  }
  const response = await fetch(url, { headers: { accept: "text/html" } });
  if (!response.ok) {
    console.warn(`esi: ${src} answered ${response.status}`);
    return null;
  }
  return process(response, url, depth + 1).text();
}

function rewriter(pageUrl, depth) {
  return new HTMLRewriter()
    .on("esi\\:include", {
      async element(include) {
        const sources = [include.getAttribute("src"), include.getAttribute("alt")].filter(Boolean);
        let html = null;
        if (depth < MAX_DEPTH) {
          for (const src of sources) {
            html = await fetchFragment(src, pageUrl, depth);
            if (html !== null) break;
          }
        }
        if (html !== null) {
          include.replace(html, { html: true });
        } else if (include.getAttribute("onerror") === "continue") {
          include.remove();
        } else {
          const what = depth < MAX_DEPTH ? "failed" : "too deeply nested";
          const names = sources.join(" | ").replace(/--/g, "- -");
          include.replace(`<!-- esi:include ${what}: ${names} -->`, { html: true });
        }
      },
    })
    .on("esi\\:remove", {
      element(element) {
        element.remove();
      },
    });
}

function process(response, url, depth) {
  const type = response.headers.get("content-type") || "";
  if (!type.startsWith("text/html") || response.body === null) return response;
  const normalised = new Response(response.body.pipeThrough(closeEsiTags()), response);
  return rewriter(url, depth).transform(normalised);
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const pageUrl = new URL(env.ORIGIN.replace(/\/$/, "") + url.pathname + url.search);
    const response = await fetch(pageUrl, request);
    return process(response, pageUrl, 0);
  },
};
