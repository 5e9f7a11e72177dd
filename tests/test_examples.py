"""The examples in examples/, each run unchanged through the real ``warren dev`` against a real origin.

Every test starts ``warren dev examples/<name>`` (the committed files; one test edits a copy) with ``--var``
pointing the worker's origin at the fixture in tests/origin.py, and checks what the example is for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceProcess
from tests.origin import Gate, Origin, Page, Pause

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Any]:
    """``example("esi", "--var", "ORIGIN:...")``: ``warren dev examples/esi`` with those arguments."""
    started: list[ServiceProcess] = []

    def start(name: str, *args: str) -> ServiceProcess:
        directory = EXAMPLES / name  # or a copy elsewhere, named by its absolute path
        process = ServiceProcess(["dev", str(directory), "--no-watch", *args], tmp_path)
        started.append(process)
        # The wrangler.toml is read whole: its name, and no key warren ignores.
        process.wait_for(rf"^\[{directory.name}\] info: started {directory.name}@")
        assert not [line for line in process.lines if "ignor" in line.lower() or "warning" in line.lower()]
        return process

    yield start
    for process in started:
        process.stop()


def _wait_for_requests(server: ServiceProcess, count: int) -> None:
    """Until ``warren dev`` has printed the log lines of ``count`` requests (they follow the response)."""
    deadline = time.monotonic() + 10
    while sum(1 for line in server.lines if " cpu=" in line) < count:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.02)


# --- security-headers -------------------------------------------------------------------------


def test_security_headers_are_added_and_the_origin_body_streams_through(example: Any, origin: Origin) -> None:
    origin.examples.page(
        "/index.html",
        "<!doctype html><title>shop</title><p>first half</p>",
        Gate("rest-of-page"),
        "<p>second half</p>",
        server="Apache/2.4.41 (Ubuntu)",
        x_powered_by="PHP/7.4.3",
        set_cookie="session=abc; HttpOnly",
    )
    server = example("security-headers", "--var", f"ORIGIN:{origin.url}/site")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("GET", "/index.html") as response:
            # The headers and the first half arrive while the origin is still
            # holding back the rest: the body is streamed, not buffered.
            assert response.status_code == 200
            headers = response.headers
            chunks = response.iter_raw()
            assert next(chunks) == b"<!doctype html><title>shop</title><p>first half</p>"
            origin.open_gate("rest-of-page")
            assert b"".join(chunks) == b"<p>second half</p>"
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains; preload"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert headers["permissions-policy"].startswith("camera=()")
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "x-powered-by" not in headers
    assert "apache" not in headers.get("server", "").lower()
    # What is not about security passes unchanged.
    assert headers["set-cookie"] == "session=abc; HttpOnly"
    assert headers["content-type"] == "text/html; charset=utf-8"


def test_security_headers_keep_status_and_leave_non_html_without_a_csp(example: Any, origin: Origin) -> None:
    server = example("security-headers", "--var", f"ORIGIN:{origin.url}")
    # A POST is forwarded with its body, and a JSON answer gets the headers but no CSP.
    response = server.request("POST", "/echo?x=1", content=b"order=42")
    assert response.status_code == 200
    assert response.json()["body"] == "order=42"
    assert response.json()["query"] == "x=1"
    assert response.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in response.headers
    missing = server.get("/status/404")
    assert missing.status_code == 404
    assert missing.text == "status 404"
    assert missing.headers["strict-transport-security"].startswith("max-age=")


# --- password-breach --------------------------------------------------------------------------


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest().upper()


def test_password_breach_sends_only_a_five_digit_prefix(example: Any, origin: Origin) -> None:
    origin.examples.breached = {
        _sha1("hunter2"): 17,
        _sha1("pässwörd"): 3,  # hashed as UTF-8
        # Same prefix as a password that was never breached: only the suffix may decide.
        _sha1("correct horse battery staple")[:5] + "0" * 35: 99,
    }
    server = example("password-breach", "--var", f"ORIGIN:{origin.url}")
    assert 'type="password"' in server.get("/").text

    form = server.request("POST", "/", data={"password": "hunter2"})
    assert form.json() == {"breached": True, "count": 17}
    multipart = server.request("POST", "/", files={"password": (None, "pässwörd")})
    assert multipart.json() == {"breached": True, "count": 3}
    clean = server.request("POST", "/", data={"password": "correct horse battery staple"})
    assert clean.json() == {"breached": False, "count": 0}

    sent = origin.examples.range_requests
    assert [r["path"] for r in sent] == [
        "/range/" + _sha1(p)[:5] for p in ("hunter2", "pässwörd", "correct horse battery staple")
    ]
    assert all(r["padding"] == "true" for r in sent)
    # Nothing past the prefix reached the origin, nor the terminal.
    _wait_for_requests(server, 4)
    for password in ("hunter2", "pässwörd", "correct horse battery staple"):
        assert _sha1(password)[5:] not in json.dumps(sent)
        assert password not in server.output


def test_password_breach_refuses_bad_input_and_reports_an_unavailable_api(example: Any, origin: Origin) -> None:
    server = example("password-breach", "--var", f"ORIGIN:{origin.url}")
    assert server.request("POST", "/", json={"password": "x"}).status_code == 415
    assert server.request("POST", "/", data={"user": "x"}).status_code == 400
    assert server.request("POST", "/", files={"password": ("p.txt", b"x")}).status_code == 400
    assert server.request("PUT", "/").status_code == 405
    assert origin.examples.range_requests == []

    broken = example("password-breach", "--var", f"ORIGIN:{origin.url}/status/503")
    answer = broken.request("POST", "/", data={"password": "hunter2"})
    assert answer.status_code == 502
    assert answer.json() == {"error": "the breach database is unavailable, try again"}
    broken.wait_for("password check failed: range API answered 404")


# --- jwt-verify -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64url(number: int) -> str:
    return _b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


class _Issuer:
    """Makes JWTs the way an identity provider would, with ``cryptography`` and ``hmac``."""

    secret = "a shared secret of at least thirty-two bytes!"
    issuer = "https://auth.example.com"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.rsa.public_key().public_numbers()
        self.jwk = {
            "kty": "RSA",
            "kid": "k1",
            "alg": "RS256",
            "use": "sig",
            "n": _int_b64url(numbers.n),
            "e": _int_b64url(numbers.e),
        }

    def token(self, claims: dict[str, Any], alg: str = "RS256", key: Any = None, **header: Any) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        head = _b64url(json.dumps({"alg": alg, "typ": "JWT", **header}).encode())
        body = _b64url(json.dumps(claims).encode())
        signed = f"{head}.{body}".encode()
        if alg == "RS256":
            signature = (key or self.rsa).sign(signed, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "HS256":
            signature = hmac.new((key or self.secret).encode(), signed, hashlib.sha256).digest()
        else:
            signature = b""
        return f"{head}.{body}.{_b64url(signature)}"

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"sub": "user-42", "iss": self.issuer, "iat": now, "exp": now + 600, **extra}


def test_jwt_verify_forwards_valid_tokens_with_their_claims(example: Any, origin: Origin) -> None:
    issuer = _Issuer()
    server = example(
        "jwt-verify",
        "--var", f"ORIGIN:{origin.url}",
        "--var", f"JWT_PUBLIC_JWK:{json.dumps(issuer.jwk)}",
        "--var", f"JWT_SECRET:{issuer.secret}",
    )  # fmt: skip
    for alg in ("RS256", "HS256"):
        claims = issuer.claims(name="Zoë", roles=["admin"])
        token = issuer.token(claims, alg, kid="k1")
        response = server.request(
            "POST", "/echo?q=1", content=b"payload",
            headers={"authorization": f"Bearer {token}", "x-jwt-claims": '{"sub": "forged"}'},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        seen = response.json()
        assert json.loads(seen["headers"]["x-jwt-claims"]) == claims  # the verified claims, not the forged ones
        assert seen["headers"]["x-jwt-claims"].isascii()
        assert "authorization" not in seen["headers"]
        assert (seen["method"], seen["query"], seen["body"]) == ("POST", "q=1", "payload")
    assert len(origin.requests) == 2


def test_jwt_verify_refuses_bad_tokens_with_a_reason(example: Any, origin: Origin) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    issuer = _Issuer()
    server = example(
        "jwt-verify",
        "--var", f"ORIGIN:{origin.url}",
        "--var", f"JWT_PUBLIC_JWK:{json.dumps(issuer.jwk)}",
        "--var", f"JWT_SECRET:{issuer.secret}",
    )  # fmt: skip
    good = issuer.token(issuer.claims())
    head, _, signature = good.split(".")
    tampered_body = _b64url(json.dumps(issuer.claims(sub="admin")).encode())
    cases = {
        "missing bearer token": None,
        "malformed token": "not-a-jwt",
        "bad signature": f"{head}.{tampered_body}.{signature}",
        "unsigned tokens (alg none) are refused": issuer.token(issuer.claims(), "none"),
        'alg "HS512" is not accepted (RS256 or HS256)': issuer.token(issuer.claims(), "HS512"),
        "token has no expiry": issuer.token({"sub": "x", "iss": issuer.issuer}),
        "wrong issuer": issuer.token(issuer.claims(iss="https://evil.example")),
        "unknown key id": issuer.token(issuer.claims(), kid="k2"),
    }
    # Signed by someone else's RSA key; HS256 with the wrong secret; and the
    # classic confusion attack: HS256 "signed" with the public key as the secret.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = [
        issuer.token(issuer.claims(), "RS256", other),
        issuer.token(issuer.claims(), "HS256", "guessed"),
        issuer.token(issuer.claims(), "HS256", json.dumps(issuer.jwk)),
    ]
    attempts = list(cases.items()) + [("bad signature", token) for token in forged]
    for reason, token in attempts:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        response = server.get("/echo", headers=headers)
        assert response.status_code == 401, (reason, response.text)
        assert response.json() == {"error": reason}
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert origin.requests == []  # nothing unverified reached the origin


def test_jwt_verify_checks_expiry_and_not_before_against_the_clock(example: Any, origin: Origin) -> None:
    issuer = _Issuer()
    server = example("jwt-verify", "--var", f"ORIGIN:{origin.url}", "--var", f"JWT_SECRET:{issuer.secret}")
    now = int(time.time())

    def status(claims: dict[str, Any]) -> tuple[int, str]:
        response = server.get("/echo", headers={"authorization": f"Bearer {issuer.token(claims, 'HS256')}"})
        return response.status_code, response.json().get("error", "")

    assert status(issuer.claims(nbf=now + 3600)) == (401, "token not yet valid")
    assert status(issuer.claims(nbf=now + 10))[0] == 200  # within the clock skew allowance
    assert status(issuer.claims(exp=now - 5))[0] == 200  # within the clock skew allowance
    assert status(issuer.claims(exp=now - 3600)) == (401, "token expired")


def test_jwt_verify_reads_the_jwk_from_wrangler_toml(example: Any, origin: Origin, tmp_path: Path) -> None:
    # As committed, wrangler.toml holds a placeholder JWK: an RS256 token reaching it is a
    # configuration error (500, explained in the log), not the client's fault.
    issuer = _Issuer()
    server = example("jwt-verify", "--var", f"ORIGIN:{origin.url}")
    token = issuer.token(issuer.claims(), kid="example-2024")
    response = server.get("/echo", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 500
    assert response.json() == {"error": "token verification is misconfigured"}
    server.wait_for("jwt-verify: JWT_PUBLIC_JWK is not a usable RSA public key: it must be an RSA key of 2048 bits")
    assert origin.requests == []

    # With the issuer's real key put in as a TOML table (env.JWT_PUBLIC_JWK is then an object).
    copy = tmp_path / "jwt-verify"
    copy.mkdir()
    (copy / "worker.js").write_text((EXAMPLES / "jwt-verify" / "worker.js").read_text())
    table = ", ".join(f'{key} = "{value}"' for key, value in issuer.jwk.items())
    config = (EXAMPLES / "jwt-verify" / "wrangler.toml").read_text()
    lines = [
        f"JWT_PUBLIC_JWK = {{ {table} }}" if line.startswith("JWT_PUBLIC_JWK") else line for line in config.splitlines()
    ]
    (copy / "wrangler.toml").write_text("\n".join(lines) + "\n")
    configured = example(str(copy), "--var", f"ORIGIN:{origin.url}")
    response = configured.get("/echo", headers={"authorization": f"Bearer {issuer.token(issuer.claims(), kid='k1')}"})
    assert response.status_code == 200
    assert json.loads(response.json()["headers"]["x-jwt-claims"])["sub"] == "user-42"


def test_jwt_verify_key_sets_audience_and_no_secret(example: Any, origin: Origin) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    issuer, rotated = _Issuer(), _Issuer()
    rotated.jwk["kid"] = "k2"
    key_set = {"keys": [rotated.jwk, issuer.jwk]}
    server = example(
        "jwt-verify",
        "--var", f"ORIGIN:{origin.url}",
        "--var", f"JWT_PUBLIC_JWK:{json.dumps(key_set)}",
        "--var", "JWT_AUDIENCE:orders",
    )  # fmt: skip

    def error(token: str) -> str | None:
        response = server.get("/echo", headers={"authorization": f"Bearer {token}"})
        return None if response.status_code == 200 else response.json()["error"]

    # The token's kid picks the key of the set.
    assert error(issuer.token(issuer.claims(aud="orders"), kid="k1")) is None
    assert error(rotated.token(rotated.claims(aud=["billing", "orders"]), kid="k2")) is None
    assert error(rotated.token(rotated.claims(aud="orders"), kid="k1")) == "bad signature"
    assert error(issuer.token(issuer.claims(aud="orders"))) == "unknown key id"  # several keys: kid needed
    assert error(issuer.token(issuer.claims(aud="billing"), kid="k1")) == "wrong audience"
    assert error(issuer.token(issuer.claims(), kid="k1")) == "wrong audience"
    # No JWT_SECRET: HS256 is refused whatever it was signed with.
    assert error(issuer.token(issuer.claims(aud="orders"), "HS256")) == "HS256 tokens are not accepted here"
    # A key too short to trust is a configuration error.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    weak_jwk = {"kty": "RSA", "n": _int_b64url(weak.n), "e": _int_b64url(weak.e)}
    weak_server = example(
        "jwt-verify", "--var", f"ORIGIN:{origin.url}", "--var", f"JWT_PUBLIC_JWK:{json.dumps(weak_jwk)}"
    )
    assert weak_server.get("/", headers={"authorization": f"Bearer {issuer.token(issuer.claims())}"}).status_code == 500
    assert len(origin.requests) == 2


# --- race-origins -----------------------------------------------------------------------------


@pytest.mark.parametrize("slow", ["primary", "secondary"])
def test_race_origins_answers_from_the_faster_and_cancels_the_slower(example: Any, origin: Origin, slow: str) -> None:
    fast = "secondary" if slow == "primary" else "primary"
    origin.examples.page("/index.html", f"from the fast origin ({fast})", content_type="text/plain")
    bases = {slow: f"{origin.url}/hang/{slow}", fast: f"{origin.url}/site"}
    server = example(
        "race-origins",
        "--var", f"PRIMARY_ORIGIN:{bases['primary']}",
        "--var", f"SECONDARY_ORIGIN:{bases['secondary']}",
    )  # fmt: skip
    started = time.monotonic()
    response = server.get("/index.html")
    assert response.status_code == 200
    assert response.text == f"from the fast origin ({fast})"
    assert response.headers["x-served-by"] == fast
    assert time.monotonic() - started < 5  # the gate of the slow one never opens
    # The slow origin sees its client go away: the subrequest was really cancelled, ...
    origin.examples.wait_for(lambda: origin.examples.hanging.get(slow) == "client went away")
    # ... and the worker's waitUntil logged the outcome after the response.
    server.wait_for(rf"race GET /index.html: {fast} won after \d+ ms; {slow} cancelled \(AbortError: another origin")


def test_race_origins_survives_a_failing_origin_and_times_out(example: Any, origin: Origin) -> None:
    origin.examples.page("/a.txt", "mirror copy", content_type="text/plain")
    # The primary refuses connections (a port nobody listens on); the mirror answers.
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    server = example(
        "race-origins",
        "--var", f"PRIMARY_ORIGIN:http://127.0.0.1:{closed_port}",
        "--var", f"SECONDARY_ORIGIN:{origin.url}/site",
    )  # fmt: skip
    response = server.get("/a.txt")
    assert (response.status_code, response.text, response.headers["x-served-by"]) == (200, "mirror copy", "secondary")
    server.wait_for(r"race GET /a.txt: secondary won after \d+ ms; primary failed \(TypeError")
    # Both fail (the mirror with a 5xx): 502.
    origin.examples.pages["/b.txt"] = Page([b"overloaded"], status=503)
    assert server.get("/b.txt").status_code == 502
    server.wait_for(r"race GET /b.txt: no winner \(failed\) after \d+ ms; primary failed .*; secondary answered 503")

    # Neither answers in time: 504, and both hanging subrequests are cancelled.
    hanging = example(
        "race-origins",
        "--var", f"PRIMARY_ORIGIN:{origin.url}/hang/one",
        "--var", f"SECONDARY_ORIGIN:{origin.url}/hang/two",
        "--var", "TIMEOUT_MS:300",
    )  # fmt: skip
    response = hanging.get("/slow")
    assert response.status_code == 504
    for name in ("one", "two"):
        origin.examples.wait_for(lambda name=name: origin.examples.hanging.get(name) == "client went away")
    hanging.wait_for(r"race GET /slow: no winner \(timeout\) after \d+ ms; primary cancelled .*; secondary cancelled")


# --- esi --------------------------------------------------------------------------------------


def test_esi_includes_fragments_while_the_page_streams(example: Any, origin: Origin) -> None:
    pages = origin.examples
    pages.page(
        "/index.html",
        "<!doctype html><html><body><h1>News</h1>",
        Gate("rest-of-page"),
        '<header><esi:include src="/site/fragments/weather.html"></esi:include></header>'
        # A relative src; a failing src with an alt; a failure to ignore silently.
        '<main><esi:include src="fragments/missing.html" alt="fragments/stale-news.html"></esi:include>'
        '<esi:include src="/site/fragments/ads.html" onerror="continue"></esi:include>'
        # Not the page's origin: never fetched.
        '<esi:include src="http://metadata.internal/latest"></esi:include>'
        "<esi:remove><a href='/no-esi'>for clients without ESI</a></esi:remove></main>"
        '<footer><esi:include src="/site/fragments/footer.html"></esi:include></footer></body></html>',
    )
    pages.page("/fragments/weather.html", "<b>Wellington: 21°C</b>")
    pages.page("/fragments/stale-news.html", "<ul><li>yesterday</li></ul>")
    # A fragment with an include of its own, and one that includes itself.
    pages.page("/fragments/footer.html", '<small>© <esi:include src="/site/fragments/year.html"></esi:include></small>')
    pages.page("/fragments/year.html", "2024")
    server = example("esi", "--var", f"ORIGIN:{origin.url}/site")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("GET", "/index.html") as response:
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            chunks = response.iter_raw()
            # Streamed: the top of the page arrives while the origin holds the rest back.
            assert next(chunks) == b"<!doctype html><html><body><h1>News</h1>"
            origin.open_gate("rest-of-page")
            rest = b"".join(chunks).decode()
    assert rest == (
        "<header><b>Wellington: 21°C</b></header>"
        "<main><ul><li>yesterday</li></ul>"
        "<!-- esi:include failed: http://metadata.internal/latest --></main>"
        "<footer><small>© 2024</small></footer></body></html>"
    )
    assert pages.site_hits["/fragments/missing.html"] == 1
    assert pages.site_hits["/fragments/ads.html"] == 1
    server.wait_for(r"esi: http://metadata.internal/latest refused: not on http://127\.0\.0\.1")


def test_esi_self_closing_includes_split_across_chunks_and_nesting_limit(example: Any, origin: Origin) -> None:
    # lol-html treats <esi:include/> as an open element (HTML has no self-closing
    # custom tags); the example's text pass closes it, even split across chunks.
    pages = origin.examples
    pages.page(
        "/page.html",
        "<div><esi:inc",
        Pause(0.05),
        'lude src="/site/frag.html"/',
        Pause(0.05),
        "><p>after</p></div><esi:include src='/site/loop.html'/><p>end</p>",
    )
    pages.page("/frag.html", "<i>fragment</i>")
    pages.page("/loop.html", '[<esi:include src="/site/loop.html"/>]')
    server = example("esi", "--var", f"ORIGIN:{origin.url}/site")
    assert server.get("/page.html").text == (
        "<div><i>fragment</i><p>after</p></div>[[[<!-- esi:include too deeply nested: /site/loop.html -->]]]<p>end</p>"
    )
    assert pages.site_hits["/loop.html"] == 3
    # What is not HTML passes untouched.
    pages.page("/data.json", '{"x": "<esi:include src=\\"/site/frag.html\\"/>"}', content_type="application/json")
    assert server.get("/data.json").json() == {"x": '<esi:include src="/site/frag.html"/>'}


# --- geo-page ---------------------------------------------------------------------------------


def _countries_database(path: Path, countries: dict[str, str]) -> str:
    """A MaxMind country database mapping loopback addresses to countries (see test_visitor.py)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    for address, country in countries.items():
        writer.insert_network(IPSet([f"{address}/32"]), {"country": {"iso_code": country}})
    writer.to_db_file(str(path))
    return str(path)


def _visit(server: ServiceProcess, address: str) -> httpx.Response:
    """GET / from the given loopback address, so the GeoIP lookup sees that address."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        return client.get(server.url + "/")


def test_geo_page_per_country_with_fallback_and_cache(example: Any, origin: Origin, tmp_path: Path) -> None:
    database = _countries_database(
        tmp_path / "countries.mmdb", {"127.0.0.1": "NZ", "127.0.0.2": "DE", "127.0.0.4": "FR"}
    )  # 127.0.0.3 is in no country
    pages = origin.examples
    pages.page("/pages/nz.html", "<h1>Kia ora</h1>")
    pages.page("/pages/default.html", "<h1>Welcome</h1>")
    pages.pages["/pages/fr.html"] = Page([b"origin trouble"], status=503)
    server = example("geo-page", "--var", f"ORIGIN:{origin.url}/site", "--geoip-db", database)

    def visit(address: str) -> tuple[str, str, str, str]:
        response = _visit(server, address)
        assert response.status_code in (200, 503)
        headers = response.headers
        return (
            response.text,
            headers.get("x-geo-page", ""),
            headers.get("x-geo-country", ""),
            headers["cf-cache-status"],
        )

    assert visit("127.0.0.1") == ("<h1>Kia ora</h1>", "nz", "NZ", "MISS")
    assert visit("127.0.0.1") == ("<h1>Kia ora</h1>", "nz", "NZ", "HIT")
    assert pages.site_hits == {"/pages/nz.html": 1}

    # No page for Germany: the default one, cached under Germany's key.
    assert visit("127.0.0.2") == ("<h1>Welcome</h1>", "default", "DE", "MISS")
    assert visit("127.0.0.2") == ("<h1>Welcome</h1>", "default", "DE", "HIT")
    assert pages.site_hits == {"/pages/nz.html": 1, "/pages/de.html": 1, "/pages/default.html": 1}

    # A visitor in no known country gets the default page, under a key of its own.
    assert visit("127.0.0.3") == ("<h1>Welcome</h1>", "default", "unknown", "MISS")
    assert visit("127.0.0.3")[3] == "HIT"
    assert pages.site_hits["/pages/default.html"] == 2

    # An origin error is passed on but not cached: once the page is back, it is served.
    assert visit("127.0.0.4") == ("origin trouble", "", "", "BYPASS")
    pages.page("/pages/fr.html", "<h1>Bonjour</h1>")
    assert visit("127.0.0.4") == ("<h1>Bonjour</h1>", "fr", "FR", "MISS")
    assert visit("127.0.0.4")[3] == "HIT"
    assert pages.site_hits["/pages/fr.html"] == 2


# --- body-scanner -----------------------------------------------------------------------------

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example access key id


def _scanner(example: Any, origin: Origin) -> ServiceProcess:
    return example(  # type: ignore[no-any-return]
        "body-scanner",
        "--var", f"ORIGIN:{origin.url}/site",
        "--var", f"WEBHOOK_URL:{origin.url}/webhook",
        "--var", "SECRET_TOKENS:sk_live_4eC39HqLyjWDarjtT1zdp7dc, internal-db-password-xyzzy",
    )  # fmt: skip


def test_body_scanner_blocks_a_secret_split_across_chunks_and_notifies(example: Any, origin: Origin) -> None:
    import gzip

    pages = origin.examples
    # The key is cut in two, and the halves reach the worker as separate chunks.
    pages.page("/config.js", "const region = 'eu';\nconst key = '" + AWS_KEY[:9], Pause(0.1), AWS_KEY[9:] + "';\n",
               content_type="text/javascript")  # fmt: skip
    pages.page("/debug", "db: internal-db-", Pause(0.1), "password-xyzzy", content_type="text/plain")
    pages.page("/archive.txt", gzip.compress(f"old key {AWS_KEY}".encode()), content_type="text/plain",
               content_encoding="gzip")  # fmt: skip
    server = _scanner(example, origin)
    for path in ("/config.js", "/debug", "/archive.txt"):
        response = server.get(path)
        assert response.status_code == 403, path
        assert response.text.startswith("Forbidden")
        assert AWS_KEY not in response.text
    pages.wait_for(lambda: len(pages.webhooks) == 3)
    by_path = {hook["url"].split("/", 3)[3]: hook for hook in sorted(pages.webhooks, key=lambda h: h["url"])}
    assert by_path["config.js"] == {
        "url": f"{server.url}/config.js", "method": "GET", "action": "blocked with 403",
        "kind": "aws-access-key-id", "redacted": "AKIA" + "*" * 16,
    }  # fmt: skip
    assert by_path["debug"]["kind"] == "configured-token"
    assert by_path["debug"]["redacted"] == "inte" + "*" * (len("internal-db-password-xyzzy") - 4)
    assert by_path["archive.txt"]["kind"] == "aws-access-key-id"  # found in the decoded body
    assert "xyzzy" not in json.dumps(pages.webhooks) and AWS_KEY not in json.dumps(pages.webhooks)


def test_body_scanner_passes_clean_bodies_through(example: Any, origin: Origin) -> None:
    pages = origin.examples
    # Near misses: lower case, too short, a prefix of a configured token.
    text = "AKIAiosfodnn7example AKIA1234 sk_live_4eC39HqLyjWD ünïcödé\n"
    pages.page("/page.html", text[:30], Pause(0.05), text[30:], x_custom="kept")
    big = [hashlib.sha256(str(i).encode()).hexdigest().encode() * 2048 for i in range(40)]  # 40 x 128 KB
    pages.page("/big.bin", *big, content_type="application/octet-stream")
    server = _scanner(example, origin)
    response = server.get("/page.html")
    assert response.status_code == 200
    assert response.text == text
    assert response.headers["x-custom"] == "kept"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    # Past the buffer limit the body is streamed, and still arrives whole.
    body = server.get("/big.bin").content
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"".join(big)).hexdigest()
    assert server.get("/missing").status_code == 404
    time.sleep(0.3)
    assert pages.webhooks == []


def test_body_scanner_breaks_off_a_long_body_before_the_secret(example: Any, origin: Origin) -> None:
    pages = origin.examples
    block = b"." * 65536
    pages.page("/export.csv", *([block] * 24), b"row,AKIAIOSF", Pause(0.1), b"ODNN7EXAMPLE\n", *([block] * 4),
               content_type="text/csv")  # fmt: skip
    server = _scanner(example, origin)
    received = bytearray()
    with httpx.Client(timeout=30) as client, client.stream("GET", server.url + "/export.csv") as response:
        # 1.5 MB is more than the example holds back: the 200 has gone out before the secret is read.
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    # More than the buffer limit went out, then the body stopped before any byte of
    # the key (the 19 bytes a key may start in are always held back; how many dots
    # precede the cut depends on how the origin's writes were coalesced).
    assert len(received) > 1024 * 1024
    assert received == b"." * len(received)
    pages.wait_for(lambda: len(pages.webhooks) == 1)
    assert pages.webhooks[0]["action"] == "response broken off"
    assert pages.webhooks[0]["kind"] == "aws-access-key-id"
