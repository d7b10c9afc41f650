"""Global search's types: the filter, the hits with their highlights, and reindexSearch's payload."""

from __future__ import annotations

import datetime as dt
from enum import Enum

import strawberry

from nexes.schema.connections import PageInfo
from nexes.schema.payloads import UserError
from nexes.schema.types import ServiceOrder, Status, value_descriptions


@value_descriptions(
    TYPESENSE="Typesense answered: typo-tolerant, ranked, exact found.",
    POSTGRES="The fallback answered (pg_trgm on a replica) while Typesense is failing: queries of 3+ "
    "characters, found counts at most 1,000.",
)
@strawberry.enum(description="Which engine answered: Typesense, or PostgreSQL (pg_trgm) while Typesense is down.")
class SearchEngine(Enum):
    TYPESENSE = "TYPESENSE"
    POSTGRES = "POSTGRES"


@strawberry.input(description="All given conditions must hold. createdFrom is inclusive, createdTo exclusive.")
class SearchFilter:
    status: list[Status] | None = strawberry.field(
        default=None, description="Any of these statuses; null or omitted: every status."
    )
    created_from: dt.datetime | None = strawberry.field(
        default=None, description="Created at or after this instant (inclusive)."
    )
    created_to: dt.datetime | None = strawberry.field(
        default=None, description="Created before this instant (exclusive)."
    )


@strawberry.type(
    description="Where the query matched: a field and its text, HTML-escaped, with the match in <mark> tags "
    "(the only markup: render the snippet as HTML, or strip the marks and unescape it)."
)
class SearchHighlight:
    field: str = strawberry.field(
        description="Which text matched: sod_number, customer_name, customer_code or description."
    )
    snippet: str = strawberry.field(
        description="That text, HTML-escaped, the matches wrapped in <mark>...</mark>; safe to insert as HTML."
    )


@strawberry.type(description="One hit: the order, how well it matched, and where.")
class SearchEdge:
    cursor: str = strawberry.field(
        description="Opaque position of this hit in this search; valid only with the same query and filter (after:)."
    )
    node: ServiceOrder = strawberry.field(
        description="The order, read from PostgreSQL by id (fresh, and X-Nexes-Min-LSN holds)."
    )
    score: float = strawberry.field(description="Relevance; comparable only within one answer.")
    highlights: list[SearchHighlight] = strawberry.field(description="Where the query matched, one per field.")


@strawberry.type(description="A page of search hits, best first.")
class SearchConnection:
    edges: list[SearchEdge] = strawberry.field(description="The page's hits, best match first.")
    page_info: PageInfo = strawberry.field(description="Whether more hits follow, and the cursor to ask for them.")
    found: int = strawberry.field(description="Matching orders: exact from Typesense; from PostgreSQL at most 1,000.")
    found_exact: bool = strawberry.field(description="Whether found is exact (false: a lower bound).")
    engine: SearchEngine = strawberry.field(description="Which engine answered (the fallback has fewer features).")


@strawberry.type(description="What reindexSearch answers.")
class ReindexSearchPayload:
    queued: bool = strawberry.field(
        description="The rebuild job was sent to the workers; follow it in /api/health/detail (search.reindex)."
    )
    errors: list[UserError] = strawberry.field(description="Why nothing was queued; empty on success.")
