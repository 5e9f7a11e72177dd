"""``warren serve``: an edge node serving what the control plane has deployed.

It reads the store's ``EdgeState`` at start and again whenever the store's
revision moves (``Store.wait_for_change``), turns each deployed version into a ``WorkerScript``,
loads new versions into the supervisor *before* switching traffic to them (so
no request fails during a deploy), and retires versions no longer deployed,
whose isolates go once their in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warren.runtime import Module, ScriptLoadError, WorkerScript
from warren.runtime.script import DEFAULT_CPU_MS
from warren.server.app import Unavailable
from warren.server.supervisor import Exchange, Supervisor
from warren.store import Store
from warren.store.model import Account, Version
from warren.store.routes import RouteTable, normalise_host

DEFAULT_WORKERS_DOMAIN = "workers.localhost"
POLL_INTERVAL_S = 1.0  # the longest one wait for a store change lasts before asking again
MAX_IDENTITIES = 10_000  # version keys remembered for events, retired ones included

# Upload content types (docs/control-plane.md) -> the runtime's module kinds.
MODULE_KINDS = {
    "application/javascript+module": "esm",
    "text/javascript": "esm",
    "application/javascript": "esm",
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
    ) -> None:
        self.store = store
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

    # --- serving ----------------------------------------------------------------------

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
            except Exception as exc:  # a bad read must not stop the node: it keeps serving what it has
                self.echo(f"✘ reading the store failed: {exc!r}")
                await asyncio.sleep(self.poll_interval)

    async def refresh(self, initial: bool = False) -> None:
        """Apply the store's current state. New versions load before traffic moves."""
        state = await self.store.edge_state()
        if state.revision == self.revision:
            return
        targets: dict[tuple[str, str], _Target | Unavailable] = {}
        wanted: set[str] = set()
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
        self.revision = state.revision
        for key in [key for key in self._loaded if key not in wanted]:
            del self._loaded[key]
            await self.supervisor.retire(key)

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
            modules=tuple(modules),
            archive_hash=version.content_hash,
        )


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
    node_name: str | None = None,
) -> int:
    """Run an edge node until interrupted; with ``control_port``, the control API too.

    Every invocation's event goes to the store (``Store.publish_events``), batched in
    the background, for tails and analytics. ``node_name`` (default ``$WARREN_NODE_NAME``,
    else ``<hostname>:<port>``) names the node in events and metrics.
    """
    from warren.observability import EventPublisher, exchange_event
    from warren.server.app import EdgeApp, listen
    from warren.server.metrics import Metrics, log_line

    def log(script: str, level: str, message: str) -> None:
        stream = sys.stderr if level == "error" else sys.stdout
        print(f"[{script}] {level}: {message}", file=stream, flush=True)

    metrics: Metrics | None = None
    node: EdgeNode | None = None
    publisher = EventPublisher(store, report=echo)
    named = node_name or os.environ.get("WARREN_NODE_NAME") or ""

    def done(name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        if metrics is not None:
            metrics.observe(name, exchange, outcome, cpu_ms, wall_ms)
        print(f"[{name}] {log_line(exchange, outcome, cpu_ms, wall_ms)}", flush=True)
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

    supervisor = Supervisor(on_log=log, on_done=done, processes=processes)
    metrics = Metrics(supervisor, node=named or socket.gethostname())
    metrics.publisher = publisher
    await supervisor.start()
    publisher.start()
    node = EdgeNode(store, supervisor, workers_domain, echo=echo, trusted_accounts=trusted_accounts)
    control_app: Any = None
    try:
        await node.start()
        servers = []
        if control_port is not None:
            from warren.control import create_app

            control_app = create_app(store, manage_store=False)
            control = await listen(control_app, host, control_port)
            servers.append(control)
            echo(f"Control-plane API on http://{host}:{control.port}")
        if admin_port is not None:
            admin = await listen(metrics.asgi_app(), host, admin_port)
            servers.append(admin)
            echo(f"Metrics on http://{host}:{admin.port}/metrics")
        edge = await listen(EdgeApp(supervisor, node.resolve), host, port)
        servers.append(edge)
        if not named:  # several nodes may share a host: the port tells them apart
            metrics.node = f"{socket.gethostname()}:{edge.port}"
        echo(f"Ready on http://{host}:{edge.port} (workers domain {workers_domain}, store revision {node.revision})")
        # Either server stopping (a signal reaches both) ends the node.
        await asyncio.wait([server.task for server in servers], return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            await server.stop()
        return 0
    finally:
        if control_app is not None:
            from warren.control import stop_app

            await stop_app(control_app)
        await node.stop()
        await supervisor.stop()
        await publisher.stop()
