// A chat room per name: one Durable Object per room holds its WebSockets and its history.
//
//   GET /                         a page to chat from (open it in two tabs)
//   GET /room/<name>?name=<you>   (Upgrade: websocket) join the room
//   GET /room/<name>/history      the room's last 100 messages, as JSON
//
// The room takes its sockets with ctx.acceptWebSocket(), so every message
// reaches webSocketMessage() one at a time, in order with the room's other
// events, while the history is written to the room's SQLite database.
import { DurableObject } from "cloudflare:workers";

const MAX_TEXT = 2000;
const HISTORY = 100;

export class ChatRoom extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(`CREATE TABLE IF NOT EXISTS messages (
      id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL)`);
    // Keep-alives are answered without waking the room.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/history")) return Response.json(this.history());
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("Join with a WebSocket (Upgrade: websocket).", { status: 426 });
    }
    const name = (url.searchParams.get("name") || "anonymous").trim().slice(0, 32) || "anonymous";
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, [name]);
    server.serializeAttachment({ name });
    server.send(JSON.stringify({ type: "history", messages: this.history() }));
    this.broadcast({ type: "joined", name, members: this.members() });
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    const { name } = ws.deserializeAttachment();
    let text;
    try {
      text = JSON.parse(message).text;
    } catch {
      text = undefined;
    }
    if (typeof text !== "string" || text.length === 0 || text.length > MAX_TEXT) {
      ws.send(JSON.stringify({ type: "error", error: `send {"text": "..."} with 1 to ${MAX_TEXT} characters` }));
      return;
    }
    const at = Date.now();
    this.ctx.storage.sql.exec("INSERT INTO messages (name, text, at) VALUES (?, ?, ?)", name, text, at);
    this.broadcast({ type: "message", name, text, at });
  }

  async webSocketClose(ws, code, reason) {
    const { name } = ws.deserializeAttachment();
    this.broadcast({ type: "left", name, members: this.members() });
  }

  history() {
    return this.ctx.storage.sql
      .exec("SELECT name, text, at FROM messages ORDER BY id DESC LIMIT ?", HISTORY)
      .toArray()
      .reverse();
  }

  members() {
    return this.ctx.getWebSockets().map((ws) => ws.deserializeAttachment().name);
  }

  broadcast(event) {
    const data = JSON.stringify(event);
    for (const ws of this.ctx.getWebSockets()) {
      try {
        ws.send(data);
      } catch {
        // that socket is closing: its webSocketClose() will follow
      }
    }
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const room = url.pathname.match(/^\/room\/([A-Za-z0-9_-]{1,64})(\/history)?$/);
    if (room) return env.ROOMS.getByName(room[1]).fetch(request);
    if (url.pathname === "/") {
      return new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    return new Response("Not found", { status: 404 });
  },
};

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>warren chat</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40em; margin: 2em auto; }
  #log { border: 1px solid #ccc; height: 24em; overflow-y: auto; padding: .5em; }
  .meta { color: #777; }
</style>
<h1>warren chat</h1>
<form id="join">Room <input id="room" value="lobby"> Name <input id="name" value="guest"> <button>Join</button></form>
<div id="log"></div>
<form id="say"><input id="text" size="50" autocomplete="off"> <button>Send</button></form>
<script>
  let socket = null;
  const log = document.getElementById("log");
  function line(text, meta) {
    const p = document.createElement("div");
    p.textContent = text;
    if (meta) p.className = "meta";
    log.append(p);
    log.scrollTop = log.scrollHeight;
  }
  document.getElementById("join").onsubmit = (event) => {
    event.preventDefault();
    if (socket) socket.close(1000, "left");
    const room = encodeURIComponent(document.getElementById("room").value);
    const name = encodeURIComponent(document.getElementById("name").value);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(scheme + "://" + location.host + "/room/" + room + "?name=" + name);
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "history") event.messages.forEach((m) => line(m.name + ": " + m.text));
      else if (event.type === "message") line(event.name + ": " + event.text);
      else if (event.type === "joined" || event.type === "left") {
        line(event.name + " " + event.type + " (here: " + event.members.join(", ") + ")", true);
      } else if (event.type === "error") line(event.error, true);
    };
    socket.onclose = () => line("disconnected", true);
  };
  document.getElementById("say").onsubmit = (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    if (socket && input.value) socket.send(JSON.stringify({ text: input.value }));
    input.value = "";
  };
</script>
`;
