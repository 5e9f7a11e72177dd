"""``cloudflare:sockets``: a worker's outgoing TCP connections, to a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServiceProcess, settle_transports
from tests.origin import Origin
from tests.test_websockets import wait_until

CONVERSE = """
import { connect } from "cloudflare:sockets";

async function lines(reader, count) {
  const decoder = new TextDecoder();
  let text = "";
  while (text.split("\\n").length <= count) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  return text;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const socket = connect({ hostname: "127.0.0.1", port: Number(env.TCP_PORT) });
    const writer = socket.writable.getWriter();
    const reader = socket.readable.getReader();
    const encoder = new TextEncoder();
    if (url.pathname === "/big") {
      await writer.write(encoder.encode("size 3000000\\nbye\\n"));
      let total = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        total += value.byteLength;
      }
      await socket.closed;
      return new Response(String(total));
    }
    const info = await socket.opened;
    await writer.write(encoder.encode("one\\ntwo\\n"));
    const heard = await lines(reader, 3);
    await writer.close();  // the server sees the end of what we write, says "eof" and closes
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    await socket.closed;
    return Response.json({ heard, rest, remote: info.remoteAddress, local: typeof info.localAddress });
  },
};
"""


def _dev(dev: Any, origin: Origin, source: str) -> Any:
    return dev({"worker.js": source}, "worker.js", "--var", f"TCP_PORT:{origin.tcp_port}")


def test_a_worker_talks_tcp_both_ways_and_half_closes(dev: Any, origin: Origin) -> None:
    server = _dev(dev, origin, CONVERSE)
    answer = httpx.get(server.url + "/", timeout=30)
    assert answer.status_code == 200, answer.text
    result = json.loads(answer.text)
    assert result["heard"] == "hello\necho:one\necho:two\n"
    assert result["rest"] == "eof\n"
    assert result["remote"] == f"127.0.0.1:{origin.tcp_port}"
    assert result["local"] == "string"
    assert httpx.get(server.url + "/big", timeout=30).text == str(len("hello\n") + 3_000_000)
    wait_until(lambda: origin.tcp_closed == origin.tcp_connections == 2)


def test_the_readable_of_a_socket_is_a_response_body(dev: Any, origin: Origin) -> None:
    """Workers' own example: write, close the writable, return the readable as the body."""
    server = _dev(
        dev,
        origin,
        """
        import { connect } from "cloudflare:sockets";
        export default {
          async fetch(request, env) {
            const socket = connect({ hostname: "127.0.0.1", port: Number(env.TCP_PORT) });
            const writer = socket.writable.getWriter();
            await writer.write(new TextEncoder().encode("gopher\\nsize 200000\\n"));
            await writer.close();
            return new Response(socket.readable, { headers: { "Content-Type": "text/plain" } });
          },
        };
        """,
    )
    answer = httpx.get(server.url + "/", timeout=30)
    assert answer.status_code == 200
    assert answer.content == b"hello\necho:gopher\n" + b"z" * 200_000 + b"eof\n"
    wait_until(lambda: origin.tcp_closed == origin.tcp_connections == 1)


def test_connect_checks_its_arguments_and_reports_refusals(dev: Any, origin: Origin) -> None:
    server = _dev(
        dev,
        origin,
        """
        import { connect } from "cloudflare:sockets";
        function error(fn) {
          try { fn(); return "no error"; } catch (e) { return `${e.constructor.name}: ${e.message}`; }
        }
        export default {
          async fetch(request, env) {
            const report = {
              badPort: error(() => connect({ hostname: "127.0.0.1", port: 70000 })),
              badString: error(() => connect("no-port-here")),
              badTransport: error(() => connect("127.0.0.1:80", { secureTransport: "maybe" })),
              startTlsOff: error(() => connect(`127.0.0.1:${env.TCP_PORT}`).startTls()),
            };
            const smtp = connect("127.0.0.1:25");
            report.smtp = await smtp.opened.then(() => "opened", (e) => `${e.constructor.name}: ${e.message}`);
            const closedPort = connect("127.0.0.1:1");
            report.refused = await closedPort.opened.then(() => "opened", (e) => e.constructor.name);
            report.closedToo = await closedPort.closed.then(() => "closed", (e) => e.constructor.name);
            return Response.json(report);
          },
        };
        """,
    )
    report = httpx.get(server.url + "/", timeout=30).json()
    assert report["badPort"] == "TypeError: Invalid port 70000."
    assert report["badString"].startswith("TypeError:")
    assert report["badTransport"].startswith("TypeError: secureTransport must be")
    assert report["startTlsOff"].startswith("TypeError: startTls() needs")
    assert report["smtp"] == "TypeError: Connections to port 25 (SMTP) are not allowed, as on Workers."
    assert report["refused"] == "TypeError"
    assert report["closedToo"] == "TypeError"


def test_the_ssrf_guard_applies_to_sockets(edge: Any, origin: Origin) -> None:
    """On an edge node a worker may not reach a loopback address over TCP either; nothing
    reaches the server."""
    harness = edge(
        {
            "guarded": f"""
            import {{ connect }} from "cloudflare:sockets";
            export default {{
              async fetch() {{
                const socket = connect("127.0.0.1:{origin.tcp_port}");
                return socket.opened.then(() => new Response("opened"), (e) => new Response(e.message));
              }},
            }};
            """
        }
    )
    text = harness.get("/guarded/").text
    assert "refused" in text, text
    assert origin.tcp_connections == 0


def test_sockets_count_as_subrequests(dev: Any, origin: Origin) -> None:
    """Hostile: a worker opening connections in a loop stops at its subrequest limit (50)."""
    server = _dev(
        dev,
        origin,
        """
        import { connect } from "cloudflare:sockets";
        export default {
          async fetch(request, env) {
            let opened = 0;
            for (let i = 0; i < 60; i++) {
              const socket = connect(`127.0.0.1:${env.TCP_PORT}`);
              try { await socket.opened; opened++; } catch (error) { return new Response(`${opened} ${error.message}`); }
              socket.close();
            }
            return new Response("all 60");
          },
        };
        """,
    )
    assert httpx.get(server.url + "/", timeout=30).text == "50 Too many subrequests."
    wait_until(lambda: origin.tcp_closed == origin.tcp_connections == 50)


def test_a_worker_holds_at_most_100_connections_at_once(dev: Any, origin: Origin) -> None:
    """Hostile: three requests at once each open 50 connections and hold them. The worker's
    isolate holds 100 at most; the rest are refused with a clear error, and nothing leaks."""
    server = _dev(
        dev,
        origin,
        """
        import { connect } from "cloudflare:sockets";
        export default {
          async fetch(request, env) {
            let opened = 0, refusal = "";
            for (let i = 0; i < 50; i++) {
              const socket = connect(`127.0.0.1:${env.TCP_PORT}`);
              try { await socket.opened; opened++; } catch (error) { refusal = error.message; }
              globalThis.attempts = (globalThis.attempts ?? 0) + 1;
            }
            // All held until the three requests (one isolate) have made all their attempts.
            while (globalThis.attempts < 150) await new Promise((resolve) => setTimeout(resolve, 10));
            return Response.json({ opened, refusal });
          },
        };
        """,
    )
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: httpx.get(server.url + "/", timeout=60).json(), range(3)))
    assert sum(answer["opened"] for answer in answers) == 100, answers
    refusals = {answer["refusal"] for answer in answers} - {""}
    assert refusals == {"Too many open connections: a worker may hold 100 at once."}, answers
    wait_until(lambda: origin.tcp_closed == origin.tcp_connections == 100)


def test_a_socket_left_open_is_closed_with_its_request(dev: Any, origin: Origin) -> None:
    """Hostile: a worker opens connections and never closes them. They end with the request
    (at the latest its 30 s of waitUntil); here the worker's CPU limit ends it at once."""
    server = _dev(
        dev,
        origin,
        """
        import { connect } from "cloudflare:sockets";
        export default {
          async fetch(request, env) {
            const sockets = [];
            for (let i = 0; i < 5; i++) {
              const socket = connect(`127.0.0.1:${env.TCP_PORT}`);
              await socket.opened;
              sockets.push(socket);
            }
            for (;;) {}
          },
        };
        """,
    )
    assert httpx.get(server.url + "/", timeout=30).status_code == 503
    wait_until(lambda: origin.tcp_connections == origin.tcp_closed == 5)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for "localhost", its own CA: trusted by a process given it as SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TlsServer:
    """On 127.0.0.1: TLS from the first byte (``tls_port``), or plain until the client says
    "starttls" (``plain_port``, answered "go ahead"); then "who" is answered "secure NAME"."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.tls_port, self.plain_port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> tuple[int, int]:
        self._servers = [
            await asyncio.start_server(self._secure, "127.0.0.1", 0, ssl=self.context),
            await asyncio.start_server(self._plain, "127.0.0.1", 0),
        ]
        return tuple(int(server.sockets[0].getsockname()[1]) for server in self._servers)  # type: ignore[return-value]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        while line := await reader.readline():
            if line.strip() == b"who":
                writer.write(f"secure {name}\n".encode())
                await writer.drain()
        writer.close()

    async def _secure(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._answer(reader, writer, "from the start")

    async def _plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (await reader.readline()).strip() != b"starttls":
            writer.close()
            return
        writer.write(b"go ahead\n")
        await writer.drain()
        await writer.start_tls(self.context)
        await self._answer(reader, writer, "after starttls")

    def stop(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await settle_transports()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()  # else its self-pipe is collected during a later test: a ResourceWarning there


TLS_WORKER = """
import { connect } from "cloudflare:sockets";

async function line(reader) {
  const { value } = await reader.read();
  return new TextDecoder().decode(value).trim();
}

export default {
  async fetch(request, env) {
    const encoder = new TextEncoder();
    const secure = connect({ hostname: "localhost", port: Number(env.TLS_PORT) }, { secureTransport: "on" });
    const w1 = secure.writable.getWriter();
    await w1.write(encoder.encode("who\\n"));
    const first = await line(secure.readable.getReader());
    await secure.close();

    const plain = connect(`127.0.0.1:${env.PLAIN_PORT}`, { secureTransport: "starttls" });
    await plain.opened;
    const w2 = plain.writable.getWriter();
    await w2.write(encoder.encode("starttls\\n"));
    const ready = await line(plain.readable.getReader());
    w2.releaseLock();
    const upgraded = plain.startTls({ expectedServerHostname: "localhost" });  // the certificate's name
    const w3 = upgraded.writable.getWriter();
    await w3.write(encoder.encode("who\\n"));
    const second = await line(upgraded.readable.getReader());
    let twice = "";
    try { plain.startTls(); } catch (error) { twice = error.message; }
    await upgraded.close();
    return Response.json({ first, ready, second, upgraded: upgraded.upgraded, twice });
  },
};
"""


def test_tls_from_the_start_and_after_starttls(tmp_path: Path, monkeypatch: Any) -> None:
    cert, key = _self_signed(tmp_path)
    tls = TlsServer(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the node trusts this certificate, as a CA
    project = tmp_path / "project"
    project.mkdir()
    (project / "worker.js").write_text(TLS_WORKER)
    server = ServiceProcess(
        ["dev", "worker.js", "--no-watch", "--var", f"TLS_PORT:{tls.tls_port}", "--var", f"PLAIN_PORT:{tls.plain_port}"],
        project,
    )
    try:
        answer = httpx.get(server.url + "/", timeout=30)
        assert answer.status_code == 200, answer.text + server.output
        assert answer.json() == {
            "first": "secure from the start",
            "ready": "go ahead",
            "second": "secure after starttls",
            "upgraded": True,
            "twice": "startTls() can only be called once.",
        }
    finally:
        server.stop()
        tls.stop()
