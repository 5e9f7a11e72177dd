"""Outgoing WebSockets: a worker's fetch() with ``Upgrade: websocket`` to a real origin on 127.0.0.1.

The worker either uses the socket itself (``accept()``, ``send``, events) or returns it in
its own 101, and the runtime pipes its client to the origin (no JavaScript per message).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.origin import Origin
from tests.test_websockets import closed_with, wait_until, ws_url

# The worker talks to the origin itself and answers over HTTP what it heard.
CONVERSE = """
export default {
  async fetch(request, env) {
    const response = await fetch(env.ORIGIN + "/ws", {
      headers: { Upgrade: "websocket", "Sec-WebSocket-Protocol": "chat", "X-Token": "t1" },
    });
    const ws = response.webSocket;
    if (ws === null) return new Response("no socket: " + response.status, { status: 502 });
    const heard = [];
    const done = new Promise((resolve) => {
      ws.addEventListener("message", (event) => {
        heard.push(typeof event.data === "string" ? event.data : Array.from(new Uint8Array(event.data)).join(","));
        if (heard.length === 3) ws.close(1000, "thanks");
      });
      ws.addEventListener("close", (event) => resolve(`${event.code} ${event.wasClean}`));
    });
    let early = "";
    try { ws.send("too early"); } catch (error) { early = error.constructor.name; }
    ws.accept();
    ws.send("ping");
    ws.send(new Uint8Array([1, 2, 3]));
    const closed = await done;
    return Response.json({
      status: response.status,
      isWebSocket: ws instanceof WebSocket,
      protocol: ws.protocol,
      early,
      heard,
      closed,
      readyState: ws.readyState,
    });
  },
};
"""

# The classic proxy: the client's upgrade goes to the origin, and the origin's socket back.
PROXY = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/refused") {
      const response = await fetch(env.ORIGIN + "/status/403", { headers: { Upgrade: "websocket" } });
      return new Response(`${response.status} ${response.webSocket}`);
    }
    if (url.pathname === "/late") {  // the origin's greeting reaches the isolate before the socket is returned
      const response = await fetch(new Request(env.ORIGIN + "/ws", request));
      await new Promise((resolve) => setTimeout(resolve, 100));
      return response;
    }
    return fetch(new Request(env.ORIGIN + "/ws", request));
  },
};
"""


def _dev(dev: Any, origin: Origin, source: str) -> Any:
    return dev({"worker.js": source}, "worker.js", "--var", f"ORIGIN:{origin.url}")


def test_a_worker_talks_to_an_origin_websocket_it_opened(dev: Any, origin: Origin) -> None:
    server = _dev(dev, origin, CONVERSE)
    answer = httpx.get(server.url + "/", timeout=30)
    assert answer.status_code == 200, answer.text
    result = json.loads(answer.text)
    assert result["status"] == 101
    assert result["isWebSocket"] is True
    assert result["protocol"] == "chat"
    assert result["early"] == "TypeError"  # as on Workers: accept() first
    assert result["heard"] == ["welcome chat t1", "origin:ping", "3,2,1"]
    assert result["closed"] == "1000 true"
    assert result["readyState"] == 3
    wait_until(lambda: origin.ws_closes == [1000])


def test_a_proxy_relays_its_client_to_the_origin_both_ways(dev: Any, origin: Origin) -> None:
    server = _dev(dev, origin, PROXY)
    with connect(ws_url(server.url, "/chat"), subprotocols=["chat"], additional_headers={"x-token": "t2"}) as ws:
        assert ws.subprotocol == "chat"
        assert ws.recv(timeout=10) == "welcome chat t2"
        ws.send("hi")
        assert ws.recv(timeout=10) == "origin:hi"
        ws.send(b"\x01\x02\xff")
        assert ws.recv(timeout=10) == b"\xff\x02\x01"
        ws.send("close 4001")  # the origin closes: the client gets its code and reason
        code, reason, _ = closed_with(ws)
    assert (code, reason) == (4001, "origin says bye")
    wait_until(lambda: len(origin.ws_closes) == 1)  # (what aiohttp's answer to it says, not ours)
    # The client closes: the origin gets the client's code.
    with connect(ws_url(server.url, "/chat")) as ws:
        assert ws.recv(timeout=10) == "welcome - -"
        ws.close(4002, "client done")
    wait_until(lambda: origin.ws_closes[1:] == [4002])
    # An origin that vanishes: the client is closed with 1011.
    with connect(ws_url(server.url, "/chat")) as ws:
        ws.recv(timeout=10)
        ws.send("drop")
        code, reason, _ = closed_with(ws)
    assert (code, reason) == (1011, "The other side went away.")
    # Many messages keep their order, through the relay and back.
    with connect(ws_url(server.url, "/chat")) as ws:
        ws.recv(timeout=10)
        for index in range(200):
            ws.send(f"m{index}")
        assert [ws.recv(timeout=10) for _ in range(200)] == [f"origin:m{index}" for index in range(200)]


def test_what_reached_the_worker_before_it_returned_the_socket_goes_first(dev: Any, origin: Origin) -> None:
    server = _dev(dev, origin, PROXY)
    with connect(ws_url(server.url, "/late")) as ws:
        ws.send("first")  # from the client at once: the origin answers after its greeting
        assert ws.recv(timeout=10) == "welcome - -"
        assert ws.recv(timeout=10) == "origin:first"
        for index in range(50):
            ws.send(f"m{index}")
        assert [ws.recv(timeout=10) for _ in range(50)] == [f"origin:m{index}" for index in range(50)]


def test_a_piped_origin_is_read_no_faster_than_the_client_takes_it(dev: Any, origin: Origin) -> None:
    """Hostile origin, idle client: 200 MiB sent as fast as the origin can, to a client that
    reads nothing (a raw socket with a 4 KiB receive buffer). The node must stop reading the
    origin, which then blocks on its own socket, instead of holding the rest in memory."""
    server = _dev(dev, origin, PROXY)
    host, port = server.url.removeprefix("http://").split(":")
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((host, int(port)))
    try:
        client.sendall(
            f"GET /flood HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        count = 3200  # of 64 KiB
        command = f"flood {count}".encode()
        mask = os.urandom(4)
        client.sendall(bytes([0x81, 0x80 | len(command)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(command)))
        time.sleep(3.0)
        # In flight at most: the kernel's socket buffers on both hops (up to ~36 MiB each on
        # this kernel's defaults) and each hop's window. Far from 200 MiB.
        assert origin.flood_sent < count // 2, origin.flood_sent
    finally:
        client.close()
    wait_until(lambda: len(origin.ws_closes) == 1, timeout=30)  # and the origin's socket was let go


def test_an_origin_that_refuses_the_upgrade_gives_its_status_and_no_socket(dev: Any, origin: Origin) -> None:
    server = _dev(dev, origin, PROXY)
    assert httpx.get(server.url + "/refused", timeout=30).text == "403 null"


def test_an_origin_message_over_1_mib_is_an_error_for_the_worker(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const { webSocket: ws } = await fetch(env.ORIGIN + "/ws", { headers: { Upgrade: "websocket" } });
            ws.accept();
            const seen = [];
            const ended = new Promise((resolve) => {
              ws.addEventListener("message", (event) => { seen.push(event.data.length); if (seen.length === 1) ws.send("big"); });
              ws.addEventListener("error", (event) => resolve("error: " + event.message));
              ws.addEventListener("close", (event) => resolve("close " + event.code));
            });
            return new Response(`${await ended} after ${seen.length}`);
          },
        };
        """,
    )
    text = httpx.get(server.url + "/", timeout=30).text
    assert text.startswith("error: WebSocket error") and text.endswith("after 1"), text
    # The node closed the connection: with 1009 (message too big) if the origin was reading
    # by then, or dropped if it was still writing the rest of its message.
    wait_until(lambda: len(origin.ws_closes) == 1)
    assert origin.ws_closes[0] in (1009, 1006, None), origin.ws_closes


def test_a_worker_cut_off_at_its_cpu_limit_leaves_no_origin_socket_open(dev: Any, origin: Origin) -> None:
    """Hostile: a worker opens a socket and spins. Its isolate is discarded, and the origin
    sees the socket closed (1001, going away) instead of held open by a dead worker."""
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const { webSocket: ws } = await fetch(env.ORIGIN + "/ws", { headers: { Upgrade: "websocket" } });
            ws.accept();
            if (new URL(request.url).pathname === "/spin") for (;;) {}
            return new Response("holding it");
          },
        };
        """,
    )
    assert httpx.get(server.url + "/spin", timeout=30).status_code == 503
    wait_until(lambda: origin.ws_closes == [1001])
    assert httpx.get(server.url + "/", timeout=30).text == "holding it"


def test_the_ssrf_guard_applies_to_websockets(edge: Any, origin: Origin) -> None:
    """On an edge node, a worker may not open a WebSocket to a loopback address either."""
    harness = edge(
        {
            "guarded": f"""
            export default {{
              async fetch() {{
                try {{
                  await fetch("{origin.url}/ws", {{ headers: {{ Upgrade: "websocket" }} }});
                  return new Response("opened");
                }} catch (error) {{
                  return new Response(error.message);
                }}
              }},
            }};
            """
        }
    )
    text = httpx.get(harness.url + "/guarded/", timeout=30).text
    assert "refused" in text, text
    time.sleep(0.2)
    assert origin.ws_closes == []


def test_new_websocket_connects_out_as_in_browsers(dev: Any, origin: Origin) -> None:
    """`new WebSocket(url, protocols)`: CONNECTING, then `open`; no accept() needed; a server
    that refuses the upgrade gives `error` then `close` 1006; a bad URL throws SyntaxError."""
    server = _dev(
        dev,
        origin,
        """
        export default {
          async fetch(request, env) {
            const base = env.ORIGIN.replace("http:", "ws:");
            const ws = new WebSocket(base + "/ws", ["other"]);
            const states = [ws.readyState];
            let early = "";
            try { ws.send("x"); } catch (error) { early = error.name; }
            const heard = [];
            const closed = new Promise((resolve) => {
              ws.addEventListener("open", () => { states.push(ws.readyState); ws.send("ping"); });
              ws.addEventListener("message", (event) => {
                heard.push(event.data);
                if (heard.length === 2) ws.close(4100, "bye");
              });
              ws.addEventListener("close", (event) => resolve(event.code));
            });
            const code = await closed;
            const refused = new WebSocket(base + "/status/404");
            const events = [];
            await new Promise((resolve) => {
              refused.addEventListener("error", () => events.push("error"));
              refused.addEventListener("close", (event) => { events.push("close " + event.code); resolve(); });
            });
            const syntax = [];
            for (const bad of ["not a url", "ftp://example.com/", base + "/ws#frag"]) {
              try { new WebSocket(bad); } catch (error) { syntax.push(error.name); }
            }
            try { new WebSocket(base + "/ws", ["a", "a"]); } catch (error) { syntax.push(error.name); }
            return Response.json({ url: ws.url, protocol: ws.protocol, states, early, heard, code,
              events, syntax, final: [ws.readyState, refused.readyState] });
          },
        };
        """,
    )
    answer = httpx.get(server.url + "/", timeout=30)
    assert answer.status_code == 200, answer.text
    result = json.loads(answer.text)
    assert result["url"] == origin.url.replace("http:", "ws:") + "/ws"
    assert result["protocol"] == "other"
    assert result["states"] == [0, 1]
    assert result["early"] == "InvalidStateError"
    assert result["heard"] == ["welcome other -", "origin:ping"]
    assert result["code"] == 1000  # the code of the origin's answering close frame (aiohttp's is 1000)
    assert result["events"] == ["error", "close 1006"]
    assert result["syntax"] == ["SyntaxError"] * 4
    assert result["final"] == [3, 3]
    wait_until(lambda: 4100 in origin.ws_closes)


def test_a_service_in_front_of_the_origin_socket(dev: Any, origin: Origin) -> None:
    """A gateway worker hands the upgrade to a service, which returns the origin's socket:
    the client talks to the origin through both."""
    server = dev(
        {
            "gateway/wrangler.toml": 'name = "gateway"\nmain = "index.js"\n\n[[services]]\nbinding = "UPSTREAM"\nservice = "upstream"\n',
            "gateway/index.js": "export default { fetch(request, env) { return env.UPSTREAM.fetch(request); } };",
            "upstream/wrangler.toml": f'name = "upstream"\nmain = "index.js"\n\n[vars]\nORIGIN = "{origin.url}"\n',
            "upstream/index.js": (
                "export default { fetch(request, env) { return fetch(new Request(env.ORIGIN + '/ws', request)); } };"
            ),
        },
        "gateway",
        "--service",
        "upstream",
    )
    with connect(ws_url(server.url, "/chat")) as ws:
        assert ws.recv(timeout=10) == "welcome - -"
        ws.send("through two workers")
        assert ws.recv(timeout=10) == "origin:through two workers"
        ws.close(4003, "done")
    wait_until(lambda: origin.ws_closes == [4003])
