"""Workers KV: the ``kv_namespace`` binding on a node, its read cache, and the rules of KV data.

A namespace's data lives in the store (``Store.kv_*``: SQLite on one machine,
NATS JetStream across many); every node answers its workers' calls here, on the
supervisor's event loop, through a read cache of its own. The consistency model
(README, "Workers KV") is the one Workers documents:

- A write is visible at once on the node that made it: the write goes to the
  store, and the node's cache takes the written record (or forgets the key).
- Another node sees it when its cached copy expires or when the store's change
  notification reaches it, whichever comes first. A read with ``cacheTtl`` T
  (default 60 s, at least 30 s) never answers from a copy fetched more than T
  seconds before, on the node's clock. Misses are cached too, as on Workers.
- Concurrent writes: the last write wins, by a stamp assigned when it is made
  (the writing node's clock in microseconds, then its node id to break ties),
  and the store keeps the greatest; every node converges on that one value.
  Deletes are writes too (tombstones). A node whose clock runs ahead wins
  against later writes for as long as it is ahead: keep clocks in sync (NTP).
- Expired keys disappear from ``get`` and ``list`` at their expiration, on the
  reading node's clock.

``clock`` (seconds since the epoch) is injectable, so tests move time rather
than sleep; expirations, stamps and cache ages all read it.

Owns: KV's limits and error messages (worded as Workers words them), stamps,
the node's cache and its invalidation. Must not touch: isolates, HTTP, how the
store keeps the data (``warren.store``).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from warren.bindings import BindingCall, BindingError, BindingResult
from warren.store.kv_data import (
    KVChange,
    KVKeyInfo,
    KVRecord,
    decode_cursor,
    encode_cursor,
    well_formed,
)

if TYPE_CHECKING:
    from warren.store import Store

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024
MIN_EXPIRATION_TTL = 60  # seconds; an absolute expiration must be at least this far ahead too
MAX_LIST_LIMIT = 1000
DEFAULT_CACHE_TTL = 60
MIN_CACHE_TTL = 30
MAX_BULK_KEYS = 100
MAX_BULK_BYTES = 25 * 1024 * 1024
# The node's cache: values up to MAX_CACHED_VALUE (larger ones are read from the store each time).
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
MAX_CACHED_VALUE = 1024 * 1024
MAX_CACHE_ENTRIES = 100_000
_ENTRY_OVERHEAD = 200  # bytes a cache entry costs besides its key, value and metadata

Clock = Callable[[], float]
_Method = Callable[["KVHandler", str, dict[str, Any], bytes | None], Awaitable[BindingResult]]
Report = Callable[[str], None]
_MISSING_ORDER = (-1, "")
_NODE_ID = re.compile(r"[^A-Za-z0-9._:@-]")


class KVInvalid(Exception):
    """A request the KV service refuses: an HTTP status and Cloudflare's message for it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- the service's rules (the control API applies them as they are) ------------------------------


def check_key(key: object) -> str:
    """The key as stored (lone surrogates replaced, as JavaScript's UTF-8 conversion does)."""
    if not isinstance(key, str):
        raise KVInvalid(400, "Key names must be strings")
    if key == "":
        raise KVInvalid(400, "Key names must not be empty")
    if key in (".", ".."):
        raise KVInvalid(400, f'Illegal key name "{key}". Please use a different name.')
    key = well_formed(key)
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise KVInvalid(414, f"UTF-8 encoded length of {size} exceeds key length limit of {MAX_KEY_BYTES}.")
    return key


def check_value(value: bytes) -> bytes:
    if len(value) > MAX_VALUE_BYTES:
        raise KVInvalid(413, f"Value length of {len(value)} exceeds limit of {MAX_VALUE_BYTES}.")
    return value


def check_metadata(metadata: object) -> str | None:
    """Serialised JSON metadata, or None; at most MAX_METADATA_BYTES."""
    if metadata is None:
        return None
    if not isinstance(metadata, str):
        raise KVInvalid(400, "Metadata must be serialised JSON")
    size = len(well_formed(metadata).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise KVInvalid(413, f"Metadata length of {size} exceeds limit of {MAX_METADATA_BYTES}.")
    try:
        json.loads(metadata)
    except ValueError:
        raise KVInvalid(400, "Metadata must be serialised JSON") from None
    return well_formed(metadata)


def _whole(value: object) -> int | None:
    """An integer option as the service parses it (None if it is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        return int(value)
    return None


def expiration_of(expiration: object, expiration_ttl: object, now: float) -> int | None:
    """The absolute expiration (seconds since the epoch) of a write, or None; ``expiration_ttl`` wins."""
    current = int(now)
    if expiration_ttl is not None:
        ttl = _whole(expiration_ttl)
        if ttl is None or ttl <= 0:
            raise KVInvalid(400, f"Invalid expiration_ttl of {expiration_ttl}. Please specify integer greater than 0.")
        if ttl < MIN_EXPIRATION_TTL:
            raise KVInvalid(
                400, f"Invalid expiration_ttl of {ttl}. Expiration TTL must be at least {MIN_EXPIRATION_TTL}."
            )
        return current + ttl
    if expiration is not None:
        at = _whole(expiration)
        if at is None or at <= current:
            raise KVInvalid(
                400,
                f"Invalid expiration of {expiration}. Please specify integer greater than the current number "
                "of seconds since the UNIX epoch.",
            )
        if at < current + MIN_EXPIRATION_TTL:
            raise KVInvalid(
                400,
                f"Invalid expiration of {at}. Expiration times must be at least {MIN_EXPIRATION_TTL} seconds "
                "in the future.",
            )
        return at
    return None


def list_options(prefix: object, limit: object, cursor: object) -> tuple[str, int, bytes | None]:
    """(prefix, limit, the key bytes to start after) of a list request."""
    if prefix is None:
        prefix = ""
    if not isinstance(prefix, str):
        raise KVInvalid(400, "The prefix must be a string")
    prefix = well_formed(prefix)
    size = len(prefix.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise KVInvalid(414, f"UTF-8 encoded length of {size} exceeds key length limit of {MAX_KEY_BYTES}.")
    count = MAX_LIST_LIMIT
    if limit is not None:
        parsed = _whole(limit)
        if parsed is None or parsed < 1:
            raise KVInvalid(400, f"Invalid key_count_limit of {limit}. Please specify an integer greater than 0.")
        if parsed > MAX_LIST_LIMIT:
            raise KVInvalid(
                400, f"Invalid key_count_limit of {parsed}. Please specify an integer less than {MAX_LIST_LIMIT}."
            )
        count = parsed
    after = None
    if cursor is not None and cursor != "":
        if not isinstance(cursor, str):
            raise KVInvalid(400, "Invalid cursor")
        try:
            after = decode_cursor(cursor)
        except ValueError:
            raise KVInvalid(400, f"Invalid cursor {cursor[:64]!r}") from None
    return prefix, count, after


def key_json(info: KVKeyInfo) -> dict[str, Any]:
    """A listed key as Workers and the API show it: ``expiration`` and ``metadata`` only when set."""
    found: dict[str, Any] = {"name": info.name}
    if info.expiration is not None:
        found["expiration"] = info.expiration
    if info.metadata is not None:
        found["metadata"] = json.loads(info.metadata)
    return found


def node_id(name: str) -> str:
    """A node id fit for a stamp (and a NATS header): printable, short."""
    return _NODE_ID.sub("_", name)[:64] or "node"


# -- the data, uncached: the control API, and the node handler underneath its cache ---------------


class KVData:
    """Reads and writes of namespaces' data through a store, stamped by one writer."""

    def __init__(self, store: Store, writer: str, clock: Clock = time.time) -> None:
        self.store = store
        self.writer = node_id(writer)
        self.clock = clock
        self._last_stamp = 0

    def stamp(self) -> int:
        """Microseconds on the clock, strictly increasing on this writer (two writes never tie)."""
        self._last_stamp = max(int(self.clock() * 1_000_000), self._last_stamp + 1)
        return self._last_stamp

    def record(self, value: bytes | None, metadata: str | None = None, expiration: int | None = None) -> KVRecord:
        return KVRecord(value=value, metadata=metadata, expiration=expiration, stamp=self.stamp(), writer=self.writer)

    async def get(self, namespace_id: str, key: str) -> KVRecord | None:
        """The key's live record, or None (missing, deleted or expired)."""
        record = await self.store.kv_get(namespace_id, check_key(key))
        return record if record is not None and record.live(self.clock()) else None

    async def put(
        self,
        namespace_id: str,
        key: str,
        value: bytes,
        *,
        metadata: object = None,
        expiration: object = None,
        expiration_ttl: object = None,
    ) -> tuple[KVRecord, bool]:
        """Write a value; (the record, whether it was stored: False when a later write won)."""
        key = check_key(key)
        check_value(value)
        expires = expiration_of(expiration, expiration_ttl, self.clock())
        record = self.record(value, check_metadata(metadata), expires)
        return record, await self.store.kv_put(namespace_id, key, record)

    async def delete(self, namespace_id: str, key: str) -> tuple[KVRecord, bool]:
        key = check_key(key)
        record = self.record(None)
        return record, await self.store.kv_put(namespace_id, key, record)

    async def list(
        self, namespace_id: str, prefix: object = None, limit: object = None, cursor: object = None
    ) -> tuple[list[KVKeyInfo], str | None]:
        """A page of live keys and the cursor of the next page (None: this was the last)."""
        start, count, after = list_options(prefix, limit, cursor)
        keys, more = await self.store.kv_list(namespace_id, start, after, count, self.clock())
        return keys, encode_cursor(keys[-1].name) if more and keys else None


# -- the node's handler ------------------------------------------------------------------------------


@dataclass
class _Cached:
    record: KVRecord | None  # None: the key was missing when read (misses are cached too)
    fetched: float  # on the node's clock: when the store was read (or the node wrote it)
    size: int


def _order(record: KVRecord | None) -> tuple[int, str]:
    return record.order if record is not None else _MISSING_ORDER


def _size(key: tuple[str, str], record: KVRecord | None) -> int:
    size = _ENTRY_OVERHEAD + len(key[0]) + len(key[1])
    if record is not None:
        size += len(record.value or b"") + len(record.metadata or "")
    return size


def _refuse(method: str, error: KVInvalid) -> BindingError:
    # As workerd reports the KV service's refusals.
    return BindingError(f"KV {method} failed: {error.status} {error.message}")


def _echo_error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class KVHandler:
    """The ``kv_namespace`` binding of one node: register it with ``BindingHost.register``.

    ``start()`` follows the store's change notifications (unless ``notifications``
    is false: then only cacheTtl bounds staleness); ``close()`` stops that.
    """

    def __init__(
        self,
        store: Store,
        node: str,
        *,
        clock: Clock = time.time,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        notifications: bool = True,
        report: Report = _echo_error,
        owns_store: bool = False,
    ) -> None:
        self.data = KVData(store, node, clock)
        self.store = store
        self.clock = clock
        self.cache_bytes = cache_bytes
        self.notifications = notifications
        self.report = report
        self.owns_store = owns_store
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[tuple[str, str], asyncio.Future[KVRecord | None]] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._stale: set[tuple[str, str]] = set()  # changed while a read of them was in flight
        self._follower: asyncio.Task[None] | None = None
        self.invalidations = 0  # entries dropped by change notifications (for tests and metrics)

    @classmethod
    async def local(cls, path: str | Path, node: str = "local", **options: Any) -> KVHandler:
        """A handler on a SQLite file of its own (``warren dev``'s persisted state)."""
        from warren.store.sqlite import SQLiteStore

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        store = SQLiteStore(path)
        await store.open()
        return cls(store, node, owns_store=True, **options)

    async def start(self) -> None:
        if self.notifications and self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except asyncio.CancelledError:
                pass
            self._follower = None
        if self.owns_store:
            await self.store.close()

    # -- the binding's calls ----------------------------------------------------------------

    async def __call__(self, call: BindingCall) -> BindingResult:
        namespace_id = call.binding.get("namespace_id")
        if not isinstance(namespace_id, str) or not namespace_id:
            raise BindingError(f"The KV binding {call.binding.get('name')!r} names no namespace.")
        args = call.args if isinstance(call.args, dict) else {}
        method = self._methods.get(call.method)
        if method is None:
            raise BindingError(f"KV namespaces have no method {call.method!r}.", "TypeError")
        return await method(self, namespace_id, args, call.data)

    async def _get(self, namespace_id: str, args: dict[str, Any], data: bytes | None) -> BindingResult:
        key = self._key("GET", args.get("key"))
        cache_ttl = self._cache_ttl("GET", args.get("cacheTtl"))
        record = await self._lookup(namespace_id, key, cache_ttl)
        if record is None:
            return BindingResult({"found": False, "metadata": None})
        metadata = json.loads(record.metadata) if record.metadata is not None else None
        return BindingResult({"found": True, "metadata": metadata}, record.value or b"")

    async def _get_bulk(self, namespace_id: str, args: dict[str, Any], data: bytes | None) -> BindingResult:
        keys = args.get("keys")
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise BindingError("KV GET_BULK failed: 400 The keys must be a list of strings")
        if not keys:
            raise BindingError("KV GET_BULK failed: 400 You must request a minimum of 1 key")
        if len(keys) > MAX_BULK_KEYS:
            raise BindingError(f"KV GET_BULK failed: 400 You can request a maximum of {MAX_BULK_KEYS} keys")
        kind = args.get("type") or "text"
        if kind not in ("text", "json"):
            raise BindingError(f'KV GET_BULK failed: 400 "{kind}" is not a valid type. Use "json" or "text"')
        try:
            names = list(dict.fromkeys(check_key(key) for key in keys))
        except KVInvalid as error:
            raise _refuse("GET_BULK", error) from None
        cache_ttl = self._cache_ttl("GET_BULK", args.get("cacheTtl"))
        records = await asyncio.gather(*(self._lookup(namespace_id, key, cache_ttl) for key in names))
        total = sum(len(record.value or b"") for record in records if record is not None)
        if total > MAX_BULK_BYTES:
            raise BindingError("KV GET_BULK failed: 413 Total size of request exceeds the limit of 25MB")
        found: dict[str, list[Any]] = {}
        for key, record in zip(names, records, strict=True):
            if record is None:
                continue
            text = (record.value or b"").decode("utf-8", "replace")
            value: Any = text
            if kind == "json":
                try:
                    value = json.loads(text)
                except ValueError:
                    raise BindingError(
                        "KV GET_BULK failed: 400 At least one of the requested keys corresponds to a non-json value"
                    ) from None
            found[key] = [value, json.loads(record.metadata) if record.metadata is not None else None]
        return BindingResult({"found": found})

    async def _put(self, namespace_id: str, args: dict[str, Any], data: bytes | None) -> BindingResult:
        key = self._key("PUT", args.get("key"))
        try:
            record, stored = await self.data.put(
                namespace_id,
                key,
                data or b"",
                metadata=args.get("metadata"),
                expiration=args.get("expiration"),
                expiration_ttl=args.get("expirationTtl"),
            )
        except KVInvalid as error:
            raise _refuse("PUT", error) from None
        self._wrote((namespace_id, key), record, stored)
        return BindingResult(None)

    async def _delete(self, namespace_id: str, args: dict[str, Any], data: bytes | None) -> BindingResult:
        key = self._key("DELETE", args.get("key"))
        record, stored = await self.data.delete(namespace_id, key)
        self._wrote((namespace_id, key), record, stored)
        return BindingResult(None)

    async def _list(self, namespace_id: str, args: dict[str, Any], data: bytes | None) -> BindingResult:
        # Lists read the store: what this node wrote is listed at once.
        try:
            keys, cursor = await self.data.list(namespace_id, args.get("prefix"), args.get("limit"), args.get("cursor"))
        except KVInvalid as error:
            raise _refuse("GET", error) from None
        result: dict[str, Any] = {"keys": [key_json(info) for info in keys], "list_complete": cursor is None}
        if cursor is not None:
            result["cursor"] = cursor
        result["cacheStatus"] = None
        return BindingResult(result)

    _methods: ClassVar[dict[str, _Method]] = {
        "get": _get,
        "getBulk": _get_bulk,
        "put": _put,
        "delete": _delete,
        "list": _list,
    }

    @staticmethod
    def _key(method: str, key: object) -> str:
        # workerd's own checks come first, as TypeErrors; then the service's.
        if not isinstance(key, str):
            raise BindingError("Key names must be strings.", "TypeError")
        if key == "":
            raise BindingError("Key name cannot be empty.", "TypeError")
        if key in (".", ".."):
            raise BindingError(f'"{key}" is not allowed as a key name.', "TypeError")
        try:
            return check_key(key)
        except KVInvalid as error:
            raise _refuse(method, error) from None

    @staticmethod
    def _cache_ttl(method: str, value: object) -> float:
        if value is None:
            return DEFAULT_CACHE_TTL
        ttl = _whole(value)
        if ttl is None or ttl < MIN_CACHE_TTL:
            raise BindingError(
                f"KV {method} failed: 400 Invalid cache_ttl of {value}. Cache TTL must be at least {MIN_CACHE_TTL}."
            )
        return ttl

    # -- the cache ------------------------------------------------------------------------------

    async def _lookup(self, namespace_id: str, key: str, cache_ttl: float) -> KVRecord | None:
        """The key's live record as this node may answer it: cached if fetched less than cache_ttl ago."""
        entry = (namespace_id, key)
        now = self.clock()
        cached = self._cache.get(entry)
        if cached is not None and now - cached.fetched < cache_ttl:
            self._cache.move_to_end(entry)
            record = cached.record
        else:
            record = await self._fetch(entry)
        return record if record is not None and record.live(self.clock()) else None

    async def _fetch(self, entry: tuple[str, str]) -> KVRecord | None:
        pending = self._pending.get(entry)
        if pending is not None:  # the same key read concurrently: one store read answers both
            return await asyncio.shield(pending)
        future: asyncio.Future[KVRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[entry] = future
        self._inflight[entry] = self._inflight.get(entry, 0) + 1
        started = self.clock()
        record: KVRecord | None = None
        try:
            record = await self.store.kv_get(*entry)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) get it; nobody else must log it
            raise
        else:
            future.set_result(record)
        finally:
            if self._pending.get(entry) is future:
                del self._pending[entry]
            left = self._inflight[entry] - 1
            stale = entry in self._stale
            if left:
                self._inflight[entry] = left
            else:
                del self._inflight[entry]
                self._stale.discard(entry)
            if future.done() and not future.cancelled() and future.exception() is None and not stale:
                self._remember(entry, record, started)
        return record

    def _remember(self, entry: tuple[str, str], record: KVRecord | None, fetched: float) -> None:
        existing = self._cache.get(entry)
        if existing is not None and _order(existing.record) > _order(record):
            return  # a newer write reached this node while the store was read
        if record is not None and len(record.value or b"") > MAX_CACHED_VALUE:
            self._drop(entry)  # large values are read from the store every time
            return
        self._drop(entry)
        cached = _Cached(record, fetched, _size(entry, record))
        self._cache[entry] = cached
        self._cached_bytes += cached.size
        while self._cache and (self._cached_bytes > self.cache_bytes or len(self._cache) > MAX_CACHE_ENTRIES):
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.size

    def _drop(self, entry: tuple[str, str]) -> None:
        cached = self._cache.pop(entry, None)
        if cached is not None:
            self._cached_bytes -= cached.size

    def _wrote(self, entry: tuple[str, str], record: KVRecord, stored: bool) -> None:
        """After this node's write: a read here sees it (or, if a later write won, the store's)."""
        if entry in self._inflight:
            self._stale.add(entry)  # a read that started before the write must not cache what it found
            self._pending.pop(entry, None)  # ... nor answer the reads that come after it
        if stored:
            self._remember(entry, record, self.clock())
        else:
            self._drop(entry)

    # -- change notifications -------------------------------------------------------------------------

    def apply_change(self, change: KVChange) -> None:
        """Forget what a write elsewhere made stale."""
        if change.namespace_id is None:
            self.flush()
            return
        if change.key is None:
            self.flush(change.namespace_id)
            return
        entry = (change.namespace_id, change.key)
        if entry in self._inflight:
            self._stale.add(entry)
            self._pending.pop(entry, None)
        cached = self._cache.get(entry)
        if cached is not None and _order(cached.record) < change.order:
            self._drop(entry)
            self.invalidations += 1

    def flush(self, namespace_id: str | None = None) -> None:
        for entry in [entry for entry in self._cache if namespace_id is None or entry[0] == namespace_id]:
            self._drop(entry)
        for entry in [entry for entry in self._inflight if namespace_id is None or entry[0] == namespace_id]:
            self._stale.add(entry)
            self._pending.pop(entry, None)

    async def _follow(self) -> None:
        delay = 0.1
        while True:
            changes = self.store.kv_changes()
            try:
                async for change in changes:
                    delay = 0.1
                    self.apply_change(change)
            except Exception as exc:  # the store's trouble (NATS down, say): never the node's
                self.report(f"KV change notifications interrupted ({exc!r}); retrying")
            finally:
                await changes.aclose()
            self.flush()  # what changed while nobody listened is unknown
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


__all__ = [
    "DEFAULT_CACHE_TTL",
    "MAX_KEY_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_VALUE_BYTES",
    "MIN_CACHE_TTL",
    "MIN_EXPIRATION_TTL",
    "KVData",
    "KVHandler",
    "KVInvalid",
    "check_key",
    "check_metadata",
    "check_value",
    "expiration_of",
    "key_json",
    "list_options",
    "node_id",
]
