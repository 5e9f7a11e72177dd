"""Outgoing HTTP for workers' fetch(): one aiohttp client per runtime process, with an SSRF guard.

A worker is hostile: by default it may not reach loopback, private,
link-local, shared or otherwise non-global addresses (the cloud metadata
service at 169.254.169.254 among them). The guard checks the addresses a host
name resolves to, inside the connector's resolver, so the address checked is
the address connected to (no window for DNS rebinding), and checks literal
addresses before connecting. Redirects are followed here, one hop at a time,
so every hop passes the same check.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from warren.runtime.bodies import BodySource

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import AbstractResolver

MAX_REDIRECTS = 20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Connection-level headers a worker may not set on a subrequest; aiohttp sets them itself.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host", "content-length"}
)
_DECODED = frozenset({"gzip", "deflate", "br", "x-gzip"})
READ_CHUNK = 256 * 1024

# The handshake's own headers: aiohttp writes them for an outgoing WebSocket.
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}
)
WEBSOCKET_MESSAGE_LIMIT = 1024 * 1024  # as on Workers, either way

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class SubrequestError(Exception):
    """The subrequest failed; the worker's fetch() rejects with this message (a TypeError, as on Workers)."""


class SubrequestRefused(OSError):
    """The destination is not reachable from workers under this node's policy."""


@dataclass(frozen=True)
class SubrequestPolicy:
    """Where workers' subrequests may go: public addresses, plus these networks (or everything)."""

    allow_private: bool = False  # warren dev: like wrangler dev, a local origin is the usual target
    allowed_networks: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, allow_private: bool, networks: Sequence[str] = ()) -> SubrequestPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(net, strict=False) for net in networks))

    def permits(self, address: Address) -> bool:
        if self.allow_private:
            return True
        if isinstance(address, ipaddress.IPv6Address):
            # Addresses that embed an IPv4 address are judged by it.
            embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
            if embedded is not None:
                return self.permits(embedded)
        if any(address in net for net in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def to_args(self) -> list[str]:
        args = ["--allow-private-subrequests"] if self.allow_private else []
        for net in self.allowed_networks:
            args += ["--allow-subrequests-to", str(net)]
        return args


def _refusal(host: str) -> str:
    return (
        f"Subrequest to {host} refused: workers may not reach loopback, private or link-local addresses "
        "(warren serve --allow-subrequests-to CIDR permits a network)."
    )


def _guarded_resolver(policy: SubrequestPolicy) -> AbstractResolver:
    """A resolver that drops the addresses ``policy`` refuses (and fails when none is left)."""
    # aiohttp is imported on a runtime process's first subrequest, not at its start
    # (~0.3 s): a process restarting after a crash is serving again that much sooner.
    from aiohttp.abc import AbstractResolver, ResolveResult
    from aiohttp.resolver import DefaultResolver

    class GuardedResolver(AbstractResolver):
        def __init__(self) -> None:
            self._inner = DefaultResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            results = await self._inner.resolve(host, port, family)
            permitted = [r for r in results if policy.permits(ipaddress.ip_address(r["host"]))]
            if not permitted:
                raise SubrequestRefused(_refusal(host))
            return permitted

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()


@dataclass
class FetchResponse:
    status: int
    status_text: str
    headers: list[tuple[str, str]]
    url: str
    redirected: bool
    body: BodySource | None


CONNECT_TIMEOUT_S = 15.0


class TcpConnection:
    """A worker's TCP connection (``cloudflare:sockets``); read as a host body, closed with it."""

    def __init__(self, reader: Any, writer: Any, hostname: str) -> None:
        self.reader = reader
        self.writer = writer
        self.hostname = hostname
        self.closed = False

    @property
    def remote_address(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else ""

    @property
    def local_address(self) -> str:
        own = self.writer.get_extra_info("sockname")
        return f"{own[0]}:{own[1]}" if own else ""

    async def read(self, max_bytes: int) -> bytes:
        if self.closed:
            return b""
        try:
            return bytes(await self.reader.read(max_bytes))
        except (OSError, ValueError) as exc:
            self.close()
            raise SubrequestError(f"Network connection lost: {exc}") from None

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise SubrequestError("The socket is closed.")
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            self.close()
            raise SubrequestError(f"Network connection lost: {exc}") from None

    def end_writing(self) -> None:
        if not self.closed and self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                pass

    async def start_tls(self, expected_hostname: str | None = None) -> None:
        import ssl

        name = expected_hostname or self.hostname
        try:
            await self.writer.start_tls(ssl.create_default_context(), server_hostname=name)
        except (OSError, ssl.SSLError, RuntimeError) as exc:
            self.close()
            raise SubrequestError(f"TLS with {name} failed: {exc}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


@dataclass
class OriginSocket:
    """A WebSocket a worker opened with fetch() (``Upgrade: websocket``) and its 101's headers."""

    socket: aiohttp.ClientWebSocketResponse
    headers: list[tuple[str, str]]


class _ResponseBody:
    """An origin's response body, read as the worker (or the client) pulls it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response: aiohttp.ClientResponse | None = response

    async def read(self, max_bytes: int) -> bytes:
        import aiohttp

        if self._response is None:
            return b""
        try:
            data = await self._response.content.read(max_bytes)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.close()
            raise SubrequestError(f"Network connection lost: {exc}") from None
        if not data:
            self.close()
        return data

    def close(self) -> None:
        if self._response is not None:
            self._response.release()
            self._response = None


class Fetcher:
    """The runtime process's HTTP client; one connection pool, the node's policy."""

    def __init__(self, policy: SubrequestPolicy) -> None:
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=None if self.policy.allow_private else _guarded_resolver(self.policy),
                limit=256,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # a proxy from the environment would bypass the guard
                timeout=aiohttp.ClientTimeout(total=None, connect=15, sock_read=120),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # tenants share the client: never their cookies
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SubrequestError(f"Fetch API cannot load {url!r}: only http: and https: URLs are supported.")
        host = (parts.hostname or "").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: judged by what it resolves to
        if not self.policy.permits(address):
            raise SubrequestError(_refusal(host))

    async def fetch(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | BodySource | None,
        redirect: str = "follow",
    ) -> FetchResponse:
        """Send the request, following redirects as ``redirect`` says (follow, manual, error)."""
        redirected = False
        for _ in range(MAX_REDIRECTS + 1):
            self._check(url)
            response = await self._send(method, url, headers, body)
            location = response.headers.get("location")
            if response.status not in REDIRECT_STATUSES or location is None or redirect == "manual":
                return self._result(response, url, redirected)
            response.release()
            if redirect == "error":
                raise SubrequestError(f"Fetch to {url} was redirected, and redirect mode is 'error'.")
            if (response.status == 303 and method != "HEAD") or (response.status in (301, 302) and method == "POST"):
                method = "GET"
                body = None
                headers = [(n, v) for n, v in headers if not n.lower().startswith("content-")]
            elif body is not None and not isinstance(body, bytes):
                raise SubrequestError("Cannot follow a redirect with a streamed request body.")
            url = urljoin(url, location)
            redirected = True
        raise SubrequestError(f"Too many redirects fetching {url}.")

    async def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | BodySource | None
    ) -> aiohttp.ClientResponse:

        data: Any = body if isinstance(body, bytes) or body is None else _stream(body)
        sent = [(name, value) for name, value in headers if name.lower() not in _HOP_BY_HOP]
        with _network_errors():
            return await self._client().request(
                method, url, headers=sent, data=data, allow_redirects=False, skip_auto_headers=("User-Agent",)
            )

    async def websocket(self, url: str, headers: list[tuple[str, str]]) -> FetchResponse | OriginSocket:
        """Open a WebSocket to ``url`` (http: or https:, as fetch() takes it), through the same guard.

        An origin that answers the handshake with anything but 101 gives that status and
        its headers, without a body (the client library does not keep it)."""
        import aiohttp

        self._check(url)
        protocols: list[str] = []
        sent: list[tuple[str, str]] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == "sec-websocket-protocol":
                protocols += [part.strip() for part in value.split(",") if part.strip()]
            elif lowered not in _HOP_BY_HOP and lowered not in _HANDSHAKE:
                sent.append((name, value))
        with _network_errors():
            try:
                connection = await self._client().ws_connect(
                    url,
                    headers=sent,
                    protocols=protocols,
                    autoping=True,
                    max_msg_size=WEBSOCKET_MESSAGE_LIMIT,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 101:
                    raise SubrequestError(f"The WebSocket handshake with {url} failed: {exc.message}") from None
                answer = [(str(name), str(value)) for name, value in (exc.headers or {}).items()]
                return FetchResponse(exc.status, "", answer, url, False, None)
        response = getattr(connection, "_response", None)
        raw = getattr(response, "raw_headers", ())
        answer = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        return OriginSocket(connection, answer)

    async def connect(self, hostname: str, port: int, tls: bool) -> TcpConnection:
        """A TCP connection for ``cloudflare:sockets``: to an address the policy permits, the one
        checked (a name is resolved once, here, so what was checked is what is connected to)."""
        import asyncio
        import ssl

        if not 0 < port < 65536:
            raise SubrequestError(f"Invalid port {port}: it must be between 1 and 65535.")
        if port == 25:
            raise SubrequestError("Connections to port 25 (SMTP) are not allowed, as on Workers.")
        host = hostname.strip("[]")
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise SubrequestError(f"Network connection failed: cannot resolve {hostname}: {exc}") from None
        addresses = [str(info[4][0]) for info in found]
        permitted = [a for a in addresses if self.policy.permits(ipaddress.ip_address(a.split("%")[0]))]
        if not permitted:
            raise SubrequestError(_refusal(host))
        context = ssl.create_default_context() if tls else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    permitted[0], port, ssl=context, server_hostname=host if tls else None, limit=READ_CHUNK
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise SubrequestError(f"Network connection failed: {exc or type(exc).__name__}") from None
        return TcpConnection(reader, writer, host)

    @staticmethod
    def _result(response: aiohttp.ClientResponse, url: str, redirected: bool) -> FetchResponse:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in _DECODED:
            # aiohttp decoded the body: the headers must describe what the worker reads.
            headers = [(n, v) for n, v in headers if n.lower() not in ("content-encoding", "content-length")]
        empty = response.method == "HEAD" or response.status in (204, 304)
        return FetchResponse(
            status=response.status,
            status_text=response.reason or "",
            headers=headers,
            url=url,
            redirected=redirected,
            body=None if empty else _ResponseBody(response),
        )


@contextlib.contextmanager
def _network_errors() -> Iterator[None]:
    """aiohttp's failures (and the guard's refusals) as the SubrequestError a worker sees."""
    import aiohttp

    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, SubrequestRefused):
            raise SubrequestError(str(exc.os_error)) from None
        raise SubrequestError(f"Network connection failed: {exc}") from None
    except SubrequestRefused as exc:
        raise SubrequestError(str(exc)) from None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise SubrequestError(f"Network connection failed: {exc or type(exc).__name__}") from None


async def _stream(body: BodySource) -> AsyncIterator[bytes]:
    while True:
        chunk = await body.read(READ_CHUNK)
        if not chunk:
            return
        yield chunk
