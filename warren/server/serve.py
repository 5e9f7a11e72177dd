"""``warren serve``: an edge node serving what the control plane has deployed.

It reads the store's ``EdgeState`` at start and again whenever the store's
revision moves (``Store.wait_for_change``), turns each deployed version into a ``WorkerScript``,
loads new versions into the supervisor *before* switching traffic to them (so
no request fails during a deploy), and retires versions no longer deployed,
whose isolates go once their in-flight requests finish.

While the store cannot be reached the node keeps serving what it has, and says
so: it is *stale* once it has not heard the store's revision for
``stale_after`` seconds (or the store reports its connection down). The admin
port answers ``/healthz`` with that (JSON, 200 once any state has loaded) beside
``/metrics`` (``warren_store_stale``, ``warren_store_last_sync_seconds``).

It also runs the node's triggers (issue #10, ``warren.triggers``): the cron
scheduler and the queue consumers, and answers service bindings and queue sends
(``warren.bindings.service``, ``warren.bindings.queues``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.bindings.durable_objects import DurableObjects, node_binding
from warren.runtime import Module, ScriptLoadError, WorkerScript
from warren.runtime.script import DEFAULT_CPU_MS, DEFAULT_SUBREQUEST_LIMIT
from warren.runtime.subrequests import SubrequestPolicy
from warren.server.app import Unavailable
from warren.server.supervisor import Exchange, Supervisor
from warren.store import Store
from warren.store.model import Account, Version
from warren.store.routes import RouteTable, normalise_host
from warren.store.validation import DURABLE_OBJECTS_KEY

DEFAULT_WORKERS_DOMAIN = "workers.localhost"
POLL_INTERVAL_S = 1.0  # the longest one wait for a store change lasts before asking again
MAX_IDENTITIES = 10_000  # version keys remembered for events, retired ones included
STATE_DIR_ENV = "WARREN_STATE_DIR"  # where an edge node keeps Durable Objects' storage
DEFAULT_STATE_DIR = ".warren/state"
STALE_AFTER_S = 3.0  # a node that has not heard the store's revision for this long (or 3 polls) is stale

# Upload content types (docs/control-plane.md) -> the runtime's module kinds. As on Cloudflare,
# a plain JavaScript type is CommonJS (sloppy mode, `module.exports`) for any part but the main
# one (which is a service-worker script or an ES module by its syntax); only `+module` is ESM.
MODULE_KINDS = {
    "application/javascript+module": "esm",
    "text/javascript": "commonjs",
    "application/javascript": "commonjs",
    "application/json": "json",
    "text/plain": "text",
    "application/wasm": "wasm",
    "application/octet-stream": "data",
}

Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class _Target:
    """Where one script's requests go: version keys with their shares."""

    keys: tuple[tuple[str, int], ...]

    def pick(self) -> str:
        if len(self.keys) == 1:
            return self.keys[0][0]
        roll = random.uniform(0, 100)
        for key, share in self.keys:
            roll -= share
            if roll < 0:
                return key
        return self.keys[-1][0]


class EdgeNode:
    """The routing state of one edge node, kept in step with the store."""

    def __init__(
        self,
        store: Store,
        supervisor: Supervisor,
        workers_domain: str = DEFAULT_WORKERS_DOMAIN,
        poll_interval: float = POLL_INTERVAL_S,
        echo: Echo = _echo,
        trusted_accounts: frozenset[str] = frozenset(),
        stale_after: float | None = None,
    ) -> None:
        self.store = store
        self.stale_after = stale_after if stale_after is not None else max(STALE_AFTER_S, 3 * poll_interval)
        self.last_sync: float | None = None  # time.monotonic() when the store's revision was last heard
        self.loaded = False  # True once a state from the store has been applied
        self.trusted_accounts = trusted_accounts
        self.supervisor = supervisor
        self.workers_domain = workers_domain.lower().strip(".")
        self.poll_interval = poll_interval
        self.echo = echo
        self.revision = -1
        self._routes = RouteTable([])
        self._accounts_by_name: dict[str, Account] = {}
        self._targets: dict[tuple[str, str], _Target | Unavailable] = {}
        self._loaded: dict[str, str] = {}  # version key -> content hash
        self._identities: dict[str, tuple[str, str, str]] = {}  # version key -> (account id, script, version id)
        self._poller: asyncio.Task[None] | None = None
        # (account id, script) -> the Durable Object class state of its main version (warren.control.migrations)
        self.class_states: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_class_states: dict[tuple[str, str], dict[str, Any]] = {}
        # Told after every change applied (cron schedules and queue consumers re-read theirs: issue #10).
        self.on_refresh: list[Callable[[], None]] = []

    # --- serving ----------------------------------------------------------------------

    def main_version_key(self, account_id: str, script: str) -> str | None:
        """The version with the largest share (Durable Objects of a script live in one version), or None."""
        target = self._targets.get((account_id, script))
        return max(target.keys, key=lambda pair: pair[1])[0] if isinstance(target, _Target) else None

    def version_key(self, account_id: str, script: str) -> str | None:
        """The version key to run the account's script with (service bindings, triggers), or None."""
        target = self._targets.get((account_id, script))
        return target.pick() if isinstance(target, _Target) else None

    def resolve(self, host: str, path: str) -> str | Unavailable | None:
        """The version key to serve a request with, Unavailable, or None (no route)."""
        host = normalise_host(host)
        # Hosts under the workers domain belong to their accounts' scripts: no
        # route, whoever created it, can claim one.
        if host == self.workers_domain or host.endswith("." + self.workers_domain):
            target = self._default_hostname_target(host)
        else:
            route = self._routes.match(host, path)
            target = self._targets.get((route.account_id, route.script)) if route is not None else None
        if target is None or isinstance(target, Unavailable):
            return target
        return target.pick()

    def _default_hostname_target(self, host: str) -> _Target | Unavailable | None:
        labels = host[: -len(self.workers_domain) - 1].split(".")
        if len(labels) != 2:
            return None
        script, account_name = labels
        account = self._accounts_by_name.get(account_name)
        if account is None:
            return None
        return self._targets.get((account.id, script))

    # --- keeping up with the store ------------------------------------------------------

    async def start(self) -> None:
        await self.refresh(initial=True)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self) -> None:
        while True:
            try:
                if await self.store.wait_for_change(self.revision, timeout=self.poll_interval) != self.revision:
                    await self.refresh()
                else:
                    self._synced()
            except Exception as exc:  # a bad read must not stop the node: it keeps serving what it has
                self.echo(f"✘ reading the store failed: {exc!r}")
                await asyncio.sleep(self.poll_interval)

    async def refresh(self, initial: bool = False) -> None:
        """Apply the store's current state. New versions load before traffic moves."""
        state = await self.store.edge_state()
        self._synced()  # loading what changed may take a while: the store was heard, the node is not cut off
        if state.revision == self.revision:
            return
        targets: dict[tuple[str, str], _Target | Unavailable] = {}
        wanted: set[str] = set()
        self._next_class_states = {
            scripted: found
            for scripted, deployment in state.deployments.items()
            if (found := _class_state(state.versions.get(deployment.main_version_id))) is not None
        }
        for (account_id, script), deployment in state.deployments.items():
            account = state.accounts.get(account_id)
            secrets = state.secrets.get((account_id, script), {})
            keys = []
            failed: str | None = None
            for version_id, share in deployment.versions:
                version = state.versions[version_id]
                key = self._key(account, version, secrets)
                if key not in self._loaded and key not in wanted:
                    failed = await self._load(key, account, version, secrets, start=not initial)
                    if failed is not None:
                        break
                keys.append((key, share))
                wanted.add(key)
            if failed is None:
                targets[(account_id, script)] = _Target(tuple(keys))
                continue
            previous = self._targets.get((account_id, script))
            if isinstance(previous, _Target):  # keep serving what worked
                targets[(account_id, script)] = previous
                wanted.update(key for key, _ in previous.keys)
            else:
                targets[(account_id, script)] = Unavailable(f"Worker {script} is not available: {failed}")

        self._routes = RouteTable(state.routes)
        self._accounts_by_name = {account.name: account for account in state.accounts.values()}
        self._targets = targets
        self.class_states = self._next_class_states
        self.revision = state.revision
        self.loaded = True
        for key in [key for key in self._loaded if key not in wanted]:
            del self._loaded[key]
            await self.supervisor.retire(key)
        for listener in self.on_refresh:
            listener()

    # --- health -------------------------------------------------------------------------

    def _synced(self) -> None:
        now = time.monotonic()
        if self.last_sync is not None and now - self.last_sync > self.stale_after:
            self.echo(f"✔ in step with the store again, after {now - self.last_sync:.1f} s without it")
        self.last_sync = now

    def last_sync_age(self) -> float | None:
        """Seconds since the store's revision was last heard; None if it never was."""
        return time.monotonic() - self.last_sync if self.last_sync is not None else None

    @property
    def stale(self) -> bool:
        """True while the node cannot vouch that it serves the store's current state."""
        return self._stale_at(self.last_sync_age())

    def _stale_at(self, age: float | None) -> bool:
        return age is None or age > self.stale_after or getattr(self.store, "connected", True) is False

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/healthz`` answer: 503 only before any state has loaded (a stale node still serves)."""
        age = self.last_sync_age()  # once: the status and the age it reports must agree
        body = {
            "status": "stale" if self._stale_at(age) else "ok",
            "store": _describe_store(self.store),
            "revision": self.revision if self.loaded else None,
            # Rounded up: an age just past the threshold must not read as the threshold itself.
            "last_sync_age_s": math.ceil(age * 1000) / 1000 if age is not None else None,
            "stale_after_s": self.stale_after,
        }
        return (200 if self.loaded else 503), body

    @staticmethod
    def _key(account: Account | None, version: Version, secrets: dict[str, str]) -> str:
        # Secrets are part of the environment, so a new secret value is a new instance.
        fingerprint = hashlib.sha256(
            json.dumps([version.id, sorted(secrets.items())]).encode()
        ).hexdigest()[:12]
        owner = account.name if account is not None else version.account_id[:8]
        return f"{owner}/{version.script}@v{version.number}-{fingerprint}"

    async def _load(
        self, key: str, account: Account | None, version: Version, secrets: dict[str, str], start: bool
    ) -> str | None:
        """Load one version; returns why it failed, or None."""
        try:
            script = await self._worker_script(key, account, version, secrets)
            await self.supervisor.load(key, script, start=start)
        except ScriptLoadError as exc:
            self.echo(f"✘ {key} ({version.content_hash[:12]}) failed to load: {exc}")
            return str(exc)
        except ValueError as exc:
            self.echo(f"✘ {key} ({version.content_hash[:12]}) cannot be served: {exc}")
            return str(exc)
        self._loaded[key] = version.content_hash
        self._remember(key, account.id if account is not None else version.account_id, version)
        self.echo(f"⎔ serving {key} (version {version.id}, sha256 {version.content_hash})")
        return None

    # --- whose invocation it was (for its event, warren.observability) ---------------------

    def _remember(self, key: str, account_id: str, version: Version) -> None:
        if len(self._identities) >= MAX_IDENTITIES:
            # Versions retired long ago: requests still in flight on them are long finished.
            for stale in [stale for stale in self._identities if stale not in self._loaded]:
                del self._identities[stale]
        self._identities[key] = (account_id, version.script, version.id)

    def identity(self, key: str) -> tuple[str, str, str] | None:
        """(account id, script, version id) of a version key this node has served."""
        return self._identities.get(key)

    async def _worker_script(
        self, key: str, account: Account | None, version: Version, secrets: dict[str, str]
    ) -> WorkerScript:
        main_source = ""
        modules = []
        for ref in version.modules:
            data = await self.store.get_blob(ref.sha256)
            if data is None:
                raise ValueError(f"module {ref.name} is missing from the archive")
            kind = MODULE_KINDS.get(ref.content_type.split(";")[0].strip(), "text")
            text = data.decode("latin-1") if kind in ("wasm", "data") else data.decode("utf-8")
            if ref.name == version.main_module:
                main_source = text
            else:
                modules.append(Module(ref.name, kind, text))
        variables: dict[str, Any] = {}
        for binding in version.bindings:
            if binding.get("type") == "plain_text":
                variables[binding["name"]] = binding["text"]
            elif binding.get("type") == "json":
                variables[binding["name"]] = binding["json"]
        variables.update(secrets)
        trust_level = str(version.limits.get("trust_level", "standard"))
        if trust_level == "trusted" and (account is None or account.name not in self.trusted_accounts):
            trust_level = "standard"  # only the operator grants trust
        return WorkerScript(
            trust_level=trust_level,
            name=key.split("@", 1)[0],
            source=main_source,
            filename=version.main_module,
            compatibility_date=version.compatibility_date,
            vars=variables,
            cpu_ms=float(version.limits.get("cpu_ms", DEFAULT_CPU_MS)),
            subrequest_limit=int(version.limits.get("subrequests", DEFAULT_SUBREQUEST_LIMIT)),
            modules=tuple(modules),
            archive_hash=version.content_hash,
            # Plain values became vars above; every other binding (KV, ...) is called through the node.
            bindings=tuple(
                self._node_binding(spec, version)
                for spec in version.bindings
                if spec.get("type") not in ("plain_text", "json")
            ),
            account_id=version.account_id,
        )


    def _node_binding(self, spec: dict[str, Any], version: Version) -> dict[str, Any]:
        """A binding as the node runs it. A Durable Object class gets ``sqlite`` from its script's
        migrations: this version's own for its classes, the deployed version's for another script's;
        without migrations it stays unset (served as SQLite-backed, as before migrations were uploaded)."""
        spec = node_binding(spec, version.script)
        if spec.get("type") != "durable_object_namespace":
            return spec
        target = str(spec["script_name"])
        state = (
            _class_state(version) if target == version.script
            else self._next_class_states.get((version.account_id, target))
        )
        info = state.get("classes", {}).get(spec.get("class_name")) if state is not None else None
        return {**spec, "sqlite": bool(info.get("sqlite", True))} if isinstance(info, dict) else spec


def _class_state(version: Version | None) -> dict[str, Any] | None:
    """The Durable Object class state a version carries (``warren.control.migrations``), or None."""
    state = version.limits.get(DURABLE_OBJECTS_KEY) if version is not None else None
    return state if isinstance(state, dict) else None


def _describe_store(store: Store) -> dict[str, Any]:
    """What the health report says of the store: where it is (no credentials) and the connection."""
    servers = getattr(store, "servers", None)
    if isinstance(servers, list):
        from warren.store.nats import redact

        error = getattr(store, "last_error", None)
        return {
            "kind": "nats",
            "url": ",".join(redact(server) for server in servers),
            "connected": bool(getattr(store, "connected", False)),
            "last_error": repr(error) if error is not None else None,
        }
    return {"kind": "sqlite", "url": str(getattr(store, "path", "")), "connected": True, "last_error": None}


def store_collector(node: EdgeNode) -> Any:
    """A Prometheus collector of the node's view of the store, read at scrape time."""
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class StoreCollector(Collector):
        def collect(self) -> Any:
            stale = GaugeMetricFamily(
                "warren_store_stale", "1 while this edge node cannot vouch that it serves the store's current state"
            )
            stale.add_metric([], 1.0 if node.stale else 0.0)
            yield stale
            age = node.last_sync_age()
            last = GaugeMetricFamily(
                "warren_store_last_sync_seconds", "Seconds since this edge node last heard the store's revision"
            )
            last.add_metric([], age if age is not None else math.inf)
            yield last

    return StoreCollector()


def admin_app(node: EdgeNode, metrics_app: Any) -> Any:
    """The admin port: ``/healthz`` (JSON), everything else to the metrics app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            status, body = node.health()
            payload = json.dumps(body).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await metrics_app(scope, receive, send)

    return app


async def serve(
    store: Store,
    host: str,
    port: int,
    workers_domain: str = DEFAULT_WORKERS_DOMAIN,
    control_port: int | None = None,
    admin_port: int | None = None,
    processes: int = 1,
    trusted_accounts: frozenset[str] = frozenset(),
    echo: Echo = _echo,
    subrequests: SubrequestPolicy | None = None,
    node_name: str | None = None,
    geoip_paths: tuple[str, ...] = (),
    state_dir: str | Path | None = None,
) -> int:
    """Run an edge node until interrupted; with ``control_port``, the control API too.

    Every invocation's event goes to the store (``Store.publish_events``), batched in
    the background, for tails and analytics. ``node_name`` (default ``$WARREN_NODE_NAME``,
    else ``<hostname>:<port>``) names the node in events and metrics.
    """
    from warren.observability import EventPublisher, exchange_event
    from warren.server.app import EdgeApp, listen
    from warren.server.metrics import LineWriter, Metrics, log_line
    from warren.server.visitor import Visitors

    node_state = Path(state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
    state_claim = claim_state_dir(node_state)  # first: a node refused here has started nothing

    # Requests' log lines and console output go out in batches (a write per request costs
    # under load); anything else written waits for them, so the order read is the order made.
    lines = LineWriter()
    report = echo

    def echo_in_order(line: str) -> None:
        lines.flush()
        report(line)

    echo = echo_in_order

    def log(script: str, level: str, message: str) -> None:
        if level == "error":
            lines.flush()
            print(f"[{script}] {level}: {message}", file=sys.stderr, flush=True)
        else:
            lines(f"[{script}] {level}: {message}")

    metrics: Metrics | None = None
    node: EdgeNode | None = None
    publisher = EventPublisher(store, report=echo)
    named = node_name or os.environ.get("WARREN_NODE_NAME") or ""

    def done(name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        if metrics is not None:
            metrics.observe(name, exchange, outcome, cpu_ms, wall_ms)
        lines(f"[{name}] {log_line(exchange, outcome, cpu_ms, wall_ms)}")
        identity = node.identity(exchange.key) if node is not None else None
        if identity is not None and metrics is not None:
            account_id, script, version_id = identity
            try:
                event = exchange_event(
                    exchange,
                    script_name=script,
                    version=version_id,
                    node=metrics.node,
                    outcome=outcome,
                    cpu_ms=cpu_ms,
                    wall_ms=wall_ms,
                )
            except Exception as exc:  # never let one odd exchange stop the supervisor's reader
                echo(f"✘ building the event of {name} failed: {exc!r}")
                return
            publisher.submit(account_id, event)

    from warren.bindings import BindingHost
    from warren.bindings.cache import CacheHandler
    from warren.bindings.kv import KVHandler

    bindings = BindingHost()
    # Its node id breaks ties between KV writes stamped in the same microsecond on two nodes.
    kv = KVHandler(store, named or f"{socket.gethostname()}-{os.getpid()}", report=echo)
    bindings.register("kv_namespace", kv)
    # The Cache API's entries: the node's own, on its disk (as a data centre's cache is).
    bindings.register("cache", CacheHandler(node_state / "cache.sqlite3"))
    supervisor = Supervisor(
        on_log=log, on_done=done, processes=processes, subrequests=subrequests, bindings=bindings
    )
    triggers = _Triggers(store, supervisor, echo)  # service bindings, queues and crons (issue #10)
    # Durable Objects (issue #8): their files and alarms in the node's state directory.
    objects = DurableObjects(
        supervisor,
        node_state,
        lambda account_id, script: node.main_version_key(account_id, script) if node is not None else None,
        log=log,
    )
    objects.register(bindings)
    triggers.register(bindings, lambda: node)
    metrics = Metrics(supervisor, node=named or socket.gethostname())
    metrics.publisher = publisher
    await supervisor.start()
    await kv.start()
    publisher.start()
    node = EdgeNode(store, supervisor, workers_domain, echo=echo, trusted_accounts=trusted_accounts)
    # Deleted and renamed classes (warren.control.migrations), after every change the node applies.
    node.on_refresh.append(lambda: objects.set_classes(node.class_states) if node is not None else None)
    metrics.registry.register(store_collector(node))
    control_app: Any = None
    try:
        servers = []
        if admin_port is not None:  # first: /healthz answers 503 while the initial state loads
            admin = await listen(admin_app(node, metrics.asgi_app()), host, admin_port)
            servers.append(admin)
            echo(f"Metrics on http://{host}:{admin.port}/metrics, health on http://{host}:{admin.port}/healthz")
        await node.start()
        triggers.start(node)
        # On a NATS store, objects are leased, logged and forwarded across the nodes (issue #8).
        from warren.bindings.object_placement import enable as place_objects

        internal = await place_objects(objects, store, host, named)
        if internal is not None:
            servers.append(internal)
        await objects.start()  # after the node knows its versions: due alarms fire at once
        objects.set_classes(node.class_states)  # again, now that the alarm index is open
        if objects.placement is not None:
            echo(f"Durable Objects placed across nodes: node {objects.placement.node_id}, "
                 f"internal endpoint on {objects.placement.url}")
        if control_port is not None:
            from warren.control import create_app

            control_app = create_app(store, manage_store=False)
            control = await listen(control_app, host, control_port)
            servers.append(control)
            echo(f"Control-plane API on http://{host}:{control.port}")
        visitors = Visitors(named or socket.gethostname(), geoip_paths)
        edge = await listen(EdgeApp(supervisor, node.resolve, visitors=visitors), host, port, date_header=False)
        servers.append(edge)
        if not named:  # several nodes may share a host: the port tells them apart
            metrics.node = f"{socket.gethostname()}:{edge.port}"
        echo(f"Ready on http://{host}:{edge.port} (workers domain {workers_domain}, store revision {node.revision})")
        # uvicorn re-raises a signal it caught once it has stopped, which ended the process before
        # the clean-up below ran (Durable Object leases released, events flushed): the node takes them.
        _stop_on_signals([server.server for server in servers])
        # Either server stopping (a signal reaches both) ends the node.
        await asyncio.wait([server.task for server in servers], return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            await server.stop()
        return 0
    finally:
        lines.close()  # what waits goes out now; what the clean-up prints, as it comes
        if control_app is not None:
            from warren.control import stop_app

            await stop_app(control_app)
        await triggers.stop()
        await objects.stop()
        await node.stop()
        await supervisor.stop()
        await kv.close()
        await publisher.stop()
        os.close(state_claim)


class StateDirInUse(RuntimeError):
    """Another warren process (an edge node, or ``warren dev``) holds the state directory."""


NODE_STATE_HINT = f"give each node on this machine its own --state-dir (or ${STATE_DIR_ENV})"


def claim_state_dir(path: Path, hint: str = NODE_STATE_HINT) -> int:
    """Make ``path`` and hold it for this process (an open descriptor, locked; close it to let go).

    An edge node's Durable Objects, alarms and cache are its own: two nodes writing one
    object's file, or both re-arming one alarm, would break what Durable Objects promise.
    ``warren dev`` holds its state directory the same way, so a ``dev`` and a ``serve`` started
    in one project directory cannot share one. The lock is the kernel's, so a process killed
    with SIGKILL leaves nothing to clean up. ``hint`` ends the refusal: which option to use.
    """
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / "node.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise StateDirInUse(
            f"the state directory {path} is in use by another warren process (pid {holder}); {hint}"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def _stop_on_signals(servers: list[Any]) -> None:
    """SIGINT and SIGTERM stop every uvicorn server of the node (a second SIGINT forces it), without
    the signal being raised again afterwards, so ``serve``'s clean-up runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; whoever runs the node there handles them

    def stop(signum: int, frame: Any) -> None:
        for server in servers:
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


class _Triggers:
    """An edge node's service bindings, queue producers and consumers, and cron scheduler (issue #10)."""

    def __init__(self, store: Store, supervisor: Supervisor, echo: Echo) -> None:
        from warren.triggers import CronScheduler, QueueConsumers, clock_from_environment
        from warren.triggers.consumer import LEASE_S

        self.store = store
        self.supervisor = supervisor
        self.echo = echo
        self.node: EdgeNode | None = None
        lease = float(os.environ.get(QUEUE_LEASE_ENV, "0") or 0)
        self.consumers = QueueConsumers(store, supervisor, self._version, echo=echo, lease_s=lease or LEASE_S)
        self.scheduler = CronScheduler(
            store, lambda account, script: self._version(account, script) is not None, self._fire,
            clock=clock_from_environment(), echo=echo,
        )

    def _version(self, account_id: str, script: str) -> str | None:
        return self.node.version_key(account_id, script) if self.node is not None else None

    def register(self, bindings: Any, node: Callable[[], EdgeNode | None]) -> None:
        from warren.bindings.queues import QueueProducers
        from warren.bindings.service import ServiceBindings

        def resolve(caller: WorkerScript, service: str) -> str | None:
            found = node()
            return found.version_key(caller.account_id, service) if found is not None else None

        bindings.register("service", ServiceBindings(self.supervisor, resolve))
        bindings.register("queue", QueueProducers(self.store))

    async def _fire(self, account_id: str, script: str, cron: str, scheduled_ms: int) -> str:
        key = self._version(account_id, script)
        if key is None:
            return "not run (the script is no longer deployed here)"
        return await self.supervisor.scheduled(key, cron, scheduled_ms)

    def start(self, node: EdgeNode) -> None:
        self.node = node
        node.on_refresh += [self.consumers.changed, self.scheduler.changed]
        self.consumers.start()
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.consumers.stop()


QUEUE_LEASE_ENV = "WARREN_QUEUE_LEASE_S"  # seconds a received queue message stays with one node (default 30)
