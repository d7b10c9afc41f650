"""GraphiQL, served from the package with no network: the page at /graphiql (and at GET
/graphql without a query), its files under /graphiql/assets/.

Who gets it: everyone in development, where the page carries an admin token of its own
(minted with the development secret, so the IDE works as it opens); in production only with
NEXES_GRAPHIQL=on, and then the page carries no token: the user pastes their own into the
headers pane, and each operation, introspection included, is judged by that token
(nexes.execution.permissions: `__schema` and `__type` need analyst or admin in production).
The page and its files are public (nexes.auth.permissions.PUBLIC_PATHS): they are the same
for every caller and reveal nothing of the data. Its Content-Security-Policy lets it load
and connect to this origin only.

The files in graphiql/static/vendor/ are GraphiQL's and React's plain script builds,
copied there from npm by infra/graphiql (`make graphiql`); graphiql/examples/ holds the
analysts' example queries (docs/analysts.md), opened as saved tabs.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nexes.auth.tokens import mint
from nexes.http import headers
from nexes.settings import Settings

PAGE_PATH = "/graphiql"
ASSETS_PATH = "/graphiql/assets"
GRAPHQL_PATH = "/graphql"
DEV_IDE_SUBJECT = "dev:graphiql"
DEV_IDE_TTL = 12 * 3600.0
TOKEN_PLACEHOLDER = "Bearer <your token>"  # noqa: S105 (the text a user replaces)
VARIABLES_PREFIX = "# variables:"

HERE = Path(str(resources.files("nexes.http"))) / "graphiql"
STATIC = HERE / "static"
VENDOR_FILES = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "graphiql.min.css",
    "plugin-explorer.umd.js",
    "plugin-explorer.css",
)
# Scripts and styles from this origin only (GraphiQL's editors set inline styles); fonts and
# icons are data: URLs inside its CSS; the only request it makes is to this API.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_INSTALLED = (
    "GraphiQL's files are not installed in this copy of nexes (nexes/http/graphiql/static/vendor/): "
    "run `make graphiql` in the checkout, or install a wheel built after it\n"
)


def enabled(settings: Settings) -> bool:
    return settings.development or settings.graphiql


def routes(settings: Settings) -> list[BaseRoute]:
    """The page and its files when GraphiQL is on; nothing otherwise (404)."""
    if not enabled(settings):
        return []
    return [
        Route(PAGE_PATH, page, methods=["GET"]),
        Mount(ASSETS_PATH, StaticFiles(directory=STATIC, check_dir=False)),
    ]


async def page(request: Request) -> Response:
    return page_response(request.app.state.settings)


def page_response(settings: Settings) -> Response:
    if not installed():
        return PlainTextResponse(NOT_INSTALLED, status_code=503)
    response = HTMLResponse(page_html(settings))
    # The development page holds a token: never cached, never framed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def installed() -> bool:
    return all((STATIC / "vendor" / name).is_file() for name in VENDOR_FILES)


def page_html(settings: Settings) -> str:
    config = {"url": GRAPHQL_PATH, "headers": _headers(settings), "examples": examples()}
    # JSON inside <script>: "<" escaped, so no text of it can close the element.
    text = orjson.dumps(config).decode().replace("<", "\\u003c")
    return _template().replace("__CONFIG__", text, 1)


def _headers(settings: Settings) -> dict[str, str]:
    if settings.development and str(settings.jwt_secret):
        token = mint(settings, ["admin"], subject=DEV_IDE_SUBJECT, ttl=DEV_IDE_TTL)
        return {headers.AUTHORIZATION.name: f"Bearer {token}"}
    return {headers.AUTHORIZATION.name: TOKEN_PLACEHOLDER}


@cache
def _template() -> str:
    return (HERE / "index.html").read_text(encoding="utf-8")


@cache
def examples() -> list[dict[str, Any]]:
    """The saved tabs: each example file's query, and its variables from the file's
    `# variables: {...}` line (JSON), in file-name order."""
    tabs = []
    for path in sorted((HERE / "examples").glob("*.graphql")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        variables = [line[len(VARIABLES_PREFIX) :] for line in lines if line.startswith(VARIABLES_PREFIX)]
        tab: dict[str, Any] = {"query": "".join(line for line in lines if not line.startswith(VARIABLES_PREFIX))}
        if variables:
            tab["variables"] = json.dumps(json.loads(variables[0]), indent=2)
        tabs.append(tab)
    return tabs
