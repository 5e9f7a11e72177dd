"""HTMLRewriter (lol-html in WebAssembly) transforming responses as they stream."""

from __future__ import annotations

from typing import Any

from tests.origin import Origin


def test_rewrites_elements_attributes_text_and_comments(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch() {
                const page = `<!doctype html><html><head><title>Old</title></head>
                  <body><!-- secret --><a href="http://example.com/x">link</a><p class="gone">bye</p>
                  <div id="target">old</div></body></html>`;
                const seen = [];
                const rewriter = new HTMLRewriter()
                  .on("a[href]", { element(el) {
                    el.setAttribute("href", el.getAttribute("href").replace("http:", "https:"));
                  } })
                  .on("title", { text(t) { if (t.text) t.replace("New"); } })
                  .on("p.gone", { element(el) { el.remove(); } })
                  .on("#target", { async element(el) {
                    await new Promise((resolve) => setTimeout(resolve, 1));
                    el.setInnerContent("<b>new</b>", { html: true });
                  } })
                  .onDocument({ comments(c) { c.remove(); }, doctype(d) { seen.push(d.name); } });
                const response = new Response(page, { headers: { "content-type": "text/html", "content-length": "999" } });
                const out = rewriter.transform(response);
                const text = await out.text();
                return new Response(text + "|" + seen.join(",") + "|" + out.headers.get("content-length"));
              },
            };
            """
        }
    )
    text = server.get("/").text
    html, doctype, length = text.split("|")
    assert 'href="https://example.com/x"' in html
    assert "<title>New</title>" in html
    assert "bye" not in html
    assert '<div id="target"><b>new</b></div>' in html
    assert "secret" not in html
    assert doctype == "html"
    assert length == "null"


def test_transforms_an_origin_response_as_it_streams(dev: Any, origin: Origin) -> None:
    # Edge Side Includes style: replace <esi:include> with content fetched from the origin.
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request, env) {
                const page = new Response('<html><body><esi:include src="/echo?part=1"></esi:include><p>end</p></body></html>',
                                          { headers: { "content-type": "text/html" } });
                return new HTMLRewriter().on("esi\\\\:include", {
                  async element(el) {
                    const part = await fetch(env.ORIGIN + el.getAttribute("src"));
                    el.replace((await part.json()).query, { html: false });
                  },
                }).transform(page);
              },
            };
            """
        },
        "worker.js",
        "--var",
        f"ORIGIN:{origin.url}",
    )
    response = server.get("/")
    assert response.text == "<html><body>part=1<p>end</p></body></html>"
    assert response.headers["content-type"] == "text/html"


def test_a_handler_error_fails_the_response_not_the_process(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                if (new URL(request.url).pathname === "/ok") return new Response("ok");
                const rewriter = new HTMLRewriter().on("p", { element() { throw new Error("handler broke"); } });
                try {
                  return new Response(await rewriter.transform(new Response("<p>x</p>")).text());
                } catch (error) {
                  return new Response("caught: " + error.message);
                }
              },
            };
            """
        }
    )
    assert "handler broke" in server.get("/").text
    assert server.get("/ok").text == "ok"
