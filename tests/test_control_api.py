"""The control API: the real Starlette app under uvicorn on 127.0.0.1, a real SQLiteStore, httpx."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from warren.control import create_account_with_token, create_app
from warren.store import SQLiteStore

JS = "application/javascript+module"
V1 = b"export default { fetch() { return new Response('v1') } }"
V2 = b"export default { fetch() { return new Response('v2') } }"
WASM = b"\x00asm\x01\x00\x00\x00\x80\xff"


class Control:
    """``create_app`` served by uvicorn on an event loop in a thread of its own."""

    def __init__(self, store: SQLiteStore, manage_store: bool = True) -> None:
        self.store = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        config = uvicorn.Config(
            create_app(store, manage_store=manage_store),
            host="127.0.0.1",
            port=0,
            lifespan="on",
            log_level="critical",  # the 500 test's traceback is expected; keep the output quiet
        )
        self._server = uvicorn.Server(config)
        self.url = self.run(self._start()) + "/client/v4"

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _start(self) -> str:
        self._serving = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        self._server.should_exit = True
        await self._serving
        await self._loop.shutdown_default_executor()

    def client(self, secret: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def revision(self) -> int:
        result: int = self.run(self.store.revision())
        return result

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class Tenant:
    def __init__(self, control: Control, name: str) -> None:
        account, self.secret = control.run(create_account_with_token(control.store, name))
        self.id: str = account.id
        self.name = name
        self.http = control.client(self.secret)

    def scripts(self, rest: str = "") -> str:
        return f"/accounts/{self.id}/workers/scripts{rest}"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    harness = Control(SQLiteStore(tmp_path / "store.db"))
    yield harness
    harness.stop()


@pytest.fixture
def acme(control: Control) -> Iterator[Tenant]:
    tenant = Tenant(control, "acme")
    yield tenant
    tenant.http.close()


@pytest.fixture
def other(control: Control) -> Iterator[Tenant]:
    tenant = Tenant(control, "other")
    yield tenant
    tenant.http.close()


def parts(metadata: dict[str, Any] | str | None, *modules: tuple[str, bytes, str]) -> list[tuple[str, Any]]:
    """Multipart parts as httpx takes them: metadata as a plain field, modules as files."""
    result: list[tuple[str, Any]] = []
    if metadata is not None:
        text = metadata if isinstance(metadata, str) else json.dumps(metadata)
        result.append(("metadata", (None, text, "application/json")))
    for name, data, content_type in modules:
        result.append((name, (name, data, content_type)))
    return result


def meta(**overrides: Any) -> dict[str, Any]:
    return {"main_module": "index.js", "compatibility_date": "2024-09-23", **overrides}


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    return body["result"]


def error(response: httpx.Response, status: int, code: int | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    [entry] = body["errors"]
    if code is not None:
        assert entry["code"] == code
    message: str = entry["message"]
    assert "Traceback" not in message
    return message


def deploy_v1(tenant: Tenant, script: str = "hello") -> dict[str, Any]:
    result: dict[str, Any] = ok(
        tenant.http.put(tenant.scripts(f"/{script}"), files=parts(meta(message="one"), ("index.js", V1, JS)))
    )
    return result


# -- authentication ---------------------------------------------------------------------------


def test_tokens_and_accounts(control: Control, acme: Tenant, other: Tenant) -> None:
    assert ok(acme.http.get("/accounts")) == [{"id": acme.id, "name": "acme"}]
    verified = ok(acme.http.get("/user/tokens/verify"))
    assert verified["status"] == "active" and verified["account_id"] == acme.id

    with control.client(None) as anonymous:
        response = anonymous.get("/accounts")
        error(response, 401, 10000)
        assert response.headers["www-authenticate"] == "Bearer"
        error(anonymous.get(acme.scripts()), 401, 10000)
    for bad in ["Bearer wrn_" + "x" * 40, f"Bearer {other.secret}x", "Bearer", f"Basic {acme.secret}", acme.secret]:
        with httpx.Client(base_url=control.url, headers={"Authorization": bad}) as client:
            error(client.get("/accounts"), 401, 10000)

    # Another account's path: the same 403 whether that account exists or not.
    existing = acme.http.get(other.scripts())
    missing = acme.http.get("/accounts/" + "0" * 32 + "/workers/scripts")
    assert error(existing, 403, 10000) == error(missing, 403, 10000) == "Authentication error"
    assert existing.json() == missing.json()
    deploy_v1(other)
    for method, path in [
        ("GET", other.scripts("/hello")),
        ("DELETE", other.scripts("/hello")),
        ("GET", other.scripts("/hello/versions/1")),
        ("GET", other.scripts("/hello/versions/1/modules/index.js")),
        ("GET", f"/accounts/{other.id}/workers/routes"),
        ("POST", f"/accounts/{other.id}/storage/kv/namespaces"),
    ]:
        error(acme.http.request(method, path), 403, 10000)
    assert ok(other.http.get(other.scripts("/hello")))["id"] == "hello"


# -- uploads, versions, modules ---------------------------------------------------------------


def test_upload_versions_and_modules(control: Control, acme: Tenant) -> None:
    verified = ok(acme.http.get("/user/tokens/verify"))
    put = deploy_v1(acme)
    assert put["id"] == "hello" and put["version_id"] and put["deployment_id"]
    assert put["created_on"].endswith("Z") and put["modified_on"]

    v2 = ok(
        acme.http.post(
            acme.scripts("/hello/versions"),
            files=[
                ("metadata", (None, json.dumps(meta(limits={"cpu_ms": 20}, message="two")), "application/json")),
                ("index.js", ("index.js", V2, JS)),
                ("lib/add.wasm", ("lib/add.wasm", WASM, "application/wasm")),
                # A part without a filename arrives as text: its type comes from the extension.
                ("data/config.json", (None, '{"a": 1}')),
                ("notes", ("notes.txt", b"hello", "text/plain; charset=utf-8")),
            ],
        )
    )
    assert v2["number"] == 2 and v2["script"] == "hello" and v2["message"] == "two"
    assert v2["author"] == verified["id"]
    assert v2["limits"] == {"cpu_ms": 20} and v2["bindings"] == []
    assert [(m["name"], m["content_type"], m["size"]) for m in v2["modules"]] == [
        ("data/config.json", "application/json", 8),
        ("index.js", JS, len(V2)),
        ("lib/add.wasm", "application/wasm", len(WASM)),
        ("notes.txt", "text/plain", 5),
    ]

    versions = ok(acme.http.get(acme.scripts("/hello/versions")))
    assert [v["number"] for v in versions] == [2, 1]
    assert versions[1]["id"] == put["version_id"] and versions[1]["message"] == "one"
    assert ok(acme.http.get(acme.scripts(f"/hello/versions/{v2['id']}"))) == v2
    assert ok(acme.http.get(acme.scripts("/hello/versions/2"))) == v2
    error(acme.http.get(acme.scripts("/hello/versions/3")), 404, 10007)
    error(acme.http.get(acme.scripts("/nope/versions")), 404, 10007)

    wasm = acme.http.get(acme.scripts("/hello/versions/2/modules/lib/add.wasm"))
    assert wasm.status_code == 200 and wasm.content == WASM
    assert wasm.headers["content-type"] == "application/wasm"
    first = acme.http.get(acme.scripts(f"/hello/versions/{put['version_id']}/modules/index.js"))
    assert first.content == V1 and first.headers["content-type"].startswith(JS)
    error(acme.http.get(acme.scripts("/hello/versions/1/modules/lib/add.wasm")), 404, 10007)

    # Uploading a version does not deploy it: the script's etag is still version 1's.
    info = ok(acme.http.get(acme.scripts("/hello")))
    assert info["etag"] == versions[1]["content_hash"]
    assert [s["id"] for s in ok(acme.http.get(acme.scripts()))] == ["hello"]
    [deployment] = ok(acme.http.get(acme.scripts("/hello/deployments")))
    assert deployment["versions"] == [{"version_id": put["version_id"], "percentage": 100}]
    assert deployment["id"] == put["deployment_id"] and deployment["author"] == verified["id"]


def test_deployments_split_and_rollback(control: Control, acme: Tenant) -> None:
    v1 = deploy_v1(acme)["version_id"]
    v2 = ok(acme.http.post(acme.scripts("/hello/versions"), files=parts(meta(), ("index.js", V2, JS))))
    path = acme.scripts("/hello/deployments")

    half = ok(
        acme.http.post(
            path,
            json={
                "versions": [{"version_id": v2["id"], "percentage": 50}, {"version_id": v1, "percentage": 50.0}],
                "annotations": {"workers/message": "canary"},
            },
        )
    )
    assert half["versions"] == [{"version_id": v2["id"], "percentage": 50}, {"version_id": v1, "percentage": 50}]
    assert half["message"] == "canary" and half["script"] == "hello"
    assert ok(acme.http.get(acme.scripts("/hello")))["etag"] == v2["content_hash"]

    revision = control.revision()
    for body in [
        {"versions": [{"version_id": v1, "percentage": 60}, {"version_id": v2["id"], "percentage": 50}]},
        {"versions": [{"version_id": v1, "percentage": 33.3}, {"version_id": v2["id"], "percentage": 66.7}]},
        {"versions": [{"version_id": "0" * 32, "percentage": 100}]},
        {"versions": [{"version_id": v1, "percentage": 50}, {"version_id": v1, "percentage": 50}]},
        {"versions": [{"version_id": v1, "percentage": "100"}]},
        {"versions": [{"percentage": 100}]},
        {"versions": []},
        {},
        [],
    ]:
        error(acme.http.post(path, json=body), 400, 10001)
    error(acme.http.post(path, content=b"{not json"), 400, 10001)
    error(acme.http.post(path, content=b'{"versions": NaN}'), 400, 10001)
    error(
        acme.http.post(acme.scripts("/nope/deployments"), json={"versions": [{"version_id": v1, "percentage": 100}]}),
        404,
    )
    assert control.revision() == revision

    # Rollback: deploy the old version again, by number.
    rollback = ok(acme.http.post(path, json={"versions": [{"version_id": "1", "percentage": 100}]}))
    assert rollback["versions"] == [{"version_id": v1, "percentage": 100}]
    history = ok(acme.http.get(path))
    assert [d["id"] for d in history][:2] == [rollback["id"], half["id"]] and len(history) == 3
    assert (
        ok(acme.http.get(acme.scripts("/hello")))["etag"]
        == ok(acme.http.get(acme.scripts(f"/hello/versions/{v1}")))["content_hash"]
    )


def test_secrets_are_write_only(control: Control, acme: Tenant) -> None:
    deploy_v1(acme)
    path = acme.scripts("/hello/secrets")
    value = "correct-horse-battery-staple"
    put = acme.http.put(path, json={"name": "API_KEY", "text": value, "type": "secret_text"})
    assert ok(put) == {"name": "API_KEY", "type": "secret_text"}
    ok(acme.http.put(path, json={"name": "OTHER", "text": "x"}))
    listed = acme.http.get(path)
    assert ok(listed) == [{"name": "API_KEY", "type": "secret_text"}, {"name": "OTHER", "type": "secret_text"}]
    for response in [
        put,
        listed,
        acme.http.get(acme.scripts("/hello")),
        acme.http.get(acme.scripts("/hello/versions")),
    ]:
        assert value not in response.text
    assert control.run(control.store.secrets_for(acme.id, "hello"))["API_KEY"] == value

    error(acme.http.put(path, json={"name": "bad-name", "text": "x"}), 400, 10001)
    error(acme.http.put(path, json={"name": "A", "text": 1}), 400, 10001)
    error(acme.http.put(path, json={"name": "A", "text": "x", "type": "plain_text"}), 400, 10001)
    error(acme.http.put(acme.scripts("/nope/secrets"), json={"name": "A", "text": "x"}), 404, 10007)
    error(acme.http.get(acme.scripts("/nope/secrets")), 404, 10007)

    assert ok(acme.http.delete(path + "/OTHER")) == {"name": "OTHER"}
    error(acme.http.delete(path + "/OTHER"), 404, 10007)
    assert [s["name"] for s in ok(acme.http.get(path))] == ["API_KEY"]


# -- limits and malformed uploads -------------------------------------------------------------


def test_oversized_uploads_are_refused(control: Control, acme: Tenant) -> None:
    deploy_v1(acme)
    revision = control.revision()
    big = b"x" * (10 * 1024 * 1024 + 1)

    # Content-Length says too much: refused before the body is read.
    response = acme.http.put(acme.scripts("/hello"), files=parts(meta(), ("index.js", big + b"y" * 2_000_000, JS)))
    assert "the request body is" in error(response, 413, 10013)

    # Within the request limit, but the modules add up to more than 10 MB.
    response = acme.http.put(acme.scripts("/hello"), files=parts(meta(), ("index.js", big, JS)))
    assert "modules add up" in error(response, 413, 10013)

    # No Content-Length (chunked): counted while reading.
    def stream() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{"main_module": "index.js"}\r\n'
        yield b'--B\r\nContent-Disposition: form-data; name="index.js"; filename="index.js"\r\n'
        yield b"Content-Type: application/javascript+module\r\n\r\n"
        for _ in range(12):
            yield b"x" * (1024 * 1024)
        yield b"\r\n--B--\r\n"

    response = acme.http.put(
        acme.scripts("/hello"), content=stream(), headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert "the upload is larger" in error(response, 413, 10013)
    assert control.revision() == revision
    assert len(ok(acme.http.get(acme.scripts("/hello/versions")))) == 1


def test_malformed_uploads_change_nothing(control: Control, acme: Tenant) -> None:
    deploy_v1(acme)
    namespace = ok(acme.http.post(f"/accounts/{acme.id}/storage/kv/namespaces", json={"title": "kv"}))
    revision = control.revision()
    index = ("index.js", V2, JS)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("multipart", {"json": meta()}),
        ("multipart", {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=B"}}),
        ("no 'metadata'", {"files": parts(None, index)}),
        ("no modules", {"files": parts(meta())}),
        ("not valid JSON", {"files": parts("{nope", index)}),
        ("JSON object", {"files": parts("[1]", index)}),
        ("main_module", {"files": parts({"compatibility_date": "2024-09-23"}, index)}),
        ("not one of the uploaded modules", {"files": parts(meta(main_module="other.js"), index)}),
        ("invalid module name", {"files": parts(meta(main_module="../index.js"), ("../index.js", V2, JS))}),
        ("invalid module name", {"files": parts(meta(main_module="/index.js"), ("/index.js", V2, JS))}),
        ("content type", {"files": parts(meta(), ("index.js", V2, "application/javascript"))}),
        ("content type", {"files": parts(meta(), index, ("data.bin", b"x", "image/png"))}),
        ("compatibility_date", {"files": parts(meta(compatibility_date="yesterday"), index)}),
        ("binding name", {"files": parts(meta(bindings=[{"type": "plain_text", "name": "a-b", "text": "x"}]), index)}),
        (
            "used twice",
            {
                "files": parts(
                    meta(
                        bindings=[
                            {"type": "plain_text", "name": "A", "text": "x"},
                            {"type": "json", "name": "A", "json": 1},
                        ]
                    ),
                    index,
                )
            },
        ),
        ("has type", {"files": parts(meta(bindings=[{"type": "r2_bucket", "name": "B"}]), index)}),
        (
            "does not exist",
            {"files": parts(meta(bindings=[{"type": "kv_namespace", "name": "KV", "namespace_id": "0" * 32}]), index)},
        ),
        ("bindings", {"files": parts(meta(bindings={"A": 1}), index)}),
        ("cpu_ms", {"files": parts(meta(limits={"cpu_ms": 0}), index)}),
        ("cpu_ms", {"files": parts(meta(limits={"cpu_ms": 300_001}), index)}),
        ("unknown limit", {"files": parts(meta(limits={"memory_mb": 64}), index)}),
        ("two modules named", {"files": [*parts(meta(), index), ("index.js", ("index.js", V1, JS))]}),
        ("binary", {"files": [*parts(meta(), index), ("add.wasm", (None, "\x00asm"))]}),
    ]
    for expected, request in cases:
        message = error(acme.http.put(acme.scripts("/hello"), **request), 400, 10001)
        assert expected in message, (expected, message)
        error(acme.http.post(acme.scripts("/hello/versions"), **request), 400, 10001)
    error(acme.http.put(acme.scripts("/Bad.Name"), files=parts(meta(), index)), 400, 10001)
    assert control.revision() == revision
    assert len(ok(acme.http.get(acme.scripts("/hello/versions")))) == 1

    # The same upload, well formed, goes through with its binding.
    binding = {"type": "kv_namespace", "name": "KV", "namespace_id": namespace["id"]}
    v2 = ok(acme.http.post(acme.scripts("/hello/versions"), files=parts(meta(bindings=[binding]), index)))
    assert v2["bindings"] == [binding] and v2["number"] == 2


# -- routes, namespaces, deletion ---------------------------------------------------------------


def test_routes(control: Control, acme: Tenant, other: Tenant) -> None:
    deploy_v1(acme)
    deploy_v1(other)
    path = f"/accounts/{acme.id}/workers/routes"
    route = ok(acme.http.post(path, json={"pattern": "Shop.Example.com/*", "script": "hello"}))
    assert route["pattern"] == "shop.example.com/*" and route["script"] == "hello"
    revision = control.revision()
    for pattern in ["shop.example.com", "https://x.com/*", "a.*.com/*", "x.com/a*b", "x.com:80/*", "*/*"]:
        error(acme.http.post(path, json={"pattern": pattern, "script": "hello"}), 400, 10001)
    error(acme.http.post(path, json={"pattern": "x.example.com/*", "script": "missing"}), 400, 10001)
    error(acme.http.post(path, json={"pattern": "x.example.com/*"}), 400, 10001)
    error(acme.http.post(path, json={"pattern": "shop.example.com/*", "script": "hello"}), 409, 10009)
    other_path = f"/accounts/{other.id}/workers/routes"
    error(other.http.post(other_path, json={"pattern": "SHOP.example.com/*", "script": "hello"}), 409, 10009)
    assert control.revision() == revision
    assert ok(acme.http.get(path)) == [route]
    assert ok(other.http.get(other_path)) == []
    error(other.http.delete(f"{other_path}/{route['id']}"), 404, 10007)
    assert ok(acme.http.delete(f"{path}/{route['id']}")) == {"id": route["id"]}
    error(acme.http.delete(f"{path}/{route['id']}"), 404, 10007)
    assert ok(acme.http.get(path)) == []


def test_kv_namespaces(control: Control, acme: Tenant) -> None:
    path = f"/accounts/{acme.id}/storage/kv/namespaces"
    namespace = ok(acme.http.post(path, json={"title": "sessions"}))
    assert namespace["title"] == "sessions" and len(namespace["id"]) == 32
    error(acme.http.post(path, json={"title": "sessions"}), 409, 10009)
    error(acme.http.post(path, json={"title": ""}), 400, 10001)
    error(acme.http.post(path, json={}), 400, 10001)
    assert ok(acme.http.get(path)) == [namespace]
    assert ok(acme.http.delete(f"{path}/{namespace['id']}")) == {"id": namespace["id"]}
    error(acme.http.delete(f"{path}/{namespace['id']}"), 404, 10007)
    assert ok(acme.http.get(path)) == []


def test_delete_script_keeps_versions_readable(control: Control, acme: Tenant) -> None:
    put = deploy_v1(acme)
    ok(acme.http.put(acme.scripts("/hello/secrets"), json={"name": "KEY", "text": "x"}))
    ok(acme.http.post(f"/accounts/{acme.id}/workers/routes", json={"pattern": "example.com/*", "script": "hello"}))

    assert ok(acme.http.delete(acme.scripts("/hello"))) == {"id": "hello"}
    error(acme.http.delete(acme.scripts("/hello")), 404, 10007)
    error(acme.http.get(acme.scripts("/hello")), 404, 10007)
    assert ok(acme.http.get(acme.scripts())) == []
    error(acme.http.get(acme.scripts("/hello/deployments")), 404, 10007)
    error(acme.http.get(acme.scripts("/hello/secrets")), 404, 10007)
    assert ok(acme.http.get(f"/accounts/{acme.id}/workers/routes")) == []

    [version] = ok(acme.http.get(acme.scripts("/hello/versions")))
    assert version["id"] == put["version_id"]
    module = acme.http.get(acme.scripts(f"/hello/versions/{version['id']}/modules/index.js"))
    assert module.status_code == 200 and module.content == V1

    again = deploy_v1(acme)
    assert ok(acme.http.get(acme.scripts(f"/hello/versions/{again['version_id']}")))["number"] == 2
    assert ok(acme.http.get(acme.scripts("/hello/secrets"))) == []


# -- the envelope for everything else ---------------------------------------------------------


def test_unknown_paths_and_methods(control: Control, acme: Tenant) -> None:
    error(acme.http.get("/nope"), 404, 10007)
    error(acme.http.get(f"/accounts/{acme.id}/workers/nope"), 404, 10007)
    response = acme.http.patch(acme.scripts("/hello"))
    error(response, 405, 10003)
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}
    error(acme.http.post(acme.scripts("/hello/versions/1")), 405, 10003)


def test_unexpected_errors_are_enveloped(tmp_path: Path) -> None:
    # A store nobody opened: every call fails inside the app, as a broken disk would.
    harness = Control(SQLiteStore(tmp_path / "store.db"), manage_store=False)
    try:
        with harness.client("wrn_" + "x" * 40) as client:
            response = client.get("/accounts")
        assert error(response, 500, 10002) == "internal error"
        assert "not open" not in response.text
    finally:
        harness.stop()
