"""Global search's types: the filter, the hits with their highlights, and reindexSearch's payload."""

from __future__ import annotations

import datetime as dt
from enum import Enum

import strawberry

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


@strawberry.type(
    description="Where the query matched: a field and its text, HTML-escaped, with the match in <mark> tags "
    "(the only markup: render the snippet as HTML, or strip the marks and unescape it)."
)
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
class ReindexSearchPayload:
    queued: bool
    errors: list[UserError]
