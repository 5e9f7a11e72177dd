"""Real NATS for tests: a JetStream cluster of ``nats-server`` processes on loopback, and a TCP proxy.

``NatsCluster`` runs N servers (default 3) routed to each other on loopback, each
with its own JetStream store directory, and can SIGKILL, stop and restart any
one of them. ``TcpProxy`` forwards one loopback port to another and can be
paused (bytes held, new connections left hanging: a partition) and resumed.
Fixtures: ``nats_cluster`` (three servers, started and ready) and ``tcp_proxy``
(a factory). A test module gets them by importing them::

    from nats_cluster import nats_cluster_fixture, tcp_proxy_fixture  # noqa: F401  (fixtures)

Both skip the test, saying why, where ``nats-server`` is not installed. This
module owns only test processes it starts; it never touches warren's code.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

NATS_SERVER = shutil.which("nats-server") or next(
    (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(path, os.X_OK)), None
)
NO_NATS = "nats-server is not installed (apt-get install nats-server): these tests need real NATS servers"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ClusterNode:
    """One ``nats-server -js`` of a cluster: client port, route port, store directory, log file."""

    def __init__(self, name: str, root: Path, cluster_name: str) -> None:
        assert NATS_SERVER is not None, NO_NATS
        self.name = name
        self.cluster_name = cluster_name
        self.port = free_port()
        self.cluster_port = free_port()
        self.store_dir = root / name
        self.log_path = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://127.0.0.1:{self.cluster_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, routes: list[str]) -> None:
        """Start the process (its readiness is checked with ``wait_ready``)."""
        assert NATS_SERVER is not None
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [NATS_SERVER, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.cluster_name:  # a cluster of one is a plain server: no routes, nothing announced to clients
            command += ["-n", self.name, "--cluster_name", self.cluster_name, "--cluster", self.route_url]
        if routes:
            command += ["--routes", ",".join(routes)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait_listening(self, deadline: float) -> None:
        while b"Server is ready" not in self.log_path.read_bytes()[self._log_offset :]:
            if not self.running or time.monotonic() > deadline:
                raise AssertionError(f"nats-server {self.name} did not start:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to flush, step down or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class NatsCluster:
    """A JetStream cluster of ``size`` servers routed on loopback."""

    def __init__(self, root: Path, size: int = 3, name: str = "warren-test") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.nodes = [ClusterNode(f"n{index + 1}", root, name if size > 1 else "") for index in range(size)]
        for node in self.nodes:
            node.launch([other.route_url for other in self.nodes if other is not node])
        deadline = time.monotonic() + 20
        for node in self.nodes:
            node.wait_listening(deadline)
        self.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def store_url(self, **options: str | int) -> str:
        """The ``--store`` value naming every server, with query options (``replicas=3``, ``prefix=x``)."""
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return ",".join(self.urls) + (f"?{query}" if query else "")

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def wait_ready(self, timeout: float = 20) -> None:
        """Until every running server answers JetStream requests and a stream of as many replicas as servers
        running can be placed (routes are up, a meta leader is elected and knows every server)."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.running]
        for node in running:
            while True:
                error = asyncio.run(_jetstream_error(node.url, len(running)))
                if error is None:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} not ready: {error}\n{node.log()[-3000:]}")
                time.sleep(0.1)

    def restart(self, name: str) -> None:
        node = self.node(name)
        node.launch([other.route_url for other in self.nodes if other is not node])
        node.wait_listening(time.monotonic() + 20)
        self.wait_ready()

    def stream_leader(self, stream: str, timeout: float = 20) -> str:
        """The name of the server leading ``stream`` (waiting while an election is on)."""
        deadline = time.monotonic() + timeout
        while True:
            leader = asyncio.run(_stream_leader([node.url for node in self.nodes if node.running], stream))
            if leader:
                return leader
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {stream} has no leader")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def _jetstream_error(url: str, expected_routes: int) -> str | None:
    """None when the server at ``url`` sees the whole running cluster and answers JetStream; else why not."""
    nc = NATS()
    try:
        await nc.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
        urls = nc._server_info.get("connect_urls") or []
        if expected_routes > 1 and len(set(urls)) < expected_routes:
            return f"sees {len(set(urls))} of {expected_routes} servers"
        js = nc.jetstream(timeout=2)
        await js.account_info()
        probe = f"READY_PROBE_{free_port()}"
        await js.add_stream(name=probe, subjects=[f"ready.probe.{probe}"], num_replicas=expected_routes)
        await js.delete_stream(probe)
        return None
    except Exception as exc:  # any failure means: not yet
        return repr(exc)
    finally:
        if nc.is_connected:
            await nc.close()


async def _stream_leader(urls: list[str], stream: str) -> str | None:
    nc = NATS()
    try:
        await nc.connect(servers=urls, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
        info = await nc.jetstream(timeout=2).stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None
    except Exception:  # no leader yet, or no server reachable: ask again
        return None
    finally:
        if nc.is_connected:
            await nc.close()


@pytest.fixture(name="nats_cluster")
def nats_cluster_fixture(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed ``nats-server -js`` on loopback, ready for JetStream (about a second to start)."""
    if NATS_SERVER is None:
        pytest.skip(NO_NATS)
    cluster = NatsCluster(tmp_path / "nats-cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


# -- a TCP proxy that can be paused -----------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, in threads; ``pause()`` holds every byte and leaves new
    connections hanging (the far end just stops answering, as across a network partition), ``resume()``
    lets everything through again, and ``cut()`` closes every connection it carries. With ``delay``
    (seconds), every byte arrives that much later each way, in order: a slow link, not a slow server."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self.cut()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._track(client):
                client.close()
                return
            self._spawn(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        # While paused, a new connection is accepted but goes nowhere: the client's handshake times out.
        while not self._flowing.wait(0.1):
            if self._closed.is_set():
                _close(client)
                return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            _close(client)
            return
        if not self._track(upstream):
            _close(upstream)
            _close(client)
            return
        self._spawn(self._pump, client, upstream)
        self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.1)
        late: queue.Queue[tuple[float, bytes]] | None = None
        if self.delay > 0:
            late = queue.Queue()
            self._spawn(self._deliver, late, sink)
        try:
            while not self._closed.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if late is not None:
                    late.put((time.monotonic() + self.delay, data))
                    continue
                while not self._flowing.wait(0.1):  # paused: hold the bytes until resumed
                    if self._closed.is_set():
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if late is not None:
                late.put((0.0, b""))  # the deliverer closes both ends once what came before is sent
            else:
                _close(source)
                _close(sink)

    def _deliver(self, late: queue.Queue[tuple[float, bytes]], sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                try:
                    due, data = late.get(timeout=0.1)
                except queue.Empty:
                    continue
                if not data:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                while not self._flowing.wait(0.1):
                    if self._closed.is_set():
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(name="tcp_proxy")
def tcp_proxy_fixture() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    """``tcp_proxy(("127.0.0.1", port))``: a pausable proxy to that port, closed after the test."""
    started: list[TcpProxy] = []

    def start(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()
