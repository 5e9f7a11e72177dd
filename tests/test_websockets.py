"""WebSockets as on Workers: WebSocketPair, accept/send/close, and the edge relaying a real client's socket.

Real clients (the ``websockets`` package) against ``warren dev`` and the ``edge`` fixture.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import warren.server.websockets as edge_websockets

ECHO = """
export default {
  async fetch(request) {
    if (request.headers.get("upgrade") !== "websocket") {
      return new Response("expected a WebSocket", { status: 426 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    server.send("hello");  // before the response: it goes out first
    server.addEventListener("message", (event) => {
      if (!(event instanceof MessageEvent)) throw new Error("not a MessageEvent");
      if (event.data === "close") { server.close(4000, "asked to"); return; }
      if (event.data === "close 2000") { server.close(2000, "no such code on the wire"); return; }
      if (typeof event.data === "string") { server.send("echo:" + event.data); return; }
      const bytes = new Uint8Array(event.data);  // an ArrayBuffer
      server.send(bytes.reverse());
    });
    server.addEventListener("close", (event) => {
      console.log(`close ${event.constructor.name} ${event.code} ${event.reason} ${event.wasClean} ${server.readyState}`);
    });
    return new Response(null, { status: 101, webSocket: client, headers: { "x-greeting": "hi" } });
  },
};
"""

# A room: a message goes to every other socket, and a socket's close is announced to the others.
ROOM = """
const sockets = new Set();
export default {
  async fetch(request) {
    const [client, server] = new WebSocketPair();
    server.accept();
    sockets.add(server);
    server.addEventListener("message", (event) => {
      for (const other of sockets) if (other !== server) other.send(event.data);
    });
    server.addEventListener("close", (event) => {
      sockets.delete(server);
      for (const other of sockets) other.send(`left ${event.code} ${event.reason} ${event.wasClean}`);
      console.log(`left ${event.code} ${event.wasClean}`);
    });
    return new Response(null, { status: 101, webSocket: client });
  },
};
"""

NEIGHBOUR = """
export default {
  fetch(request) {
    if (request.headers.get("upgrade") === "websocket") {
      const [client, server] = Object.values(new WebSocketPair());
      server.accept();
      server.addEventListener("message", (event) => server.send("n:" + event.data));
      return new Response(null, { status: 101, webSocket: client });
    }
    return new Response("neighbour ok");
  },
};
"""


def ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url.removeprefix("http") + path


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str, list[Any]]:
    """Read until the server closes: (code, reason, the messages read before)."""
    messages = []
    try:
        while True:
            messages.append(ws.recv(timeout=timeout))
    except ConnectionClosed as closed:
        frame = closed.rcvd
        return (frame.code if frame is not None else None), (frame.reason if frame is not None else ""), messages


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_echo_text_and_binary_and_close_from_the_worker(edge: Any) -> None:
    harness = edge({"echo": ECHO})
    with connect(ws_url(harness.url, "/echo/chat?x=1")) as ws:
        assert ws.response.status_code == 101
        assert ws.response.headers["x-greeting"] == "hi"
        assert ws.recv(timeout=10) == "hello"
        ws.send("héllo ✓")
        assert ws.recv(timeout=10) == "echo:héllo ✓"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=10) == b"\xff\xfe\x01\x00"
        for index in range(50):
            ws.send(f"m{index}")
            assert ws.recv(timeout=10) == f"echo:m{index}"
        ws.send("close")
        code, reason, rest = closed_with(ws)
    assert (code, reason, rest) == (4000, "asked to", [])
    with connect(ws_url(harness.url, "/echo/")) as ws:
        assert ws.recv(timeout=10) == "hello"
        ws.send("close 2000")  # valid for close(), not sendable (RFC 6455 7.4.2): a close without a code
        assert closed_with(ws)[:2] == (1005, "")
    # The client's answering close is the worker's close event (readyState already CLOSED).
    wait_until(lambda: any("close CloseEvent 4000 asked to true 3" in line for _, _, line in harness.logs))
    wait_until(lambda: ("echo", "ok") in harness.done)
    # A plain request to the same worker is still plain HTTP.
    assert harness.get("/echo/").status_code == 426


def test_client_close_and_disconnect_reach_the_worker(edge: Any) -> None:
    harness = edge({"room": ROOM})
    url = ws_url(harness.url, "/room/")
    with connect(url) as watcher:
        with connect(url) as speaker:
            speaker.send("hi all")
            assert watcher.recv(timeout=10) == "hi all"
            speaker.close(4001, "bye now")
        assert watcher.recv(timeout=10) == "left 4001 bye now true"
        # Gone without a close frame: 1006, not clean.
        with connect(url) as abrupt:
            abrupt.send("still here")
            assert watcher.recv(timeout=10) == "still here"
            abrupt.socket.shutdown(socket.SHUT_RDWR)
            assert watcher.recv(timeout=10) == "left 1006 WebSocket disconnected without sending Close frame. false"
    wait_until(lambda: sum(1 for _, _, line in harness.logs if line.startswith("left ")) == 3)
    # Every socket's invocation ended once its socket did.
    wait_until(lambda: harness.done.count(("room", "ok")) == 3)


def test_an_upgrade_answered_without_a_websocket_is_an_http_response(edge: Any) -> None:
    harness = edge(
        {
            "refuse": """
                export default {
                  fetch() { return new Response("not here", { status: 403, headers: { "x-why": "policy" } }); },
                };
            """,
            "plain": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """,
        }
    )
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(harness.url, "/refuse/"))
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["x-why"] == "policy"
    assert bytes(refused.value.response.body or b"") == b"not here"
    with pytest.raises(InvalidStatus) as nobody:
        connect(ws_url(harness.url, "/nobody/"))
    assert nobody.value.response.status_code == 404
    # A WebSocket answer to a request that asked for none: the worker's error, as on Workers.
    response = harness.get("/plain/")
    assert response.status_code == 500
    wait_until(lambda: any('did not contain the header "Upgrade: websocket"' in line for _, _, line in harness.logs))


def test_api_errors_follow_workerd(edge: Any) -> None:
    harness = edge(
        {
            "api": """
                function error(fn) {
                  try { fn(); return "no error"; } catch (e) { return `${e.constructor.name}: ${e.message}`; }
                }
                export default {
                  fetch(request) {
                    const pair = new WebSocketPair();
                    const [a, b] = pair;
                    const report = {
                      values: Object.values(pair).length === 2 && Object.values(pair)[0] === a && pair[1] === b,
                      constants: [WebSocket.OPEN, WebSocket.READY_STATE_CLOSED, a.CLOSING, a.readyState],
                      sendBeforeAccept: error(() => a.send("x")),
                      closeBeforeAccept: error(() => a.close()),
                      constructor: error(() => new WebSocket("ftp://example.com/")),
                      status101Alone: error(() => new Response(null, { status: 101 })),
                      socketWith200: error(() => new Response(null, { status: 200, webSocket: a })),
                      notASocket: error(() => new Response(null, { status: 101, webSocket: {} })),
                    };
                    a.accept();
                    Object.assign(report, {
                      badCode: error(() => a.close(999)),
                      reservedCode: error(() => a.close(1006)),
                      reasonWithoutCode: error(() => a.close(undefined, "why")),
                      longReason: error(() => a.close(1000, "x".repeat(124))),
                    });
                    a.close(1000, "done");
                    report.sendAfterClose = error(() => a.send("late"));
                    report.stateAfterClose = a.readyState;
                    const response = new Response(null, { status: 101, webSocket: b });
                    report.webSocketGetter = response.webSocket === b && response.status === 101;
                    report.clone = error(() => response.clone());
                    return Response.json(report);
                  },
                };
            """
        }
    )
    report = harness.get("/api/").json()
    assert report["values"] is True
    assert report["constants"] == [1, 3, 2, 1]
    not_accepted = (
        "TypeError: You must call one of accept() or state.acceptWebSocket() on this WebSocket before sending messages."
    )
    assert report["sendBeforeAccept"] == not_accepted
    assert report["closeBeforeAccept"] == not_accepted
    assert report["constructor"] == "DOMException: WebSocket URL has an unsupported scheme: ftp:"
    assert report["status101Alone"].startswith("RangeError:")
    assert report["socketWith200"] == "RangeError: Responses with a WebSocket must have status code 101."
    assert report["notASocket"].startswith("TypeError:")
    assert report["badCode"] == "TypeError: Invalid WebSocket close code: 999."
    assert report["reservedCode"] == "TypeError: Invalid WebSocket close code: 1006."
    assert report["reasonWithoutCode"] == (
        "TypeError: If you specify a WebSocket close reason, you must also specify a code."
    )
    assert report["longReason"].startswith("TypeError:")
    assert report["sendAfterClose"] == "TypeError: Can't call WebSocket send() after close()."
    assert report["stateAfterClose"] == 2  # CLOSING: our close went out, the other side's has not come
    assert report["webSocketGetter"] is True
    assert report["clone"] == "TypeError: Cannot clone a response to a WebSocket handshake."


def test_returning_an_accepted_end_fails_the_request(edge: Any) -> None:
    harness = edge(
        {
            "bad": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    client.accept();
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """
        }
    )
    with pytest.raises(InvalidStatus) as failed:
        connect(ws_url(harness.url, "/bad/"))
    assert failed.value.response.status_code == 500
    wait_until(lambda: any("after calling accept()" in line for _, _, line in harness.logs))


def test_a_pair_inside_one_isolate(edge: Any) -> None:
    harness = edge(
        {
            "pair": """
                export default {
                  async fetch() {
                    const [a, b] = Object.values(new WebSocketPair());
                    const seen = [];
                    b.addEventListener("message", (event) => {
                      seen.push(typeof event.data === "string" ? event.data : [...new Uint8Array(event.data)]);
                      if (seen.length === 2) a.close(1000, "enough");
                    });
                    const closed = new Promise((resolve) => {
                      b.addEventListener("close", (event) => resolve(`b:${event.code}:${event.reason}:${b.readyState}`));
                    });
                    const echoed = new Promise((resolve) => {
                      a.addEventListener("close", (event) => resolve(`a:${event.code}:${a.readyState}`));
                    });
                    a.accept();
                    a.send("first");  // queued until b accepts
                    b.accept();
                    a.send(new Uint8Array([1, 2, 3]));
                    return Response.json({ seen, closes: await Promise.all([closed, echoed]) });
                  },
                };
            """
        }
    )
    assert harness.get("/pair/").json() == {"seen": ["first", [1, 2, 3]], "closes": ["b:1000:enough:3", "a:1000:3"]}


def test_a_message_over_1_mib_is_refused_with_1009(edge: Any) -> None:
    harness = edge(
        {
            "big": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    server.addEventListener("message", (event) => server.send(String(event.data.byteLength ?? event.data.length)));
                    server.addEventListener("error", (event) => console.log("error event: " + event.message));
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """
        }
    )
    pid = harness.supervisor.processes()[0].process.pid
    url = ws_url(harness.url, "/big/")
    with connect(url, max_size=None) as ws:
        ws.send(b"x" * (1024 * 1024))  # exactly the limit: fine
        assert ws.recv(timeout=10) == str(1024 * 1024)
        ws.send(b"x" * (2 * 1024 * 1024))
        code, reason, _ = closed_with(ws)
    assert (code, reason) == (1009, "Message is too large")
    wait_until(lambda: any("error event: Message is too large: 2097152 bytes" in line for _, _, line in harness.logs))
    # The process and the worker are fine.
    with connect(url) as ws:
        ws.send("small")
        assert ws.recv(timeout=10) == "5"
    assert harness.supervisor.processes()[0].process.pid == pid
    assert not harness.supervisor.crashes


def test_cpu_limit_in_a_message_handler_closes_with_1011(edge: Any) -> None:
    harness = edge(
        {
            "spin": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    server.addEventListener("message", (event) => {
                      const n = Number(event.data);
                      if (n < 0) for (;;) {}
                      let x = 0;
                      for (let i = 0; i < n; i++) x = (x + i * 7) % 1000003;
                      server.send(String(x));
                    });
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """,
            "neighbour": NEIGHBOUR,
        },
        cpu_ms=50,
    )
    url = ws_url(harness.url, "/spin/")
    with connect(url) as ws:
        # ~10 ms each: 12 of them are well past 50 ms in all, but each message is an event of its own.
        for _ in range(12):
            ws.send("3000000")
            ws.recv(timeout=10)
        ws.send("-1")
        code, reason, _ = closed_with(ws)
    assert (code, reason) == (1011, "Worker exceeded its CPU time limit.")
    wait_until(lambda: ("spin", "exceededCpu") in harness.done)
    assert harness.get("/neighbour/").text == "neighbour ok"
    with connect(ws_url(harness.url, "/neighbour/")) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "n:x"
    with connect(url) as ws:  # a new isolate serves the next socket
        ws.send("10")
        assert ws.recv(timeout=10) == "315"


def test_a_worker_holding_many_sockets_does_not_starve_a_neighbour(edge: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(edge_websockets, "MAX_SOCKETS_PER_WORKER", 12)
    harness = edge(
        {
            "hoard": """
                const held = [];
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    held.push(server);
                    server.addEventListener("message", (event) => {
                      if (event.data !== "flood") return;
                      const chunk = new Uint8Array(256 * 1024);
                      try {
                        for (let i = 0; i < 64; i++) server.send(chunk);  // 16 MiB to a client that is not reading
                      } catch (e) { console.log("send threw " + e.message); }
                    });
                    server.addEventListener("error", (event) => console.log("hoard error: " + event.message));
                    setInterval(() => {}, 1000);
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """,
            "neighbour": NEIGHBOUR,
        }
    )
    url = ws_url(harness.url, "/hoard/")
    with ExitStack() as stack:
        held = [stack.enter_context(connect(url)) for _ in range(12)]
        with pytest.raises(InvalidStatus) as refused:
            connect(url)
        assert refused.value.response.status_code == 503
        assert b"Too many WebSockets" in bytes(refused.value.response.body or b"")
        # The neighbour serves HTTP and WebSockets meanwhile.
        assert harness.get("/neighbour/").text == "neighbour ok"
        with connect(ws_url(harness.url, "/neighbour/")) as ws:
            ws.send("y")
            assert ws.recv(timeout=10) == "n:y"
        # What one socket may have queued for its client is bounded: past it the socket fails.
        held[0].send("flood")
        code, reason, received = closed_with(held[0])
        assert code == 1011 and reason == "Send queue full"
        assert 1 <= len(received) <= 8  # 256 KiB each; at most 2 MiB could be queued
        wait_until(lambda: any("hoard error: WebSocket send queue is full" in line for _, _, line in harness.logs))
        assert not any("send threw" in line for _, _, line in harness.logs)  # the socket failed; send did not throw
    # Closed sockets free their places.
    wait_until(lambda: edge_websockets.open_sockets(harness.supervisor)[""] == 0)
    with connect(url) as ws:
        assert ws.response.status_code == 101


def test_warren_dev_serves_websockets(dev: Any) -> None:
    server = dev({"worker.js": ECHO})
    with connect(ws_url(server.url, "/")) as ws:
        assert ws.recv(timeout=10) == "hello"
        ws.send("from dev")
        assert ws.recv(timeout=10) == "echo:from dev"
        ws.close(1000, "done")
    server.wait_for("close CloseEvent 1000 done true 3")
    assert server.get("/").status_code == 426


def test_the_worker_sees_the_upgrade_request(edge: Any) -> None:
    harness = edge(
        {
            "seen": """
                export default {
                  fetch(request) {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    server.send(JSON.stringify({
                      url: request.url, method: request.method, upgrade: request.headers.get("upgrade"),
                      protocol: request.headers.get("sec-websocket-protocol"), country: typeof request.cf,
                    }));
                    return new Response(null, {
                      status: 101, webSocket: client, headers: { "sec-websocket-protocol": "chat.v1" },
                    });
                  },
                };
            """
        }
    )
    with connect(ws_url(harness.url, "/seen/a?b=c"), subprotocols=["chat.v1"]) as ws:  # type: ignore[list-item]
        seen = json.loads(ws.recv(timeout=10))
        assert ws.subprotocol == "chat.v1"
    assert seen["url"] == harness.url + "/seen/a?b=c"
    assert seen["method"] == "GET"
    assert seen["upgrade"] == "websocket"
    assert seen["protocol"] == "chat.v1"
    assert seen["country"] == "object"


def test_messages_before_accept_wait_for_it_in_order(edge: Any) -> None:
    harness = edge(
        {
            "late": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    const seen = [];
                    server.addEventListener("message", (event) => {
                      seen.push(event.data);
                      if (seen.length === 40) server.send(seen.join(","));
                    });
                    setTimeout(() => server.accept(), 300);  // the client is already sending
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """
        }
    )
    with connect(ws_url(harness.url, "/late/")) as ws:
        for index in range(40):
            ws.send(str(index))
        assert ws.recv(timeout=10) == ",".join(str(index) for index in range(40))


def test_a_client_leaving_during_the_handshake_closes_the_workers_end(edge: Any) -> None:
    harness = edge(
        {
            "slow": """
                export default {
                  async fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    server.addEventListener("close", (event) => console.log(`slow close ${event.code} ${event.wasClean}`));
                    await new Promise((resolve) => setTimeout(resolve, 300));
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """
        }
    )
    host, port = harness.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"GET /slow/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        time.sleep(0.05)
    wait_until(lambda: any("slow close 1006 false" in line for _, _, line in harness.logs))
    wait_until(lambda: any(name == "slow" for name, _ in harness.done))
    assert edge_websockets.open_sockets(harness.supervisor)[""] == 0


def test_many_tiny_messages_are_bounded_too(edge: Any) -> None:
    harness = edge(
        {
            "tiny": """
                export default {
                  fetch() {
                    const [client, server] = Object.values(new WebSocketPair());
                    server.accept();
                    server.addEventListener("message", (event) => {
                      for (let i = 0; i < Number(event.data); i++) server.send("x");
                    });
                    return new Response(null, { status: 101, webSocket: client });
                  },
                };
            """
        },
        cpu_ms=2000,
    )
    with connect(ws_url(harness.url, "/tiny/")) as ws:
        ws.send("1000")
        assert [ws.recv(timeout=10) for _ in range(1000)] == ["x"] * 1000
        # 100,000 one-byte messages in one go: each counts its overhead, so far fewer fit.
        ws.send("100000")
        code, reason, received = closed_with(ws)
    assert (code, reason) == (1011, "Send queue full")
    assert 10_000 < len(received) < 40_000
