"""Who is asking: bearer tokens checked with PyJWT (HS256 with the secret, RS256/ES256 from
a JWKS by kid), revocation in the real Redis, the HTTP edge's 401s and public paths, CORS,
and `nexes token`.

The JWKS URL is served by a real HTTP server on loopback in this process (the project has
no identity provider of its own); it counts its fetches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.datastructures import Secret

from nexes.auth import tokens
from nexes.auth.revocation import revoke
from nexes.auth.tokens import TokenVerifier, Unauthenticated, mint, roles_of
from nexes.settings import Settings, SettingsError
from tests.conftest import client_for, gql
from tests.support.databases import environ_for

PAGE = "{ serviceOrders(first: 1) { edges { node { sodNumber } } } }"
ISSUER, AUDIENCE = "nexes", "nexes-api"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "roles": ["viewer"], **extra}


def hs256(settings: Settings, **extra: Any) -> str:
    return jwt.encode(claims(**extra), str(settings.jwt_secret), algorithm="HS256")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    return {"keys": [{**rsa_jwk, "kid": "rsa-1", "use": "sig"}, {**ec_jwk, "kid": "ec-1", "use": "sig"}]}


async def refused(verifier: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    return caught.value


async def test_a_valid_hs256_token_gives_its_subject_and_known_roles(settings: Settings) -> None:
    verifier = TokenVerifier(settings)
    viewer = await verifier.verify(hs256(settings, roles=["operator", "viewer", "superuser"], jti="j-1"))
    assert viewer.subject == "alice"
    assert viewer.roles == {"operator", "viewer"}  # unknown role names are dropped
    assert viewer.token_id == "j-1"


@pytest.mark.parametrize(
    ("extra", "reason", "words"),
    [
        ({"exp": int(time.time()) - 3600}, "expired", "expired at"),
        ({"nbf": int(time.time()) + 3600}, "invalid", "not valid"),
        ({"iss": "https://evil.example"}, "invalid", "issuer"),
        ({"aud": "someone-else"}, "invalid", "audience"),
        ({"sub": ""}, "invalid", "subject"),
    ],
)
async def test_claims_are_checked_and_the_message_says_which_failed(
    settings: Settings, extra: dict[str, Any], reason: str, words: str
) -> None:
    error = await refused(TokenVerifier(settings), hs256(settings, **extra))
    assert error.reason == reason and words in error.message


async def test_the_leeway_admits_a_token_just_expired_and_no_more(settings: Settings) -> None:
    verifier = TokenVerifier(replace(settings, jwt_leeway=30))
    assert (await verifier.verify(hs256(settings, exp=int(time.time()) - 10))).subject == "alice"
    assert (await refused(verifier, hs256(settings, exp=int(time.time()) - 60))).reason == "expired"


async def test_a_remembered_token_is_refused_once_it_expires(settings: Settings) -> None:
    verifier = TokenVerifier(replace(settings, jwt_leeway=0))
    token = hs256(settings, exp=int(time.time()) + 2)
    assert (await verifier.verify(token)).subject == "alice"
    await asyncio.sleep(3.1)
    assert (await refused(verifier, token)).reason == "expired"


async def test_a_required_claim_missing_is_named(settings: Settings) -> None:
    body = claims()
    del body["exp"]
    token = jwt.encode(body, str(settings.jwt_secret), algorithm="HS256")
    assert "`exp`" in (await refused(TokenVerifier(settings), token)).message


async def test_wrong_secret_alg_none_and_garbage_are_refused(settings: Settings) -> None:
    verifier = TokenVerifier(settings)
    wrong = jwt.encode(claims(), "not-the-secret-" * 3, algorithm="HS256")
    assert (await refused(verifier, wrong)).reason == "bad_signature"
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert (await refused(verifier, unsigned)).reason == "bad_signature"
    hs512 = jwt.encode(claims(), str(settings.jwt_secret) * 2, algorithm="HS512")
    assert (await refused(verifier, hs512)).reason == "bad_signature"
    for garbage in ("abc", "a.b.c", "Bearer", "x" * 10_000):
        assert (await refused(verifier, garbage)).reason == "malformed"


async def test_jwks_file_rs256_and_es256_by_kid(
    settings: Settings, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key, ec_key)))
    verifier = TokenVerifier(replace(settings, jwt_secret=Secret(""), jwks_file=str(path)))
    rs = jwt.encode(claims(sub="rsa-user"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub="ec-user"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(rs)).subject == "rsa-user"
    assert (await verifier.verify(es)).subject == "ec-user"
    # The EC key's kid on an RSA signature, an unknown kid, and no HS256 without a secret.
    crossed = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert (await refused(verifier, crossed)).reason == "bad_signature"
    unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
    assert "nope" in (await refused(verifier, unknown)).message
    assert (await refused(verifier, hs256(settings))).reason == "bad_signature"


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(
    settings: Settings, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    """Algorithm confusion: the attacker signs HS256 with the RSA public key as the secret."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key, ec_key)))
    verifier = TokenVerifier(replace(settings, jwt_secret=Secret(""), jwks_file=str(path)))
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # PyJWT refuses to sign with a PEM as an HMAC secret, so the forgery is made by hand.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    signed += "." + b64(json.dumps(claims(roles=["admin"])).encode())
    forged = signed + "." + b64(hmac.new(public_pem, signed.encode(), hashlib.sha256).digest())
    assert (await refused(verifier, forged)).reason == "bad_signature"


class _JWKSServer:
    """A JWKS endpoint on loopback that counts its fetches."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                data = json.dumps(owner.body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Iterator[_JWKSServer]:
    server = _JWKSServer(jwks(rsa_key, ec_key))
    yield server
    server.server.shutdown()


async def test_a_jwks_url_is_fetched_once_and_an_unknown_kid_refetches_at_most_once_a_minute(
    settings: Settings, rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(replace(settings, jwt_secret=Secret(""), jwks_url=jwks_server.url))
    await verifier.start()
    assert jwks_server.fetches == 1
    for n in range(5):
        token = jwt.encode(claims(sub=f"u{n}"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
        assert (await verifier.verify(token)).subject == f"u{n}"
    assert jwks_server.fetches == 1  # known kid: the cached keys
    # A key rotated in: its kid is unknown until the set is fetched again.
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_jwk = {**RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True), "kid": "rsa-2"}
    jwks_server.body = {"keys": [*jwks_server.body["keys"], new_jwk]}
    rotated = jwt.encode(claims(sub="rotated"), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    assert (await refused(verifier, rotated)).reason == "bad_signature"  # fetched within the minute: not again
    assert jwks_server.fetches == 1
    monkeypatch.setattr(tokens, "JWKS_REFRESH_SECONDS", 0.0)
    assert (await verifier.verify(rotated)).subject == "rotated"
    assert jwks_server.fetches == 2
    monkeypatch.setattr(tokens, "JWKS_REFRESH_SECONDS", 60.0)
    for n in range(20):  # a flood of unknown kids costs at most one fetch a minute
        unknown = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": f"forged-{n}"})
        await refused(verifier, unknown)
    assert jwks_server.fetches == 2


async def test_the_jwks_fetch_does_not_block_the_event_loop(
    settings: Settings, jwks_server: _JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    original = tokens.KeySet._fetch

    def slow_fetch(self: tokens.KeySet) -> dict[str, jwt.PyJWK]:
        started.set()
        time.sleep(0.5)
        return original(self)

    monkeypatch.setattr(tokens.KeySet, "_fetch", slow_fetch)
    verifier = TokenVerifier(replace(settings, jwt_secret=Secret(""), jwks_url=jwks_server.url))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not started.is_set() or ticks < 20:
            ticks += 1
            await asyncio.sleep(0.01)

    await asyncio.gather(verifier.start(), ticker())
    assert ticks >= 20 and jwks_server.fetches == 1


@pytest.mark.parametrize(
    ("claim", "body"),
    [
        ("roles", {"roles": ["admin", "viewer"]}),
        ("roles", {"roles": "admin viewer"}),
        ("https://example.com/roles", {"https://example.com/roles": ["admin", "viewer"]}),
        ("/realm_access/roles", {"realm_access": {"roles": ["admin", "viewer", "offline_access"]}}),
    ],
)
def test_the_roles_claim_is_a_literal_name_first_else_a_json_pointer(claim: str, body: dict[str, Any]) -> None:
    assert roles_of(body, claim) == {"admin", "viewer"}


def test_a_roles_claim_of_the_wrong_shape_gives_no_role() -> None:
    assert roles_of({"roles": {"admin": True}}, "roles") == frozenset()
    assert roles_of({"realm_access": ["admin"]}, "/realm_access/roles") == frozenset()


# The HTTP edge


async def test_no_token_answers_401_with_the_bearer_challenge(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as client:
        response = await client.post("/graphql", json={"query": PAGE})
        export = await client.get("/api/exports/service-orders.csv")
        upload = await client.post("/api/imports?filename=a.csv", content=b"x", headers={"X-Nexes-CSRF": "1"})
    for answer in (response, export, upload):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="nexes"'
        body = answer.json()
        assert "data" not in body
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "Authorization: Bearer" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: "Basic dXNlcjpwYXNz", "malformed"),
        (lambda s: "Bearer not.a.jwt", "malformed"),
        (lambda s: "Bearer " + hs256(s, exp=int(time.time()) - 3600), "expired"),
        (
            lambda s: "Bearer " + jwt.encode(claims(), "wrong-secret-wrong-secret-wrong!", algorithm="HS256"),
            "bad_signature",
        ),
    ],
)
async def test_a_bad_token_answers_401_saying_why(seeded: Settings, make: Any, reason: str) -> None:
    async with client_for(seeded, roles=()) as client:
        body = await gql(client, PAGE, **{"Authorization": make(seeded)})
    response = body["_response"]
    assert response.status_code == 401
    assert body["errors"][0]["extensions"]["reason"] == reason
    assert response.headers["www-authenticate"].startswith('Bearer realm="nexes", error="invalid_token"')


async def test_a_revoked_token_is_refused_within_seconds(seeded: Settings) -> None:
    token = mint(seeded, ["viewer"], subject="leaver")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with client_for(seeded, roles=()) as client:
        auth = {"Authorization": f"Bearer {token}"}
        assert (await gql(client, PAGE, **auth))["_response"].status_code == 200
        revoke(seeded.redis_url, jti, time.time() + 60, seeded.redis_timeout)
        deadline = time.monotonic() + 10
        body = await gql(client, PAGE, **auth)
        while body["_response"].status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            body = await gql(client, PAGE, **auth)
    assert body["_response"].status_code == 401
    assert body["errors"][0]["extensions"]["reason"] == "revoked"


async def test_public_paths_answer_without_a_token_and_reveal_no_topology(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as client:
        live = await client.get("/api/health/live")
        short = await client.get("/api/health")
        detail = await client.get("/api/health/detail")
        ide = await client.get("/graphql")
        query_by_get = await client.get("/graphql", params={"query": "{ __typename }"})
        persisted_by_get = await client.get(
            "/graphql", params={"extensions": '{"persistedQuery": {"version": 1, "sha256Hash": "' + "0" * 64 + '"}}'}
        )
    assert live.status_code == 200
    assert short.status_code in (200, 503) and set(short.json()) == {"status"}
    assert detail.status_code == 401
    assert ide.status_code != 401  # the IDE's page (production: no IDE, a clear 400)
    assert query_by_get.status_code == 401
    assert persisted_by_get.status_code == 401  # a hash alone runs an operation too


async def test_detailed_health_needs_an_admin(seeded: Settings) -> None:
    async with client_for(seeded, roles=("viewer", "operator", "analyst")) as client:
        refused_answer = await client.get("/api/health/detail")
    async with client_for(seeded, roles=("admin",)) as client:
        allowed = await client.get("/api/health/detail")
    assert refused_answer.status_code == 403
    assert refused_answer.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert allowed.status_code in (200, 503) and "status" in allowed.json()


async def test_cors_preflight_needs_no_token_and_names_the_headers(seeded: Settings) -> None:
    origin = "https://spa.example"
    async with client_for(replace(seeded, cors_origins=(origin,)), roles=()) as client:
        preflight = await client.options(
            "/graphql",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, apollo-require-preflight, x-apollo-operation-name",
            },
        )
        refused_answer = await client.post("/graphql", json={"query": PAGE}, headers={"Origin": origin})
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "apollo-require-preflight", "x-apollo-operation-name"):
        assert name in allowed
    exposed = refused_answer.headers["access-control-expose-headers"].lower()
    for name in ("www-authenticate", "x-nexes-lsn", "x-ratelimit-remaining", "retry-after"):
        assert name in exposed
    assert refused_answer.status_code == 401


def test_the_api_refuses_to_start_without_a_key_source_or_a_cursor_secret(settings: Settings) -> None:
    from nexes.http.app import create_app

    bare = replace(settings, jwt_secret=Secret(""), jwks_url="", jwks_file="", cursor_secret=Secret(""))
    with pytest.raises(SettingsError) as caught:
        create_app(bare)
    assert "NEXES_JWT_SECRET" in str(caught.value) and "NEXES_CURSOR_SECRET" in str(caught.value)


async def test_graphiql_in_development_carries_a_working_token(seeded: Settings) -> None:
    async with client_for(replace(seeded, env="development"), roles=()) as client:
        page = (await client.get("/graphql")).text
        match = re.search(r'"Authorization":"Bearer ([^"]+)"', page)
        assert match, "the page's default headers carry a token"
        body = await gql(client, PAGE, Authorization=f"Bearer {match[1]}")
    assert body["_response"].status_code == 200 and body["data"]["serviceOrders"]["edges"]


async def test_production_serves_no_ide_and_mints_no_token(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as client:
        page = await client.get("/graphql")
    assert "Bearer" not in page.text


async def test_nexes_token_prints_a_token_the_api_accepts(seeded: Settings) -> None:
    env = {**environ_for(seeded.primary_url.rsplit("/", 1)[-1])}
    done = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "token", "--role", "operator", "--role", "analyst", "--sub", "bob"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    async with client_for(seeded, roles=()) as client:
        body = await gql(client, PAGE, Authorization=f"Bearer {token}")
    assert body["_response"].status_code == 200
    viewer = await TokenVerifier(seeded).verify(token)
    assert viewer.subject == "bob" and viewer.roles == {"operator", "analyst"}
    bad = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "token", "--role", "root"], env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "unknown role" in bad.stderr


def test_nexes_serve_in_production_exits_naming_what_is_missing(settings: Settings) -> None:
    env = {**environ_for(settings.primary_url.rsplit("/", 1)[-1]), "NEXES_JWT_SECRET": "", "NEXES_CURSOR_SECRET": ""}
    done = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "NEXES_JWT_SECRET" in done.stderr and "NEXES_CURSOR_SECRET" in done.stderr


async def test_a_401_answers_in_the_media_type_the_client_asked_for(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as client:
        modern = await client.post(
            "/graphql", json={"query": PAGE}, headers={"Accept": "application/graphql-response+json"}
        )
        plain = await client.post("/graphql", json={"query": PAGE})
    assert modern.status_code == plain.status_code == 401
    assert modern.headers["content-type"] == "application/graphql-response+json"
    assert plain.headers["content-type"] == "application/json"
