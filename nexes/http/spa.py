"""The reference SPA (examples/spa/, built by `make spa`) at /app, in development only.

It is an example of a client, not part of the API: a deployment serves its own front end
from its own web server. `make run` points NEXES_SPA_DIR at examples/spa/dist. The files are
public (nexes.auth.permissions.PUBLIC_PREFIXES): the app asks for a token before it calls
the API, and every call is judged by that token.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from nexes.settings import Settings

PATH = "/app"


def routes(settings: Settings) -> list[BaseRoute]:
    """/app/ from NEXES_SPA_DIR in development when it is set; nothing otherwise (404)."""
    if not (settings.development and settings.spa_dir):
        return []
    return [Mount(PATH, StaticFiles(directory=settings.spa_dir, html=True, check_dir=False))]
