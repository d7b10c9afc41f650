"""ASGI app factory: routes and lifespan."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL

from nexes.schema import schema
from nexes.settings import Settings


async def health_live(request: Request) -> JSONResponse:
    """Liveness: answers without touching any dependency."""
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings) -> Starlette:
    graphql = GraphQL(schema, graphql_ide="graphiql" if settings.development else None)
    return Starlette(
        routes=[
            Route("/api/health/live", health_live),
            Route("/graphql", graphql, methods=["GET", "POST"]),
        ]
    )


def app_from_env() -> Starlette:
    """Entry point for uvicorn's factory mode: settings from the environment."""
    from nexes import settings as settings_module

    return create_app(settings_module.load())
