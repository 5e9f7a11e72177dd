"""Durable Objects across edge nodes sharing a NATS store: ownership leases, write logs, forwarding.

With a SQLite store a node is alone and hosts every object itself
(``warren.bindings.durable_objects``). With a NATS store several nodes serve
the same workers, and each object must live on exactly one of them at a time,
with state that outlives that node. This module is the NATS-facing half of
that; ``DurableObjects`` drives it.

**Ownership.** An object's owner holds a lease: a key in the
``objects_leases`` bucket (``<namespace dir>.<object id>`` → owner node,
expiry in wall-clock ms), taken with compare-and-set on the key's revision
when it is absent, released or expired, renewed (compare-and-set again) every
third of its TTL, and released (deleted) when the object is evicted or the
node stops cleanly. A node trusts its lease for TTL minus a margin after the
moment it *sent* the last successful renewal, by its monotonic clock; past
that (a pause, NATS unreachable) it renews before serving anything.

**State.** Every write call (put, delete, deleteAll, transaction, setAlarm, a
SQL call that wrote, a transactionSync commit, an alarm's clearing) is
appended to the object's subject of the ``<prefix>_objects`` stream (replicas
as the store's buckets: min(3, cluster size)) with
``Nats-Expected-Last-Subject-Sequence`` = the last message the owner has
applied, *before* the call returns, and kept in the owner's SQLite file only
once appended (the isolate's output gate then holds the object's answer until
then). The file is a cache: it records the log sequence it has applied, and
a new owner opens its own copy (or an empty one) and applies the log after
that sequence. Taking an object over appends an *open* marker, which moves
the subject's last sequence, so every later append of a former owner fails its
sequence check: that check, not the lease's clock, is what guarantees a
single history (the lease revision the owner took is written into each entry
as its epoch). An entry larger than one message is split into parts; parts
not followed by their last one (a writer fenced half-way) are skipped. Every
message names the one before it (``Warren-Prev``), so a reader notices a
stretch purged under it. Every ``snapshot_every`` entries the owner stores a
copy of its file (``VACUUM INTO``) as of its last message, moves the object's
snapshot pointer to it (forward only, compare-and-set) and purges the log
below it; a new owner starts from the newest snapshot when its own file is
missing or too far behind.

**Forwarding.** Nodes advertise an internal URL in ``objects_nodes``. A stub
call for an object leased by another live node is sent there
(``POST /objects/call`` on the internal endpoint, ``Authorization: Bearer``
with the shared node secret); a call that could not be delivered (connection
refused) is tried again, against whichever node holds the lease by then, until
the lease has expired and this node can take the object. A call that was
delivered and then failed is never repeated: it may have run.

Owns: the lease, node and alarm-index keys, the log's message format, the
internal endpoint's wire format, its ASGI app and client. Must not touch:
object files (``ObjectStore`` does), isolates, the public HTTP front.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httpx

from warren.bindings import BindingError, decode_message, encode_message

if TYPE_CHECKING:
    from warren.bindings.durable_objects import DurableObjects
    from warren.server.app import Listening
    from warren.store import Store
    from warren.store.nats import ObjectsOnNATS

LEASE_ENV = "WARREN_OBJECT_LEASE_S"  # an object's lease TTL (default 10 s; renewed every third of it)
SNAPSHOT_ENV = "WARREN_OBJECT_SNAPSHOT_EVERY"  # log entries between an object's snapshots (default 1,000)
SECRET_ENV = "WARREN_NODE_SECRET"  # the internal endpoint's credential (default: derived from the secrets key)
INTERNAL_ADDRESS_ENV = "WARREN_INTERNAL_ADDRESS"  # host:port of the internal endpoint (default: edge host, any port)
INTERNAL_URL_ENV = "WARREN_INTERNAL_URL"  # how other nodes reach it (default: http://<listen host>:<port>)
DEFAULT_LEASE_S = 10.0
DEFAULT_SNAPSHOT_EVERY = 1000
MIN_LEASE_S = 1.0
MAX_HOPS = 3  # a forwarded call forwarded again this often is given up (leases moving under it)
FORWARD_CONNECT_TIMEOUT_S = 2.0
FORWARD_TIMEOUT_S = 300.0  # a delivered call's answer; past that it fails (and may have run)
NODE_URL_CACHE_S = 5.0
ADVERTISE_EVERY_S = 600.0
MAX_FORWARDED_BYTES = 40 * 1024 * 1024  # a forwarded call's request or answer (bodies are at most 32 MiB)
CALL_PATH = "/objects/call"
SOCKET_PATH = "/objects/socket/"  # + token: a WebSocket an object here accepted, claimed by another node's edge

LEASES = "objects_leases"
NODES = "objects_nodes"
ALARMS = "objects_alarms"

# Log message headers.
H_EPOCH = "Warren-Epoch"  # the lease revision its writer took the object with
H_ENTRY = "Warren-Entry"  # one write call's entry id (its parts share it)
H_MORE = "Warren-More"  # "1" on every part of an entry but the last
H_KIND = "Warren-Kind"  # "open" on a takeover marker
H_PREV = "Warren-Prev"  # the sequence of the object's message before it: a purged stretch shows as a gap

_LABEL = re.compile(r"[^A-Za-z0-9_-]+")


class Unreachable(Exception):
    """A forwarded call that was not delivered: it did not run, so it may be sent again."""


class LogGap(Exception):
    """Messages of the log were purged under a reader (a newer snapshot replaces them): start again."""


@dataclass(frozen=True)
class Lease:
    node: str
    expires_ms: int

    def live(self) -> bool:
        return self.expires_ms > _now_ms()


def _now_ms() -> int:
    return int(time.time() * 1000)


def snapshot_every() -> int:
    """Log entries between snapshots, from ``$WARREN_OBJECT_SNAPSHOT_EVERY`` (at least 10), else 1,000."""
    text = os.environ.get(SNAPSHOT_ENV, "").strip()
    if not text:
        return DEFAULT_SNAPSHOT_EVERY
    if not text.isdigit() or int(text) < 10:
        raise ValueError(f"{SNAPSHOT_ENV} must be a whole number of log entries, at least 10")
    return int(text)


def lease_seconds() -> float:
    """The lease TTL from ``$WARREN_OBJECT_LEASE_S`` (at least 1 s), else 10 s."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{LEASE_ENV} must be a number of seconds, not {text!r}") from None
    if not MIN_LEASE_S <= value <= 3600:
        raise ValueError(f"{LEASE_ENV} must be between {MIN_LEASE_S:g} and 3600 seconds")
    return value


class Placement:
    """One node's view of where objects live, and its half of the conversation with the others."""

    def __init__(
        self,
        nats: ObjectsOnNATS,
        node_id: str,
        secret: str,
        lease_s: float = DEFAULT_LEASE_S,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    ) -> None:
        if not secret:
            raise ValueError("the node secret is empty")
        self.nats = nats
        self.snapshot_every = snapshot_every
        self.node_id = node_id
        self.secret = secret
        self.lease_s = lease_s
        self.renew_every = lease_s / 3
        # A lease is trusted this long after its renewal was sent (the margin covers clock drift
        # between nodes judging expiry by wall clock).
        self.valid_for = lease_s - min(1.0, lease_s / 5)
        self.url = ""
        self._urls: dict[str, tuple[str | None, float]] = {}
        self._http: httpx.AsyncClient | None = None
        self._advertiser: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin; the buckets are made ready in the background (a node comes up, and serves what
        needs no object, even while NATS is slow or away)."""
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(FORWARD_TIMEOUT_S, connect=FORWARD_CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            trust_env=False,  # node to node: never through a proxy from the environment
        )
        self._advertiser = asyncio.get_running_loop().create_task(self._advertise_forever())

    async def ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the buckets exist and this node is advertised."""
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        if self._advertiser is not None:
            self._advertiser.cancel()
        try:
            await asyncio.wait_for(self.nats.swap(NODES, self.node_id, None, None), 2.0)
        except Exception:  # a stopping node's entry is only a hint: it ages out
            pass
        if self._http is not None:
            await self._http.aclose()

    async def advertise(self) -> None:
        record = {"url": self.url, "started_ms": _now_ms()}
        await self.nats.swap(NODES, self.node_id, json.dumps(record).encode(), None)

    async def _advertise_forever(self) -> None:
        pause = 0.5
        while not self._ready.is_set():
            try:
                await self.nats.ready()
                await self.advertise()
                self._ready.set()
            except Exception:  # NATS slow or away: the node's objects wait for it
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
        while True:
            await asyncio.sleep(ADVERTISE_EVERY_S)
            try:
                await self.advertise()
            except Exception:  # tried again next time; peers keep the URL they have
                pass

    async def node_url(self, node: str) -> str | None:
        """Where ``node`` takes forwarded calls (None if it never said)."""
        cached = self._urls.get(node)
        if cached is not None and time.monotonic() - cached[1] < NODE_URL_CACHE_S:
            return cached[0]
        value, _ = await self.nats.get(NODES, _label(node))
        url: str | None = None
        if value is not None:
            try:
                url = str(json.loads(value)["url"]) or None
            except (ValueError, KeyError, TypeError):
                url = None
        self._urls[node] = (url, time.monotonic())
        return url

    @property
    def authorization(self) -> str:
        """The header value other nodes' internal endpoints accept."""
        return f"Bearer {self.secret}"

    @staticmethod
    def socket_url(node_url: str, token: str) -> str:
        """Where another node's edge claims a socket held on the node at ``node_url`` (ws:// or wss://)."""
        base = node_url.rstrip("/")
        base = "ws" + base[4:] if base.startswith("http") else base
        return base + SOCKET_PATH + quote(token, safe="")

    def forget_node(self, node: str) -> None:
        self._urls.pop(node, None)

    # --- leases ---------------------------------------------------------------------------

    @staticmethod
    def key(namespace_dir: str, object_id: str) -> str:
        return f"{namespace_dir}.{object_id}"

    async def lease(self, key: str) -> tuple[Lease | None, int]:
        """The object's lease (None if free) and its key's revision (what a take must name)."""
        value, revision = await self.nats.get(LEASES, key)
        if value is None:
            return None, revision
        try:
            record = json.loads(value)
            return Lease(str(record["node"]), int(record["expires_ms"])), revision
        except (ValueError, KeyError, TypeError):
            return None, revision  # unreadable: as good as free

    async def take(self, key: str, last: int) -> tuple[int, float] | None:
        """Write a lease naming this node if the key is still at revision ``last``: (its new revision,
        the monotonic time the write was sent), or None if another write got there first. Renewing is
        taking again from the revision held."""
        sent = time.monotonic()
        record = {"node": self.node_id, "expires_ms": _now_ms() + int(self.lease_s * 1000)}
        revision = await self.nats.swap(LEASES, key, json.dumps(record).encode(), last)
        return None if revision is None else (revision, sent)

    async def release(self, key: str, last: int | None = None) -> None:
        """Free the lease if it is still the one held (revision ``last``), or with None if it names this
        node (a stopping node, whose last renewal may have landed unseen). Best effort: a lease not
        released expires."""
        try:
            if last is None:
                lease, last = await asyncio.wait_for(self.lease(key), 2.0)
                if lease is None or lease.node != self.node_id:
                    return
            await asyncio.wait_for(self.nats.swap(LEASES, key, None, last), 2.0)
        except Exception:
            pass

    # --- the write log --------------------------------------------------------------------

    async def append(self, key: str, ops: list[Any], epoch: int, last: int) -> int | None:
        """Append one write call's operations after sequence ``last``: the sequence of its last part,
        or None if the log had moved on (this node is fenced off). Other failures raise: whether the
        entry landed is then unknown."""
        data = json.dumps({"ops": ops}, separators=(",", ":")).encode()
        size = self.nats.max_message()
        parts = [data[start : start + size] for start in range(0, len(data), size)] or [b""]
        entry = secrets.token_hex(8)
        for index, part in enumerate(parts):
            headers = {H_EPOCH: str(epoch), H_ENTRY: entry, H_PREV: str(last)}
            if index < len(parts) - 1:
                headers[H_MORE] = "1"
            appended = await self.nats.append(key, part, headers, last)
            if appended is None:
                return None
            last = appended
        return last

    async def mark(self, key: str, epoch: int, last: int) -> int | None:
        """The takeover marker after sequence ``last`` (None if the log moved on meanwhile)."""
        record = json.dumps({"open": self.node_id}).encode()
        return await self.nats.append(key, record, {H_EPOCH: str(epoch), H_KIND: "open", H_PREV: str(last)}, last)

    async def replay(self, key: str, after: int) -> AsyncIterator[tuple[int, list[Any] | None]]:
        """The log after ``after``: (sequence, operations) per complete entry, (sequence, None) per marker.
        Raises ``LogGap`` if a message is missing (purged under the reader)."""
        pending: str | None = None
        parts: list[bytes] = []
        previous = after
        async for seq, headers, data in self.nats.read(key, after):
            if headers.get(H_PREV) != str(previous):
                raise LogGap(f"the log of {key} has no message {headers.get(H_PREV)} before {seq} (read from {after})")
            previous = seq
            if headers.get(H_KIND) == "open":
                pending, parts = None, []
                yield seq, None
                continue
            entry = headers.get(H_ENTRY, "")
            if entry != pending:
                parts = []  # an entry whose writer was fenced off before its last part
            pending = entry
            parts.append(data)
            if headers.get(H_MORE) == "1":
                continue
            record = json.loads(b"".join(parts))
            pending, parts = None, []
            yield seq, list(record["ops"])

    # --- the alarm index (objects with an alarm set, so another node fires it if the owner is gone) ---

    async def set_alarm(self, key: str, record: dict[str, Any]) -> None:
        await self.nats.swap(ALARMS, key, json.dumps(record).encode(), None)

    async def clear_alarm(self, key: str) -> None:
        await self.nats.swap(ALARMS, key, None, None)

    async def alarms(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for key, value, _ in await self.nats.scan(ALARMS):
            try:
                found.append((key, json.loads(value)))
            except ValueError:
                continue
        return found

    # --- forwarding -----------------------------------------------------------------------

    async def forward(self, url: str, call: dict[str, Any], body: bytes | None) -> tuple[dict[str, Any], bytes | None]:
        """Send a stub call to the node at ``url``; its answer (header, body). Raises ``Unreachable``
        when it was not delivered, ``BindingError`` when it failed after (it may have run)."""
        if self._http is None:
            raise RuntimeError("placement is not started")
        try:
            response = await self._http.post(
                url.rstrip("/") + CALL_PATH,
                content=encode_message(call, body),
                headers={"authorization": f"Bearer {self.secret}", "content-type": "application/octet-stream"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(str(exc)) from None
        except httpx.HTTPError as exc:
            raise BindingError(
                f"The Durable Object's node failed during the call ({type(exc).__name__}); it may have run."
            ) from None
        if response.status_code == 503:
            raise Unreachable("the node is stopping")
        if response.status_code != 200:
            raise BindingError(f"The Durable Object's node refused the call ({response.status_code}).")
        try:
            return decode_message(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BindingError(f"The Durable Object's node answered something unreadable: {exc}") from None


def _label(text: str) -> str:
    return _LABEL.sub("-", text).strip("-")[:64] or "node"


# --- the internal endpoint ----------------------------------------------------------------------

CallHandler = Callable[[dict[str, Any], bytes | None], Awaitable[tuple[dict[str, Any], bytes | None]]]
SocketHandler = Callable[[str, dict[str, Any], Any, Any], Awaitable[None]]


def internal_app(secret: str, handler: CallHandler, socket_handler: SocketHandler | None = None) -> Any:
    """The ASGI app other nodes forward stub calls to: ``POST /objects/call`` with the node secret,
    and ``/objects/socket/<token>`` (a WebSocket) to relay a client to a socket an object here accepted."""
    expected = f"Bearer {secret}".encode()

    async def respond(send: Any, status: int, body: bytes, kind: bytes = b"text/plain; charset=utf-8") -> None:
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            given = dict(scope["headers"]).get(b"authorization", b"")
            path = str(scope["path"])
            if socket_handler is None or not path.startswith(SOCKET_PATH) or not hmac.compare_digest(given, expected):
                if (await receive())["type"] == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008})
                return
            await socket_handler(unquote(path[len(SOCKET_PATH):]), scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != CALL_PATH:
            await respond(send, 404, b"not found\n")
            return
        if scope["method"] != "POST":
            await respond(send, 405, b"POST only\n")
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, expected):
            await respond(send, 401, b"unauthorized\n")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORWARDED_BYTES:
                await respond(send, 413, b"too large\n")
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            call, body = decode_message(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            await respond(send, 400, b"malformed call\n")
            return
        try:
            answer, data = await handler(call, body)
        except BindingError as exc:
            answer, data = {"error": {"message": exc.message, "name": exc.name}}, None
        await respond(send, 200, encode_message(answer, data), b"application/octet-stream")

    return app


async def enable(objects: DurableObjects, store: Store, host: str, node_name: str) -> Listening | None:
    """Place the node's objects across the nodes sharing ``store`` when it is NATS; start the
    internal endpoint and return it (None on SQLite, where a node is alone and nothing changes)."""
    from warren.server.app import listen
    from warren.store.nats import NATSStore, ObjectsOnNATS

    if not isinstance(store, NATSStore):
        return None
    nats = ObjectsOnNATS(store)
    secret = os.environ.get(SECRET_ENV, "").strip() or nats.node_secret()
    node_id = f"{_label(node_name or socket.gethostname())}-{secrets.token_hex(4)}"
    placement = Placement(nats, node_id, secret, lease_seconds(), snapshot_every())
    address = os.environ.get(INTERNAL_ADDRESS_ENV, "").strip()
    listen_host, port = host, 0
    if address:
        listen_host, _, port_text = address.rpartition(":")
        listen_host = listen_host.strip("[]") or host
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{INTERNAL_ADDRESS_ENV} must be host:port, not {address!r}") from None
    internal = await listen(
        internal_app(secret, objects.serve_forwarded, objects.serve_forwarded_socket), listen_host, port
    )
    advertised = os.environ.get(INTERNAL_URL_ENV, "").strip()
    if not advertised:
        shown = socket.gethostname() if listen_host in ("0.0.0.0", "::", "") else listen_host
        shown = f"[{shown}]" if ":" in shown else shown
        advertised = f"http://{shown}:{internal.port}"
    placement.url = advertised
    objects.placement = placement
    return internal


__all__ = [
    "INTERNAL_ADDRESS_ENV",
    "INTERNAL_URL_ENV",
    "LEASE_ENV",
    "SECRET_ENV",
    "SNAPSHOT_ENV",
    "Lease",
    "LogGap",
    "Placement",
    "Unreachable",
    "enable",
    "internal_app",
    "lease_seconds",
    "snapshot_every",
]
