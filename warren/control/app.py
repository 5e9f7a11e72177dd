"""The control API: a Starlette app over a ``Store``, shaped after Cloudflare's ``/client/v4``.

Every answer, errors included, is the envelope ``{"success", "errors",
"messages", "result"}``; the one exception is a module's raw bytes. Store
failures map to statuses by class: ``InvalidInput`` 400, ``NotFound`` 404,
``Conflict`` 409; anything unexpected is a 500 whose body says nothing more.

Error codes: 10000 authentication, 10001 invalid request, 10002 internal
error, 10003 method not allowed, 10007 not found, 10009 conflict, 10013 too large.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HTTPRoute
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive
from starlette.websockets import WebSocket

from warren import observability
from warren.control import dashboard, migrations, validation
from warren.control import queues as queues_api
from warren.store import SQLiteStore, Store
from warren.store.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from warren.store.model import Account, Deployment, ExpectDeployment, KVNamespace, Route, ScriptInfo, Token, Version
from warren.store.validation import MAX_SCRIPT_BYTES

BASE = "/client/v4"

AUTH_ERROR = 10000
INVALID_REQUEST = 10001
INTERNAL_ERROR = 10002
METHOD_NOT_ALLOWED = 10003
NOT_FOUND = 10007
CONFLICT = 10009
TOO_LARGE = 10013
UPLOAD_ATTEMPTS = 5  # an upload whose script another control plane deploys meanwhile starts again this often

_CODE_BY_STATUS = {
    400: INVALID_REQUEST,
    401: AUTH_ERROR,
    403: AUTH_ERROR,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: CONFLICT,
    413: TOO_LARGE,
}

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An error answer: status, code and a message for the client."""

    def __init__(self, status: int, message: str, code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _CODE_BY_STATUS.get(status, INVALID_REQUEST)
        self.headers = headers


class _BodyTooLarge(Exception):
    pass


def envelope(result: Any = None, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "errors": [], "messages": [], "result": result}, status_code=status)


def error_response(status: int, code: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return JSONResponse(body, status_code=status, headers=headers)


# -- JSON shapes ----------------------------------------------------------------------------


def version_json(version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "number": version.number,
        "script": version.script,
        "main_module": version.main_module,
        "modules": [
            {"name": ref.name, "content_type": ref.content_type, "sha256": ref.sha256, "size": ref.size}
            for ref in version.modules
        ],
        "compatibility_date": version.compatibility_date,
        "bindings": list(version.bindings),
        "limits": {key: value for key, value in version.limits.items() if key != migrations.STATE_KEY},
        # Durable Object classes after the script's migrations, as this version carries them (or null)
        "migration_tag": migrations.tag_of(version),
        "durable_objects": migrations.public(migrations.state_of(version)),
        "content_hash": version.content_hash,
        "created_on": version.created_on,
        "author": version.author_token_id,
        "message": version.message,
    }


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "script": deployment.script,
        "versions": [{"version_id": version_id, "percentage": share} for version_id, share in deployment.versions],
        "created_on": deployment.created_on,
        "author": deployment.author_token_id,
        "message": deployment.message,
    }


def script_json(info: ScriptInfo, migration_tag: str | None = None) -> dict[str, Any]:
    return {
        "id": info.name,
        "created_on": info.created_on,
        "modified_on": info.modified_on,
        "etag": info.etag,
        "migration_tag": migration_tag,  # the current deployment's applied Durable Object migration tag
    }


def route_json(route: Route) -> dict[str, Any]:
    return {"id": route.id, "pattern": route.pattern, "script": route.script}


def namespace_json(namespace: KVNamespace) -> dict[str, Any]:
    return {"id": namespace.id, "title": namespace.title}


# -- request helpers ------------------------------------------------------------------------


def _check_length(request: Request, limit: int) -> None:
    """Refuse before reading when the client says up front that the body is too large."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {limit}")


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that counts body bytes and fails past ``limit``, for bodies without Content-Length."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return wrapped


async def _body(request: Request, limit: int = validation.MAX_JSON_BODY) -> bytes:
    _check_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_object(request: Request) -> dict[str, Any]:
    return validation.json_object(await _body(request))


@dataclass(frozen=True)
class Upload:
    """An upload's parsed metadata and modules (name -> (content type, bytes))."""

    metadata: validation.UploadMetadata
    modules: dict[str, tuple[str, bytes]]


async def _read_upload(request: Request) -> Upload:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise ApiError(400, "an upload is multipart/form-data: a 'metadata' part and one part per module")
    _check_length(request, validation.MAX_UPLOAD_BODY)
    limited = Request(request.scope, _limited(request.receive, validation.MAX_UPLOAD_BODY))
    metadata: bytes | None = None
    modules: dict[str, tuple[str, bytes]] = {}
    total = 0
    try:
        async with limited.form(
            max_files=validation.MAX_MODULES + 1,
            max_fields=validation.MAX_MODULES + 1,
            # Parts without a filename are held in memory; this bounds each, the count above bounds their number.
            max_part_size=MAX_SCRIPT_BYTES + validation.MAX_METADATA,
        ) as form:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    data = value.encode("utf-8")
                    filename, declared, text_part = None, None, True
                else:
                    data = await value.read()
                    filename, declared, text_part = value.filename, value.content_type, False
                if key == "metadata":
                    if metadata is not None:
                        raise ApiError(400, "the upload has two 'metadata' parts")
                    if len(data) > validation.MAX_METADATA:
                        raise ApiError(413, f"the metadata part is larger than {validation.MAX_METADATA} bytes")
                    metadata = data
                    continue
                name = filename or key
                if name in modules:
                    raise ApiError(400, f"the upload has two modules named {name!r}")
                total += len(data)
                if total > MAX_SCRIPT_BYTES:
                    raise ApiError(413, f"the modules add up to more than {MAX_SCRIPT_BYTES} bytes")
                content_type = validation.module_content_type(name, declared, text_part=text_part)
                modules[name] = (content_type, data)
    except _BodyTooLarge:
        raise ApiError(413, f"the upload is larger than {validation.MAX_UPLOAD_BODY} bytes") from None
    if metadata is None:
        raise ApiError(400, "the upload has no 'metadata' part")
    if not modules:
        raise ApiError(400, "the upload has no modules: add one part per module")
    return Upload(validation.upload_metadata(metadata), modules)


# -- the app ----------------------------------------------------------------------------------


def create_app(store: Store, *, manage_store: bool = True) -> Starlette:
    """The control API over ``store``.

    With ``manage_store`` (the default) the app opens the store at start-up and
    closes it at shutdown (ASGI lifespan); otherwise the caller does both.
    """

    async def token_of(request: Request) -> Token:
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        token = await store.authenticate(secret.strip()) if scheme.lower() == "bearer" and secret.strip() else None
        if token is None:
            raise ApiError(401, "Authentication error", headers={"WWW-Authenticate": "Bearer"})
        return token

    async def account_token(request: Request) -> Token:
        token = await token_of(request)
        # The same answer whether or not the account exists, so ids cannot be probed.
        if request.path_params["a"] != token.account_id:
            raise ApiError(403, "Authentication error")
        return token

    async def script_or_404(account_id: str, name: str) -> ScriptInfo:
        info = await store.get_script(account_id, name)
        if info is None:
            raise ApiError(404, f"script {name!r} not found")
        return info

    async def version_or_404(account_id: str, name: str, version_id: str) -> Version:
        version = await store.get_version(account_id, name, version_id)
        if version is None:
            raise ApiError(404, f"version {version_id!r} of script {name!r} not found")
        return version

    # -- account and token --

    async def list_accounts(request: Request) -> Response:
        token = await token_of(request)
        account: Account | None = await store.get_account(token.account_id)
        return envelope([{"id": account.id, "name": account.name}] if account else [])

    async def verify_token(request: Request) -> Response:
        token = await token_of(request)
        return envelope({"id": token.id, "status": "active", "account_id": token.account_id})

    # -- scripts and versions --

    async def deployed_version(account_id: str, name: str) -> Version | None:
        deployment = await store.current_deployment(account_id, name)
        return await store.get_version(account_id, name, deployment.main_version_id) if deployment else None

    async def class_state(
        account_id: str, name: str, meta: validation.UploadMetadata, deploy: bool, deployment: Deployment | None
    ) -> dict[str, Any]:
        """The upload's limits with the script's Durable Object class state after its migrations.

        ``deployment`` is the script's current one, which the state is derived from.
        """
        migrations.check_user_limits(meta.limits)
        deployed = await store.get_version(account_id, name, deployment.main_version_id) if deployment else None
        current = migrations.state_of(deployed)
        if meta.migrations is None:
            state = current
        elif not deploy:
            raise ApiError(400, "migrations must be applied by a deployment (PUT the script), not a version upload")
        else:
            state = migrations.apply(current, meta.migrations)
            if any(step["renamed_classes"] for step in meta.migrations.steps) and not isinstance(store, SQLiteStore):
                # Placed across nodes, an object's storage is a log keyed by its class's name.
                raise ApiError(400, "renamed_classes is not supported yet with a NATS store")
            await check_deleted_unbound(account_id, name, migrations.deleted_now(current, state))
        if state is None:
            return meta.limits
        migrations.check_bindings(state, meta.bindings, name)
        return {**meta.limits, migrations.STATE_KEY: state}

    async def check_deleted_unbound(account_id: str, name: str, deleted: set[str]) -> None:
        if not deleted:
            return
        for info in await store.list_scripts(account_id):
            if info.name == name:
                continue
            version = await deployed_version(account_id, info.name)
            for binding in version.bindings if version is not None else ():
                if (
                    binding.get("type") == "durable_object_namespace"
                    and binding.get("script_name") == name
                    and binding.get("class_name") in deleted
                ):
                    raise ApiError(
                        400,
                        f"Cannot apply deleted_classes migration to class {binding['class_name']}: the worker "
                        f"{info.name} still binds it ({binding.get('name')}); remove that binding first",
                    )

    # The class state an upload writes is derived from the deployed version's, so two uploads of one
    # script must not both start from the same one (both would pass the migration tag precondition).
    # Within this process a lock per script orders them; across processes sharing the store, the
    # store's compare-and-set on the current deployment (ExpectDeployment) makes the later one start again.
    upload_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    def upload_lock(account_id: str, name: str) -> asyncio.Lock:
        lock = upload_locks.get((account_id, name))
        if lock is None:
            lock = upload_locks[(account_id, name)] = asyncio.Lock()
        return lock

    async def upload(request: Request, deploy: bool) -> tuple[Token, Version, Deployment | None]:
        token = await account_token(request)
        parsed = await _read_upload(request)  # outside the lock: a slow client holds up nobody else
        meta = parsed.metadata
        name = request.path_params["name"]
        await queues_api.check_bindings(store, token.account_id, meta.bindings)
        async with upload_lock(token.account_id, name):
            for _ in range(UPLOAD_ATTEMPTS):
                current = await store.current_deployment(token.account_id, name)
                limits = await class_state(token.account_id, name, meta, deploy, current)
                try:
                    version, deployment = await store.upload_version(
                        token.account_id,
                        name,
                        meta.main_module,
                        parsed.modules,
                        meta.compatibility_date,
                        meta.bindings,
                        limits,
                        token.id,
                        meta.message,
                        deploy=deploy,
                        expect=ExpectDeployment(current.id if current else None) if deploy else None,
                    )
                except PreconditionFailed:
                    continue  # another control plane deployed the script meanwhile: check against that
                return token, version, deployment
        raise ApiError(409, "the script is being changed by other uploads; try again")

    async def put_script(request: Request) -> Response:
        token, version, deployment = await upload(request, deploy=True)
        info = await script_or_404(token.account_id, version.script)
        result = script_json(info, migrations.tag_of(version))
        result["version_id"] = version.id
        result["deployment_id"] = deployment.id if deployment else None
        return envelope(result)

    async def list_scripts(request: Request) -> Response:
        token = await account_token(request)
        scripts = await store.list_scripts(token.account_id)
        tags = [migrations.tag_of(await deployed_version(token.account_id, info.name)) for info in scripts]
        return envelope([script_json(info, tag) for info, tag in zip(scripts, tags, strict=True)])

    async def get_script(request: Request) -> Response:
        token = await account_token(request)
        info = await script_or_404(token.account_id, request.path_params["name"])
        return envelope(script_json(info, migrations.tag_of(await deployed_version(token.account_id, info.name))))

    async def delete_script(request: Request) -> Response:
        token = await account_token(request)
        name = request.path_params["name"]
        if not await store.delete_script(token.account_id, name):
            raise ApiError(404, f"script {name!r} not found")
        await store.put_schedules(token.account_id, name, [])  # its cron triggers go with it, as on Workers
        return envelope({"id": name})

    async def post_version(request: Request) -> Response:
        _, version, _ = await upload(request, deploy=False)
        return envelope(version_json(version))

    async def list_versions(request: Request) -> Response:
        token = await account_token(request)
        name = request.path_params["name"]
        # Versions outlive a deleted script, so the archive is listed even then.
        versions = await store.list_versions(token.account_id, name)
        if not versions:
            raise ApiError(404, f"script {name!r} not found")
        return envelope([version_json(version) for version in versions])

    async def get_version(request: Request) -> Response:
        token = await account_token(request)
        params = request.path_params
        return envelope(version_json(await version_or_404(token.account_id, params["name"], params["version"])))

    async def get_module(request: Request) -> Response:
        token = await account_token(request)
        params = request.path_params
        version = await version_or_404(token.account_id, params["name"], params["version"])
        ref = version.module(params["module"])
        data = await store.get_blob(ref.sha256) if ref else None
        if ref is None or data is None:
            raise ApiError(404, f"version {version.id!r} has no module {params['module']!r}")
        headers = {"ETag": f'"{ref.sha256}"', "X-Content-Type-Options": "nosniff"}
        return Response(data, headers=headers, media_type=ref.content_type)

    # -- deployments --

    async def post_deployment(request: Request) -> Response:
        token = await account_token(request)
        versions, message = validation.deployment(await _json_object(request))
        name = request.path_params["name"]
        deployment = await store.create_deployment(token.account_id, name, versions, token.id, message)
        return envelope(deployment_json(deployment))

    async def list_deployments(request: Request) -> Response:
        token = await account_token(request)
        name = request.path_params["name"]
        await script_or_404(token.account_id, name)
        return envelope([deployment_json(d) for d in await store.list_deployments(token.account_id, name)])

    # -- secrets --

    async def put_secret(request: Request) -> Response:
        token = await account_token(request)
        secret_name, text = validation.secret(await _json_object(request))
        await store.put_secret(token.account_id, request.path_params["name"], secret_name, text)
        return envelope({"name": secret_name, "type": "secret_text"})

    async def list_secrets(request: Request) -> Response:
        token = await account_token(request)
        name = request.path_params["name"]
        await script_or_404(token.account_id, name)
        names = await store.list_secret_names(token.account_id, name)
        return envelope([{"name": secret_name, "type": "secret_text"} for secret_name in names])

    async def delete_secret(request: Request) -> Response:
        token = await account_token(request)
        name, secret_name = request.path_params["name"], request.path_params["secret"]
        await script_or_404(token.account_id, name)
        if not await store.delete_secret(token.account_id, name, secret_name):
            raise ApiError(404, f"script {name!r} has no secret {secret_name!r}")
        return envelope({"name": secret_name})

    # -- routes --

    async def post_route(request: Request) -> Response:
        token = await account_token(request)
        pattern, script = validation.route(await _json_object(request))
        try:
            route = await store.create_route(token.account_id, pattern, script)
        except NotFound as exc:
            # The script is named in the body, not the path: a bad request rather than a missing resource.
            raise ApiError(400, str(exc)) from None
        return envelope(route_json(route))

    async def list_routes(request: Request) -> Response:
        token = await account_token(request)
        return envelope([route_json(route) for route in await store.list_routes(token.account_id)])

    async def delete_route(request: Request) -> Response:
        token = await account_token(request)
        route_id = request.path_params["id"]
        if not await store.delete_route(token.account_id, route_id):
            raise ApiError(404, f"route {route_id!r} not found")
        return envelope({"id": route_id})

    # -- KV namespaces --

    async def post_namespace(request: Request) -> Response:
        token = await account_token(request)
        title = validation.kv_namespace(await _json_object(request))
        return envelope(namespace_json(await store.create_kv_namespace(token.account_id, title)))

    async def list_namespaces(request: Request) -> Response:
        token = await account_token(request)
        return envelope([namespace_json(ns) for ns in await store.list_kv_namespaces(token.account_id)])

    # -- preview (the dashboard's editor): runs edited code once, never deploys it --

    previewer = dashboard.Previewer()

    async def post_preview(request: Request) -> Response:
        await account_token(request)
        body = validation.json_object(await _body(request, dashboard.MAX_PREVIEW_REQUEST))
        try:
            return envelope(await previewer.run(body))
        except dashboard.PreviewBusy as exc:
            raise ApiError(429, str(exc), headers={"Retry-After": "1"}) from None

    async def delete_namespace(request: Request) -> Response:
        token = await account_token(request)
        namespace_id = request.path_params["id"]
        if not await store.delete_kv_namespace(token.account_id, namespace_id):
            raise ApiError(404, f"namespace {namespace_id!r} not found")
        await store.kv_purge(namespace_id)  # its keys go with it
        return envelope({"id": namespace_id})

    # -- logs and analytics (warren.observability; docs/control-plane.md, "Logs and analytics") --

    tails = observability.TailRegistry()

    async def post_tail(request: Request) -> Response:
        token = await account_token(request)
        name = request.path_params["name"]
        await script_or_404(token.account_id, name)
        try:
            tail = tails.create(token.account_id, name)
        except ValueError as exc:
            raise ApiError(429, str(exc)) from None
        scheme = "wss" if request.url.scheme == "https" else "ws"
        url = f"{scheme}://{request.url.netloc}{request.url.path.rstrip('/')}/{tail.id}/ws"
        return envelope({"id": tail.id, "url": url, "expires_at": tail.expires_iso})

    async def delete_tail(request: Request) -> Response:
        token = await account_token(request)
        params = request.path_params
        if not tails.delete(token.account_id, params["name"], params["id"]):
            raise ApiError(404, f"tail {params['id']!r} not found")
        return envelope({"id": params["id"]})

    async def tail_socket(websocket: WebSocket) -> None:
        # No Authorization here (browsers cannot send one): the tail's random id is the capability.
        params = websocket.path_params
        tail = tails.get(params["a"], params["name"], params["id"])
        if tail is None:
            await websocket.close(code=1008)  # before the handshake: the client sees HTTP 403
            return
        since = int(time.time() * 1000)  # before accepting: a client that saw the socket open sees what follows
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="trace-v1" if "trace-v1" in offered else None)  # wrangler's

        async def receive() -> str | None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return None
                if message.get("text") is not None:
                    return str(message["text"])
                if message.get("bytes") is not None:
                    return bytes(message["bytes"]).decode("utf-8", "replace")

        code, reason = await observability.stream_tail(store, tail, receive, websocket.send_text, since)
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(code, reason)

    async def get_analytics(request: Request) -> Response:
        token = await account_token(request)
        text = request.query_params.get("minutes", "60")
        if not text.isdigit() or not 1 <= int(text) <= observability.analytics.MAX_MINUTES:
            raise ApiError(400, f"minutes is a whole number from 1 to {observability.analytics.MAX_MINUTES}")
        minutes, now_ms = int(text), int(time.time() * 1000)
        first, _ = observability.analytics.window(minutes, now_ms)
        rows = await store.event_stats(token.account_id, first)
        scripts = [info.name for info in await store.list_scripts(token.account_id)]
        return envelope(observability.analytics_result(rows, scripts, minutes, now_ms))

    account = BASE + "/accounts/{a}"
    script = account + "/workers/scripts/{name}"
    routes = [
        _resource(BASE + "/accounts", GET=list_accounts),
        _resource(BASE + "/user/tokens/verify", GET=verify_token),
        _resource(account + "/workers/scripts", GET=list_scripts),
        _resource(script, GET=get_script, PUT=put_script, DELETE=delete_script),
        _resource(script + "/versions", GET=list_versions, POST=post_version),
        _resource(script + "/versions/{version}", GET=get_version),
        _resource(script + "/versions/{version}/modules/{module:path}", GET=get_module),
        _resource(script + "/deployments", GET=list_deployments, POST=post_deployment),
        _resource(script + "/secrets", GET=list_secrets, PUT=put_secret),
        _resource(script + "/secrets/{secret}", DELETE=delete_secret),
        _resource(account + "/workers/routes", GET=list_routes, POST=post_route),
        _resource(account + "/workers/routes/{id}", DELETE=delete_route),
        _resource(account + "/storage/kv/namespaces", GET=list_namespaces, POST=post_namespace),
        _resource(account + "/storage/kv/namespaces/{id}", DELETE=delete_namespace),
        *_kv_data_routes(store, account_token, account),
        _resource(account + "/workers/preview", POST=post_preview),
        # -- logs and analytics (warren.observability) --
        _resource(script + "/tails", POST=post_tail),
        _resource(script + "/tails/{id}", DELETE=delete_tail),
        WebSocketRoute(script + "/tails/{id}/ws", tail_socket),
        _resource(account + "/workers/analytics", GET=get_analytics),
        *dashboard.routes(),
        *queues_api.routes(store, account_token, script_or_404),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_store:
            try:
                yield
            finally:
                await stop_app(app)
            return
        await store.open()
        try:
            yield
        finally:
            await stop_app(app)
            await store.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            InvalidInput: _store_error(400),
            NotFound: _store_error(404),
            Conflict: _store_error(409),
            ClientDisconnect: _disconnected,
            Exception: _internal_error,
        },
    )
    # What stop_app stops: the servers here run without ASGI lifespan, so their owner calls it.
    app.state.on_stop = [previewer.stop]

    async def close_tails() -> None:
        tails.close_all()

    app.state.on_stop.append(close_tails)
    return app


async def stop_app(app: Starlette) -> None:
    """Stop what the app started on demand (the preview runtime process); the store is the caller's."""
    for stop in getattr(app.state, "on_stop", []):
        await stop()


def _resource(path: str, **handlers: Handler) -> HTTPRoute:
    """One route per path with all its methods, so a 405 lists every allowed one."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return HTTPRoute(path, dispatch, methods=list(handlers))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own: unknown paths (404), wrong methods (405), malformed multipart (400).
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {404: "no such endpoint", 405: f"method {request.method} not allowed here"}.get(status, exc.detail)
    return error_response(status, _CODE_BY_STATUS.get(status, INVALID_REQUEST), message, exc.headers)


def _store_error(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        return error_response(status, _CODE_BY_STATUS[status], str(exc))

    return handle


async def _disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody is listening; this only ends the request quietly


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the server logs the traceback; the client gets none.
    return error_response(500, INTERNAL_ERROR, "internal error")


async def create_account_with_token(store: Store, name: str) -> tuple[Account, str]:
    """Create an account and its first token, named "default"; returns the token's secret (shown once).

    For ``warren control account create NAME``: a local admin action on the
    store, not an API call. The store must be open.
    """
    account = await store.create_account(name)
    _, secret = await store.create_token(account.id, "default")
    return account, secret


# -- KV data (warren.bindings.kv): Cloudflare's /storage/kv/namespaces/{id}/values|keys|metadata|bulk --

MAX_BULK_PAIRS = 10_000
MAX_BULK_BODY = 100 * 1024 * 1024


def _kv_data_routes(store: Store, account_token: Callable[[Request], Awaitable[Token]], base: str) -> list[HTTPRoute]:
    """Keys and values of an account's namespaces. Writes are stamped like a node's (writer
    "control") and reach nodes' caches through the store's change notifications."""
    import base64
    import binascii
    import json

    from warren.bindings import kv

    data = kv.KVData(store, "control")

    async def namespace_of(request: Request) -> str:
        token = await account_token(request)
        namespace_id = str(request.path_params["id"])
        if not any(ns.id == namespace_id for ns in await store.list_kv_namespaces(token.account_id)):
            raise ApiError(404, f"namespace {namespace_id!r} not found")
        return namespace_id

    def invalid(error: kv.KVInvalid) -> ApiError:
        return ApiError(error.status, error.message)

    async def get_value(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        try:
            record = await data.get(namespace_id, request.path_params["key"])
        except kv.KVInvalid as error:
            raise invalid(error) from None
        if record is None:
            raise ApiError(404, "key not found")
        headers = {"X-Content-Type-Options": "nosniff"}
        if record.expiration is not None:
            headers["Expiration"] = str(record.expiration)
        return Response(record.value or b"", headers=headers, media_type="application/octet-stream")

    async def put_value(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        metadata: str | None = None
        if media_type == "multipart/form-data":
            # As Cloudflare's API: a `value` part and a `metadata` part (JSON).
            _check_length(request, kv.MAX_VALUE_BYTES + 64 * 1024)
            async with request.form(max_files=2, max_fields=2, max_part_size=kv.MAX_VALUE_BYTES + 1) as form:
                part = form.get("value")
                if part is None:
                    raise ApiError(400, "the multipart body has no 'value' part")
                value = part.encode("utf-8") if isinstance(part, str) else await part.read()
                found = form.get("metadata")
                if found is not None:
                    metadata = found if isinstance(found, str) else (await found.read()).decode("utf-8", "replace")
        else:
            value = await _body(request, kv.MAX_VALUE_BYTES + 1)
        query = request.query_params
        try:
            await data.put(
                namespace_id,
                request.path_params["key"],
                value,
                metadata=metadata,
                expiration=query.get("expiration"),
                expiration_ttl=query.get("expiration_ttl"),
            )
        except kv.KVInvalid as error:
            raise invalid(error) from None
        return envelope({})

    async def delete_value(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        try:
            await data.delete(namespace_id, request.path_params["key"])
        except kv.KVInvalid as error:
            raise invalid(error) from None
        return envelope({})

    async def get_metadata(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        try:
            record = await data.get(namespace_id, request.path_params["key"])
        except kv.KVInvalid as error:
            raise invalid(error) from None
        if record is None:
            raise ApiError(404, "key not found")
        return envelope(json.loads(record.metadata) if record.metadata is not None else None)

    async def list_keys(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        query = request.query_params
        try:
            keys, cursor = await data.list(namespace_id, query.get("prefix"), query.get("limit"), query.get("cursor"))
        except kv.KVInvalid as error:
            raise invalid(error) from None
        body = {
            "success": True,
            "errors": [],
            "messages": [],
            "result": [kv.key_json(info) for info in keys],
            "result_info": {"count": len(keys), "cursor": cursor or ""},
        }
        return JSONResponse(body)

    async def bulk_body(request: Request) -> list[Any]:
        try:
            items = json.loads(await _body(request, MAX_BULK_BODY))
        except ValueError:
            raise ApiError(400, "the body must be a JSON array") from None
        if not isinstance(items, list):
            raise ApiError(400, "the body must be a JSON array")
        if len(items) > MAX_BULK_PAIRS:
            raise ApiError(400, f"a bulk request takes at most {MAX_BULK_PAIRS} keys; this one has {len(items)}")
        return items

    async def bulk_put(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        writes = []
        now = data.clock()
        # Every pair is checked before any is written: a refused request writes nothing.
        for index, item in enumerate(await bulk_body(request), 1):
            try:
                if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                    raise kv.KVInvalid(400, "each pair is an object with a string 'key' and a string 'value'")
                key = kv.check_key(item.get("key"))
                text = item["value"]
                if item.get("base64") is True:
                    try:
                        value = base64.b64decode(text, validate=True)
                    except (binascii.Error, ValueError):
                        raise kv.KVInvalid(400, "'value' is not valid base64") from None
                else:
                    value = text.encode("utf-8", "surrogatepass")
                kv.check_value(value)
                metadata = json.dumps(item["metadata"]) if item.get("metadata") is not None else None
                expires = kv.expiration_of(item.get("expiration"), item.get("expiration_ttl"), now)
                writes.append((key, data.record(value, kv.check_metadata(metadata), expires)))
            except kv.KVInvalid as error:
                raise ApiError(error.status, f"pair #{index}: {error.message}") from None
        await store.kv_put_many(namespace_id, writes)
        return envelope({"successful_key_count": len(writes), "unsuccessful_keys": []})

    async def bulk_delete(request: Request) -> Response:
        namespace_id = await namespace_of(request)
        writes = []
        for index, item in enumerate(await bulk_body(request), 1):
            name = item.get("key") if isinstance(item, dict) else item
            try:
                writes.append((kv.check_key(name), data.record(None)))
            except kv.KVInvalid as error:
                raise ApiError(error.status, f"key #{index}: {error.message}") from None
        await store.kv_put_many(namespace_id, writes)
        return envelope({"successful_key_count": len(writes), "unsuccessful_keys": []})

    namespace = base + "/storage/kv/namespaces/{id}"
    return [
        _resource(namespace + "/values/{key:path}", GET=get_value, PUT=put_value, DELETE=delete_value),
        _resource(namespace + "/metadata/{key:path}", GET=get_metadata),
        _resource(namespace + "/keys", GET=list_keys),
        _resource(namespace + "/bulk", PUT=bulk_put, DELETE=bulk_delete),
        _resource(namespace + "/bulk/delete", POST=bulk_delete),
    ]
