"""``warren dev``: one project served locally, reloaded when its files change."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from watchfiles import awatch

from warren.config import ConfigError, Project, load_project
from warren.runtime import ScriptLoadError
from warren.server.app import EdgeApp, Unavailable, listen
from warren.server.metrics import Metrics, log_line
from warren.server.supervisor import Exchange, Supervisor

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
        echo: Echo = _echo,
        echo_error: Echo = _echo_error,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.extra_vars = extra_vars or {}
        self.watch = watch
        self.echo = echo
        self.echo_error = echo_error
        self.project: Project | None = None
        self.supervisor = Supervisor(on_log=self._log, on_done=self._done)
        self.metrics = Metrics(self.supervisor)
        self.admin_port = admin_port
        self.test_scheduled = test_scheduled

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
        started = time.perf_counter()
        try:
            await self.supervisor.deploy(script)
        except ScriptLoadError as exc:
            self.echo_error(f"✘ {exc}")
            return False
        elapsed = (time.perf_counter() - started) * 1000
        if not first:
            self.echo(f"⎔ Reloaded {script.name} in {elapsed:.0f} ms")
        return True

    def _resolve(self, host: str, path: str) -> str | Unavailable | None:
        if self.project is None:
            return None
        key = self.supervisor.deployments.get(self.project.name)
        if key is None:
            return Unavailable(f"Worker {self.project.name} is not available: its script failed to load.")
        return key

    async def _watch(self, stop: asyncio.Event) -> None:
        assert self.project is not None
        paths = [str(path) for path in self.project.watch_paths]
        async for _changes in awatch(*paths, stop_event=stop, debounce=50, step=20):
            await self._deploy(first=False)

    async def run(self) -> int:
        try:
            self.project = self._read_project()
        except ConfigError as exc:
            self.echo_error(f"✘ {exc}")
            return 1
        await self.supervisor.start()
        try:
            await self._deploy(first=True)
            stop = asyncio.Event()
            watcher = asyncio.get_running_loop().create_task(self._watch(stop)) if self.watch else None
            app: Any = EdgeApp(self.supervisor, self._resolve)
            if self.test_scheduled:
                app = self._scheduled_endpoint(app)
            try:
                listening = await listen(app, self.host, self.port)
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
            await self.supervisor.stop()
