"""``warren dev``: one project served locally, reloaded when its files change.

With ``--service [NAME=]PATH`` (repeatable), other projects run beside it as
the workers its ``[[services]]`` bindings call (each named by NAME, else by its
config's ``name``); they are watched and reloaded too, but only the main
project answers HTTP. Queues (``[[queues.producers]]``, ``[[queues.consumers]]``
of any of them) live in a local store under the state directory, created as the
configs name them; consumers run as on an edge node (warren.triggers.consumer).
Crons do not fire on their own here, as with ``wrangler dev``: use ``--test-scheduled``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from watchfiles import DefaultFilter, awatch

from warren.bindings import BindingHost
from warren.bindings.durable_objects import DurableObjects
from warren.bindings.kv import KVHandler
from warren.bindings.queues import QueueProducers
from warren.bindings.service import ServiceBindings
from warren.config import ConfigError, Project, load_project
from warren.runtime import ScriptLoadError
from warren.runtime.subrequests import SubrequestPolicy
from warren.server.app import EdgeApp, Unavailable, listen
from warren.server.metrics import LineWriter, Metrics, log_line
from warren.server.supervisor import Exchange, Supervisor
from warren.server.visitor import Visitors

Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


def _echo_error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DevServer:
    def __init__(
        self,
        target: str | Path,
        host: str = "127.0.0.1",
        port: int = 8787,
        extra_vars: dict[str, str] | None = None,
        watch: bool = True,
        admin_port: int | None = None,
        test_scheduled: bool = False,
        geoip_paths: tuple[str, ...] = (),
        persist_to: str | Path | None = None,
        services: tuple[str, ...] = (),
        echo: Echo = _echo,
        echo_error: Echo = _echo_error,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.extra_vars = extra_vars or {}
        self.watch = watch
        # Standard output is written in batches (a line per request under load costs a write
        # each otherwise); a line for standard error writes what waits first, to keep the order.
        self.lines: LineWriter | None = None
        if echo is _echo:
            self.lines = LineWriter()
            echo = self.lines
            if echo_error is _echo_error:
                echo_error = self._echo_error_after_lines
        self.echo = echo
        self.echo_error = echo_error
        self.project: Project | None = None
        # As with wrangler dev, a worker in development may fetch from local servers.
        self.bindings = BindingHost()
        self.supervisor = Supervisor(
            on_log=self._log,
            on_done=self._done,
            subrequests=SubrequestPolicy(allow_private=True),
            bindings=self.bindings,
        )
        # KV namespaces' data, persisted like wrangler's .wrangler/state: opened with the first KV binding.
        self.persist_to = Path(persist_to) if persist_to is not None else None
        self.kv: KVHandler | None = None
        # Issue #10: sibling workers for service bindings; local queues and their consumers.
        self.services = services
        self.siblings: dict[str, Project] = {}
        self._broken = False  # the last change did not load: the next good one is a reload
        self.queues: _LocalQueues | None = None
        # Durable Objects (issue #8): their files and alarms under the state directory, opened
        # once a project binds a namespace (or state from an earlier run holds some).
        self.objects: DurableObjects | None = None
        # The state directory, held (locked) from its first use to the end: a `warren serve` or
        # another `warren dev` must not open the same Durable Objects' files or queues.
        self._state_held: Path | None = None
        self._state_claim: int | None = None
        self._state_refused = False
        self.bindings.register(
            "service", ServiceBindings(self.supervisor, lambda caller, name: self.supervisor.deployments.get(name))
        )
        self.metrics = Metrics(self.supervisor)
        self.admin_port = admin_port
        self.test_scheduled = test_scheduled
        self.visitors = Visitors("dev", geoip_paths)

    def _echo_error_after_lines(self, line: str) -> None:
        if self.lines is not None:
            self.lines.flush()
        _echo_error(line)

    def _log(self, script: str, level: str, message: str) -> None:
        line = f"[{script}] {level}: {message}" if level != "log" else f"[{script}] {message}"
        (self.echo_error if level == "error" else self.echo)(line)

    def _done(self, name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.metrics.observe(name, exchange, outcome, cpu_ms, wall_ms)
        self.echo(log_line(exchange, outcome, cpu_ms, wall_ms))

    def _scheduled_endpoint(self, app: Any) -> Any:
        """``/__scheduled?cron=…`` runs the worker's scheduled() handler, as ``wrangler dev --test-scheduled``."""

        async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != "/__scheduled" or self.project is None:
                await app(scope, receive, send)
                return
            key = self.supervisor.deployments.get(self.project.name)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            cron = query.get("cron", ["* * * * *"])[0]
            if key is None:
                status, text = 503, "The worker is not loaded."
            else:
                outcome = await self.supervisor.scheduled(key, cron, int(time.time() * 1000))
                status, text = (200, "Ran scheduled event") if outcome == "ok" else (500, f"Scheduled event: {outcome}")
            body = text.encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return endpoint

    def _read_project(self) -> Project:
        project = load_project(self.target)
        project.vars.update(self.extra_vars)
        return project

    async def _deploy(self, first: bool) -> bool:
        loaded = await self._load(first)
        self._broken = not loaded
        return loaded

    async def _load(self, first: bool) -> bool:
        try:
            project = self._read_project()
            script = project.script()
        except ConfigError as exc:
            self.echo_error(f"✘ {exc}")
            return False
        if first or (self.project is not None and project.warnings != self.project.warnings):
            for warning in project.warnings:
                self.echo_error(f"▲ {warning}")
        self.project = project
        if any(binding.get("type") == "kv_namespace" for binding in script.bindings):
            if not self._hold_state(project):
                return False
            await self._open_kv(project)
        before = dict(self.supervisor.deployments)
        quarantined = set(self.supervisor.quarantined)  # deployed again, one is lifted: a reload
        if not await self._deploy_siblings(first):
            return False
        if any(p.queue_bindings or p.queue_consumers for p in (project, *self.siblings.values())):
            if self.queues is None:
                if not self._hold_state(project):
                    return False
                self.queues = await _LocalQueues.open(self, self.state_dir(project) / "queues.sqlite3")
            await self.queues.configure([project, *self.siblings.values()])
        started = time.perf_counter()
        try:
            await self.supervisor.deploy(script)
        except ScriptLoadError as exc:
            self.echo_error(f"✘ {exc}")
            return False
        if not await self._open_objects(project):  # once its worker runs: alarms due by now fire at once
            return False
        elapsed = (time.perf_counter() - started) * 1000
        # A change in the directory that leaves the workers as they were (a log file, an
        # editor's swap file) is not a reload.
        unchanged = (
            self.supervisor.deployments == before and not quarantined & set(before.values()) and not self._broken
        )
        if not first and not unchanged:
            self.echo(f"⎔ Reloaded {script.name} in {elapsed:.0f} ms")
        return True

    def state_dir(self, project: Project) -> Path:
        """Where local state persists: ``--persist-to``, else ``.warren/state`` beside the config (or script)."""
        if self.persist_to is not None:
            return self.persist_to
        base = project.config_path.parent if project.config_path is not None else project.script_path.parent
        return base / ".warren" / "state"

    async def _open_kv(self, project: Project) -> None:
        if self.kv is not None:
            return
        path = self.state_dir(project) / "kv.sqlite3"
        self.kv = await KVHandler.local(path, "dev", report=self.echo_error)
        await self.kv.start()
        self.bindings.register("kv_namespace", self.kv)

    def _hold_state(self, project: Project) -> bool:
        """Lock the state directory before the first store under it opens; False (said) if another
        warren process holds it."""
        from warren.server.serve import StateDirInUse, claim_state_dir

        path = self.state_dir(project)
        if self._state_held is not None:
            return True  # held since the first store opened, where that store still is
        try:
            self._state_claim = claim_state_dir(path, hint="give this one a directory of its own with --persist-to")
        except StateDirInUse as exc:
            self.echo_error(f"✘ {exc}")
            self._state_refused = True
            return False
        self._state_held = path
        return True

    async def _open_objects(self, project: Project) -> bool:
        if self.objects is not None:
            return True
        state = self.state_dir(project)
        bound = any(p.durable_objects for p in (project, *self.siblings.values()))
        if not bound and not (state / "durable_objects").exists():
            return True
        if not self._hold_state(project):
            return False
        # Objects of this project and of its --service siblings: the worker of that name.
        self.objects = DurableObjects(
            self.supervisor, state, lambda _account, script: self.supervisor.deployments.get(script)
        )
        self.objects.register(self.bindings)
        await self.objects.start()
        return True

    def _resolve(self, host: str, path: str) -> str | Unavailable | None:
        if self.project is None:
            return None
        key = self.supervisor.deployments.get(self.project.name)
        if key is None:
            return Unavailable(f"Worker {self.project.name} is not available: its script failed to load.")
        return key

    async def _deploy_siblings(self, first: bool) -> bool:
        """Load (or reload) the ``--service`` workers; False if one cannot be read."""
        siblings: dict[str, Project] = {}
        for spec in self.services:
            name, separator, target = spec.partition("=")
            if not separator:
                name, target = "", spec
            try:
                project = load_project(target)
                if name:
                    project.name = name
                script = project.script()
            except ConfigError as exc:
                self.echo_error(f"✘ --service {spec}: {exc}")
                return False
            siblings[project.name] = project
            try:
                await self.supervisor.deploy(script)
            except ScriptLoadError as exc:
                self.echo_error(f"✘ {project.name}: {exc}")
                return False
            if first:
                self.echo(f"⎔ Running {project.name} (service) from {project.script_path}")
        self.siblings = siblings
        return True

    async def _watch(self, stop: asyncio.Event) -> None:
        assert self.project is not None
        paths = [str(path) for path in self.project.watch_paths]
        for sibling in self.siblings.values():
            paths += [str(path) for path in sibling.watch_paths if str(path) not in paths]
        # Local state (KV data) changes on every write: never a reason to reload.
        ignored = DefaultFilter(
            ignore_dirs=(*DefaultFilter.ignore_dirs, ".warren"), ignore_paths=[self.state_dir(self.project)]
        )
        async for _changes in awatch(*paths, stop_event=stop, debounce=50, step=20, watch_filter=ignored):
            await self._deploy(first=False)

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            if self.lines is not None:  # what waits is written before the loop (and its timer) ends
                self.lines.close()

    async def _run(self) -> int:
        try:
            self.project = self._read_project()
        except ConfigError as exc:
            self.echo_error(f"✘ {exc}")
            return 1
        await self.supervisor.start()
        try:
            await self._deploy(first=True)
            if self._state_refused:
                return 1  # nothing of another process's state was opened: stop, said why
            stop = asyncio.Event()
            watcher = asyncio.get_running_loop().create_task(self._watch(stop)) if self.watch else None
            app: Any = EdgeApp(self.supervisor, self._resolve, visitors=self.visitors)
            if self.test_scheduled:
                app = self._scheduled_endpoint(app)
            try:
                listening = await listen(app, self.host, self.port, date_header=False)
            except OSError as exc:
                stop.set()
                self.echo_error(f"✘ {exc}")
                return 1
            port = listening.port
            if self.admin_port is not None:
                admin = await listen(self.metrics.asgi_app(), self.host, self.admin_port)
                self.echo(f"Metrics on http://{self.host}:{admin.port}/metrics")
            self.echo(f"Ready on http://{self.host}:{port}")
            await listening.task
            stop.set()
            if watcher is not None:
                watcher.cancel()
            return 0
        finally:
            if self.queues is not None:
                await self.queues.close()
            if self.objects is not None:
                await self.objects.stop()
            await self.supervisor.stop()
            if self.kv is not None:
                await self.kv.close()
            if self._state_claim is not None:
                os.close(self._state_claim)


class _LocalQueues:
    """``warren dev``'s queues: a SQLite store under the state directory, one local account."""

    ACCOUNT = "dev"

    def __init__(self, server: DevServer, store: Any, account_id: str) -> None:
        from warren.triggers import QueueConsumers

        self.server = server
        self.store = store
        self.account_id = account_id
        server.bindings.register("queue", QueueProducers(store, lambda _caller: account_id))
        self.consumers = QueueConsumers(
            store,
            server.supervisor,
            lambda _account, script: server.supervisor.deployments.get(script),
            echo=server.echo,
            config_interval=1.0,
        )
        self.consumers.start()

    @classmethod
    async def open(cls, server: DevServer, path: Path) -> _LocalQueues:
        from warren.store import SQLiteStore

        path.parent.mkdir(parents=True, exist_ok=True)
        store = SQLiteStore(path)
        await store.open()
        account = await store.account_by_name(cls.ACCOUNT) or await store.create_account(cls.ACCOUNT)
        return cls(server, store, account.id)

    async def _queue(self, name: str) -> Any:
        from warren.store import Conflict

        found = await self.store.get_queue(self.account_id, name)
        if found is None:
            try:
                found = await self.store.create_queue(self.account_id, name)
                self.server.echo(f"⎔ Created local queue {name}")
            except Conflict:
                found = await self.store.get_queue(self.account_id, name)
        return found

    async def configure(self, projects: list[Project]) -> None:
        """Create the queues the projects name; make each consumer config the queue's consumer."""
        from warren.store import QueueConsumer, StoreError

        consuming: dict[str, tuple[str, dict[str, Any]]] = {}
        for project in projects:
            for binding in project.queue_bindings:
                await self._queue(str(binding["queue_name"]))
            for settings in project.queue_consumers:
                consuming[str(settings["queue"])] = (project.name, settings)
                if settings["dead_letter_queue"]:
                    await self._queue(str(settings["dead_letter_queue"]))
        for name, (script, settings) in consuming.items():
            queue = await self._queue(name)
            fields = {key: value for key, value in settings.items() if key != "queue"}
            try:
                for other in queue.consumers:
                    if other.script != script:
                        await self.store.delete_queue_consumer(self.account_id, queue.id, other.script)
                await self.store.put_queue_consumer(self.account_id, queue.id, QueueConsumer(script=script, **fields))
            except StoreError as exc:
                self.server.echo_error(f"✘ queue {name}: {exc}")
        names = {project.name for project in projects}
        for queue in await self.store.list_queues(self.account_id):
            for consumer in queue.consumers:
                if consumer.script in names and queue.name not in consuming:
                    await self.store.delete_queue_consumer(self.account_id, queue.id, consumer.script)
        self.consumers.changed()

    async def close(self) -> None:
        await self.consumers.stop()
        await self.store.close()
