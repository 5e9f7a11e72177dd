"""WebSockets accepted inside Durable Objects (issue #8), and through service bindings.

Real clients (the ``websockets`` package) against ``warren dev``: a worker returns
its stub's 101, the node holds the object's socket and the edge relays the client
to it. The object takes sockets with ``server.accept()`` (listeners) or with
``ctx.acceptWebSocket()`` (webSocketMessage/Close through the input gate). The
chat-room example runs as a user would run it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServiceProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chat"

FRONT_TOML = """
name = "front"
main = "index.js"

[[services]]
binding = "BACK"
service = "back"

[[durable_objects.bindings]]
name = "GATED"
class_name = "Gated"

[[durable_objects.bindings]]
name = "CLASSIC"
class_name = "Classic"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Gated", "Classic"]
"""

FRONT = """
import { DurableObject } from "cloudflare:workers";

// Sockets taken with ctx.acceptWebSocket(): events come to the methods below, one at a time.
export class Gated extends DurableObject {
  async fetch(request) {
    const [client, server] = Object.values(new WebSocketPair());
    const who = new URL(request.url).searchParams.get("who") || "anon";
    this.ctx.acceptWebSocket(server, ["user:" + who, "all"]);
    server.serializeAttachment({ who });
    return new Response(null, { status: 101, webSocket: client, headers: { "x-object": "gated" } });
  }
  async webSocketMessage(ws, message) {
    if (message === "cpu") { for (;;) {} }
    if (message === "tags") { ws.send(JSON.stringify(this.ctx.getTags(ws))); return; }
    if (message === "who") { ws.send(JSON.stringify(ws.deserializeAttachment())); return; }
    if (message === "sockets") { ws.send(String(this.ctx.getWebSockets("all").length)); return; }
    if (message === "big attachment") {
      try { ws.serializeAttachment("x".repeat(20000)); ws.send("kept"); } catch (e) { ws.send(e.name); }
      return;
    }
    if (message instanceof ArrayBuffer) { ws.send(new Uint8Array(message).reverse()); return; }
    // A read-modify-write across two storage awaits: only the input gate keeps these in order.
    const n = ((await this.ctx.storage.get("n")) ?? 0) + 1;
    await this.ctx.storage.put("n", n);
    ws.send(`${message}:${n}`);
  }
  async webSocketClose(ws, code, reason, wasClean) {
    const closes = (await this.ctx.storage.get("closes")) ?? [];
    closes.push([code, reason, wasClean, ws.deserializeAttachment().who]);
    await this.ctx.storage.put("closes", closes);
  }
  async state() {
    return { n: (await this.ctx.storage.get("n")) ?? 0, closes: (await this.ctx.storage.get("closes")) ?? [],
             open: this.ctx.getWebSockets().length };
  }
}

// The older style: accept() and listeners.
export class Classic extends DurableObject {
  async fetch(request) {
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    this.seen = this.seen ?? 0;
    server.addEventListener("message", (event) => { this.seen++; server.send(`classic:${event.data}:${this.seen}`); });
    return new Response(null, { status: 101, webSocket: client });
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, kind, name] = url.pathname.split("/");
    if (kind === "gated") return env.GATED.getByName(name).fetch(request);
    if (kind === "classic") return env.CLASSIC.getByName(name).fetch(request);
    if (kind === "back") return env.BACK.fetch(request);
    if (kind === "state") return Response.json(await env.GATED.getByName(name).state());
    if (kind === "drop") {
      // Accepted by the object, then not returned: the node closes it for the object.
      const answer = await env.GATED.getByName(name).fetch(request);
      return new Response(`dropped a ${answer.status}`);
    }
    if (kind === "forged") {
      // A plain request whose worker asks the object for a socket anyway: it cannot answer 101.
      const answer = await env.GATED.getByName(name).fetch("http://o/?who=forger", { headers: { upgrade: "websocket" } });
      return answer;
    }
    if (kind === "accept-relayed") {
      const answer = await env.GATED.getByName(name).fetch(request);
      try { answer.webSocket.accept(); return new Response("accepted"); } catch (e) { return new Response(e.message, { status: 500 }); }
    }
    return new Response("not found", { status: 404 });
  },
};
"""

BACK_TOML = """
name = "back"
main = "index.js"

[[durable_objects.bindings]]
name = "ECHOES"
class_name = "Echo"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Echo"]
"""

BACK = """
import { DurableObject } from "cloudflare:workers";
export class Echo extends DurableObject {
  async fetch(request) {
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    return new Response(null, { status: 101, webSocket: client });
  }
  webSocketMessage(ws, message) { ws.send("object:" + message); }
}
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/back/object") return env.ECHOES.getByName("one").fetch(request);  // service -> object
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    server.addEventListener("message", (event) => server.send("service:" + event.data));
    return new Response(null, { status: 101, webSocket: client });
  },
};
"""


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("ws-objects")
    for name, text in {"front/wrangler.toml": FRONT_TOML, "front/index.js": FRONT,
                       "back/wrangler.toml": BACK_TOML, "back/index.js": BACK}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    process = ServiceProcess(["dev", "front", "--no-watch", "--service", "back"], root)
    yield process
    process.stop()


def ws_url(server: ServiceProcess, path: str) -> str:
    return "ws" + server.url.removeprefix("http") + path


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as closed:
        frame = closed.rcvd
        return (frame.code if frame is not None else None), (frame.reason if frame is not None else "")


def wait_for_state(server: ServiceProcess, name: str, check: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = server.get(f"/state/{name}").json()
        if check(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def test_accepted_sockets_deliver_through_the_input_gate_in_order(objects: ServiceProcess) -> None:
    with connect(ws_url(objects, "/gated/counter?who=ann")) as ann, connect(
        ws_url(objects, "/gated/counter?who=bob")
    ) as bob:
        # Both clients at once: every read-modify-write saw the one before it.
        for i in range(40):
            ann.send(f"a{i}")
            bob.send(f"b{i}")
        got = {"a": [], "b": []}
        for ws, side in ((ann, "a"), (bob, "b")):
            for _ in range(40):
                text, n = str(ws.recv(timeout=10)).split(":")
                got[side].append((text, int(n)))
        for side in "ab":
            assert [text for text, _ in got[side]] == [f"{side}{i}" for i in range(40)]  # in the order sent
            counts = [n for _, n in got[side]]
            assert counts == sorted(counts)
        assert sorted(n for side in "ab" for _, n in got[side]) == list(range(1, 81))

        ann.send("tags")
        assert json.loads(ann.recv(timeout=10)) == ["user:ann", "all"]
        bob.send("who")
        assert json.loads(bob.recv(timeout=10)) == {"who": "bob"}
        bob.send("sockets")
        assert bob.recv(timeout=10) == "2"
        ann.send("big attachment")
        assert ann.recv(timeout=10) == "RangeError"
        ann.send(b"\x01\x02\x03")
        assert ann.recv(timeout=10) == b"\x03\x02\x01"
        ann.close(4001, "ann leaves")
    state = wait_for_state(objects, "counter", lambda s: len(s["closes"]) == 2)
    assert state["n"] == 80
    assert state["open"] == 0
    # ann closed with a code; bob's client closed normally when the block ended.
    assert sorted(state["closes"], key=lambda close: close[3]) == [
        [4001, "ann leaves", True, "ann"], [1000, "", True, "bob"],
    ]


def test_the_objects_101_headers_reach_the_client_and_a_cpu_hog_is_cut(objects: ServiceProcess) -> None:
    with connect(ws_url(objects, "/gated/hog?who=h")) as ws:
        assert ws.response is not None and ws.response.headers["x-object"] == "gated"
        ws.send("one")
        assert ws.recv(timeout=10) == "one:1"
        ws.send("cpu")
        code, reason = closed_with(ws)
        assert code == 1011 and "CPU" in reason
    # The object is reset; its storage stays, and it takes sockets again.
    with connect(ws_url(objects, "/gated/hog?who=h")) as ws:
        ws.send("two")
        assert ws.recv(timeout=10) == "two:2"


def test_listeners_style_sockets_in_an_object(objects: ServiceProcess) -> None:
    with connect(ws_url(objects, "/classic/c1")) as first:
        first.send("x")
        assert first.recv(timeout=10) == "classic:x:1"
        with connect(ws_url(objects, "/classic/c1")) as second:
            second.send("y")
            assert second.recv(timeout=10) == "classic:y:2"  # one instance holds both sockets
        first.send("z")
        assert first.recv(timeout=10) == "classic:z:3"


def test_sockets_through_a_service_binding_and_a_service_in_front_of_an_object(objects: ServiceProcess) -> None:
    with connect(ws_url(objects, "/back/service")) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "service:hi"
    with connect(ws_url(objects, "/back/object")) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "object:hi"


def test_a_socket_nobody_returns_is_closed_for_the_object(objects: ServiceProcess) -> None:
    dropped = objects.get("/drop/lost?who=dropper", headers={"upgrade": "websocket"})
    assert dropped.status_code == 200 and dropped.text == "dropped a 101"
    # A plain request cannot answer 101: the worker's response fails, and that socket is dropped too.
    forged = objects.get("/forged/lost")
    assert forged.status_code == 500
    objects.wait_for(r"Worker tried to return a WebSocket in a response to a request which did not contain")
    # A stub's socket cannot be accepted by the worker that got it.
    refused = objects.get("/accept-relayed/lost?who=acceptor", headers={"upgrade": "websocket"})
    assert refused.status_code == 500 and "only return it in a Response" in refused.text
    state = wait_for_state(objects, "lost", lambda s: len(s["closes"]) == 3, timeout=15)
    assert sorted(state["closes"], key=lambda close: close[3]) == [
        [1006, "WebSocket disconnected without sending Close frame.", False, "acceptor"],
        [1006, "WebSocket disconnected without sending Close frame.", False, "dropper"],
        [1006, "WebSocket disconnected without sending Close frame.", False, "forger"],
    ]
    assert state["open"] == 0


def test_an_upgrade_to_a_missing_route_is_still_refused_over_http(objects: ServiceProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(objects, "/nowhere"))
    assert refused.value.response.status_code == 404


# --- the example ------------------------------------------------------------------------------------


def _events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(ws.recv(timeout=10)) for _ in range(count)]


def test_chat_room_example_broadcasts_keeps_history_and_survives_a_restart(tmp_path: Path) -> None:
    project = tmp_path / "chat"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".warren"))
    server = ServiceProcess(["dev", str(project), "--no-watch"], project)
    try:
        page = server.get("/")
        assert page.status_code == 200 and "new WebSocket" in page.text
        with connect(ws_url(server, "/room/lobby?name=ann")) as ann:
            assert _events(ann, 2) == [
                {"type": "history", "messages": []},
                {"type": "joined", "name": "ann", "members": ["ann"]},
            ]
            with connect(ws_url(server, "/room/lobby?name=bob")) as bob, connect(
                ws_url(server, "/room/elsewhere?name=eve")
            ) as eve:
                assert _events(bob, 2)[1] == {"type": "joined", "name": "bob", "members": ["ann", "bob"]}
                assert _events(ann, 1) == [{"type": "joined", "name": "bob", "members": ["ann", "bob"]}]
                _events(eve, 2)
                ann.send(json.dumps({"text": "hello bob"}))
                for ws in (ann, bob):
                    event = json.loads(ws.recv(timeout=10))
                    assert (event["type"], event["name"], event["text"]) == ("message", "ann", "hello bob")
                bob.send("ping")  # answered by the runtime without waking the room
                assert bob.recv(timeout=10) == "pong"
                bob.send("not json")
                assert json.loads(bob.recv(timeout=10))["type"] == "error"
                eve.send(json.dumps({"text": "anyone?"}))
                assert json.loads(eve.recv(timeout=10))["text"] == "anyone?"  # only eve's room hears it
            # bob and eve left: ann hears bob leave, never eve.
            assert _events(ann, 1) == [{"type": "left", "name": "bob", "members": ["ann"]}]
        history = server.get("/room/lobby/history").json()
        assert [(m["name"], m["text"]) for m in history] == [("ann", "hello bob")]
    finally:
        server.stop()
    again = ServiceProcess(["dev", str(project), "--no-watch"], project)
    try:
        with connect(ws_url(again, "/room/lobby?name=cy")) as cy:
            first = json.loads(cy.recv(timeout=10))
            assert first["type"] == "history"
            assert [(m["name"], m["text"]) for m in first["messages"]] == [("ann", "hello bob")]
    finally:
        again.stop()


# --- across nodes: the object on one node, the client on another ----------------------------------

CLUSTER_WORKER = r"""
import { DurableObject } from "cloudflare:workers";
export class Counter extends DurableObject {
  async fetch(request) {
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, [new URL(request.url).searchParams.get("who") || "anon"]);
    return new Response(null, { status: 101, webSocket: client });
  }
  webSocketMessage(ws, message) {
    const who = this.ctx.getTags(ws)[0];
    for (const other of this.ctx.getWebSockets()) other.send(`${who}: ${message}`);
  }
  async webSocketClose(ws, code, reason) {
    const closed = (await this.ctx.storage.get("closed")) ?? [];
    await this.ctx.storage.put("closed", [...closed, `${this.ctx.getTags(ws)[0]} ${code} ${reason}`]);
  }
  async closed() { return (await this.ctx.storage.get("closed")) ?? []; }
  async place() { return "here"; }
}
export default {
  async fetch(request, env) {
    const [, action, name] = new URL(request.url).pathname.split("/");
    if (action === "ready") return new Response("ready");
    const stub = env.COUNTER.getByName(name);
    if (action === "ws") return stub.fetch(request);
    if (action === "place") return Response.json({ value: await stub.place() });
    if (action === "closed") return Response.json({ value: await stub.closed() });
    return new Response("no such action", { status: 404 });
  },
};
"""


def test_a_client_on_another_node_reaches_the_objects_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.test_durable_objects_cluster as cluster

    if cluster.NATS_SERVER is None:
        pytest.skip(cluster.NO_NATS)
    cluster.environment.__wrapped__(monkeypatch)  # the cluster tests' environment: short leases, a node secret
    monkeypatch.setattr(cluster, "WORKER", CLUSTER_WORKER)
    nats = cluster.NatsCluster(tmp_path / "nats", size=1)
    platform = cluster.Platform(nats.store_url(), tmp_path)
    try:
        owner, other = platform.start_nodes(2)
        assert cluster.call(owner, "/place/room") == "here"  # the object lives on `owner` from now on
        headers = {"host": cluster.HOST["host"]}
        with connect(ws_url(owner, "/ws/room?who=near"), additional_headers=headers) as near, connect(
            ws_url(other, "/ws/room?who=far"), additional_headers=headers
        ) as far:
            far.send("hello from the other node")
            assert near.recv(timeout=10) == far.recv(timeout=10) == "far: hello from the other node"
            near.send("hi back")
            assert near.recv(timeout=10) == far.recv(timeout=10) == "near: hi back"
            far.close(4002, "bye")
        deadline = time.monotonic() + 10
        while sorted(cluster.call(other, "/closed/room")) != ["far 4002 bye", "near 1000 "]:
            assert time.monotonic() < deadline, cluster.call(other, "/closed/room")
            time.sleep(0.1)
        # The internal socket endpoint wants the node secret.
        internal = owner.wait_for(cluster.INTERNAL).group(1)
        with pytest.raises(InvalidStatus):
            connect("ws" + internal.removeprefix("http") + "/objects/socket/anything")
    finally:
        platform.stop()
        nats.stop()
