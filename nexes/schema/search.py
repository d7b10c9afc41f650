"""Global search: `search(query, first, after, filter)` and the admin `reindexSearch`."""

from __future__ import annotations

import datetime as dt
from enum import Enum

import strawberry

from nexes.resolvers import search as resolvers
from nexes.resolvers.orders import Info
from nexes.schema.connections import PageInfo
from nexes.schema.payloads import UserError
from nexes.schema.types import ServiceOrder, Status


@strawberry.enum(description="Which engine answered: Typesense, or PostgreSQL (pg_trgm) while Typesense is down.")
class SearchEngine(Enum):
    TYPESENSE = "TYPESENSE"
    POSTGRES = "POSTGRES"


@strawberry.input(description="All given conditions must hold. createdFrom is inclusive, createdTo exclusive.")
class SearchFilter:
    status: list[Status] | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


@strawberry.type(description="Where the query matched: a field and its text with the match in <mark> tags.")
class SearchHighlight:
    field: str
    snippet: str


@strawberry.type
class SearchEdge:
    cursor: str
    node: ServiceOrder
    score: float = strawberry.field(description="Relevance; comparable only within one answer.")
    highlights: list[SearchHighlight]


@strawberry.type
class SearchConnection:
    edges: list[SearchEdge]
    page_info: PageInfo
    found: int = strawberry.field(description="Matching orders: exact from Typesense; from PostgreSQL at most 1,000.")
    found_exact: bool = strawberry.field(description="Whether found is exact (false: a lower bound).")
    engine: SearchEngine


@strawberry.type
class SearchQueries:
    @strawberry.field(
        description="Orders matching part of a SOD number, a customer's name or code (typos allowed), or words "
        "of a description; best match first. Default 20 per page."
    )
    async def search(
        self,
        info: Info,
        query: str,
        first: int | None = None,
        after: str | None = None,
        filter: SearchFilter | None = None,
    ) -> SearchConnection:
        return await resolvers.search(info, query, first, after, filter)


@strawberry.type
class ReindexSearchPayload:
    queued: bool
    errors: list[UserError]


@strawberry.type
class SearchMutation:
    @strawberry.mutation(
        description="Admin: rebuild the search index into a new collection and swap the alias to it, in a "
        "background job (nexes reindex runs the same); searches keep answering throughout."
    )
    async def reindex_search(self, info: Info) -> ReindexSearchPayload:
        errors = await resolvers.reindex_search(info)
        return ReindexSearchPayload(queued=not errors, errors=errors)
