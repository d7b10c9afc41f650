"""The GraphQL schema. A stub until the read API lands (issue: GraphQL read API)."""

from __future__ import annotations

import strawberry


@strawberry.type
class Query:
    @strawberry.field(description="Answers 'pong': the API process is serving GraphQL.")
    def ping(self) -> str:
        return "pong"


schema = strawberry.Schema(query=Query)
