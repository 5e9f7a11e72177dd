"""A WebSocket proxy worker's cost: a small message's round trip to an origin, direct and through warren.

    python bench/websocket_proxy.py                 # ~5 s
    python bench/websocket_proxy.py --messages 5000 --rounds 3 --size 1000

Starts an echo origin (aiohttp, 127.0.0.1) and ``warren dev`` with a worker that returns
``fetch(new Request(ORIGIN, request))`` for the client's upgrade, then times one message
at a time on one socket: straight to the origin, and through the worker (client → edge →
runtime → the worker's relay → origin and back). Prints p50 / p99 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import WSMsgType, web
from websockets.sync.client import connect

PROXY = """
export default {
  fetch(request, env) {
    return fetch(new Request(env.ORIGIN, request));
  },
};
"""


def start_origin() -> str:
    """An echo WebSocket server on 127.0.0.1 in a thread of its own; its http: URL."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def start() -> int:
        app = web.Application()
        app.router.add_get("/", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    return f"http://127.0.0.1:{port}/"


def round_trips(url: str, messages: int, size: int) -> list[float]:
    payload = "x" * size
    times = []
    with connect(url) as ws:
        for _ in range(200):  # warm-up
            ws.send(payload)
            ws.recv(timeout=10)
        for _ in range(messages):
            started = time.perf_counter()
            ws.send(payload)
            ws.recv(timeout=10)
            times.append((time.perf_counter() - started) * 1000)
    return sorted(times)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    args = parser.parse_args()

    origin = start_origin()
    with tempfile.TemporaryDirectory() as project:
        (Path(project) / "worker.js").write_text(PROXY)
        command = ["dev", "worker.js", "--no-watch", "--port", "0", "--var", f"ORIGIN:{origin}"]
        dev = subprocess.Popen(
            [sys.executable, "-m", "warren.cli", *command],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert dev.stdout is not None
            ready = None
            for line in dev.stdout:
                found = re.search(r"Ready on (http://\S+)", line)
                if found:
                    ready = found.group(1)
                    break
            if ready is None:
                print("warren dev did not start", file=sys.stderr)
                return 1
            direct_url = "ws" + origin.removeprefix("http")
            proxied_url = "ws" + ready.removeprefix("http") + "/"
            print(f"{args.size}-byte messages, one at a time, {args.messages} per round")
            for round_number in range(1, args.rounds + 1):
                direct = round_trips(direct_url, args.messages, args.size)
                proxied = round_trips(proxied_url, args.messages, args.size)
                d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
                p50, p99 = percentile(proxied, 0.5), percentile(proxied, 0.99)
                print(
                    f"round {round_number}: direct p50 {d50:.3f} p99 {d99:.3f} ms;"
                    f" through the worker p50 {p50:.3f} p99 {p99:.3f} ms ({p50 / d50:.1f}x at p50)"
                )
        finally:
            dev.terminate()
            dev.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
