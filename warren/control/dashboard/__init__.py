"""The dashboard: a web UI for one account, served by the control plane at ``/`` and ``/dashboard/``.

Owns: serving the built static files in ``static/`` (built from
``scripts/dashboard/`` by ``scripts/build-dashboard.sh``; never edited by
hand) with their security headers, and the preview runner behind
``POST /client/v4/accounts/{a}/workers/preview`` (``preview.Previewer``).

The browser app talks only to the public ``/client/v4`` API with the token the
user types (kept in the tab's sessionStorage); this package grants it nothing
more. May call: warren.server.supervisor and warren.runtime (previews only, in
a runtime process of their own, trust level "untrusted"). Must not touch: the
store (previews are never saved or deployed), edge routing.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from warren.control.dashboard.preview import MAX_PREVIEW_REQUEST, PreviewBusy, Previewer

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"

_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,300}")
_IMMUTABLE = "public, max-age=31536000, immutable"  # chunks/ names carry a content hash
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The editor chunk is ~500 KB and ~160 KB gzipped; compressed once per file version, kept in memory.
_gzipped: dict[Path, tuple[int, bytes, str]] = {}  # path -> (mtime_ns, gzip bytes, ETag)


def _security_headers(request: Request) -> dict[str, str]:
    host = request.headers.get("host", "")
    # The live tail is a WebSocket on this same host; CSP's 'self' does not cover ws: everywhere.
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"font-src 'self'; connect-src 'self'{sockets}; frame-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def _file(relative: str) -> Path | None:
    """The static file at ``relative``, or None; never anything outside ``STATIC``."""
    if not relative or any(part in ("", ".", "..") for part in relative.split("/")):
        return None
    path = (STATIC / relative).resolve()
    root = STATIC.resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path


async def _index(request: Request) -> Response:
    index = STATIC / "index.html"
    if not index.is_file():
        return PlainTextResponse(
            "The dashboard is not built: run scripts/build-dashboard.sh.\n", status_code=503
        )
    headers = _security_headers(request)
    headers["Cache-Control"] = "no-cache"
    return FileResponse(index, headers=headers, media_type="text/html; charset=utf-8")


def _compressed(path: Path) -> tuple[bytes, str]:
    mtime = path.stat().st_mtime_ns
    cached = _gzipped.get(path)
    if cached is None or cached[0] != mtime:
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '-gzip"'
        cached = _gzipped[path] = (mtime, gzip.compress(data, 6, mtime=0), etag)
    return cached[1], cached[2]


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def _asset(request: Request) -> Response:
    relative = request.path_params["path"]
    if relative in ("", "index.html"):
        return await _index(request)
    path = _file(relative)
    if path is None:
        return PlainTextResponse("Not found.\n", status_code=404, headers=_security_headers(request))
    headers = _security_headers(request)
    headers["Cache-Control"] = _IMMUTABLE if relative.startswith("chunks/") else "no-cache"
    headers["Vary"] = "Accept-Encoding"
    media_type = _MEDIA_TYPES.get(path.suffix)
    if path.suffix in (".js", ".css", ".md") and _accepts_gzip(request):
        body, etag = _compressed(path)
        headers["ETag"] = etag
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        headers["Content-Encoding"] = "gzip"
        return Response(body, headers=headers, media_type=media_type)
    return FileResponse(path, headers=headers, media_type=media_type)


async def _to_slash(request: Request) -> Response:
    return RedirectResponse(PREFIX + "/", status_code=308)


def routes() -> list[BaseRoute]:
    """The dashboard's pages, for the control-plane app (outside ``/client/v4``)."""
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Route(PREFIX, _to_slash, methods=["GET", "HEAD"]),
        Route(PREFIX + "/{path:path}", _asset, methods=["GET", "HEAD"]),
    ]


__all__ = ["MAX_PREVIEW_REQUEST", "PREFIX", "PreviewBusy", "Previewer", "routes"]
