"""The audit trail in GraphQL: who did what, newest first (admins only: nexes.auth.permissions)."""

from __future__ import annotations

import datetime as dt

import strawberry
from strawberry.scalars import JSON

from nexes.schema.connections import Edge, PageInfo


@strawberry.type(description="One change: who made it, what, on which object, when, and what changed.")
class AuditEvent:
    at: dt.datetime = strawberry.field(description="When the change's transaction began.")
    actor: str = strawberry.field(
        description="The token's subject; cli:<os user> for nexes commands; system:scheduler for periodic jobs."
    )
    action: str = strawberry.field(description="The mutation (createServiceOrder...) or job step (import.finished...).")
    entity: str = strawberry.field(description="ServiceOrder, Customer, StockItem, ImportJob, Dashboard, Partition...")
    entity_id: str = strawberry.field(
        description="The object's global id where it has one (node(id) finds it), else its name."
    )
    request_id: str | None = strawberry.field(description="The request or job message that made the change.")
    changes: JSON = strawberry.field(description="What changed: a few fields, counts, old and new values.")


@strawberry.type(description="A page of audit events, newest first (no total count: the trail is large).")
class AuditEventConnection:
    edges: list[Edge[AuditEvent]] = strawberry.field(description="The page's events, each with its cursor.")
    page_info: PageInfo = strawberry.field(description="Whether more events follow, and the cursor to ask for them.")
