"""``warren kv`` and the control-plane KV API (Cloudflare's paths and shapes) against the real
API server on a real SQLite store; then ``warren deploy`` of a project with ``[[kv_namespaces]]``
served by a real ``warren serve`` on the same store, its worker and the CLI seeing each other's
writes.
"""

# ruff: noqa: F811  (the fixtures of test_cli are imported, then named as parameters)
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_cli import Cli, ControlPlane, cli, control, write_project  # noqa: F401  (fixtures)

UUID_HEX = 32


def api(cli: Cli, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    account = cli.json("whoami")["account"]["id"] if "{a}" in path else ""
    url = cli.control.url + "/client/v4" + path.replace("{a}", account)
    headers = {"Authorization": f"Bearer {token or cli.token}"}
    return httpx.request(method, url, headers=headers, timeout=60, **kwargs)


def create_namespace(cli: Cli, title: str) -> str:
    created = cli.json("kv", "namespace", "create", title)
    assert len(created["id"]) == UUID_HEX and created["title"] == title
    return str(created["id"])


# -- the CLI ---------------------------------------------------------------------------------------


def test_namespace_create_list_delete(cli: Cli) -> None:
    result = cli("kv", "namespace", "create", "my cache")
    assert "✔ Created namespace my cache" in result.stdout
    assert '[[kv_namespaces]]\nbinding = "MY_CACHE"\nid = "' in result.stdout
    other = create_namespace(cli, "sessions")
    listed = cli.json("kv", "namespace", "list")
    assert [namespace["title"] for namespace in listed] == ["my cache", "sessions"]
    assert "sessions" in cli("kv", "namespace", "list").stdout
    duplicate = cli("kv", "namespace", "create", "sessions", ok=False)
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr
    cli("kv", "key", "put", "k", "v", "--namespace-id", other)
    assert cli("kv", "namespace", "delete", "--namespace-id", other, "-y").exit_code == 0
    assert [namespace["title"] for namespace in cli.json("kv", "namespace", "list")] == ["my cache"]
    # Its keys went with it.
    assert api(cli, "GET", f"/accounts/{{a}}/storage/kv/namespaces/{other}/keys").status_code == 404
    assert cli.control.run(cli.control.store.kv_get(other, "k")) is None


def test_key_put_get_list_delete(cli: Cli, tmp_path: Path) -> None:
    ns = create_namespace(cli, "keys")
    assert "✔ Wrote 5 bytes to greeting" in cli("kv", "key", "put", "greeting", "hello", "--namespace-id", ns).stdout
    assert cli("kv", "key", "get", "greeting", "--namespace-id", ns).stdout == "hello"
    assert cli("kv", "key", "get", "greeting", "--namespace-id", ns, "--text").stdout == "hello\n"
    binary = os.urandom(100_000)
    (tmp_path / "blob.bin").write_bytes(binary)
    cli("kv", "key", "put", "blob", "--path", str(tmp_path / "blob.bin"), "--namespace-id", ns)
    assert cli("kv", "key", "get", "blob", "--namespace-id", ns).stdout_bytes == binary
    cli("kv", "key", "put", "with/slash and ☃?", "x", "--namespace-id", ns, "--ttl", "120", "--metadata", '{"a": [1]}')
    keys = json.loads(cli("kv", "key", "list", "--namespace-id", ns).stdout)
    assert [key["name"] for key in keys] == ["blob", "greeting", "with/slash and ☃?"]
    assert keys[2]["metadata"] == {"a": [1]} and abs(keys[2]["expiration"] - time.time() - 120) < 5
    assert "metadata" not in keys[0] and "expiration" not in keys[0]
    prefixed = json.loads(cli("kv", "key", "list", "--namespace-id", ns, "--prefix", "with/").stdout)
    assert [key["name"] for key in prefixed] == ["with/slash and ☃?"]
    assert cli("kv", "key", "get", "with/slash and ☃?", "--namespace-id", ns).stdout == "x"
    assert "✔ Deleted greeting" in cli("kv", "key", "delete", "greeting", "--namespace-id", ns).stdout
    missing = cli("kv", "key", "get", "greeting", "--namespace-id", ns, ok=False)
    assert missing.exit_code == 1 and "Value not found: greeting" in missing.stderr


def test_key_errors_are_the_services(cli: Cli) -> None:
    ns = create_namespace(cli, "errors")
    too_long = cli("kv", "key", "put", "x" * 513, "v", "--namespace-id", ns, ok=False)
    assert "UTF-8 encoded length of 513 exceeds key length limit of 512." in too_long.stderr
    short_ttl = cli("kv", "key", "put", "k", "v", "--namespace-id", ns, "--ttl", "30", ok=False)
    assert "Invalid expiration_ttl of 30. Expiration TTL must be at least 60." in short_ttl.stderr
    past = cli("kv", "key", "put", "k", "v", "--namespace-id", ns, "--expiration", "1000", ok=False)
    assert "Invalid expiration of 1000." in past.stderr
    big = cli("kv", "key", "put", "k", "v", "--namespace-id", ns, "--metadata", json.dumps("m" * 1100), ok=False)
    assert "Metadata length of 1102 exceeds limit of 1024." in big.stderr
    assert "must be JSON" in cli("kv", "key", "put", "k", "v", "--namespace-id", ns, "--metadata", "{", ok=False).stderr
    neither = cli("kv", "key", "get", "k", ok=False)
    assert "--namespace-id ID or --binding NAME" in neither.stderr
    unknown = cli("kv", "key", "get", "k", "--namespace-id", "0" * 32, ok=False)
    assert "namespace '00000000000000000000000000000000' not found" in unknown.stderr


def test_binding_names_the_namespace_from_wrangler_toml(cli: Cli) -> None:
    ns = create_namespace(cli, "bound")
    write_project(
        Path.cwd(),
        {
            "wrangler.toml": f"""
                name = "w"
                main = "index.js"
                [[kv_namespaces]]
                binding = "CACHE"
                id = "{ns}"
                [[kv_namespaces]]
                binding = "NO_ID"
                """,
            "index.js": "export default { fetch() { return new Response('x') } }",
        },
    )
    cli("kv", "key", "put", "k", "via binding", "--binding", "CACHE")
    assert cli("kv", "key", "get", "k", "--namespace-id", ns).stdout == "via binding"
    assert "no [[kv_namespaces]] binding named NOPE" in cli("kv", "key", "get", "k", "--binding", "NOPE", ok=False).stderr
    assert "has no id" in cli("kv", "key", "get", "k", "--binding", "NO_ID", ok=False).stderr
    both = cli("kv", "key", "get", "k", "--binding", "CACHE", "--namespace-id", ns, ok=False)
    assert both.exit_code == 1


def test_bulk_put_and_delete_ten_thousand_pairs(cli: Cli, tmp_path: Path) -> None:
    ns = create_namespace(cli, "bulk")
    pairs: list[dict[str, Any]] = [{"key": f"key{i:05d}", "value": f"value {i}"} for i in range(10_000)]
    pairs[1] = {"key": "key00001", "value": base64.b64encode(b"\x00\xff binary").decode(), "base64": True}
    pairs[2] = {"key": "key00002", "value": "meta", "metadata": {"n": 2}, "expiration_ttl": 300}
    (tmp_path / "put.json").write_text(json.dumps(pairs))
    assert "✔ Wrote 10000 keys" in cli("kv", "bulk", "put", str(tmp_path / "put.json"), "--namespace-id", ns).stdout
    keys = json.loads(cli("kv", "key", "list", "--namespace-id", ns).stdout)  # ten pages of 1000
    assert len(keys) == 10_000 and keys[0]["name"] == "key00000" and keys[-1]["name"] == "key09999"
    assert keys[2]["metadata"] == {"n": 2} and "expiration" in keys[2]
    assert cli("kv", "key", "get", "key00001", "--namespace-id", ns).stdout_bytes == b"\x00\xff binary"
    assert cli("kv", "key", "get", "key09999", "--namespace-id", ns).stdout == "value 9999"
    # Delete accepts names or {"key"} objects.
    names: list[Any] = [f"key{i:05d}" for i in range(0, 10_000, 2)] + [{"key": f"key{i:05d}"} for i in range(1, 10_000, 2)]
    (tmp_path / "delete.json").write_text(json.dumps(names))
    deleted = cli("kv", "bulk", "delete", str(tmp_path / "delete.json"), "--namespace-id", ns, "--force")
    assert "✔ Deleted 10000 keys" in deleted.stdout
    assert json.loads(cli("kv", "key", "list", "--namespace-id", ns).stdout) == []
    (tmp_path / "bad.json").write_text(json.dumps([{"key": "k"}]))
    bad = cli("kv", "bulk", "put", str(tmp_path / "bad.json"), "--namespace-id", ns, ok=False)
    assert "pair #1 must be an object with a string 'key' and a string 'value'" in bad.stderr


# -- the HTTP API --------------------------------------------------------------------------------


def test_values_keys_metadata_and_bulk_over_http(cli: Cli) -> None:
    ns = create_namespace(cli, "http")
    base = f"/accounts/{{a}}/storage/kv/namespaces/{ns}"
    put = api(cli, "PUT", base + "/values/a%2Fb", content=b"raw bytes", params={"expiration_ttl": "600"})
    assert put.status_code == 200 and put.json()["result"] == {}
    got = api(cli, "GET", base + "/values/a%2Fb")
    assert got.content == b"raw bytes" and got.headers["content-type"] == "application/octet-stream"
    assert abs(int(got.headers["expiration"]) - time.time() - 600) < 5
    # Multipart: a value and its metadata, as Cloudflare's API takes them.
    files = {"value": ("value", b"with metadata"), "metadata": (None, '{"owner": "ann"}')}
    assert api(cli, "PUT", base + "/values/m", files=files).status_code == 200
    assert api(cli, "GET", base + "/metadata/m").json()["result"] == {"owner": "ann"}
    assert api(cli, "GET", base + "/metadata/a%2Fb").json()["result"] is None
    missing = api(cli, "GET", base + "/values/nope")
    assert missing.status_code == 404 and missing.json()["errors"][0]["message"] == "key not found"
    assert api(cli, "GET", base + "/metadata/nope").status_code == 404
    # Keys, paged with result_info's cursor.
    bulk = [{"key": f"p{i}", "value": str(i)} for i in range(25)]
    result = api(cli, "PUT", base + "/bulk", json=bulk).json()["result"]
    assert result == {"successful_key_count": 25, "unsuccessful_keys": []}
    page = api(cli, "GET", base + "/keys", params={"prefix": "p", "limit": "10"}).json()
    assert len(page["result"]) == 10 and page["result_info"]["count"] == 10 and page["result_info"]["cursor"]
    last = api(cli, "GET", base + "/keys", params={"prefix": "p", "limit": "10", "cursor": page["result_info"]["cursor"]})
    assert last.json()["result"][0]["name"] == "p18"  # p0, p1, p10..p17 came first: byte order
    everything = api(cli, "GET", base + "/keys").json()
    assert everything["result_info"] == {"count": 27, "cursor": ""}
    assert api(cli, "GET", base + "/keys", params={"limit": "1001"}).status_code == 400
    # Bulk delete, old and new spelling.
    assert api(cli, "POST", base + "/bulk/delete", json=["p0", "p1"]).json()["result"]["successful_key_count"] == 2
    assert api(cli, "DELETE", base + "/bulk", json=["p2"]).json()["result"]["successful_key_count"] == 1
    assert api(cli, "DELETE", base + "/values/m").status_code == 200
    assert api(cli, "GET", base + "/values/m").status_code == 404
    # Refusals: too many pairs, bad pairs (nothing written), too large a value.
    over = api(cli, "PUT", base + "/bulk", json=[{"key": f"o{i}", "value": "v"} for i in range(10_001)])
    assert over.status_code == 400 and "at most 10000" in over.json()["errors"][0]["message"]
    mixed = [{"key": "fine", "value": "v"}, {"key": "", "value": "v"}]
    refused = api(cli, "PUT", base + "/bulk", json=mixed)
    assert refused.status_code == 400 and refused.json()["errors"][0]["message"] == "pair #2: Key names must not be empty"
    assert api(cli, "GET", base + "/values/fine").status_code == 404
    large = api(cli, "PUT", base + "/values/large", content=b"x" * (25 * 1024 * 1024 + 1))
    assert large.status_code == 413
    assert api(cli, "PUT", base + "/values/ttl", content=b"v", params={"expiration_ttl": "5"}).json()["errors"][0][
        "message"
    ] == "Invalid expiration_ttl of 5. Expiration TTL must be at least 60."


def test_another_accounts_namespace_is_out_of_reach(cli: Cli) -> None:
    ns = create_namespace(cli, "private")
    cli("kv", "key", "put", "secret", "mine", "--namespace-id", ns)
    other_id, other_token = cli.control.account("intruder")
    own = f"/accounts/{other_id}/storage/kv/namespaces/{ns}/values/secret"
    assert api(cli, "GET", own, token=other_token).status_code == 404  # not its namespace
    theirs = f"/accounts/{{a}}/storage/kv/namespaces/{ns}/values/secret"
    assert api(cli, "GET", theirs, token=other_token).status_code == 403
    assert api(cli, "PUT", own, token=other_token, content=b"overwritten").status_code == 404
    assert cli("kv", "key", "get", "secret", "--namespace-id", ns).stdout == "mine"


# -- deploy and serve ----------------------------------------------------------------------------------


WORKER = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/put") {
      await env.CACHE.put(url.searchParams.get("key"), await request.text());
      return new Response("stored");
    }
    const value = await env.CACHE.get(url.searchParams.get("key"), { cacheTtl: 30 });
    return new Response(value ?? "missing", { status: value === null ? 404 : 200 });
  },
};
"""


def test_deploy_uploads_kv_bindings_and_the_edge_serves_them(cli: Cli, spawn: Any, control: ControlPlane) -> None:
    ns = create_namespace(cli, "edge")
    write_project(
        Path.cwd(),
        {
            "wrangler.toml": f"""
                name = "kv-worker"
                main = "index.js"
                [[kv_namespaces]]
                binding = "CACHE"
                id = "{ns}"
                """,
            "index.js": WORKER,
        },
    )
    deployed = cli.json("deploy", "--no-bundle")
    version = cli.json("versions", "view", deployed["version_id"])
    assert {"type": "kv_namespace", "name": "CACHE", "namespace_id": ns} in version["bindings"]
    cli("kv", "key", "put", "from-cli", "written by the CLI", "--namespace-id", ns)
    edge = spawn(["serve", "--store", control.store.path, "--workers-domain", "kv.test"])
    host = {"host": "kv-worker.acme.kv.test"}
    response = httpx.get(edge.url + "/", params={"key": "from-cli"}, headers=host, timeout=30)
    assert response.status_code == 200 and response.text == "written by the CLI"
    stored = httpx.post(edge.url + "/put", params={"key": "from-worker"}, content="written by the worker", headers=host)
    assert stored.text == "stored"
    assert cli("kv", "key", "get", "from-worker", "--namespace-id", ns).stdout == "written by the worker"
    # The edge cached "from-cli"; the CLI's change reaches it by notification, long before cacheTtl.
    cli("kv", "key", "put", "from-cli", "changed", "--namespace-id", ns)
    deadline = time.monotonic() + 10
    while httpx.get(edge.url + "/", params={"key": "from-cli"}, headers=host).text != "changed":
        assert time.monotonic() < deadline, "the edge never saw the change"
        time.sleep(0.05)


def test_deploy_refuses_a_kv_binding_without_an_id(cli: Cli) -> None:
    write_project(
        Path.cwd(),
        {
            "wrangler.toml": """
                name = "no-id"
                main = "index.js"
                [[kv_namespaces]]
                binding = "CACHE"
                """,
            "index.js": WORKER,
        },
    )
    result = cli("deploy", "--no-bundle", ok=False)
    assert result.exit_code == 1 and "CACHE need an id to deploy" in result.stderr


@pytest.mark.parametrize(
    "entry,message",
    [
        ('binding = "bad name"\nid = "x"', "needs 'binding', a JavaScript identifier"),
        ('binding = "A"\nid = "has spaces"', "'id' must be a namespace id"),
    ],
)
def test_config_errors(cli: Cli, entry: str, message: str) -> None:
    write_project(
        Path.cwd(),
        {"wrangler.toml": f'name = "c"\nmain = "index.js"\n[[kv_namespaces]]\n{entry}\n', "index.js": WORKER},
    )
    result = cli("deploy", "--no-bundle", ok=False)
    assert result.exit_code == 1 and message in result.stderr
