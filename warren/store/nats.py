"""``NATSStore``: the store on NATS JetStream, shared by one control plane and many edge nodes.

Where ``SQLiteStore`` is one file on one machine, this store is a set of
JetStream buckets that any number of ``warren control`` and ``warren serve``
processes reach over the network (client: nats-py). Nothing is replicated by
warren itself: JetStream stores, replicates (``replicas=3`` on a cluster) and
orders every write; warren only chooses a data layout whose every state is
meaningful.

Layout (bucket names are ``<prefix>_<kind>``, prefix ``warren`` by default)::

    KV accounts       id.<account id>             -> account name        (index, written first)
                      name.<name>                 -> Account             (the account)
    KV tokens         <sha256 of the secret>      -> Token               (the secret itself is never stored)
    KV scripts        <account>.<script>          -> {created_on, modified_on, incarnation}
    KV versions       next.<account>.<script>     -> last version number (a compare-and-set counter)
                      number.<account>.<script>.<n> -> version id        (index)
                      id.<account>.<script>.<version id> -> Version      (immutable)
    KV deployments    <account>.<script>          -> Deployment + incarnation; the key's history (up to
                                                     10,000 entries) is the list of deployments
    KV routes         <sha256 of the pattern>     -> Route + incarnation (one key per pattern: hostnames are global)
    KV secrets        <account>.<script>.<name>   -> AES-GCM ciphertext + incarnation
    KV kv_namespaces  <account>.<sha256 of title> -> KVNamespace         (one key per title: titles are per account)
    Object store modules  <sha256 hex>            -> module bytes (content-addressed; checked on read)
    KV kv_data        <namespace id>.<hex of key> -> a KV value, its record in headers (KV data; see that section)
    Object store kv_values  <namespace id>/<random> -> KV values over 1 MiB

Key parts that come from callers are escaped (every byte outside
``[A-Za-z0-9_-]`` becomes ``=XX``), so a script named ``a.*`` can never act as
a subject wildcard; parts that may be long (patterns, titles) are hashed.

**Atomicity.** JetStream has no multi-key transaction: a write is one message
on one key, optionally conditional on that key's last revision
(``Nats-Expected-Last-Subject-Sequence``, i.e. ``update(key, value, last=…)``).
So every operation is laid out so that its *visible* effect is one such write,
and the writes before it are invisible until it lands:

- ``create_account`` writes the id index, then creates ``name.<name>``
  conditionally (absent): that one write is the account. An index left by a
  failure points at a name whose record has another id, and is ignored.
- ``upload_version`` stores the module blobs (content-addressed, idempotent),
  takes the next number with a compare-and-set on the script's counter, writes
  the number index, then the version record. Only then, with ``deploy``, the
  one deployment key that makes it live; then the script record (created, or
  its ``modified_on`` touched). A failure in between leaves an archived version
  that serves nothing (as if uploaded without ``deploy``), or skips a number.
- A deployment is one conditional write of the script's deployment key (its
  history is ``list_deployments``). Edge nodes read deployments first and fetch
  the versions they name, which were written before them and never change.
- ``delete_script`` is one write: the script record is deleted. Everything that
  hangs off a script (deployments, secrets, routes) carries the script's
  *incarnation*, a random id chosen when the record is created, and counts only
  while a script record of that incarnation exists. The clean-up that follows
  (purging the deployment history, deleting the secrets and routes) is garbage
  collection, each step conditional on the revision it saw; if it is cut short
  the leftovers stay invisible, and a script created again under the same name
  has a new incarnation, so it starts from scratch as the contract requires.
- A brand-new script deployed in one upload writes its deployment (with the new
  incarnation) before its script record: creating the record is the one write
  that makes it exist and serve.
- Routes and namespace titles are unique through conditional creation of the
  key named after them; a route left by a deleted script is dead and is taken
  over by the next ``create_route`` for that pattern.
- ``modified_on`` is touched after the write it records; a failure in between
  leaves it stale (cosmetic).

What is *not* atomic, said plainly: an operation that fails half-way (process
killed, NATS unreachable mid-call) may leave the invisible leftovers above (an
orphan index, a skipped version number, an archived version, encrypted
secrets of a deleted incarnation) rather than nothing at all; and a
publish that times out may or may not have been applied (JetStream cannot say),
so the caller gets the error even if the write landed. No state a reader can
see is ever half-written.

**Revision.** Every write appends one message to one bucket's stream, so the
store's revision is the sum of the buckets' last stream sequences: it moves on
every write, atomically with it, with no extra counter to bump (a separate
``revision`` key could not be written in the same step as the change it counts,
and a lost bump would leave edges stale). An operation of several writes moves
it by several. ``edge_state`` reads the revision first, then the buckets, so
the state it returns is at least as new as its revision; anything newer shows
up as a changed revision and another refresh.

**Edge state** is read bucket by bucket (concurrently; each bucket through a
short-lived ordered consumer delivering the last value per key), not as one
snapshot; the write orders above make every mix of old and new reads a state
that was, or is about to be, true (at worst, a script deleted and created again
in the instant of a read is absent from that one read). Versions, immutable, are
fetched once per node. On loopback an ``edge_state`` takes about 4 ms.

**Watching.** ``wait_for_change`` starts, on first use, one ordered JetStream
consumer per bucket (a KV watch: headers only, from the newest message on) and
wakes its waiters on every message (about 1 ms after a write on loopback); it
then reads the revision from the server, so a watch that was lost costs
latency, never correctness: the timeout always answers with the server's
revision. The watches live in one server's memory, so they are started afresh
after every reconnection (a NATS restart, a partition healed).

**Secrets** are sealed with AES-256-GCM under a key given to the store
(``secrets_key=`` or ``$WARREN_SECRETS_KEY``: 32 random bytes, base64), with the
account, script, name and incarnation as associated data, so a NATS operator
sees names but no values, and cannot move a ciphertext to another secret.
Generate a key once and give the same one to the control plane and every edge
node::

    python -c 'from warren.store.nats import generate_secrets_key; print(generate_secrets_key())'

The key cannot be rotated in place yet: each sealed value names the key it
needs (a short fingerprint), so a node with another key says so rather than
failing obscurely, but moving to a new key means putting every secret again.

**Servers and replicas.** A store takes several server URLs (a sequence, or
one string with commas) and reconnects to any of them, and to the cluster
members the server it reached announces. Buckets are created with
``replicas`` copies; when not given, ``min(3, cluster size)`` as the server
announces it (1 for a single server), so on a cluster of three an
acknowledged write is on two servers at least and survives the loss of any
one. Replicas apply when a bucket is created: an existing bucket keeps its own.

**Connection.** Reads use the stream leader (no direct gets), so a store
object reads its own writes. A first connection that fails raises
``ConnectionError``; once connected, a lost connection is retried forever, and
meanwhile every call fails at once with ``ConnectionError`` rather than being
queued (a queued write could land long after its caller was told it failed);
``wait_for_change`` waits for the connection to come back and raises
``ConnectionError`` if it has not by its timeout, so an edge node keeps serving
what it has, stale but up, and catches up when NATS is back. A server that
goes silent without closing the connection is given up after about 15 s of
unanswered pings, and the next one of the pool tried. ``connected`` and
``last_error`` say how things stand, for health reports.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NATSError
from nats.errors import NoServersError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BucketNotFoundError, NoStreamResponseError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from warren.json_codec import dump_json
from warren.store import validation
from warren.store.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from warren.store.kv_data import KVChange, KVKeyInfo, KVRecord, key_bytes
from warren.store.model import (
    Account,
    Deployment,
    EdgeState,
    ExpectDeployment,
    KVNamespace,
    ModuleRef,
    OutgoingMessage,
    Queue,
    QueueConsumer,
    QueueMessage,
    Route,
    ScriptInfo,
    Token,
    Version,
    now,
)
from warren.store.routes import parse_route
from warren.store.sqlite import MAX_SECRET_BYTES, TOKEN_PREFIX

if TYPE_CHECKING:
    from warren.store import Store

SECRETS_KEY_ENV = "WARREN_SECRETS_KEY"
DEFAULT_PREFIX = "warren"
KINDS = ("accounts", "tokens", "scripts", "versions", "deployments", "routes", "secrets", "kv_namespaces")
MODULES = "modules"  # the object store bucket's kind
DEPLOYMENT_HISTORY = 10_000  # deployments kept per script (KV history of the script's deployment key)
WATCH_HEARTBEAT_S = 2.0  # a watch that hears nothing for two of these is re-created
MAX_AUTO_REPLICAS = 3  # detected replicas: min(this, the cluster's size); 3 survives the loss of one server
PING_INTERVAL_S = 5  # a server silent for PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1) is left for another
CONSUMER_ATTEMPTS_S = (1.0, 2.0)  # successive attempts at creating a consumer (the last repeats), within timeout
LEADER_READS_S = 60.0  # once a read consumer could not be created, scans ask the stream leader for this long
WATCH_RETRY_S = 5.0  # watches that could not be started are tried again after this (meanwhile: polling)
MAX_OUTSTANDING_PINGS = 2
CAS_ATTEMPTS = 50  # conditional writes retried this often under contention before giving up
# Invocation events (warren.observability): per-account streams and the per-minute counts' bucket.
EVENTS_MAX_AGE_S = 3600.0
EVENTS_MAX_BYTES = 64 * 1024 * 1024  # per account
EVENT_STATS = "event_stats"  # a KV bucket's kind, outside KINDS
EVENT_STATS_MAX_AGE_S = 3 * 3600.0
FOLLOW_QUEUE = 1000  # messages a follower may fall behind before it loses the newest
_EVENT_ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")

# KV data (warren.bindings.kv): a bucket and an object store of their own, outside KINDS.
KV_DATA = "kv_data"
KV_VALUES = "kv_values"
KV_INLINE_MAX = 1024 * 1024  # larger values go to the object store (NATS's default max_payload)
KV_PUT_CONCURRENCY = 64  # of a bulk write
KV_CHANGES_QUEUE = 10_000  # notifications a watcher may fall behind before it reports them lost
KV_WATCH_CHECK_S = 1.0  # how often a watcher checks for a reconnection
_KV_STAMP = "Warren-KV-Stamp"
_KV_WRITER = "Warren-KV-Writer"
_KV_EXPIRATION = "Warren-KV-Expiration"
_KV_METADATA = "Warren-KV-Metadata"
_KV_OBJECT = "Warren-KV-Object"

_KV_OPERATION = "KV-Operation"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream error codes of a failed conditional write
_MAX_KEY = 1024  # longer keys cannot have been written; reads of them find nothing
_NUMBER = re.compile(r"[1-9][0-9]{0,17}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


class SecretsKeyError(RuntimeError):
    """No secrets key, a malformed one, or a secret sealed under another key."""


def generate_secrets_key() -> str:
    """A new key for ``WARREN_SECRETS_KEY``: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _secrets_key(value: str | bytes | None) -> bytes:
    if value is None:
        value = os.environ.get(SECRETS_KEY_ENV)
    if value is None or value == "" or value == b"":
        raise SecretsKeyError(
            f"the NATS store needs a secrets key: set {SECRETS_KEY_ENV} (the same on the control plane and every "
            "edge node) to the output of: python -c 'from warren.store.nats import generate_secrets_key; "
            "print(generate_secrets_key())'"
        )
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SecretsKeyError(f"{SECRETS_KEY_ENV} must be 32 bytes in base64 (44 characters), as generated")
    return raw


class _SecretBox:
    """AES-256-GCM with a random 96-bit nonce per value; sealed values name the key they need."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"warren secrets key id\0" + key).hexdigest()[:12]

    def seal(self, text: str, context: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, text.encode("utf-8", "surrogatepass"), context)
        return f"aes256gcm:{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, value: str, context: bytes) -> str:
        scheme, _, rest = value.partition(":")
        key_id, _, payload = rest.partition(":")
        if scheme != "aes256gcm":
            raise SecretsKeyError(f"a secret is sealed with an unknown scheme {scheme!r}")
        if not hmac.compare_digest(key_id, self.key_id):
            raise SecretsKeyError(
                f"a secret is sealed under key {key_id}, but this node's {SECRETS_KEY_ENV} is key {self.key_id}"
            )
        try:
            raw = base64.b64decode(payload, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context).decode("utf-8", "surrogatepass")
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretsKeyError("a secret failed its integrity check (tampered, or moved to another key)") from None


# -- keys ------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """One key token for any text: reversible, never a wildcard, never empty."""
    if text == "":
        return "="
    return "".join(
        char if char in _PLAIN else "".join(f"={byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in text
    )


def _unescape(token: str) -> str:
    if token == "=":
        return ""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(token):
        raw += token[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += token[position:].encode()
    return raw.decode("utf-8", "surrogatepass")


def redact(server: str) -> str:
    """A server URL fit to print: any user name, password or token removed."""
    parts = urlsplit(server.strip())
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _key(*parts: str) -> str | None:
    """The key of these parts (escaped), or None when too long to have been written."""
    key = ".".join(_escape(part) for part in parts)
    return key if len(key) <= _MAX_KEY else None


def _under(*parts: str) -> str | None:
    """A pattern matching every key one token below these parts."""
    key = _key(*parts)
    return key + ".*" if key is not None else None


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


# -- servers ---------------------------------------------------------------------------------


def _server_list(servers: str | Sequence[str]) -> list[str]:
    """Server URLs from one string (several separated by commas) or a sequence of them."""
    given = [servers] if isinstance(servers, str) else list(servers)
    found = [url.strip() for text in given for url in text.split(",") if url.strip()]
    if not found:
        raise ValueError("no NATS server given")
    return found


def _cluster_size(nc: NATS) -> int:
    """min(MAX_AUTO_REPLICAS, servers in the cluster), as the server we reached announces them.

    A clustered server lists the client URLs of every member it has a route to, itself
    included (``connect_urls`` of its INFO); a single server lists none. A cluster that
    hides them (``no_advertise``) reads as one server: ask for ``replicas`` explicitly.
    """
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    urls = info.get("connect_urls") or []
    return max(1, min(MAX_AUTO_REPLICAS, len(set(urls))))


# -- records ---------------------------------------------------------------------------------


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _load(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogatepass"))


def _account_json(account: Account) -> dict[str, Any]:
    return {"id": account.id, "name": account.name, "created_on": account.created_on}


def _account(data: dict[str, Any]) -> Account:
    return Account(id=data["id"], name=data["name"], created_on=data["created_on"])


def _version_json(version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "account_id": version.account_id,
        "script": version.script,
        "number": version.number,
        "main_module": version.main_module,
        "modules": [[ref.name, ref.content_type, ref.sha256, ref.size] for ref in version.modules],
        "compatibility_date": version.compatibility_date,
        "bindings": list(version.bindings),
        "limits": version.limits,
        "content_hash": version.content_hash,
        "created_on": version.created_on,
        "author_token_id": version.author_token_id,
        "message": version.message,
    }


def _version(data: dict[str, Any]) -> Version:
    return Version(
        id=data["id"],
        account_id=data["account_id"],
        script=data["script"],
        number=int(data["number"]),
        main_module=data["main_module"],
        modules=tuple(
            ModuleRef(name=name, content_type=media, sha256=sha, size=int(size))
            for name, media, sha, size in data["modules"]
        ),
        compatibility_date=data["compatibility_date"],
        bindings=tuple(data["bindings"]),
        limits=data["limits"],
        content_hash=data["content_hash"],
        created_on=data["created_on"],
        author_token_id=data["author_token_id"],
        message=data["message"],
    )


def _deployment_json(deployment: Deployment, incarnation: str) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "account_id": deployment.account_id,
        "script": deployment.script,
        "versions": [list(pair) for pair in deployment.versions],
        "created_on": deployment.created_on,
        "author_token_id": deployment.author_token_id,
        "message": deployment.message,
        "incarnation": incarnation,
    }


def _deployment(data: dict[str, Any]) -> Deployment:
    return Deployment(
        id=data["id"],
        account_id=data["account_id"],
        script=data["script"],
        versions=tuple((str(version_id), int(share)) for version_id, share in data["versions"]),
        created_on=data["created_on"],
        author_token_id=data["author_token_id"],
        message=data["message"],
    )


def _route(data: dict[str, Any]) -> Route:
    return Route(id=data["id"], account_id=data["account_id"], pattern=data["pattern"], script=data["script"])


def _namespace(data: dict[str, Any]) -> KVNamespace:
    return KVNamespace(id=data["id"], account_id=data["account_id"], title=data["title"])


def _secret_context(account_id: str, script: str, name: str, incarnation: str) -> bytes:
    return "\0".join(["warren secret", account_id, script, name, incarnation]).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class _Entry:
    """One key's latest message: ``value`` None when the key was never written or is deleted."""

    key: str
    value: bytes | None
    revision: int  # the stream sequence of that message; 0 if the key never existed

    def json(self) -> Any:
        return _load(self.value) if self.value is not None else None


_MISSING = _Entry("", None, 0)


class NATSStore:
    """The ``Store`` on NATS JetStream (see the module docstring for layout and guarantees)."""

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        secrets_key: str | bytes | None = None,
        prefix: str = DEFAULT_PREFIX,
        replicas: int | None = None,
        timeout: float = 5.0,
        connect_timeout: int = 2,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", prefix):
            raise ValueError(f"invalid bucket prefix {prefix!r}: 1-32 of A-Z, a-z, 0-9, '_' and '-'")
        if replicas is not None and not 1 <= replicas <= 5:
            raise ValueError("replicas is 1 to 5")
        self.servers = _server_list(servers)
        self.prefix = prefix
        self.replicas = replicas  # as asked; None: detected from the cluster at open (see bucket_replicas)
        self.bucket_replicas = replicas or 1  # the replicas of the buckets this store creates, set by open
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._box = _SecretBox(_secrets_key(secrets_key))
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._objects: ObjectStore | None = None
        self._open_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._watches: list[JetStreamContext.PushSubscription] = []
        self._watch_lock = asyncio.Lock()
        self._watch_retry_at = 0.0  # loop time before which starting the watches is not tried again
        self._leader_reads_until = 0.0  # loop time until which scans read key by key from the stream leader
        self._rewatch_task: asyncio.Task[None] | None = None
        self._versions: dict[str, Version] = {}  # immutable records edge_state has read
        self.connected = False  # False while the connection to NATS is down (it is retried forever)
        self.last_error: BaseException | None = None  # the latest connection-level error, for health reports

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create the buckets if needed; a no-op when already open."""
        async with self._open_lock:
            if self._nc is not None:
                return
            nc = NATS()
            try:
                await nc.connect(
                    servers=self.servers,
                    name="warren",
                    connect_timeout=self.connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=2,  # for the first connection only: see below
                    reconnect_time_wait=1,
                    # A server that stops answering without closing the connection (a partition) is
                    # left for another of the pool within about 15 s rather than the client's 6 minutes.
                    ping_interval=PING_INTERVAL_S,
                    max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                )
            except (NoServersError, OSError, NATSError, TimeoutError) as exc:
                raise ConnectionError(f"cannot reach NATS at {self._shown()}: {exc}") from exc
            # Once connected, never give up: an edge node keeps serving and catches up when NATS is back.
            nc.options["max_reconnect_attempts"] = -1
            self.bucket_replicas = self.replicas or _cluster_size(nc)
            try:
                js = nc.jetstream(timeout=self.timeout)
                self._objects = await self._create_buckets(js)
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js = nc, js
            self.connected = True

    async def close(self) -> None:
        async with self._open_lock:
            if self._rewatch_task is not None:
                self._rewatch_task.cancel()
                try:
                    await self._rewatch_task
                except (asyncio.CancelledError, NATSError, TimeoutError):
                    pass
                self._rewatch_task = None
            watches, self._watches = self._watches, []
            for watch in watches:
                try:
                    await watch.unsubscribe()
                except NATSError:
                    pass
            nc, self._nc, self._js, self._objects = self._nc, None, None, None
            self.connected = False
            if nc is not None:
                await nc.close()

    async def __aenter__(self) -> NATSStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = exc

    async def _on_disconnect(self) -> None:
        self.connected = False
        self._changed.set()

    async def _on_reconnect(self) -> None:
        self.connected = True
        self._changed.set()  # writes made while we were away: waiters ask the server again
        if self._watches and (self._rewatch_task is None or self._rewatch_task.done()):
            self._rewatch_task = asyncio.get_running_loop().create_task(self._rewatch())

    def _shown(self) -> str:
        return ", ".join(redact(server) for server in self.servers)

    def _max_record(self) -> int:
        """The largest value one KV write takes (the server's max_payload, less room for headers)."""
        return (self._nc.max_payload if self._nc is not None else 1024 * 1024) - 4096

    def _bucket(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"

    def _stream(self, kind: str) -> str:
        return f"KV_{self._bucket(kind)}"

    def _subject(self, kind: str, key: str) -> str:
        return f"$KV.{self._bucket(kind)}.{key}"

    async def _create_buckets(self, js: JetStreamContext) -> ObjectStore:
        storage = api.StorageType.FILE
        for kind in KINDS:
            config = api.StreamConfig(
                name=self._stream(kind),
                description=f"warren {kind}",
                subjects=[f"$KV.{self._bucket(kind)}.>"],
                allow_rollup_hdrs=True,
                deny_delete=True,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120,
                max_consumers=-1,
                max_msgs=-1,
                max_bytes=-1,
                max_msgs_per_subject=DEPLOYMENT_HISTORY if kind == "deployments" else 1,
                storage=storage,
                num_replicas=self.bucket_replicas,
                allow_direct=False,  # reads go to the stream leader: a store object reads its own writes
            )
            try:
                await js.stream_info(config.name or "")
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except APIError:
                    await js.stream_info(config.name or "")  # created meanwhile by another node: fine
        try:
            return await js.object_store(self._bucket(MODULES))
        except BucketNotFoundError:
            return await js.create_object_store(
                self._bucket(MODULES),
                api.ObjectStoreConfig(
                    description="warren module blobs", storage=storage, replicas=self.bucket_replicas
                ),
            )

    # -- primitives -------------------------------------------------------------------------

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the store is not open")
        if self._nc is not None and not self._nc.is_connected:
            # Fail now rather than queue: a write queued here could land long after its caller gave up.
            raise ConnectionError(f"NATS ({self._shown()}) is unreachable; reconnecting")
        return self._js

    async def _subscribe(
        self, subject: str, *, budget: float | None = None, **options: Any
    ) -> JetStreamContext.PushSubscription:
        """``js.subscribe`` (an ordered consumer), its creation retried in short attempts for ``budget``
        seconds (default: ``timeout``); the subscription's own requests then use the attempt's timeout.

        Why: for minutes after a cluster member dies without saying goodbye (SIGKILL, a lost
        machine), nats-server up to 2.11 places one-replica consumers on a random server of
        the stream, the dead one included (nats-server pull request 7165), and such a
        creation never answers; another attempt lands elsewhere. Creating one takes
        milliseconds, so the first attempts are short. Only creation is retried, so a
        consumer never receives anything twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (budget if budget is not None else self.timeout)
        for attempt in range(CAS_ATTEMPTS):
            self._jetstream()  # fails at once while disconnected, or if closed
            nc = self._nc
            if nc is None:
                raise RuntimeError("the store is not open")
            limit = CONSUMER_ATTEMPTS_S[min(attempt, len(CONSUMER_ATTEMPTS_S) - 1)]
            js = nc.jetstream(timeout=max(0.1, min(limit, deadline - loop.time())))
            try:
                return await js.subscribe(subject, **options)
            except TimeoutError:
                if deadline - loop.time() <= 0.1:
                    raise
        raise TimeoutError(f"could not create a consumer on {subject} in {CAS_ATTEMPTS} attempts")

    async def _get(self, kind: str, key: str | None) -> _Entry:
        """The key's latest value and revision (the revision of its delete marker if deleted)."""
        if key is None:
            return _MISSING
        js = self._jetstream()
        try:
            msg = await js.get_msg(self._stream(kind), subject=self._subject(kind, key))
        except NotFoundError:
            return _Entry(key, None, 0)
        deleted = bool(msg.headers) and (msg.headers or {}).get(_KV_OPERATION) in ("DEL", "PURGE")
        return _Entry(key, None if deleted else (msg.data or b""), msg.seq or 0)

    async def _write(
        self, kind: str, key: str | None, value: bytes = b"", *, last: int | None = None, operation: str | None = None
    ) -> bool:
        """Append to a key; with ``last``, only if that is still its latest revision (False if not)."""
        if key is None:
            raise InvalidInput("a name is too long")
        headers: dict[str, str] = {}
        if last is not None:
            headers[_EXPECTED_LAST] = str(last)
        if operation is not None:
            headers[_KV_OPERATION] = operation
            if operation == "PURGE":
                headers["Nats-Rollup"] = "sub"
        try:
            await self._jetstream().publish(
                self._subject(kind, key), value, stream=self._stream(kind), headers=headers or None
            )
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def _scan(self, kind: str, pattern: str = ">", *, history: bool = False) -> list[_Entry]:
        """The live keys under ``pattern`` (latest value each, in revision order), or with
        ``history`` every message of the matching keys, deletions included, oldest first."""
        js = self._jetstream()
        loop = asyncio.get_running_loop()
        if not history and loop.time() < self._leader_reads_until:
            return await self._scan_from_leader(kind, pattern)
        prefix = self._subject(kind, "")
        # Where the stream's leader has got to under the pattern, before the consumer exists. A
        # one-replica consumer may be placed on a follower replica, which can be behind (seconds,
        # on a loaded machine): its "nothing pending" then means "nothing newer on that replica",
        # and a scan that believed it missed writes the leader had acknowledged. An edge node took
        # such a scan for the current revision and never read the store again (tests/test_cluster.py).
        floor = await self._last_sequence(kind, pattern)
        received: list[_Entry] = []
        arrived = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            meta = msg.metadata
            operation = (msg.headers or {}).get(_KV_OPERATION)
            deleted = operation in ("DEL", "PURGE")
            received.append(_Entry(msg.subject[len(prefix) :], None if deleted else msg.data, meta.sequence.stream))
            arrived.set()

        try:
            subscription = await self._subscribe(
                prefix + pattern,
                budget=None if history else CONSUMER_ATTEMPTS_S[0],
                stream=self._stream(kind),
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.ALL if history else api.DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=5.0,
            )
        except TimeoutError:
            if history:
                raise
            # Most likely placed on a dead cluster member (see _subscribe): read without consumers a while.
            self._leader_reads_until = loop.time() + LEADER_READS_S
            return await self._scan_from_leader(kind, pattern)
        consumer: str | None = None
        try:
            # Caught up once the server has nothing pending for the consumer and every message it
            # delivered has been handled. The consumer's info decides, not the "pending" count each
            # message carries (the watcher of the KV clients): that one is an estimate, which
            # nats-server 2.9 can leave above 0 for good, so a scan waiting for 0 would hang.
            deadline = asyncio.get_running_loop().time() + self.timeout
            while True:
                arrived.clear()
                info = await subscription.consumer_info()
                consumer = info.name
                delivered = info.delivered.consumer_seq if info.delivered is not None else 0
                reached = max((entry.revision for entry in received), default=0) >= floor
                if not info.num_pending and len(received) >= delivered and reached:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    behind = "" if reached else f" (its consumer's replica is behind the leader's sequence {floor})"
                    raise TimeoutError(f"reading the {self._bucket(kind)} bucket took over {self.timeout} s{behind}")
                try:
                    await asyncio.wait_for(arrived.wait(), 0.01)
                except TimeoutError:
                    pass
        finally:
            await subscription.unsubscribe()
            if consumer is not None:  # deleted at once, not after its inactivity threshold: scans are frequent
                try:
                    await js.delete_consumer(self._stream(kind), consumer)
                except (NATSError, TimeoutError, ConnectionError):
                    pass
        if history:
            return received
        latest: dict[str, _Entry] = {}
        for entry in received:  # a key written during the scan comes twice: keep the newest
            latest.pop(entry.key, None)
            latest[entry.key] = entry
        return [entry for entry in latest.values() if entry.value is not None]

    async def _last_sequence(self, kind: str, pattern: str) -> int:
        """The stream sequence of the newest message under ``pattern`` (0 if none), from the stream
        leader (``allow_direct`` is off, so no replica answers for it)."""
        try:
            found = await self._jetstream().get_msg(self._stream(kind), subject=self._subject(kind, pattern))
        except NotFoundError:
            return 0
        return found.seq or 0

    async def _scan_from_leader(self, kind: str, pattern: str) -> list[_Entry]:
        """What ``_scan`` returns, asked of the stream leader alone: the subjects (paged), then each
        one's last message. No consumer, so nothing is placed on a dead member; N requests for N keys."""
        stream = self._stream(kind)
        subjects: list[str] = []
        while True:
            request = {"subjects_filter": self._subject(kind, pattern), "offset": len(subjects)}
            self._jetstream()  # fails at once while disconnected, or if closed
            nc = self._nc
            if nc is None:
                raise RuntimeError("the store is not open")
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", _dump(request), timeout=self.timeout)
            info = _load(reply.data)
            if "error" in info:
                raise APIError.from_error(info["error"])
            page = list((info.get("state") or {}).get("subjects") or {})
            subjects += page
            if not page or len(subjects) >= int(info.get("total") or 0):
                break
        prefix = self._subject(kind, "")
        entries: list[_Entry] = []
        for start in range(0, len(subjects), 256):  # bounded, not one burst of N requests
            batch = subjects[start : start + 256]
            entries += await asyncio.gather(*(self._get(kind, subject[len(prefix) :]) for subject in batch))
        return sorted((entry for entry in entries if entry.value is not None), key=lambda entry: entry.revision)

    async def _update_json(
        self, kind: str, key: str | None, change: Callable[[Any], Any | None], attempts: int = CAS_ATTEMPTS
    ) -> bool:
        """Read-modify-write one key with compare-and-set; ``change`` returns None to leave it alone."""
        for _ in range(attempts):
            entry = await self._get(kind, key)
            new = change(entry.json())
            if new is None:
                return False
            if await self._write(kind, key, _dump(new), last=entry.revision):
                return True
        raise Conflict("too many concurrent changes; try again")

    async def _retry(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(CAS_ATTEMPTS):
            if await attempt():
                return
        raise Conflict("too many concurrent changes; try again")

    # -- accounts and tokens ----------------------------------------------------------------

    async def create_account(self, name: str) -> Account:
        name = validation.account_name(name)
        account = Account(id=uuid.uuid4().hex, name=name, created_on=now())
        taken = Conflict(f"the account name {name!r} is taken")
        current = await self._get("accounts", _key("name", name))
        if current.value is not None:
            raise taken
        index = _key("id", account.id)
        # The index first: alone it names an account that does not exist, and is ignored.
        await self._write("accounts", index, name.encode())
        if await self._write("accounts", current.key, _dump(_account_json(account)), last=current.revision):
            return account
        await self._write("accounts", index, operation="DEL")  # lost a race for the name
        raise taken

    async def get_account(self, account_id: str) -> Account | None:
        index = await self._get("accounts", _key("id", account_id))
        if index.value is None:
            return None
        record = (await self._get("accounts", _key("name", index.value.decode()))).json()
        return _account(record) if record is not None and record["id"] == account_id else None

    async def account_by_name(self, name: str) -> Account | None:
        record = (await self._get("accounts", _key("name", name))).json()
        return _account(record) if record is not None else None

    async def _require_account(self, account_id: str) -> None:
        if await self.get_account(account_id) is None:
            raise NotFound(f"account {account_id!r} does not exist")

    async def create_token(self, account_id: str, name: str) -> tuple[Token, str]:
        name = validation.token_name(name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(30)  # 30 bytes: 40 url-safe characters
        token = Token(id=uuid.uuid4().hex, account_id=account_id, name=name, created_on=now())
        await self._require_account(account_id)  # accounts are never deleted: the check stays true
        record = {"id": token.id, "account_id": account_id, "name": name, "created_on": token.created_on}
        if not await self._write("tokens", _hash_secret(secret), _dump(record), last=0):
            raise RuntimeError("token collision")  # 240 random bits: not expected in this universe
        return token, secret

    async def authenticate(self, secret: str) -> Token | None:
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
            return None
        record = (await self._get("tokens", _hash_secret(secret))).json()
        if record is None:
            return None
        return Token(
            id=record["id"], account_id=record["account_id"], name=record["name"], created_on=record["created_on"]
        )

    # -- scripts ----------------------------------------------------------------------------

    async def _script(self, account_id: str, script: str) -> _Entry:
        return await self._get("scripts", _key(account_id, script))

    async def _incarnation(self, account_id: str, script: str) -> str | None:
        record = (await self._script(account_id, script)).json()
        return str(record["incarnation"]) if record is not None else None

    async def _touch(self, account_id: str, script: str, incarnation: str, modified_on: str) -> None:
        def change(record: Any) -> Any | None:
            if record is None or record["incarnation"] != incarnation or record["modified_on"] >= modified_on:
                return None
            return {**record, "modified_on": modified_on}

        await self._update_json("scripts", _key(account_id, script), change)

    async def _current(self, account_id: str, script: str, incarnation: str) -> Deployment | None:
        record = (await self._get("deployments", _key(account_id, script))).json()
        if record is None or record["incarnation"] != incarnation:
            return None
        return _deployment(record)

    async def _etag(self, deployment: Deployment | None) -> str | None:
        if deployment is None:
            return None
        key = _key("id", deployment.account_id, deployment.script, deployment.main_version_id)
        record = (await self._get("versions", key)).json()
        return str(record["content_hash"]) if record is not None else None

    def _script_info(self, account_id: str, name: str, record: Any, etag: str | None) -> ScriptInfo:
        return ScriptInfo(
            account_id=account_id,
            name=name,
            created_on=record["created_on"],
            modified_on=record["modified_on"],
            etag=etag,
        )

    async def get_script(self, account_id: str, script: str) -> ScriptInfo | None:
        record = (await self._script(account_id, script)).json()
        if record is None:
            return None
        deployment = await self._current(account_id, script, record["incarnation"])
        return self._script_info(account_id, script, record, await self._etag(deployment))

    async def list_scripts(self, account_id: str) -> list[ScriptInfo]:
        pattern = _under(account_id)
        if pattern is None:
            return []
        records, deployments = await asyncio.gather(self._scan("scripts", pattern), self._scan("deployments", pattern))
        current = {entry.key: entry.json() for entry in deployments}
        live: list[Deployment | None] = []
        for entry in records:
            deployment = current.get(entry.key)
            if deployment is not None and deployment["incarnation"] == entry.json()["incarnation"]:
                live.append(_deployment(deployment))
            else:
                live.append(None)
        etags = await asyncio.gather(*(self._etag(deployment) for deployment in live))
        result = [
            self._script_info(account_id, _unescape(entry.key.split(".")[1]), entry.json(), etag)
            for entry, etag in zip(records, etags, strict=True)
        ]
        return sorted(result, key=lambda info: info.name)

    async def delete_script(self, account_id: str, script: str) -> bool:
        key = _key(account_id, script)
        for _ in range(CAS_ATTEMPTS):
            entry = await self._get("scripts", key)
            if entry.value is None:
                return False
            # The one write that removes the script from service: what hangs off it dies with its incarnation.
            if await self._write("scripts", key, last=entry.revision, operation="DEL"):
                await self._collect(account_id, script, entry.json()["incarnation"])
                return True
        raise Conflict("too many concurrent changes; try again")

    async def _collect(self, account_id: str, script: str, incarnation: str) -> None:
        """Garbage-collect what a deleted incarnation left; each step conditional, none of it visible."""
        try:
            deployment = await self._get("deployments", _key(account_id, script))
            record = deployment.json()
            if record is not None and record["incarnation"] == incarnation:
                await self._write("deployments", deployment.key, last=deployment.revision, operation="PURGE")
            for entry in await self._scan("secrets", _under(account_id, script) or ">"):
                if entry.json()["incarnation"] == incarnation:
                    await self._write("secrets", entry.key, last=entry.revision, operation="DEL")
            for entry in await self._scan("routes"):
                route = entry.json()
                if (route["account_id"], route["script"], route["incarnation"]) == (account_id, script, incarnation):
                    await self._write("routes", entry.key, last=entry.revision, operation="DEL")
        except (NATSError, TimeoutError, ConnectionError):
            pass  # the leftovers are invisible; routes are taken over, secrets overwritten, history purged later

    # -- versions and deployments -----------------------------------------------------------

    async def upload_version(
        self,
        account_id: str,
        script: str,
        main_module: str,
        modules: dict[str, tuple[str, bytes]],
        compatibility_date: str,
        bindings: Sequence[dict[str, Any]],
        limits: dict[str, Any],
        author_token_id: str,
        message: str,
        deploy: bool,
        expect: ExpectDeployment | None = None,
    ) -> tuple[Version, Deployment | None]:
        upload = validation.upload(script, main_module, modules, compatibility_date, bindings, limits, message)
        script, compatibility_date, message = upload.script, upload.compatibility_date, upload.message
        binding_list, limit_map, blobs, refs = upload.bindings, upload.limits, upload.blobs, upload.refs
        created_on = now()
        version = Version(
            id=str(uuid.uuid4()),
            account_id=account_id,
            script=script,
            number=10**17,  # until allocated below; the widest a number gets
            main_module=main_module,
            modules=refs,
            compatibility_date=compatibility_date,
            bindings=binding_list,
            limits=limit_map,
            content_hash=upload.content_hash,
            created_on=created_on,
            author_token_id=author_token_id,
            message=message,
        )
        # The version record is one NATS message: refuse what cannot be one before writing anything.
        if len(_dump(_version_json(version))) > self._max_record():
            raise InvalidInput(f"the upload's metadata (bindings, module names) exceeds {self._max_record()} bytes")

        await self._require_account(account_id)
        if expect is not None:
            # Checked again, as a compare-and-set, when the deployment is written (_attach); a loser
            # there leaves its version behind, undeployed.
            current = await self.current_deployment(account_id, script)
            if (current.id if current else None) != expect.deployment_id:
                raise PreconditionFailed(f"script {script!r} was deployed again meanwhile")
        wanted = [binding for binding in binding_list if binding["type"] == "kv_namespace"]
        if wanted:
            namespaces = {namespace.id for namespace in await self.list_kv_namespaces(account_id)}
            for binding in wanted:
                if binding["namespace_id"] not in namespaces:
                    raise InvalidInput(
                        f"binding {binding['name']!r}: KV namespace {binding['namespace_id']!r} "
                        "does not exist in this account"
                    )
        # Invisible until a version names them; content-addressed, so writing twice is harmless.
        for digest, data in {digest: data for _, data, digest in blobs.values()}.items():
            await self._put_blob(digest, data)

        number = 0

        def allocate(last: Any) -> Any:
            nonlocal number
            number = int(last or 0) + 1  # numbers continue across a delete: the archive keeps them
            return number

        await self._update_json("versions", _key("next", account_id, script), allocate)
        version = replace(version, number=number)
        record = _dump(_version_json(version))
        await self._write("versions", _key("number", account_id, script, str(number)), version.id.encode())
        await self._write("versions", _key("id", account_id, script, version.id), record)
        deployment = None
        if deploy:
            deployment = Deployment(
                id=str(uuid.uuid4()),
                account_id=account_id,
                script=script,
                versions=((version.id, 100),),
                created_on=created_on,
                author_token_id=author_token_id,
                message=message,
            )
        await self._retry(lambda: self._attach(account_id, script, deployment, created_on, expect))
        return version, deployment

    async def _attach(
        self, account_id: str, script: str, deployment: Deployment | None, when: str,
        expect: ExpectDeployment | None = None,
    ) -> bool:
        """Deploy (if asked) and create or touch the script record; False to try again."""
        key = _key(account_id, script)
        # The deployment key is read before the script record: see create_deployment.
        current = await self._get("deployments", key) if deployment is not None else _MISSING
        record = await self._get("scripts", key)
        incarnation = record.json()["incarnation"] if record.value is not None else uuid.uuid4().hex
        if deployment is not None and expect is not None:
            # The write below is conditional on current's revision, so this holds when it succeeds.
            previous = current.json()
            previous_id = previous["id"] if previous is not None and previous["incarnation"] == incarnation else None
            if previous_id != expect.deployment_id:
                raise PreconditionFailed(f"script {script!r} was deployed again meanwhile")
        if deployment is not None and not await self._write(
            "deployments", key, _dump(_deployment_json(deployment, incarnation)), last=current.revision
        ):
            return False
        if record.value is None:
            # A new script: this write makes it (and the deployment just written) exist.
            fresh = {"created_on": when, "modified_on": when, "incarnation": incarnation}
            return await self._write("scripts", key, _dump(fresh), last=record.revision)
        await self._touch(account_id, script, incarnation, when)
        return True

    async def get_version(self, account_id: str, script: str, version_id: str) -> Version | None:
        if _NUMBER.fullmatch(version_id):
            index = await self._get("versions", _key("number", account_id, script, str(int(version_id))))
            if index.value is None:
                return None
            version_id = index.value.decode()
        record = (await self._get("versions", _key("id", account_id, script, version_id))).json()
        return _version(record) if record is not None else None

    async def list_versions(self, account_id: str, script: str) -> list[Version]:
        pattern = _under("id", account_id, script)
        if pattern is None:
            return []
        versions = [_version(entry.json()) for entry in await self._scan("versions", pattern)]
        return sorted(versions, key=lambda version: version.number, reverse=True)

    async def _put_blob(self, digest: str, data: bytes) -> None:
        objects = self._object_store()
        try:
            await objects.get_info(digest)
            return
        except ObjectNotFoundError:
            pass
        await objects.put(digest, data)

    def _object_store(self) -> ObjectStore:
        if self._objects is None:
            raise RuntimeError("the store is not open")
        return self._objects

    async def get_blob(self, sha256: str) -> bytes | None:
        objects = self._object_store()
        if not _SHA256.fullmatch(sha256):
            return None
        loop = asyncio.get_running_loop()
        try:
            if loop.time() < self._leader_reads_until:
                data = await self._blob_from_leader(objects, sha256)
            else:
                try:
                    data = (await objects.get(sha256)).data or b""
                except TimeoutError:  # its consumer was likely placed on a dead cluster member: see _scan
                    self._leader_reads_until = loop.time() + LEADER_READS_S
                    data = await self._blob_from_leader(objects, sha256)
        except ObjectNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:  # the object store checks its own digest too
            raise RuntimeError(f"blob {sha256} does not match its hash")
        return data

    async def _blob_from_leader(self, objects: ObjectStore, sha256: str) -> bytes:
        """An object read chunk by chunk from the stream leader (``next_by_subj``), with no consumer."""
        info = await objects.get_info(sha256)
        stream, chunks = f"OBJ_{self._bucket(MODULES)}", f"$O.{self._bucket(MODULES)}.C.{info.nuid}"
        data, sequence = [], 1
        for _ in range(info.chunks or 0):
            msg = await self._jetstream().get_msg(stream, seq=sequence, subject=chunks, next=True)
            data.append(msg.data or b"")
            sequence = (msg.seq or sequence) + 1
        return b"".join(data)

    async def create_deployment(
        self,
        account_id: str,
        script: str,
        versions: Sequence[tuple[str, int]],
        author_token_id: str,
        message: str,
    ) -> Deployment:
        split = validation.split(versions)
        message = validation.message(message)
        created_on = now()
        if await self._incarnation(account_id, script) is None:
            raise NotFound(f"script {script!r} does not exist")
        resolved: list[tuple[str, int]] = []
        for version_id, share in split:
            version = await self.get_version(account_id, script, version_id)
            if version is None:
                raise InvalidInput(f"{version_id!r} is not a version of script {script!r}")
            resolved.append((version.id, share))
        if len({version_id for version_id, _ in resolved}) != len(resolved):
            raise InvalidInput("a deployment names each version once")
        deployment = Deployment(
            id=str(uuid.uuid4()),
            account_id=account_id,
            script=script,
            versions=tuple(resolved),
            created_on=created_on,
            author_token_id=author_token_id,
            message=message,
        )
        key = _key(account_id, script)
        incarnation = ""

        async def attempt() -> bool:
            nonlocal incarnation
            # Deployment key first, script record second: if the key holds a deployment of a newer
            # incarnation, that incarnation's record already existed when it was written, so the read
            # below sees it (or its deletion), and a stale incarnation never lands on top of a live one.
            current = await self._get("deployments", key)
            found = await self._incarnation(account_id, script)
            if found is None:
                raise NotFound(f"script {script!r} does not exist")
            incarnation = found
            return await self._write(
                "deployments", key, _dump(_deployment_json(deployment, incarnation)), last=current.revision
            )

        await self._retry(attempt)
        await self._touch(account_id, script, incarnation, created_on)
        return deployment

    async def list_deployments(self, account_id: str, script: str) -> list[Deployment]:
        incarnation = await self._incarnation(account_id, script)
        key = _key(account_id, script)
        if incarnation is None or key is None:
            return []
        entries = await self._scan("deployments", key, history=True)
        found = [entry.json() for entry in entries if entry.value is not None]
        return [_deployment(record) for record in reversed(found) if record["incarnation"] == incarnation]

    async def current_deployment(self, account_id: str, script: str) -> Deployment | None:
        incarnation = await self._incarnation(account_id, script)
        return await self._current(account_id, script, incarnation) if incarnation is not None else None

    # -- secrets ----------------------------------------------------------------------------

    async def put_secret(self, account_id: str, script: str, name: str, text: str) -> None:
        name = validation.identifier(name, "secret name")
        if not isinstance(text, str):
            raise InvalidInput("a secret's text must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
            raise InvalidInput(f"a secret is at most {MAX_SECRET_BYTES} bytes")
        modified_on = now()
        incarnation = await self._incarnation(account_id, script)
        if incarnation is None:
            raise NotFound(f"script {script!r} does not exist")
        sealed = self._box.seal(text, _secret_context(account_id, script, name, incarnation))
        record = {"incarnation": incarnation, "value": sealed}
        await self._write("secrets", _key(account_id, script, name), _dump(record))
        await self._touch(account_id, script, incarnation, modified_on)

    async def delete_secret(self, account_id: str, script: str, name: str) -> bool:
        modified_on = now()
        key = _key(account_id, script, name)
        for _ in range(CAS_ATTEMPTS):
            incarnation = await self._incarnation(account_id, script)
            entry = await self._get("secrets", key)
            record = entry.json()
            if incarnation is None or record is None or record["incarnation"] != incarnation:
                return False
            if await self._write("secrets", key, last=entry.revision, operation="DEL"):
                await self._touch(account_id, script, incarnation, modified_on)
                return True
        raise Conflict("too many concurrent changes; try again")

    async def _secrets(self, account_id: str, script: str) -> dict[str, str]:
        """Name -> sealed value, of the script's current incarnation."""
        incarnation = await self._incarnation(account_id, script)
        pattern = _under(account_id, script)
        if incarnation is None or pattern is None:
            return {}
        found = {}
        for entry in await self._scan("secrets", pattern):
            record = entry.json()
            if record["incarnation"] == incarnation:
                found[_unescape(entry.key.split(".")[2])] = record["value"]
        return found

    async def list_secret_names(self, account_id: str, script: str) -> list[str]:
        return sorted(await self._secrets(account_id, script))

    async def secrets_for(self, account_id: str, script: str) -> dict[str, str]:
        incarnation = await self._incarnation(account_id, script) or ""
        return {
            name: self._box.open(value, _secret_context(account_id, script, name, incarnation))
            for name, value in sorted((await self._secrets(account_id, script)).items())
        }

    # -- routes -----------------------------------------------------------------------------

    async def create_route(self, account_id: str, pattern: str, script: str) -> Route:
        try:
            normalised = str(parse_route(pattern))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from None
        route = Route(id=uuid.uuid4().hex, account_id=account_id, pattern=normalised, script=script)
        key = _digest(normalised)

        async def attempt() -> bool:
            incarnation = await self._incarnation(account_id, script)
            if incarnation is None:
                raise NotFound(f"script {script!r} does not exist")
            existing = await self._get("routes", key)
            held = existing.json()
            # Hostnames are global: one pattern, one owner. A route of a deleted script is free to take.
            if held is not None and await self._incarnation(held["account_id"], held["script"]) == held["incarnation"]:
                raise Conflict(f"the route {normalised!r} already exists")
            record = {**_route_json(route), "incarnation": incarnation}
            return await self._write("routes", key, _dump(record), last=existing.revision)

        await self._retry(attempt)
        return route

    async def _live_routes(self, account_id: str | None = None) -> list[tuple[Route, _Entry]]:
        """Routes whose script incarnation is alive, in creation order."""
        scope = (_under(account_id) if account_id is not None else None) or ">"
        routes, scripts = await asyncio.gather(self._scan("routes"), self._scan("scripts", scope))
        return _alive_routes(routes, _incarnations(scripts), account_id)

    async def list_routes(self, account_id: str) -> list[Route]:
        return [route for route, _ in await self._live_routes(account_id)]

    async def delete_route(self, account_id: str, route_id: str) -> bool:
        for _ in range(CAS_ATTEMPTS):
            found = [entry for route, entry in await self._live_routes(account_id) if route.id == route_id]
            if not found:
                return False
            if await self._write("routes", found[0].key, last=found[0].revision, operation="DEL"):
                return True
        raise Conflict("too many concurrent changes; try again")

    # -- KV namespaces ----------------------------------------------------------------------

    async def create_kv_namespace(self, account_id: str, title: str) -> KVNamespace:
        title = validation.kv_title(title)
        namespace = KVNamespace(id=uuid.uuid4().hex, account_id=account_id, title=title)
        await self._require_account(account_id)
        # One key per title: creating it is the namespace, and the title's uniqueness.
        existing = await self._get("kv_namespaces", _key(account_id, _digest(title)))
        record = {"id": namespace.id, "account_id": account_id, "title": title}
        if existing.value is not None or not await self._write(
            "kv_namespaces", existing.key, _dump(record), last=existing.revision
        ):
            raise Conflict(f"a namespace titled {title!r} already exists")
        return namespace

    async def _namespaces(self, account_id: str) -> list[tuple[KVNamespace, _Entry]]:
        scope = _under(account_id)
        if scope is None:
            return []
        entries = await self._scan("kv_namespaces", scope)
        found = [(_namespace(entry.json()), entry) for entry in entries]
        return sorted(found, key=lambda item: (item[0].title, item[0].id))

    async def list_kv_namespaces(self, account_id: str) -> list[KVNamespace]:
        return [namespace for namespace, _ in await self._namespaces(account_id)]

    async def delete_kv_namespace(self, account_id: str, namespace_id: str) -> bool:
        for _ in range(CAS_ATTEMPTS):
            found = [entry for namespace, entry in await self._namespaces(account_id) if namespace.id == namespace_id]
            if not found:
                return False
            if await self._write("kv_namespaces", found[0].key, last=found[0].revision, operation="DEL"):
                return True
        raise Conflict("too many concurrent changes; try again")

    # -- edge -------------------------------------------------------------------------------

    async def revision(self) -> int:
        js = self._jetstream()
        infos = await asyncio.gather(*(js.stream_info(self._stream(kind)) for kind in KINDS))
        return sum(info.state.last_seq for info in infos)

    async def _watch(self) -> None:
        """Start the KV watches (once): every message on any bucket wakes ``wait_for_change``.
        Watches only save latency, so failing to start them is not an error: they are tried
        again after ``WATCH_RETRY_S``, and meanwhile ``wait_for_change`` polls the revision."""
        loop = asyncio.get_running_loop()
        async with self._watch_lock:
            if self._watches or loop.time() < self._watch_retry_at:
                return
            try:
                await self._start_watches()
            except (NATSError, TimeoutError) as exc:
                self.last_error = exc
                self._watch_retry_at = loop.time() + WATCH_RETRY_S
                started, self._watches = self._watches, []
                for watch in started:
                    try:
                        await watch.unsubscribe()
                    except NATSError:
                        pass

    async def _start_watches(self) -> None:
        async def on_change(msg: Msg) -> None:
            self._changed.set()

        for kind in KINDS:
            self._watches.append(
                await self._subscribe(
                    f"$KV.{self._bucket(kind)}.>",
                    stream=self._stream(kind),
                    cb=on_change,
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.LAST,  # one old message, then only new ones
                    headers_only=True,
                    idle_heartbeat=WATCH_HEARTBEAT_S,
                )
            )

    async def _rewatch(self) -> None:
        """After a reconnect, start the watches afresh: their consumers live in one server's memory,
        which a restart (or a long partition) loses; the ordered consumers would notice only after
        missing two heartbeats."""
        delay = 0.1
        while self._js is not None and self.connected:
            try:
                async with self._watch_lock:
                    stale, self._watches = self._watches, []
                    for watch in stale:
                        try:
                            await watch.unsubscribe()
                        except NATSError:
                            pass
                    await self._start_watches()
                self._changed.set()
                return
            except (NATSError, TimeoutError):
                await asyncio.sleep(delay)  # JetStream may still be starting after a restart
                delay = min(delay * 2, 2.0)

    async def wait_for_change(self, after_revision: int, timeout: float) -> int:
        """As the protocol says; while NATS is unreachable it waits for the connection to come back
        and raises ``ConnectionError`` if it has not by ``timeout`` (an edge keeps serving meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()  # before reading: a write after the read sets it again
            if self._nc is not None and not self._nc.is_connected:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self._jetstream()  # raises ConnectionError
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)  # set on reconnection
                except TimeoutError:
                    pass
                continue
            await self._watch()
            current = await self.revision()
            remaining = deadline - loop.time()
            if current != after_revision or remaining <= 0:
                return current
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def edge_state(self) -> EdgeState:
        revision = await self.revision()  # first: what follows is at least this new
        accounts, scripts, deployments, routes, sealed = await asyncio.gather(
            self._scan("accounts", "name.*"),
            self._scan("scripts"),
            self._scan("deployments"),
            self._scan("routes"),
            self._scan("secrets"),
        )
        alive = _incarnations(scripts)
        live: dict[tuple[str, str], Deployment] = {}
        for entry in deployments:
            record = entry.json()
            if alive.get(entry.key) == record["incarnation"]:
                deployment = _deployment(record)
                live[(deployment.account_id, deployment.script)] = deployment
        # Versions never change: fetch those not read before (written before the deployments naming them).
        wanted = {
            version_id: _key("id", deployment.account_id, deployment.script, version_id)
            for deployment in live.values()
            for version_id, _ in deployment.versions
        }
        missing = [version_id for version_id in wanted if version_id not in self._versions]
        fetched = await asyncio.gather(*(self._get("versions", wanted[version_id]) for version_id in missing))
        for entry in fetched:
            if entry.value is not None:
                version = _version(entry.json())
                self._versions[version.id] = version
        versions = {version_id: self._versions[version_id] for version_id in wanted if version_id in self._versions}
        self._versions = dict(versions)  # keep only what is still deployed
        secret_map: dict[tuple[str, str], dict[str, str]] = {}
        for entry in sealed:
            account_id, script, name = (_unescape(part) for part in entry.key.split("."))
            record = entry.json()
            if alive.get(_key(account_id, script) or "") != record["incarnation"]:
                continue
            context = _secret_context(account_id, script, name, record["incarnation"])
            secret_map.setdefault((account_id, script), {})[name] = self._box.open(record["value"], context)
        return EdgeState(
            revision=revision,
            routes=[route for route, _ in _alive_routes(routes, alive)],
            accounts={account.id: account for account in (_account(entry.json()) for entry in accounts)},
            deployments=live,
            versions=versions,
            secrets={key: dict(sorted(found.items())) for key, found in sorted(secret_map.items())},
        )


    # == invocation events (warren.observability) ===========================================
    # Per account, one stream of events: subject <prefix>.logs.<account>.<script>, each message
    # a JSON array of the events one publish call brought for that script, limited by age
    # (EVENTS_MAX_AGE_S) and bytes, per account, so that a noisy account cannot push another's
    # out. Per-minute counts live in a KV bucket of their own (<prefix>_event_stats, key
    # <account>.<script>.<minute ms>), updated with compare-and-set by every edge node. Neither
    # is in KINDS: events never move the revision nor wake an edge node.

    def _events_stream(self, account_id: str) -> str:
        if not _EVENT_ACCOUNT.fullmatch(account_id):
            raise InvalidInput(f"invalid account id {account_id!r}")
        return f"{self.prefix}_logs_{account_id}"

    def _events_subject(self, account_id: str, script: str | None) -> str:
        return f"{self.prefix}.logs.{account_id}." + (_escape(script) if script is not None else ">")

    def _events_replicas(self) -> int:
        return int(getattr(self, "bucket_replicas", None) or self.replicas or 1)

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        js = self._jetstream()
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await js.add_stream(config)
            except APIError:
                await js.stream_info(config.name or "")  # created meanwhile by another node: fine

    async def _ensure_events_stream(self, account_id: str) -> str:
        name = self._events_stream(account_id)
        known: set[str] | None = getattr(self, "_event_streams", None)
        if known is None:
            known = set()
            self._event_streams = known
        if name not in known:
            await self._ensure_stream(
                api.StreamConfig(
                    name=name,
                    description="warren invocation events of one account",
                    subjects=[self._events_subject(account_id, None)],
                    discard=api.DiscardPolicy.OLD,
                    max_age=EVENTS_MAX_AGE_S,
                    max_bytes=EVENTS_MAX_BYTES,
                    max_msgs=-1,
                    storage=api.StorageType.FILE,
                    num_replicas=self._events_replicas(),
                )
            )
            known.add(name)
        return name

    async def _ensure_event_stats(self) -> None:
        if getattr(self, "_event_stats_ready", False):
            return
        await self._ensure_stream(
            api.StreamConfig(
                name=self._stream(EVENT_STATS),
                description="warren invocation counts per account, script and minute",
                subjects=[f"$KV.{self._bucket(EVENT_STATS)}.>"],
                allow_rollup_hdrs=True,
                deny_delete=True,
                discard=api.DiscardPolicy.NEW,
                max_age=EVENT_STATS_MAX_AGE_S,
                max_msgs=-1,
                max_bytes=-1,
                max_msgs_per_subject=1,
                storage=api.StorageType.FILE,
                num_replicas=self._events_replicas(),
                allow_direct=False,
            )
        )
        self._event_stats_ready = True

    async def publish_events(self, account_id: str, events: Sequence[dict[str, Any]]) -> None:
        from warren.observability.analytics import count_events

        js = self._jetstream()
        stream = await self._ensure_events_stream(account_id)
        limit = self._max_record()
        by_script: dict[str, list[bytes]] = {}
        for event in events:
            encoded = dump_json(event)
            if len(encoded) + 2 <= limit:  # events are bounded upstream; one that is not is skipped
                by_script.setdefault(str(event.get("scriptName", "")), []).append(encoded)
        try:
            for script, items in by_script.items():
                subject = self._events_subject(account_id, script)
                chunk: list[bytes] = []
                size = 2
                for item in items:
                    if chunk and size + len(item) + 1 > limit:
                        await js.publish(subject, b"[" + b",".join(chunk) + b"]", stream=stream)
                        chunk, size = [], 2
                    chunk.append(item)
                    size += len(item) + 1
                if chunk:
                    await js.publish(subject, b"[" + b",".join(chunk) + b"]", stream=stream)
        except NATSError:
            self._event_streams.discard(stream)  # deleted under us, perhaps: look again next time
            raise
        await self._ensure_event_stats()
        for (script, minute), (requests, errors, cpu_ms) in count_events(events).items():

            def add(current: Any, n: float = requests, e: float = errors, cpu: float = cpu_ms) -> Any:
                base = current if isinstance(current, list) and len(current) == 3 else [0, 0, 0.0]
                return [int(base[0] + n), int(base[1] + e), round(float(base[2]) + cpu, 3)]

            try:
                await self._update_json(EVENT_STATS, _key(account_id, script, str(minute)), add)
            except Conflict:
                pass  # lost to extreme contention: the chart undercounts; the events themselves went out

    async def follow_events(
        self, account_id: str, script: str | None = None, since_ms: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """As the protocol says, through an ordered push consumer (it resumes by itself after a
        reconnection). A reader that falls FOLLOW_QUEUE messages behind loses the newest."""
        import datetime

        self._jetstream()  # fails at once if the store is closed or NATS unreachable
        stream = await self._ensure_events_stream(account_id)
        queue: asyncio.Queue[bytes] = asyncio.Queue(FOLLOW_QUEUE)

        async def on_message(msg: Msg) -> None:
            try:
                queue.put_nowait(msg.data)
            except asyncio.QueueFull:
                pass

        start = time.time() if since_ms is None else since_ms / 1000
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.datetime.fromtimestamp(start, datetime.UTC),
        )
        subscription = await self._subscribe(
            self._events_subject(account_id, script),
            stream=stream,
            cb=on_message,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=WATCH_HEARTBEAT_S,
        )
        try:
            while True:
                data = await queue.get()
                try:
                    batch = json.loads(data)
                except ValueError:
                    continue
                for event in batch if isinstance(batch, list) else ():
                    if isinstance(event, dict):
                        yield event
        finally:
            try:
                await subscription.unsubscribe()
            except (NATSError, ConnectionError, TimeoutError):
                pass

    async def event_stats(self, account_id: str, since_ms: int) -> list[tuple[str, int, int, int, float]]:
        self._events_stream(account_id)  # checks the id
        await self._ensure_event_stats()
        rows = []
        for entry in await self._scan(EVENT_STATS, _escape(account_id) + ".>"):
            parts = entry.key.split(".")
            try:
                minute = int(_unescape(parts[2]))
                requests, errors, cpu_ms = entry.json()
            except (IndexError, ValueError, TypeError):
                continue
            if minute >= since_ms:
                rows.append((_unescape(parts[1]), minute, int(requests), int(errors), float(cpu_ms)))
        return sorted(rows)

    # == end of invocation events ==============================================================

    # == KV data (warren.bindings.kv) ===========================================================
    # Layout: ONE bucket for the data of every namespace, <prefix>_kv_data, key
    # "<namespace id>.<hex of the key's UTF-8 bytes>", and one object store, <prefix>_kv_values,
    # for values too large for a message (over KV_INLINE_MAX, or the server's max_payload less
    # room for headers), each under a fresh name "<namespace id>/<random>" that the bucket's
    # message points to (header Warren-KV-Object). One bucket rather than one per namespace:
    # every bucket is a JetStream stream, and on a cluster a Raft group of its own, while
    # namespaces are cheap and numerous (many per account, many accounts); one bucket is also
    # one watch per edge node for every namespace's change notifications, and deleting a
    # namespace is one purge of its subjects. The hex keeps any key a single subject token
    # (keys are arbitrary UTF-8; subjects are not) and keeps UTF-8 byte order.
    #
    # A message's headers carry the record (stamp, writer, expiration, metadata in base64), so
    # list and the watch read headers only, never values; a delete is a message with
    # KV-Operation: DEL and its stamp (a tombstone). A write is a compare-and-set on the key's
    # last sequence, applied only if its (stamp, writer) is greater than the stored one (last
    # write wins). A large value's object is stored first and the old one deleted after the
    # message that replaced it, so a reader that finds the object gone re-reads the key.
    # Neither is in KINDS: KV data never moves the revision nor wakes an edge node.

    def _kv_subject(self, namespace_id: str, key: str | None = None) -> str:
        base = f"$KV.{self._bucket(KV_DATA)}.{_escape(namespace_id)}"
        return base if key is None else f"{base}.{key_bytes(key).hex()}"

    def _kv_inline_max(self) -> int:
        return min(KV_INLINE_MAX, self._max_record())

    async def _kv_ready(self) -> tuple[JetStreamContext, ObjectStore]:
        js = self._jetstream()
        objects: ObjectStore | None = getattr(self, "_kv_objects", None)
        if objects is not None:
            return js, objects
        config = api.StreamConfig(
            name=self._stream(KV_DATA),
            description="warren KV data of every namespace",
            subjects=[f"$KV.{self._bucket(KV_DATA)}.>"],
            allow_rollup_hdrs=True,
            deny_delete=True,
            discard=api.DiscardPolicy.NEW,
            max_msgs=-1,
            max_bytes=-1,
            max_msgs_per_subject=1,
            storage=api.StorageType.FILE,
            num_replicas=self.bucket_replicas,
            allow_direct=False,  # reads go to the stream leader: a node reads its own writes
        )
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await js.add_stream(config)
            except APIError:
                await js.stream_info(config.name or "")  # created meanwhile by another node: fine
        try:
            objects = await js.object_store(self._bucket(KV_VALUES))
        except BucketNotFoundError:
            try:
                objects = await js.create_object_store(
                    self._bucket(KV_VALUES),
                    api.ObjectStoreConfig(
                        description="warren KV values too large for a message",
                        storage=api.StorageType.FILE,
                        replicas=self.bucket_replicas,
                    ),
                )
            except APIError:
                objects = await js.object_store(self._bucket(KV_VALUES))
        self._kv_objects: ObjectStore | None = objects
        return js, objects

    def _kv_headers(self, record: KVRecord) -> dict[str, str]:
        headers = {_KV_STAMP: str(record.stamp), _KV_WRITER: record.writer}
        if record.expiration is not None:
            headers[_KV_EXPIRATION] = str(record.expiration)
        if record.metadata is not None:
            headers[_KV_METADATA] = base64.b64encode(record.metadata.encode("utf-8")).decode("ascii")
        if record.value is None:
            headers[_KV_OPERATION] = "DEL"
        return headers

    @staticmethod
    def _kv_record(headers: dict[str, str] | None, data: bytes) -> tuple[KVRecord, str | None]:
        """A message's record (its value from ``data``) and the object holding its value, if any."""
        found = headers or {}
        deleted = found.get(_KV_OPERATION) in ("DEL", "PURGE")
        metadata = found.get(_KV_METADATA)
        expiration = found.get(_KV_EXPIRATION)
        record = KVRecord(
            value=None if deleted else data,
            metadata=base64.b64decode(metadata).decode("utf-8") if metadata is not None else None,
            expiration=int(expiration) if expiration is not None else None,
            stamp=int(found.get(_KV_STAMP, "0")),
            writer=found.get(_KV_WRITER, ""),
        )
        return record, None if deleted else found.get(_KV_OBJECT)

    async def _kv_message(self, subject: str) -> tuple[int, KVRecord, str | None] | None:
        js, _ = await self._kv_ready()
        try:
            msg = await js.get_msg(self._stream(KV_DATA), subject=subject)
        except NotFoundError:
            return None
        record, obj = self._kv_record(msg.headers, msg.data or b"")
        return msg.seq or 0, record, obj

    async def _kv_delete_object(self, name: str) -> None:
        _, objects = await self._kv_ready()
        try:
            await objects.delete(name)
        except (NATSError, TimeoutError):
            pass  # garbage: an unreferenced object is never read

    async def kv_get(self, namespace_id: str, key: str) -> KVRecord | None:
        subject = self._kv_subject(namespace_id, key)
        _, objects = await self._kv_ready()
        for _ in range(CAS_ATTEMPTS):
            found = await self._kv_message(subject)
            if found is None:
                return None
            _, record, obj = found
            if obj is None:
                return record
            try:
                result = await objects.get(obj)
            except ObjectNotFoundError:
                continue  # replaced (and its object deleted) since the message was read: read again
            return replace(record, value=result.data or b"")
        raise Conflict("too many concurrent changes; try again")

    async def kv_get_many(self, namespace_id: str, keys: Sequence[str]) -> dict[str, KVRecord]:
        unique = list(dict.fromkeys(keys))
        records = await asyncio.gather(*(self.kv_get(namespace_id, key) for key in unique))
        return {key: record for key, record in zip(unique, records, strict=True) if record is not None}

    async def kv_put(self, namespace_id: str, key: str, record: KVRecord) -> bool:
        js, objects = await self._kv_ready()
        subject = self._kv_subject(namespace_id, key)
        headers = self._kv_headers(record)
        data = record.value or b""
        obj: str | None = None
        if record.value is not None and len(record.value) > self._kv_inline_max():
            obj = f"{_escape(namespace_id)}/{uuid.uuid4().hex}"
            await objects.put(obj, record.value)
            headers[_KV_OBJECT] = obj
            data = b""
        stored = False
        try:
            for _ in range(CAS_ATTEMPTS):
                current = await self._kv_message(subject)
                if current is not None and current[1].order >= record.order:
                    return False  # a later write is already there: this one lost
                headers[_EXPECTED_LAST] = str(current[0] if current is not None else 0)
                try:
                    await js.publish(subject, data, stream=self._stream(KV_DATA), headers=headers)
                except APIError as exc:
                    if exc.err_code in _WRONG_LAST_SEQUENCE:
                        continue
                    raise
                stored = True
                if current is not None and current[2] is not None:
                    await self._kv_delete_object(current[2])
                return True
            raise Conflict("too many concurrent changes; try again")
        finally:
            if obj is not None and not stored:
                await self._kv_delete_object(obj)

    async def kv_put_many(self, namespace_id: str, items: Sequence[tuple[str, KVRecord]]) -> int:
        stored = 0
        for start in range(0, len(items), KV_PUT_CONCURRENCY):
            batch = items[start : start + KV_PUT_CONCURRENCY]
            # A key twice in a batch is fine: the compare-and-set orders them, the stamps decide.
            results = await asyncio.gather(*(self.kv_put(namespace_id, key, record) for key, record in batch))
            stored += sum(results)
        return stored

    async def kv_list(
        self, namespace_id: str, prefix: str, after: bytes | None, limit: int, now: float
    ) -> tuple[list[KVKeyInfo], bool]:
        js, _ = await self._kv_ready()
        base = self._kv_subject(namespace_id) + "."
        wanted = key_bytes(prefix).hex()
        floor = after.hex() if after is not None else None
        received: list[tuple[str, dict[str, str] | None]] = []
        arrived = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            received.append((msg.subject, msg.headers))
            arrived.set()

        # Headers only: a list never reads values. Caught up as in _scan (the consumer's info decides).
        subscription = await self._subscribe(
            base + ">",
            stream=self._stream(KV_DATA),
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=True,
            inactive_threshold=5.0,
        )
        consumer: str | None = None
        try:
            deadline = asyncio.get_running_loop().time() + self.timeout
            while True:
                arrived.clear()
                info = await subscription.consumer_info()
                consumer = info.name
                delivered = info.delivered.consumer_seq if info.delivered is not None else 0
                if not info.num_pending and len(received) >= delivered:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"listing a namespace of {self._bucket(KV_DATA)} took over {self.timeout} s")
                try:
                    await asyncio.wait_for(arrived.wait(), 0.01)
                except TimeoutError:
                    pass
        finally:
            await subscription.unsubscribe()
            if consumer is not None:
                try:
                    await js.delete_consumer(self._stream(KV_DATA), consumer)
                except (NATSError, TimeoutError, ConnectionError):
                    pass
        latest: dict[str, dict[str, str] | None] = {}
        for subject, headers in received:  # a key written during the scan comes twice: keep the newest
            latest[subject[len(base) :]] = headers
        # Hex of UTF-8 sorts as the bytes do; a key starts with the prefix iff its hex does.
        live: list[tuple[str, KVRecord]] = []
        for token, headers in latest.items():
            if not token.startswith(wanted) or (floor is not None and token <= floor):
                continue
            record, _ = self._kv_record(headers, b"")
            if record.value is not None and (record.expiration is None or record.expiration > now):
                live.append((token, record))
        live.sort(key=lambda item: item[0])
        keys = [
            KVKeyInfo(bytes.fromhex(token).decode("utf-8"), record.expiration, record.metadata)
            for token, record in live[:limit]
        ]
        return keys, len(live) > limit

    async def kv_purge(self, namespace_id: str) -> None:
        js, objects = await self._kv_ready()
        await js.purge_stream(self._stream(KV_DATA), subject=self._kv_subject(namespace_id) + ".>")
        mine = f"{_escape(namespace_id)}/"
        try:
            infos = await objects.list(ignore_deletes=True)
        except NotFoundError:
            infos = []
        for info in infos:
            if info.name.startswith(mine):
                await self._kv_delete_object(info.name)
        # The namespace's own subject (one token short of a key) tells watchers it was purged.
        await js.publish(self._kv_subject(namespace_id), b"", stream=self._stream(KV_DATA))

    async def kv_changes(self) -> AsyncGenerator[KVChange, None]:
        """A headers-only watch of the data bucket, from now on. Started afresh after a reconnection
        (its consumer lived in one server's memory), and then, as after a queue overflow,
        announced as a change of anything: what happened meanwhile is unknown."""
        await self._kv_ready()
        prefix = f"$KV.{self._bucket(KV_DATA)}."
        queue: asyncio.Queue[KVChange] = asyncio.Queue(KV_CHANGES_QUEUE)
        lost = False

        async def on_message(msg: Msg) -> None:
            nonlocal lost
            parts = msg.subject[len(prefix) :].split(".")
            try:
                namespace_id = _unescape(parts[0])
                if len(parts) == 1:
                    change = KVChange(namespace_id, None)
                else:
                    record, _ = self._kv_record(msg.headers, b"")
                    key = bytes.fromhex(parts[1]).decode("utf-8")
                    change = KVChange(namespace_id, key, record.stamp, record.writer)
            except (ValueError, IndexError):
                return  # not a message of ours
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                lost = True

        async def watch() -> JetStreamContext.PushSubscription:
            return await self._subscribe(
                prefix + ">",
                stream=self._stream(KV_DATA),
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                headers_only=True,
                idle_heartbeat=WATCH_HEARTBEAT_S,
            )

        def reconnects() -> int:
            return int(self._nc.stats.get("reconnects", 0)) if self._nc is not None else 0

        subscription = await watch()
        seen = reconnects()
        try:
            while True:
                try:
                    change: KVChange | None = await asyncio.wait_for(queue.get(), KV_WATCH_CHECK_S)
                except TimeoutError:
                    change = None
                if reconnects() != seen and self._nc is not None and self._nc.is_connected:
                    try:
                        await subscription.unsubscribe()
                    except NATSError:
                        pass
                    subscription = await watch()
                    seen = reconnects()
                    lost = True
                if lost:
                    lost = False
                    while not queue.empty():
                        queue.get_nowait()
                    yield KVChange(None, None)
                elif change is not None:
                    yield change
        finally:
            try:
                await subscription.unsubscribe()
            except (NATSError, ConnectionError, TimeoutError):
                pass

    # == end of KV data ============================================================================

    # == queues, cron schedules and cron claims (issue #10) =======================================
    # KV buckets of their own, created on first use and outside KINDS (so they never move the
    # revision; edge nodes re-read them on a timer, warren.triggers):
    #
    #     KV queues        <account>.<queue name>            -> Queue (with its consumer)
    #     KV schedules     <account>.<script>                -> {crons, modified_on}
    #     KV cron_claims   <account>.<script>.<sha256 of cron>.<ms> -> claimed (kept 2 days)
    #     stream <prefix>_queue_<queue id>, subject <prefix>.queue.<queue id>: the messages
    #
    # A queue's stream has work-queue retention and one durable pull consumer ("warren") that
    # every edge node pulls from, so JetStream hands each message to one node; one not acked
    # within QUEUE_ACK_WAIT_S (extended while a batch runs: in_progress) goes to another. A
    # cron occurrence is claimed by creating its key: the create fails if the key exists, so
    # one node in the cluster fires it. A message's id, timestamp, content type, failed
    # attempts and not-before time ride in headers; a retry is published again (attempts + 1,
    # not before now + delay) and the old delivery acked; a message pulled before its time is
    # nak'd with the remaining delay. Sending a batch is one publish per message: a failure
    # part-way leaves the first ones sent.

    def _queue_stream(self, queue_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", queue_id):
            raise NotFound(f"queue {queue_id!r} does not exist")
        return f"{self.prefix}_queue_{queue_id}"

    def _queue_subject(self, queue_id: str) -> str:
        return f"{self.prefix}.queue.{queue_id}"

    async def _ensure_issue10_buckets(self) -> None:
        if getattr(self, "_issue10_ready", False):
            return
        js = self._jetstream()
        for kind, max_age in (("queues", None), ("schedules", None), ("cron_claims", CRON_CLAIM_MAX_AGE_S)):
            config = api.StreamConfig(
                name=self._stream(kind),
                description=f"warren {kind}",
                subjects=[f"$KV.{self._bucket(kind)}.>"],
                allow_rollup_hdrs=True,
                deny_delete=True,
                discard=api.DiscardPolicy.NEW,
                max_age=max_age,
                max_msgs=-1,
                max_bytes=-1,
                max_msgs_per_subject=1,
                storage=api.StorageType.FILE,
                num_replicas=self.bucket_replicas,
                allow_direct=False,
            )
            try:
                await js.stream_info(config.name or "")
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except APIError:
                    await js.stream_info(config.name or "")  # created meanwhile by another node
        self._issue10_ready = True

    async def _write10(
        self, kind: str, key: str | None, value: bytes = b"", *, last: int | None = None, operation: str | None = None
    ) -> bool:
        """``_write`` to a bucket of this section: a bucket another node has just created may not
        take messages for a moment (no responders), so that is retried briefly."""
        for _ in range(40):
            try:
                return await self._write(kind, key, value, last=last, operation=operation)
            except NoStreamResponseError:
                await asyncio.sleep(0.05)
        return await self._write(kind, key, value, last=last, operation=operation)

    async def _ensure_queue_stream(self, queue_id: str) -> str:
        js = self._jetstream()
        name = self._queue_stream(queue_id)
        try:
            await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(
                    api.StreamConfig(
                        name=name,
                        description="warren queue messages",
                        subjects=[self._queue_subject(queue_id)],
                        retention=api.RetentionPolicy.WORK_QUEUE,
                        discard=api.DiscardPolicy.NEW,
                        max_msgs=-1,
                        max_bytes=-1,
                        duplicate_window=120,
                        storage=api.StorageType.FILE,
                        num_replicas=self.bucket_replicas,
                    )
                )
            except APIError:
                await js.stream_info(name)
        try:
            await js.consumer_info(name, QUEUE_CONSUMER)
        except NotFoundError:
            try:
                await js.add_consumer(
                    name,
                    api.ConsumerConfig(
                        durable_name=QUEUE_CONSUMER,
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=QUEUE_ACK_WAIT_S,
                        max_deliver=-1,
                        max_ack_pending=QUEUE_MAX_ACK_PENDING,
                        max_waiting=512,
                    ),
                )
            except APIError:
                await js.consumer_info(name, QUEUE_CONSUMER)
        return name

    async def _queue_entry(self, account_id: str, queue: str) -> _Entry:
        """The record of the account's queue named, or with the id, ``queue``."""
        await self._ensure_issue10_buckets()
        entry = await self._get("queues", _key(account_id, queue))
        if entry.value is not None:
            return entry
        for found in await self._scan("queues", _escape(account_id) + ".*"):
            if found.json()["id"] == queue:
                return found
        return _MISSING

    async def create_queue(self, account_id: str, name: str) -> Queue:
        name = validation.queue_name(name)
        await self._require_account(account_id)
        await self._ensure_issue10_buckets()
        created = now()
        queue = Queue(id=uuid.uuid4().hex, account_id=account_id, name=name, created_on=created, modified_on=created)
        await self._ensure_queue_stream(queue.id)  # first: the record makes it usable
        current = await self._get("queues", _key(account_id, name))
        if current.value is not None or not await self._write10(
            "queues", current.key, _dump(_queue_json(queue)), last=current.revision
        ):
            try:
                await self._jetstream().delete_stream(self._queue_stream(queue.id))
            except (NATSError, TimeoutError):
                pass
            raise Conflict(f"a queue named {name!r} already exists")
        return queue

    async def list_queues(self, account_id: str) -> list[Queue]:
        await self._ensure_issue10_buckets()
        queues = [_queue(entry.json()) for entry in await self._scan("queues", _escape(account_id) + ".*")]
        return sorted(queues, key=lambda queue: queue.name)

    async def get_queue(self, account_id: str, queue: str) -> Queue | None:
        entry = await self._queue_entry(account_id, queue)
        return _queue(entry.json()) if entry.value is not None else None

    async def delete_queue(self, account_id: str, queue_id: str) -> bool:
        entry = await self._queue_entry(account_id, queue_id)
        if entry.value is None or entry.json()["id"] != queue_id:
            return False
        await self._write10("queues", entry.key, operation="DEL")
        getattr(self, "_pullers", {}).pop(queue_id, None)
        try:
            await self._jetstream().delete_stream(self._queue_stream(queue_id))
        except NotFoundError:
            pass
        return True

    async def put_queue_consumer(self, account_id: str, queue_id: str, consumer: QueueConsumer) -> Queue:
        script = validation.script_name(consumer.script)
        settings = validation.consumer_settings({key: getattr(consumer, key) for key in validation.CONSUMER_LIMITS})
        dead_letter = validation.queue_name(consumer.dead_letter_queue) if consumer.dead_letter_queue else ""
        entry = await self._queue_entry(account_id, queue_id)
        if entry.value is None or entry.json()["id"] != queue_id:
            raise NotFound(f"queue {queue_id!r} does not exist")
        result: list[Queue] = []

        def change(record: Any) -> Any | None:
            if record is None:
                raise NotFound(f"queue {queue_id!r} does not exist")
            queue = _queue(record)
            if dead_letter == queue.name:
                raise InvalidInput("a queue cannot be its own dead letter queue")
            others = [existing for existing in queue.consumers if existing.script != script]
            if others:
                raise Conflict(f"queue {queue.name!r} already has a consumer: {others[0].script}")
            created = queue.consumers[0].created_on if queue.consumers else now()
            stored = QueueConsumer(script=script, dead_letter_queue=dead_letter, created_on=created, **settings)
            updated = replace(queue, modified_on=now(), consumers=(stored,))
            result[:] = [updated]
            return _queue_json(updated)

        await self._update_json("queues", entry.key, change)
        return result[0]

    async def delete_queue_consumer(self, account_id: str, queue_id: str, script: str) -> bool:
        entry = await self._queue_entry(account_id, queue_id)
        if entry.value is None or entry.json()["id"] != queue_id:
            return False

        def change(record: Any) -> Any | None:
            if record is None:
                return None
            queue = _queue(record)
            kept = tuple(consumer for consumer in queue.consumers if consumer.script != script)
            if len(kept) == len(queue.consumers):
                return None
            return _queue_json(replace(queue, modified_on=now(), consumers=kept))

        return await self._update_json("queues", entry.key, change)

    async def queue_consumers(self) -> list[tuple[Queue, QueueConsumer]]:
        await self._ensure_issue10_buckets()
        queues = [_queue(entry.json()) for entry in await self._scan("queues")]
        return [(queue, consumer) for queue in queues for consumer in queue.consumers]

    async def queue_send(self, account_id: str, queue_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        js = self._jetstream()
        stream, subject = self._queue_stream(queue_id), self._queue_subject(queue_id)
        sent = _now_ms()
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            headers = {
                "Nats-Msg-Id": message_id,
                _Q_ID: message_id,
                _Q_TIMESTAMP: str(sent),
                _Q_TYPE: message.content_type,
                _Q_ATTEMPTS: "0",
                _Q_NOT_BEFORE: str(sent + message.delay_s * 1000),
            }
            try:
                await js.publish(subject, message.body, stream=stream, headers=headers)
            except (NotFoundError, NoStreamResponseError):
                raise NotFound(f"queue {queue_id!r} does not exist") from None
            ids.append(message_id)
        return ids

    async def _puller(self, queue_id: str) -> JetStreamContext.PullSubscription:
        pullers: dict[str, JetStreamContext.PullSubscription] | None = getattr(self, "_pullers", None)
        if pullers is None:
            pullers = {}
            self._pullers = pullers
        puller = pullers.get(queue_id)
        if puller is None:
            stream = await self._ensure_queue_stream(queue_id)
            puller = pullers[queue_id] = await self._jetstream().pull_subscribe_bind(QUEUE_CONSUMER, stream=stream)
        return puller

    def _held_messages(self) -> dict[str, Msg]:
        held: dict[str, Msg] | None = getattr(self, "_held", None)
        if held is None:
            held = {}
            self._held = held
        return held

    async def queue_receive(self, account_id: str, queue_id: str, limit: int, lease_s: float) -> list[QueueMessage]:
        """As the protocol says; the lease is the consumer's ack wait (QUEUE_ACK_WAIT_S), not ``lease_s``."""
        if limit <= 0:
            return []
        try:
            puller = await self._puller(queue_id)
            received = await puller.fetch(limit, timeout=QUEUE_FETCH_WAIT_S)
        except TimeoutError:
            return []
        except NotFoundError:
            return []  # the queue was deleted
        held = self._held_messages()
        moment = _now_ms()
        messages = []
        for msg in received:
            headers = msg.headers or {}
            not_before = _int(headers.get(_Q_NOT_BEFORE))
            if not_before > moment:
                await msg.nak(delay=(not_before - moment) / 1000)
                continue
            lease = f"{queue_id}/{msg.metadata.sequence.stream}/{uuid.uuid4().hex}"
            held[lease] = msg
            messages.append(
                QueueMessage(
                    id=headers.get(_Q_ID, str(msg.metadata.sequence.stream)),
                    body=msg.data or b"",
                    content_type=headers.get(_Q_TYPE, "bytes"),
                    timestamp_ms=_int(headers.get(_Q_TIMESTAMP)),
                    attempts=_int(headers.get(_Q_ATTEMPTS)) + 1,
                    lease=lease,
                )
            )
        return messages

    async def queue_extend(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], lease_s: float
    ) -> None:
        held = self._held_messages()
        for message in messages:
            msg = held.get(message.lease)
            if msg is not None:
                await msg.in_progress()

    async def queue_ack(self, account_id: str, queue_id: str, messages: Sequence[QueueMessage]) -> None:
        held = self._held_messages()
        for message in messages:
            msg = held.pop(message.lease, None)
            if msg is not None:
                await msg.ack_sync(timeout=self.timeout)

    async def _republish(self, queue_id: str, message: QueueMessage, attempts: int, not_before: int) -> None:
        headers = {
            "Nats-Msg-Id": f"{message.id}:{attempts}:{message.lease}",
            _Q_ID: message.id,
            _Q_TIMESTAMP: str(message.timestamp_ms),
            _Q_TYPE: message.content_type,
            _Q_ATTEMPTS: str(attempts),
            _Q_NOT_BEFORE: str(not_before),
        }
        try:
            await self._jetstream().publish(
                self._queue_subject(queue_id), message.body, stream=self._queue_stream(queue_id), headers=headers
            )
        except (NotFoundError, NoStreamResponseError):
            raise NotFound(f"queue {queue_id!r} does not exist") from None

    async def queue_retry(self, account_id: str, queue_id: str, retries: Sequence[tuple[QueueMessage, int]]) -> None:
        held = self._held_messages()
        for message, delay in retries:
            msg = held.pop(message.lease, None)
            if msg is None:
                continue
            await self._republish(queue_id, message, message.attempts, _now_ms() + delay * 1000)
            await msg.ack_sync(timeout=self.timeout)

    async def queue_dead_letter(
        self, account_id: str, queue_id: str, messages: Sequence[QueueMessage], dead_letter_queue_id: str
    ) -> None:
        entry = await self._queue_entry(account_id, dead_letter_queue_id)
        if entry.value is None or entry.json()["id"] != dead_letter_queue_id:
            raise NotFound(f"queue {dead_letter_queue_id!r} does not exist")
        held = self._held_messages()
        for message in messages:
            msg = held.pop(message.lease, None)
            if msg is None:
                continue
            await self._republish(dead_letter_queue_id, message, 0, _now_ms())
            await msg.ack_sync(timeout=self.timeout)

    async def queue_backlog(self, account_id: str, queue_id: str) -> int:
        try:
            info = await self._jetstream().stream_info(self._queue_stream(queue_id))
        except NotFoundError:
            return 0
        return int(info.state.messages)

    async def put_schedules(self, account_id: str, script: str, crons: Sequence[str]) -> list[str]:
        script = validation.script_name(script)
        checked = list(validation.crons(list(crons)))
        await self._require_account(account_id)
        await self._ensure_issue10_buckets()
        key = _key(account_id, script)
        current = await self._get("schedules", key)
        if (current.json() or {}).get("crons", []) == checked:
            return checked
        if checked:
            await self._write10("schedules", key, _dump({"crons": checked, "modified_on": now()}))
        else:
            await self._write10("schedules", key, operation="DEL")
        return checked

    async def get_schedules(self, account_id: str, script: str) -> list[str]:
        await self._ensure_issue10_buckets()
        record = (await self._get("schedules", _key(account_id, script))).json()
        return list(record["crons"]) if record else []

    async def all_schedules(self) -> list[tuple[str, str, list[str]]]:
        await self._ensure_issue10_buckets()
        found = []
        for entry in await self._scan("schedules"):
            account_id, script = (_unescape(part) for part in entry.key.split("."))
            found.append((account_id, script, list(entry.json()["crons"])))
        return sorted(found)

    async def claim_cron(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> bool:
        await self._ensure_issue10_buckets()
        key = _key(account_id, script, _digest(cron)[:32], str(int(scheduled_ms)))
        return await self._write10("cron_claims", key, b"1", last=0)

    # == end of queues, cron schedules and cron claims ============================================

def _incarnations(scripts: list[_Entry]) -> dict[str, str]:
    """Script key -> incarnation, of the scripts that exist."""
    return {entry.key: entry.json()["incarnation"] for entry in scripts}


def _alive_routes(
    routes: list[_Entry], alive: dict[str, str], account_id: str | None = None
) -> list[tuple[Route, _Entry]]:
    """The routes whose script incarnation exists (of one account, or all), in creation order."""
    found = []
    for entry in routes:
        record = entry.json()
        if account_id is not None and record["account_id"] != account_id:
            continue
        if alive.get(_key(record["account_id"], record["script"]) or "") == record["incarnation"]:
            found.append((_route(record), entry))
    return found


def _route_json(route: Route) -> dict[str, Any]:
    return {"id": route.id, "account_id": route.account_id, "pattern": route.pattern, "script": route.script}



# -- queues (issue #10) ---------------------------------------------------------------------------

QUEUE_CONSUMER = "warren"  # the durable pull consumer of every queue's stream, shared by all edge nodes
QUEUE_ACK_WAIT_S = 30.0  # a message not acked (nor extended) for this long is delivered again
QUEUE_MAX_ACK_PENDING = 20_000
QUEUE_FETCH_WAIT_S = 0.05
CRON_CLAIM_MAX_AGE_S = 2 * 24 * 3600.0
_Q_ID = "Warren-Message-Id"
_Q_TIMESTAMP = "Warren-Timestamp"
_Q_TYPE = "Warren-Content-Type"
_Q_ATTEMPTS = "Warren-Attempts"  # failed deliveries before this copy was published
_Q_NOT_BEFORE = "Warren-Not-Before"  # ms since the epoch


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _queue_json(queue: Queue) -> dict[str, Any]:
    return {
        "id": queue.id,
        "account_id": queue.account_id,
        "name": queue.name,
        "created_on": queue.created_on,
        "modified_on": queue.modified_on,
        "consumers": [
            {
                "script": consumer.script,
                "batch_size": consumer.batch_size,
                "max_wait_ms": consumer.max_wait_ms,
                "max_retries": consumer.max_retries,
                "retry_delay": consumer.retry_delay,
                "dead_letter_queue": consumer.dead_letter_queue,
                "created_on": consumer.created_on,
            }
            for consumer in queue.consumers
        ],
    }


def _queue(data: dict[str, Any]) -> Queue:
    return Queue(
        id=str(data["id"]),
        account_id=str(data["account_id"]),
        name=str(data["name"]),
        created_on=str(data["created_on"]),
        modified_on=str(data["modified_on"]),
        consumers=tuple(
            QueueConsumer(
                script=str(item["script"]),
                batch_size=int(item["batch_size"]),
                max_wait_ms=int(item["max_wait_ms"]),
                max_retries=int(item["max_retries"]),
                retry_delay=int(item["retry_delay"]),
                dead_letter_queue=str(item.get("dead_letter_queue", "")),
                created_on=str(item.get("created_on", "")),
            )
            for item in data.get("consumers", [])
        ),
    )


if TYPE_CHECKING:

    def _nats_store_is_a_store(store: NATSStore) -> Store:
        return store  # mypy checks NATSStore against the protocol here


__all__ = ["SECRETS_KEY_ENV", "NATSStore", "SecretsKeyError", "generate_secrets_key", "redact"]


# == Durable Object placement (issue #8, part 2) ===================================================
# Used by warren.bindings.object_placement; nothing above depends on it. The layout:
#
#     KV objects_leases   <namespace dir>.<object id> -> {node, expires_ms}: who owns an object
#     KV objects_nodes    <escaped node id>            -> {url, started}: where a node takes forwarded calls
#     KV objects_alarms   <namespace dir>.<object id> -> {ns, id, name, time}: objects with an alarm set
#     KV objects_snapshots <namespace dir>.<object id> -> {seq, name}: the object's newest snapshot
#     stream <prefix>_objects, subject <prefix>.objects.<namespace dir>.<object id>: an object's write log,
#         kept from its newest snapshot on; each append is conditional on the subject's last sequence.
#     Object store <prefix>_object_snapshots  <key>/<seq> -> the object's SQLite file as of log message seq
#
# A lease is taken and renewed with compare-and-set on its key's revision; the log's
# conditional append is what fences a former owner off (see the placement module). A
# snapshot's pointer only moves forward (compare-and-set), and only then is the log purged
# below it; a reader that raced a purge finds a gap in the log's chain and starts again.

OBJECT_KV_KINDS = ("objects_leases", "objects_nodes", "objects_alarms", "objects_snapshots")
OBJECT_SNAPSHOTS = "object_snapshots"  # the object store's kind
OBJECT_NODES_MAX_AGE_S = 24 * 3600.0  # a node re-advertises itself well within this
_OBJECT_KEY = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{64}")


class ObjectsOnNATS:
    """The NATS side of Durable Object placement: lease, node and alarm keys, and the write logs."""

    def __init__(self, store: NATSStore) -> None:
        self.store = store
        self._ready = False
        self._snapshots: ObjectStore | None = None

    @property
    def replicas(self) -> int:
        return self.store.bucket_replicas

    def log_stream(self) -> str:
        return f"{self.store.prefix}_objects"

    def log_subject(self, key: str) -> str:
        if not _OBJECT_KEY.fullmatch(key):
            raise InvalidInput(f"invalid object key {key!r}")
        return f"{self.store.prefix}.objects.{key}"

    def max_message(self) -> int:
        """The largest log message (data and headers) this server takes, with room to spare."""
        return max(64 * 1024, self.store._max_record() - 4096)

    def node_secret(self) -> str:
        """A secret every node holding this store's secrets key can compute (the internal endpoint's
        default credential): a fixed AES-GCM encryption under that key, hashed."""
        tag = self.store._box._aead.encrypt(b"\0" * 12, b"warren node secret", b"warren durable objects")
        return hashlib.sha256(tag).hexdigest()

    async def ready(self, attempts: int = 8) -> None:
        """Create the buckets and the log stream (idempotent; several nodes may race to do it). On a
        cluster that is busy placing streams (nodes starting together) a request may time out: the
        whole is tried again."""
        for attempt in range(attempts):
            try:
                await self._create()
                return
            except (TimeoutError, NATSError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _create(self) -> None:
        if self._ready:
            return
        store = self.store
        for kind in OBJECT_KV_KINDS:
            await store._ensure_stream(
                api.StreamConfig(
                    name=store._stream(kind),
                    description=f"warren {kind}",
                    subjects=[f"$KV.{store._bucket(kind)}.>"],
                    allow_rollup_hdrs=True,
                    deny_delete=True,
                    discard=api.DiscardPolicy.NEW,
                    max_age=OBJECT_NODES_MAX_AGE_S if kind == "objects_nodes" else None,
                    max_msgs=-1,
                    max_bytes=-1,
                    max_msgs_per_subject=1,
                    storage=api.StorageType.FILE,
                    num_replicas=store.bucket_replicas,
                    allow_direct=False,
                )
            )
        await store._ensure_stream(
            api.StreamConfig(
                name=self.log_stream(),
                description="warren Durable Object write logs",
                subjects=[f"{store.prefix}.objects.>"],
                discard=api.DiscardPolicy.NEW,
                max_msgs=-1,
                max_bytes=-1,
                max_msgs_per_subject=-1,
                storage=api.StorageType.FILE,
                num_replicas=store.bucket_replicas,
                allow_direct=False,
            )
        )
        js = store._jetstream()
        try:
            self._snapshots = await js.object_store(store._bucket(OBJECT_SNAPSHOTS))
        except BucketNotFoundError:
            try:
                self._snapshots = await js.create_object_store(
                    store._bucket(OBJECT_SNAPSHOTS),
                    api.ObjectStoreConfig(
                        description="warren Durable Object snapshots",
                        storage=api.StorageType.FILE,
                        replicas=store.bucket_replicas,
                    ),
                )
            except APIError:
                self._snapshots = await js.object_store(store._bucket(OBJECT_SNAPSHOTS))
        self._ready = True

    async def _publish(self, subject: str, stream: str, data: bytes, headers: dict[str, str]) -> int | None:
        """One conditional append; its sequence, or None if the subject moved on (compare-and-set lost).
        A new stream may not take messages for a moment (no responders): that is retried briefly."""
        for attempt in range(40):
            try:
                ack = await self.store._jetstream().publish(subject, data, stream=stream, headers=headers)
                return int(ack.seq)
            except APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    return None
                raise
            except NoStreamResponseError:
                if attempt == 39:
                    raise
                await asyncio.sleep(0.05)
        return None

    async def get(self, kind: str, key: str) -> tuple[bytes | None, int]:
        """A key's value (None if absent or deleted) and its revision (0 if never written)."""
        entry = await self.store._get(kind, key)
        return entry.value, entry.revision

    async def swap(self, kind: str, key: str, value: bytes | None, last: int | None) -> int | None:
        """Write (or with None, delete) a key if its revision is still ``last`` (None: whatever it is).
        The new revision, or None if the key had moved on."""
        headers: dict[str, str] = {}
        if last is not None:
            headers[_EXPECTED_LAST] = str(last)
        if value is None:
            headers[_KV_OPERATION] = "DEL"
        return await self._publish(self.store._subject(kind, key), self.store._stream(kind), value or b"", headers)

    async def scan(self, kind: str) -> list[tuple[str, bytes, int]]:
        """Every live key of a bucket: (key, value, revision)."""
        return [(entry.key, entry.value or b"", entry.revision) for entry in await self.store._scan(kind)]

    async def append(self, key: str, data: bytes, headers: dict[str, str], last: int) -> int | None:
        """Append to an object's log if its last message is still ``last`` (0: none); the new sequence,
        or None if another writer appended first."""
        return await self._publish(
            self.log_subject(key), self.log_stream(), data, {**headers, _EXPECTED_LAST: str(last)}
        )

    async def read(self, key: str, after: int) -> AsyncIterator[tuple[int, dict[str, str], bytes]]:
        """An object's log messages after sequence ``after``, oldest first: (sequence, headers, data)."""
        js = self.store._jetstream()
        subject = self.log_subject(key)
        seq = after + 1
        while True:
            try:
                msg = await js.get_msg(self.log_stream(), seq=seq, subject=subject, next=True)
            except NotFoundError:
                return
            yield int(msg.seq or 0), dict(msg.headers or {}), msg.data or b""
            seq = int(msg.seq or 0) + 1

    async def last(self, key: str) -> int:
        """The sequence of the object's last log message (0 if it has none)."""
        try:
            msg = await self.store._jetstream().get_msg(self.log_stream(), subject=self.log_subject(key))
        except NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def snapshot(self, key: str) -> tuple[int, str] | None:
        """The object's newest snapshot: (the log sequence it includes, its name), or None."""
        value, _ = await self.get("objects_snapshots", key)
        if value is None:
            return None
        record = _load(value)
        return int(record["seq"]), str(record["name"])

    async def fetch_snapshot(self, name: str, path: str) -> bool:
        """Write the snapshot to ``path``; False if it is gone (replaced meanwhile: ask again)."""
        if self._snapshots is None:
            raise RuntimeError("placement buckets are not ready")
        try:
            with open(path, "wb") as sink:
                await self._snapshots.get(name, writeinto=sink)
        except ObjectNotFoundError:
            return False
        return True

    async def save_snapshot(self, key: str, seq: int, path: str) -> bool:
        """Store the file at ``path`` as the object's state as of log message ``seq``, point to it if it
        is newer than the snapshot pointed to, then drop the log below it and the older snapshot."""
        if self._snapshots is None:
            raise RuntimeError("placement buckets are not ready")
        name = f"{key}/{seq}"
        with open(path, "rb") as source:
            await self._snapshots.put(name, source)
        for _ in range(CAS_ATTEMPTS):
            value, revision = await self.get("objects_snapshots", key)
            current = _load(value) if value is not None else None
            if current is not None and int(current["seq"]) >= seq:
                await self._drop_snapshot(name)
                return False
            if await self.swap("objects_snapshots", key, _dump({"seq": seq, "name": name}), revision) is not None:
                break
        else:
            await self._drop_snapshot(name)
            return False
        await self.store._jetstream().purge_stream(self.log_stream(), seq=seq, subject=self.log_subject(key))
        if current is not None:
            await self._drop_snapshot(str(current["name"]))
        return True

    async def _drop_snapshot(self, name: str) -> None:
        if self._snapshots is None:
            return
        try:
            await self._snapshots.delete(name)
        except (NATSError, TimeoutError):
            pass  # garbage: a snapshot nothing points to is never read

    async def has(self, key: str, seq: int) -> bool:
        """Whether the log message ``seq`` exists and is the object's (a cache's anchor is still valid)."""
        try:
            msg = await self.store._jetstream().get_msg(self.log_stream(), seq=seq)
        except NotFoundError:
            return False
        return msg.subject == self.log_subject(key)


# == end of Durable Object placement ==============================================================
