"""The stock executor beside the app's own pipeline, on the same document and database."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nexes.auth.identity import ADMIN_VIEWER as ADMIN
from nexes.execution.schema import make_schema
from nexes.settings import Settings
from tests.conftest import client_for


async def stock_and_fast(seeded: Settings, document: str, variables: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The document run by the stock executor and by the app's own pipeline (cached parse and
    validation, then the fast executor, with pages rendered by PostgreSQL), against the real
    database."""
    from nexes.execution.pipeline import Pipeline
    from nexes.resolvers.context import Context

    async with client_for(seeded) as client:
        state = client.app.state  # type: ignore[attr-defined]

        def context(render: bool = True) -> Context:
            return Context(
                request_id="equivalence",
                # the reference: Python builds every answer (no JSON made by PostgreSQL)
                settings=replace(state.settings, render_sql=render),
                router=state.router,
                cursors=state.cursors,
                viewer=ADMIN,
            )

        expected = await Pipeline(make_schema(None)).run(document, variables, None, context(False), queries_only=True)
        got = await state.pipeline.run(document, variables, None, context(), queries_only=True)
    return expected, got
