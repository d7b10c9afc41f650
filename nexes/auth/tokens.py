"""Bearer tokens: checking JWTs with PyJWT, and minting development ones.

The accepted algorithms follow the configured keys, never `none`: HS256 only with
NEXES_JWT_SECRET; RS256 and ES256 only from keys of a JWKS (NEXES_JWKS_URL or
NEXES_JWKS_FILE), chosen by `kid`. A JWKS URL is fetched in a thread (PyJWT's client
blocks), once at start and again for an unknown `kid`, at most once a minute.

Every token must carry `exp` and `sub` and match NEXES_JWT_ISSUER and NEXES_JWT_AUDIENCE,
with NEXES_JWT_LEEWAY seconds of clock skew either way. A checked token is remembered by
its text (bounded) so the signature is verified once; `exp` and `nbf` are compared on
every use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from nexes.auth.identity import ROLES, Viewer
from nexes.errors import Code, NexesError
from nexes.settings import Settings

log = logging.getLogger(__name__)

JWKS_REFRESH_SECONDS = 60.0
CACHE_SIZE = 10_000  # checked tokens remembered by their text
MAX_TOKEN_BYTES = 8_192
MAX_TTL = 30 * 86400.0  # the longest-lived token `nexes token` mints


class Unauthenticated(NexesError):
    """No usable token; `reason` is one of missing, malformed, expired, revoked,
    bad_signature, invalid (a claim does not match)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(Code.UNAUTHENTICATED, message)
        self.reason = reason


def missing() -> Unauthenticated:
    return Unauthenticated("missing", "no bearer token: send the header Authorization: Bearer <token>")


@dataclass(frozen=True, slots=True)
class _Checked:
    viewer: Viewer
    expires: float
    not_before: float | None


def roles_of(claims: dict[str, Any], claim: str) -> frozenset[str]:
    """The known role names under `claim`: a literal claim name first, else a JSON Pointer
    (`/realm_access/roles`). A list of names, or one space-separated string."""
    value: Any = claims.get(claim)
    if value is None and claim.startswith("/"):
        value = claims
        for raw in claim[1:].split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                value = None
                break
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        return frozenset()
    return frozenset(r for r in value if isinstance(r, str) and r in ROLES)


class KeySet:
    """The JWKS keys by `kid`: from a file, or fetched from a URL (in a thread)."""

    def __init__(self, url: str = "", file: str = "") -> None:
        self.url = url
        self.file = file
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -JWKS_REFRESH_SECONDS
        self._lock = threading.Lock()
        if file:
            self._keys = _parse_jwks(Path(file).read_text())

    def __bool__(self) -> bool:
        return bool(self.url or self.file)

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Fetch the set again unless that happened within the last minute; whether it did."""
        if not self.url or time.monotonic() - self._fetched_at < JWKS_REFRESH_SECONDS:
            return False
        self._fetched_at = time.monotonic()
        try:
            self._keys = await asyncio.to_thread(self._fetch)
        except Exception as exc:  # the set stays as it was; the token is refused
            log.warning("fetching the JWKS from %s failed: %s", self.url, exc)
            return False
        return True

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        with self._lock:
            client = jwt.PyJWKClient(self.url, cache_keys=False, cache_jwk_set=False, timeout=5)
            return {key.key_id: key for key in client.get_jwk_set().keys if key.key_id}


def _parse_jwks(text: str) -> dict[str, jwt.PyJWK]:
    keys = jwt.PyJWKSet.from_dict(json.loads(text)).keys
    return {key.key_id: key for key in keys if key.key_id}


def _algorithm_of(key: jwt.PyJWK) -> str | None:
    """The one algorithm a JWKS key is used with here: RS256 for RSA, ES256 for P-256."""
    if isinstance(key.Algorithm, RSAAlgorithm):
        return "RS256"
    if isinstance(key.Algorithm, ECAlgorithm) and getattr(key.key, "curve", None) is not None:
        return "ES256" if key.key.curve.name == "secp256r1" else None
    return None


class TokenVerifier:
    """Checks bearer tokens against the settings' key sources."""

    def __init__(self, settings: Settings) -> None:
        self.secret = str(settings.jwt_secret).encode()
        self.keys = KeySet(settings.jwks_url, settings.jwks_file)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway
        self.roles_claim = settings.jwt_roles_claim
        self._checked: OrderedDict[str, _Checked] = OrderedDict()

    async def start(self) -> None:
        """Fetch a JWKS URL's keys once before serving."""
        if self.keys.url:
            await self.keys.refresh()

    async def verify(self, token: str) -> Viewer:
        """The token's viewer, or Unauthenticated saying why not."""
        known = self._checked.get(token)
        now = time.time()
        if known is None:
            known = await self._check(token)
            self._remember(token, known)
        if now > known.expires + self.leeway:
            raise Unauthenticated("expired", f"the token expired at {_iso(known.expires)}")
        if known.not_before is not None and now < known.not_before - self.leeway:
            raise Unauthenticated("invalid", f"the token is not valid before {_iso(known.not_before)}")
        return known.viewer

    def _remember(self, token: str, checked: _Checked) -> None:
        self._checked[token] = checked
        if len(self._checked) > CACHE_SIZE:
            self._checked.popitem(last=False)

    async def _check(self, token: str) -> _Checked:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("malformed", f"the bearer token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("malformed", "the bearer token is malformed: not a signed JWT") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.secret:
            key = self.secret
        elif alg in ("RS256", "ES256") and self.keys:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise Unauthenticated("malformed", "the token has no `kid` to choose a key by")
            jwk = self.keys.get(kid)
            if jwk is None and await self.keys.refresh():
                jwk = self.keys.get(kid)
            if jwk is None:
                raise Unauthenticated("bad_signature", f"no configured key has kid {kid!r}")
            if _algorithm_of(jwk) != alg:
                raise Unauthenticated("bad_signature", f"the key {kid!r} is not used with {alg}")
            key = jwk.key
        else:
            raise Unauthenticated("bad_signature", f"tokens signed with {alg!r} are not accepted here")
        claims = self._decode(token, key, alg)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("invalid", "the token has no subject (`sub`)")
        jti = claims.get("jti")
        viewer = Viewer(
            subject=subject,
            roles=roles_of(claims, self.roles_claim),
            token_id=jti if isinstance(jti, str) and jti else None,
            expires=float(claims["exp"]),
        )
        nbf = claims.get("nbf")
        return _Checked(viewer, float(claims["exp"]), float(nbf) if isinstance(nbf, int | float) else None)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            when = f" at {_iso(float(exp))}" if isinstance(exp, int | float) else ""
            raise Unauthenticated("expired", f"the token expired{when}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "bad_signature", "the token's signature does not verify with the configured key"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("invalid", "the token is not valid yet (`nbf`)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "invalid", f"the token is not for this audience (expected {self.audience!r})"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("invalid", f"the token is from another issuer (expected {self.issuer!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated("invalid", f"the token has no `{exc.claim}` claim") from None
        except jwt.DecodeError:
            raise Unauthenticated("malformed", "the bearer token is malformed: not a signed JWT") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("invalid", f"the token is not valid: {exc}") from None
        return claims


def bearer(authorization: str) -> str:
    """The token of an Authorization header's value; Unauthenticated when absent or not Bearer."""
    if not authorization:
        raise missing()
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed", "the Authorization header must be `Bearer <token>`")
    return token.strip()


def mint(settings: Settings, roles: Iterable[str], subject: str = "dev", ttl: float = 3600.0) -> str:
    """A token signed with NEXES_JWT_SECRET (HS256), for development, tests and scripts."""
    secret = str(settings.jwt_secret)
    if not secret:
        raise NexesError(Code.BAD_USER_INPUT, "NEXES_JWT_SECRET is not set: no key to sign with")
    unknown = sorted(set(roles) - ROLES)
    if unknown:
        raise NexesError(Code.BAD_USER_INPUT, f"unknown role(s) {', '.join(unknown)}: use {', '.join(sorted(ROLES))}")
    if not 0 < ttl <= MAX_TTL:
        raise NexesError(Code.BAD_USER_INPUT, f"a token lives between 1 and {MAX_TTL:.0f} seconds")
    now = int(time.time())
    claim = settings.jwt_roles_claim if not settings.jwt_roles_claim.startswith("/") else "roles"
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
        "jti": uuid.uuid4().hex,
        claim: sorted(set(roles)),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
