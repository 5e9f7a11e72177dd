"""Streaming bodies end to end, and fetch() subrequests to a real origin on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import pytest

from tests.origin import Origin


def _dev(dev: Any, origin: Origin, source: str) -> Any:
    return dev({"worker.js": source}, "worker.js", "--var", f"ORIGIN:{origin.url}")


def test_response_streams_chunks_as_the_worker_writes_them(dev: Any, origin: Origin) -> None:
    # The second chunk waits for an origin the test holds back, so the first
    # can only reach the client if the body is really streamed.
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const { readable, writable } = new TransformStream();
            const writer = writable.getWriter();
            const encoder = new TextEncoder();
            (async () => {
              await writer.write(encoder.encode("first;"));
              const gate = await fetch(env.ORIGIN + "/gate/second");
              await writer.write(encoder.encode(await gate.text() + ";"));
              await writer.close();
            })();
            return new Response(readable, { headers: { "content-type": "text/plain" } });
          },
        };
        """,
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("GET", "/") as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            assert next(chunks) == b"first;"
            origin.open_gate("second")
            assert b"".join(chunks) == b"opened;"


def test_request_body_is_a_stream_the_worker_reads_in_chunks(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const reader = request.body.getReader();
                let total = 0, reads = 0;
                for (;;) {
                  const { value, done } = await reader.read();
                  if (done) break;
                  total += value.length;
                  reads++;
                }
                return Response.json({ total, reads, used: request.bodyUsed });
              },
            };
            """
        }
    )
    body = b"x" * (3 * 1024 * 1024 + 5)
    result = server.request("POST", "/", content=body).json()
    assert result["total"] == len(body)
    assert result["reads"] > 1  # chunks, not one buffer
    assert result["used"] is True


def test_transform_stream_pipes_request_to_response(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const upper = new TransformStream({
                  transform(chunk, controller) {
                    controller.enqueue(new TextEncoder().encode(new TextDecoder().decode(chunk).toUpperCase()));
                  },
                });
                return new Response(request.body.pipeThrough(upper));
              },
            };
            """
        }
    )
    assert server.request("POST", "/", content=b"hello streams").text == "HELLO STREAMS"


def test_byob_reader_on_a_request_body(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const reader = request.body.getReader({ mode: "byob" });
                let total = 0;
                for (;;) {
                  const { value, done } = await reader.read(new Uint8Array(1000));
                  if (done) break;
                  if (value.length > 1000) throw new Error("BYOB view overflow");
                  total += value.length;
                }
                return new Response(String(total));
              },
            };
            """
        }
    )
    assert server.request("POST", "/", content=b"y" * 250_000).text == "250000"


def test_fetch_sends_method_headers_body_and_returns_the_origin_response(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const response = await fetch(env.ORIGIN + "/echo?q=1", {
              method: "PUT", headers: { "x-test": "yes", "content-type": "text/plain" }, body: "payload",
            });
            const echoed = await response.json();
            return Response.json({ status: response.status, origin: response.headers.get("x-origin"),
                                   url: response.url, echoed });
          },
        };
        """,
    )
    result = server.get("/").json()
    assert result["status"] == 200
    assert result["origin"] == "yes"
    assert result["url"] == origin.url + "/echo?q=1"
    assert result["echoed"]["method"] == "PUT"
    assert result["echoed"]["query"] == "q=1"
    assert result["echoed"]["headers"]["x-test"] == "yes"
    assert result["echoed"]["body"] == "payload"


def test_a_large_origin_body_passes_through_without_entering_javascript(dev: Any, origin: Origin) -> None:
    size = 20 * 1024 * 1024
    server = _dev(
        dev,
        origin,
        f"""
        export default {{
          fetch(request, env) {{ return fetch(env.ORIGIN + "/bytes?n={size}"); }},
        }};
        """,
    )
    response = server.get("/")
    assert response.status_code == 200
    assert len(response.content) == size
    assert response.content[:10] == b"0123456789"
    # Copying 20 MB through JavaScript would cost far more than the 50 ms CPU limit.
    assert "exceeded" not in server.output.lower()


def test_forwarding_the_incoming_request_streams_its_body_to_the_origin(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            return fetch(new Request(env.ORIGIN + "/upload", request));
          },
        };
        """,
    )
    body = bytes(range(256)) * 40_000  # ~10 MB
    result = server.request("POST", "/", content=body).json()
    assert result["length"] == len(body)
    assert result["sha1"] == hashlib.sha1(body).hexdigest()


def test_fetch_with_a_readable_stream_body_uploads_in_chunks(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            let n = 0;
            const body = new ReadableStream({
              pull(controller) {
                if (n++ === 5) { controller.close(); return; }
                controller.enqueue(new TextEncoder().encode("part" + n + ";"));
              },
            });
            const response = await fetch(env.ORIGIN + "/upload", { method: "POST", body, duplex: "half" });
            return new Response(await response.text());
          },
        };
        """,
    )
    result = json.loads(server.get("/").text)
    expected = b"".join(f"part{n};".encode() for n in range(1, 6))
    assert result["length"] == len(expected)
    assert result["sha1"] == hashlib.sha1(expected).hexdigest()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("follow", "200 true echo"), ("manual", "302 false moved"), ("error", "TypeError")],
)
def test_redirect_modes(dev: Any, origin: Origin, mode: str, expected: str) -> None:
    server = _dev(
        dev,
        origin,
        f"""
        export default {{
          async fetch(request, env) {{
            const target = encodeURIComponent(env.ORIGIN + "/echo");
            try {{
              const r = await fetch(env.ORIGIN + "/redirect?to=" + target, {{ redirect: "{mode}" }});
              const text = await r.text();
              return new Response(r.status + " " + r.redirected + " " + (text.includes("/echo") ? "echo" : text));
            }} catch (error) {{
              return new Response(error.name);
            }}
          }},
        }};
        """,
    )
    assert server.get("/").text == expected


def test_gzip_from_the_origin_is_decoded(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const r = await fetch(env.ORIGIN + "/gzip");
            return new Response((await r.text()) + " " + r.headers.get("content-encoding"));
          },
        };
        """,
    )
    assert server.get("/").text == "compressed hello null"


def test_subrequest_limit(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            let ok = 0;
            for (let i = 0; i < 60; i++) {
              try { await (await fetch(env.ORIGIN + "/status/204")).text(); ok++; }
              catch (error) { return new Response(ok + " " + error.message); }
            }
            return new Response("no limit");
          },
        };
        """,
    )
    assert server.get("/").text == "50 Too many subrequests."
    # The limit is per invocation: the next request gets its own 50.
    assert server.get("/").text == "50 Too many subrequests."


def test_abort_signal_cancels_a_pending_fetch(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const controller = new AbortController();
            const pending = fetch(env.ORIGIN + "/gate/never", { signal: controller.signal });
            setTimeout(() => controller.abort(), 10);
            try { await pending; return new Response("not aborted"); }
            catch (error) { return new Response(error.name); }
          },
        };
        """,
    )
    started = time.monotonic()
    assert server.get("/").text == "AbortError"
    assert time.monotonic() - started < 10


def test_fetch_errors_are_type_errors(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const results = [];
            for (const url of ["ftp://example.com/", "http://127.0.0.1:1/"]) {
              try { await fetch(url); results.push("ok"); }
              catch (error) { results.push(error.name); }
            }
            return new Response(results.join(","));
          },
        };
        """,
    )
    assert server.get("/").text == "TypeError,TypeError"


SSRF_WORKER = """
export default {
  async fetch(request) {
    const target = new URL(request.url).searchParams.get("to");
    try {
      const response = await fetch(target);
      return new Response("reached " + response.status);
    } catch (error) {
      return new Response(error.name + ": " + error.message);
    }
  },
};
"""


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/echo",
        "http://localhost:{port}/echo",  # a name that resolves to loopback
        "http://[::1]:{port}/echo",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]:{port}/echo",
        "http://0.0.0.0:{port}/echo",
    ],
)
def test_ssrf_guard_refuses_private_destinations_by_default(edge: Any, origin: Origin, target: str) -> None:
    server = edge({"w": SSRF_WORKER})
    url = target.format(port=origin.port)
    text = server.get("/w/", params={"to": url}).text
    assert text.startswith("TypeError: Subrequest to"), text
    assert "refused" in text
    assert origin.hits == 0


def test_ssrf_guard_permits_configured_networks(edge: Any, origin: Origin) -> None:
    from warren.runtime.subrequests import SubrequestPolicy

    server = edge({"w": SSRF_WORKER}, subrequests=SubrequestPolicy.parse(False, ["127.0.0.0/8"]))
    assert server.get("/w/", params={"to": f"{origin.url}/echo"}).text == "reached 200"
    # A redirect from an allowed origin to a refused address is checked at every hop.
    refused = f"{origin.url}/redirect?to=http://169.254.169.254/"
    assert "refused" in server.get("/w/", params={"to": refused}).text


def test_an_endless_stream_stops_when_the_client_goes_away(edge: Any) -> None:
    server = edge(
        {
            "endless": """
            export default {
              fetch() {
                const chunk = new Uint8Array(64 * 1024);
                return new Response(new ReadableStream({ pull(c) { c.enqueue(chunk); } }));
              },
            };
            """,
            "hello": "export default { fetch() { return new Response('hi'); } };",
        },
        cpu_ms=5000,
    )
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", server.url + "/endless/") as response:
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > 4 * 1024 * 1024:
                    break
    # The flow-control window keeps the producer close to the consumer; and the worker still serves.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(name == "endless" for name, _ in server.done):
        time.sleep(0.05)
    assert any(name == "endless" for name, _ in server.done)
    assert server.get("/hello/").text == "hi"


def test_request_body_piped_into_a_digest_stream(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch(request) {
                const digest = new crypto.DigestStream("SHA-256");
                await request.body.pipeTo(digest);
                const hex = [...new Uint8Array(await digest.digest)].map((b) => b.toString(16).padStart(2, "0"));
                return new Response(hex.join("") + " " + (digest instanceof WritableStream));
              },
            };
            """
        }
    )
    body = b"z" * (2 * 1024 * 1024 + 3)
    assert server.request("POST", "/", content=body).text == hashlib.sha256(body).hexdigest() + " true"


def test_one_date_header_whoever_sets_it(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              fetch(request) {
                const own = new URL(request.url).searchParams.has("own");
                return new Response("x", own ? { headers: { date: "Mon, 01 Jan 2024 00:00:00 GMT" } } : {});
              },
            };
            """
        }
    )
    own = server.get("/?own=1")
    assert own.headers.get_list("date") == ["Mon, 01 Jan 2024 00:00:00 GMT"]
    assert len(server.get("/").headers.get_list("date")) == 1
