"""Test harnesses: the real ``warren dev`` command, and a real multi-worker edge.

Both listen on 127.0.0.1 and are driven with real HTTP; nothing of warren is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from warren.runtime import Compiler, Worker, WorkerScript
from warren.runtime.threads import JsThreads
from warren.server.app import EdgeApp
from warren.server.supervisor import Exchange, Supervisor

READY = re.compile(r"Ready on (http://\S+)")
# The warren processes the running test (and its fixtures) started: a failure shows what each printed.
_STARTED_IN_TEST: list[ServiceProcess] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _STARTED_IN_TEST.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for process in _STARTED_IN_TEST:
            report.sections.append((f"output of warren {' '.join(process.args)}", process.output[-8000:]))


class ServiceProcess:
    """A running ``warren`` command that serves (``dev``, ``serve``, ``control``) and all it printed."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.args = args
        self.lines: list[str] = []
        _STARTED_IN_TEST.append(self)
        self._changed = threading.Condition()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warren.cli", *args, "--port", "0"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            # A group of its own: whatever it leaves behind (a runtime process orphaned by a
            # SIGKILL) is found and ended by stop(), and cannot hold the output pipe open.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.url = self.wait_for(READY, timeout=30).group(1)
        except BaseException:
            self.stop()  # a start that failed leaves no process behind
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 10, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not remaining):
                    raise AssertionError(f"no line matching {regex.pattern!r} in:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.1))

    def get(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def request(self, method: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=30, **kwargs)

    def terminate(self) -> None:
        """Ask it to shut down (SIGTERM) without waiting: ``stop()`` waits. Lets several stop at once."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # What outlived it in its group (runtime processes of a SIGKILLed server) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reader.join(5)
        # Closing the pipe while the reader still blocks on it would wait for that read forever.
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


async def settle_transports() -> None:
    """Let the loop run the callbacks that finish closing its transports (a transport closed
    just before its loop stops keeps its socket, and warns when collected, during whichever
    later test that is: an error there, as warnings are)."""
    for _ in range(5):
        await asyncio.sleep(0)


def stop_all(processes: list[ServiceProcess]) -> None:
    """Stop several at once: all are asked first, then each is waited for."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


from tests.origin import origin  # noqa: E402,F401  (a fixture: a real origin server for subrequests)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Any]:
    """Start ``warren dev`` on files written into a temporary directory.

    ``dev({"worker.js": "...", "wrangler.toml": "..."}, target=".")``
    """
    started: list[ServiceProcess] = []

    def start(files: dict[str, str], target: str = "worker.js", *args: str) -> ServiceProcess:
        for name, text in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        process = ServiceProcess(["dev", target, *args], tmp_path)
        started.append(process)
        return process

    yield start
    stop_all(started)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start ``warren ARGS --port 0`` in a temporary directory: ``spawn(["serve", "--store", db])``."""
    started: list[ServiceProcess] = []

    def start(args: list[str]) -> ServiceProcess:
        process = ServiceProcess(args, tmp_path)
        started.append(process)
        return process

    yield start
    stop_all(started)


class Collect:
    """A Reply for ``Worker.fetch`` that keeps the status and body; ``finished`` is the outcome."""

    def __init__(self) -> None:
        self.received = b""
        self.status = 0
        self.finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status

    def body(self, chunk: bytes) -> None:
        self.received += chunk

    def end(self) -> None: ...

    def error(self, status: int, message: str) -> None:
        self.status = status

    def log(self, level: str, message: str) -> None: ...

    def done(self, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.finished.set_result(outcome)


class WorkerHost:
    """Workers run in this process as a runtime process runs them (its JS threads, a
    compiler), without the frames: ``async with WorkerHost() as host: await host.start(script)``."""

    def __init__(self, threads: int = 1) -> None:
        self.js_threads = JsThreads(threads)
        self.compiler = Compiler()
        self.workers: list[Worker] = []

    async def start(self, script: WorkerScript, **options: Any) -> Worker:
        """A started worker (``options``: Worker's, e.g. ``pool``); raises ScriptLoadError."""
        worker = Worker(script, self.js_threads.for_worker(), self.compiler, lambda *a: None, **options)
        self.workers.append(worker)
        await worker.start()
        return worker

    async def __aenter__(self) -> WorkerHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for worker in self.workers:
            await worker.close()
        self.compiler.close()
        self.js_threads.shutdown()


class Edge:
    """Several workers behind one real server, routed by the first path segment."""

    def __init__(
        self, scripts: dict[str, str], heap_mb: int = 128, cpu_ms: float = 50, **supervisor: Any
    ) -> None:
        self.logs: list[tuple[str, str, str]] = []
        self.done: list[tuple[str, str]] = []
        self.metering: list[tuple[str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.supervisor = Supervisor(heap_mb=heap_mb, on_log=self._on_log, on_done=self._on_done, **supervisor)
        self._server: uvicorn.Server | None = None
        self.url = self._run(self._start(scripts, cpu_ms))

    def _on_log(self, name: str, level: str, message: str) -> None:
        self.logs.append((name, level, message))

    def _on_done(self, name: str, exchange: Exchange, outcome: str, cpu_ms: float, wall_ms: float) -> None:
        self.done.append((name, outcome))
        self.metering.append((name, dict(exchange.metering)))

    def _run(self, coroutine: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _start(self, scripts: dict[str, str], cpu_ms: float) -> str:
        await self.supervisor.start()
        for name, source in scripts.items():
            await self.supervisor.deploy(WorkerScript(name=name, source=textwrap.dedent(source), cpu_ms=cpu_ms))

        def resolve(host: str, path: str) -> str | None:
            return self.supervisor.deployments.get(path.split("/")[1])

        config = uvicorn.Config(
            EdgeApp(self.supervisor, resolve),
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_level="warning",
            # Load tests keep connections busy for many seconds: a 5 s keep-alive closing one
            # just as the client reuses it would be a client-side race, not what they measure.
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def deploy(self, name: str, source: str, cpu_ms: float = 50) -> None:
        self._run(self.supervisor.deploy(WorkerScript(name=name, source=textwrap.dedent(source), cpu_ms=cpu_ms)))

    def deploy_script(self, script: WorkerScript, timeout: float = 60) -> None:
        """Deploy a script as given (modules, vars): routed by its name."""
        self._run(self.supervisor.deploy(script), timeout)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._serving
        await self.supervisor.stop()
        await settle_transports()

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def edge() -> Iterator[Any]:
    started: list[Edge] = []

    def start(scripts: dict[str, str], **kwargs: Any) -> Edge:
        harness = Edge(scripts, **kwargs)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.stop()
