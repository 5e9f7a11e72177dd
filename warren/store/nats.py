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

**Connection.** Reads use the stream leader (no direct gets), so a store
object reads its own writes. A first connection that fails raises
``ConnectionError``; once connected, a lost connection is retried forever, and
meanwhile every call fails at once with ``ConnectionError`` rather than being
queued (a queued write could land long after its caller was told it failed);
``wait_for_change`` waits for the connection to come back and raises
``ConnectionError`` if it has not by its timeout, so an edge node keeps serving
what it has, stale but up, and catches up when NATS is back. ``connected`` and
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from warren.store import validation
from warren.store.errors import Conflict, InvalidInput, NotFound
from warren.store.model import (
    Account,
    Deployment,
    EdgeState,
    KVNamespace,
    ModuleRef,
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
CAS_ATTEMPTS = 50  # conditional writes retried this often under contention before giving up
# Invocation events (warren.observability): per-account streams and the per-minute counts' bucket.
EVENTS_MAX_AGE_S = 3600.0
EVENTS_MAX_BYTES = 64 * 1024 * 1024  # per account
EVENT_STATS = "event_stats"  # a KV bucket's kind, outside KINDS
EVENT_STATS_MAX_AGE_S = 3 * 3600.0
FOLLOW_QUEUE = 1000  # messages a follower may fall behind before it loses the newest
_EVENT_ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")

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
        replicas: int = 1,
        timeout: float = 5.0,
        connect_timeout: int = 2,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", prefix):
            raise ValueError(f"invalid bucket prefix {prefix!r}: 1-32 of A-Z, a-z, 0-9, '_' and '-'")
        if not 1 <= replicas <= 5:
            raise ValueError("replicas is 1 to 5")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.prefix = prefix
        self.replicas = replicas
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
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                )
            except (NoServersError, OSError, NATSError, TimeoutError) as exc:
                raise ConnectionError(f"cannot reach NATS at {self._shown()}: {exc}") from exc
            # Once connected, never give up: an edge node keeps serving and catches up when NATS is back.
            nc.options["max_reconnect_attempts"] = -1
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
                num_replicas=self.replicas,
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
                api.ObjectStoreConfig(description="warren module blobs", storage=storage, replicas=self.replicas),
            )

    # -- primitives -------------------------------------------------------------------------

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the store is not open")
        if self._nc is not None and not self._nc.is_connected:
            # Fail now rather than queue: a write queued here could land long after its caller gave up.
            raise ConnectionError(f"NATS ({self._shown()}) is unreachable; reconnecting")
        return self._js

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
        prefix = self._subject(kind, "")
        received: list[_Entry] = []
        arrived = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            meta = msg.metadata
            operation = (msg.headers or {}).get(_KV_OPERATION)
            deleted = operation in ("DEL", "PURGE")
            received.append(_Entry(msg.subject[len(prefix) :], None if deleted else msg.data, meta.sequence.stream))
            arrived.set()

        subscription = await js.subscribe(
            prefix + pattern,
            stream=self._stream(kind),
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL if history else api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=5.0,
        )
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
                if not info.num_pending and len(received) >= delivered:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"reading the {self._bucket(kind)} bucket took over {self.timeout} s")
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
        await self._retry(lambda: self._attach(account_id, script, deployment, created_on))
        return version, deployment

    async def _attach(self, account_id: str, script: str, deployment: Deployment | None, when: str) -> bool:
        """Deploy (if asked) and create or touch the script record; False to try again."""
        key = _key(account_id, script)
        # The deployment key is read before the script record: see create_deployment.
        current = await self._get("deployments", key) if deployment is not None else _MISSING
        record = await self._get("scripts", key)
        incarnation = record.json()["incarnation"] if record.value is not None else uuid.uuid4().hex
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
        try:
            result = await objects.get(sha256)
        except ObjectNotFoundError:
            return None
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != sha256:  # the object store checks its own digest too
            raise RuntimeError(f"blob {sha256} does not match its hash")
        return data

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
        """Start the KV watches (once): every message on any bucket wakes ``wait_for_change``."""
        async with self._watch_lock:
            if not self._watches:
                await self._start_watches()

    async def _start_watches(self) -> None:
        js = self._jetstream()

        async def on_change(msg: Msg) -> None:
            self._changed.set()

        for kind in KINDS:
            self._watches.append(
                await js.subscribe(
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
            encoded = json.dumps(event, separators=(",", ":")).encode()
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

        js = self._jetstream()
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
        subscription = await js.subscribe(
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


if TYPE_CHECKING:

    def _nats_store_is_a_store(store: NATSStore) -> Store:
        return store  # mypy checks NATSStore against the protocol here


__all__ = ["SECRETS_KEY_ENV", "NATSStore", "SecretsKeyError", "generate_secrets_key", "redact"]
