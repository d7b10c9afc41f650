"""Who is asking, at the HTTP edge: every request but the public ones carries a valid
bearer token, or is answered 401 before it reaches an endpoint.

Public (nexes.auth.permissions.PUBLIC_PATHS and PUBLIC_PREFIXES): liveness, the short
health, and GraphiQL's page and files (also GET /graphql without a query); preflights are
answered by the CORS middleware outside this one. A route with roles of its own
(permissions.ROUTES) answers 403 to other callers. The caller is put in the request's state
(`scope["state"]["viewer"]`) for the endpoints; GraphQL's root fields are judged per
operation by nexes.execution.permissions.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from nexes.auth.identity import ANONYMOUS, Viewer
from nexes.auth.permissions import PUBLIC_PATHS, PUBLIC_PREFIXES, ROUTES, describe
from nexes.auth.revocation import Revocations
from nexes.auth.tokens import TokenVerifier, Unauthenticated, bearer
from nexes.errors import Code
from nexes.http import headers
from nexes.http.errors import error_payload, media_type_of, send_json
from nexes.http.headers import JSON

GRAPHQL_PATH = "/graphql"
REALM = 'Bearer realm="nexes"'
_UNSAFE = re.compile(r'["\\\r\n]')


class Authenticator:
    """Checks a request's Authorization header: the token, then its revocation."""

    def __init__(self, verifier: TokenVerifier, revocations: Revocations) -> None:
        self.verifier = verifier
        self.revocations = revocations

    async def viewer(self, authorization: str) -> Viewer:
        viewer = await self.verifier.verify(bearer(authorization))
        if viewer.token_id is not None and await self.revocations.is_revoked(viewer.token_id):
            raise Unauthenticated("revoked", "the token has been revoked; sign in again")
        return viewer


def is_public(scope: Scope) -> bool:
    path = scope["path"]
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    # GraphiQL's page: GET /graphql with no parameters at all (a GET with a query, or with a
    # persisted query's extensions, runs an operation, and needs a token).
    return path == GRAPHQL_PATH and scope["method"] == "GET" and not scope.get("query_string")


class AuthMiddleware:
    """401 without a valid token (but on public paths), 403 on a route the roles may not use."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        authorization = headers.scope_header(scope["headers"], headers.AUTHORIZATION)
        public = is_public(scope)
        viewer = ANONYMOUS
        if authorization or not public:
            try:
                viewer = await self.authenticator.viewer(authorization)
            except Unauthenticated as exc:
                if not public:
                    await unauthenticated(send, exc, media_type_of(scope))
                    return
        roles = ROUTES.get((scope["method"], scope["path"]))
        if roles is not None and not viewer.has_any(roles):
            message = f"{scope['method']} {scope['path']} needs one of the roles {describe(roles)}"
            payload = {"errors": [error_payload(Code.FORBIDDEN, message)]}
            await send_json(send, payload, 403, media_type=media_type_of(scope))
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)


async def unauthenticated(send: Send, exc: Unauthenticated, media_type: str = JSON) -> None:
    """401 with WWW-Authenticate (RFC 6750): the bare challenge when no token came."""
    challenge = REALM
    if exc.reason != "missing":
        description = _UNSAFE.sub("'", exc.message)
        challenge = f'{REALM}, error="invalid_token", error_description="{description}"'
    payload = {"errors": [error_payload(Code.UNAUTHENTICATED, exc.message, reason=exc.reason)]}
    challenge_header = (headers.WWW_AUTHENTICATE.raw, challenge.encode("latin-1", "replace"))
    await send_json(send, payload, 401, (challenge_header,), media_type)


def viewer_of(scope: Scope) -> Viewer:
    """The caller AuthMiddleware found (anonymous where no middleware ran, as in unit tests)."""
    state = scope.get("state")
    viewer = state.get("viewer") if state else None
    return viewer if isinstance(viewer, Viewer) else ANONYMOUS
