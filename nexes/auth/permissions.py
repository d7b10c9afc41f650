"""The one permission table: which roles may use each root field, mutation and HTTP route,
and the nested fields with rules of their own.

nexes.execution.permissions enforces the GraphQL part on both executor paths; the HTTP edge
(nexes.http.auth) the routes. tests/test_permissions.py tries every role against every
entry and checks the table against schema.graphql, so a root field without an entry fails;
the README's table is `markdown()`.
"""

from __future__ import annotations

from nexes.auth.identity import WRITERS, Role

VIEWER, OPERATOR, ANALYST, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ANALYST, Role.ADMIN

READERS = frozenset({VIEWER, OPERATOR, ANALYST, ADMIN})
ANALYSTS = frozenset({ANALYST, ADMIN})
ADMINS = frozenset({ADMIN})

# "Type.field" of every root field and mutation -> the roles that may select it.
ROOT: dict[str, frozenset[Role]] = {
    "Query.serviceOrder": READERS,
    "Query.serviceOrders": READERS,
    "Query.customers": READERS,
    "Query.stockItems": READERS,
    "Query.dashboard": READERS,
    "Query.search": READERS,
    "Query.node": READERS,
    "Query.nodes": READERS,
    "Query.reports": ANALYSTS,
    # Operators see their own jobs, admins every one (nexes.resolvers.imports filters).
    "Query.importJob": WRITERS,
    "Query.importJobs": WRITERS,
    "Query.auditEvents": ADMINS,
    "Mutation.createServiceOrder": WRITERS,
    "Mutation.updateServiceOrder": WRITERS,
    "Mutation.cancelServiceOrder": WRITERS,
    "Mutation.receiveStock": WRITERS,
    "Mutation.startImport": WRITERS,
    "Mutation.cancelImport": WRITERS,  # its own job; admins any
    "Mutation.createCustomer": ADMINS,
    "Mutation.createStockItem": ADMINS,
    "Mutation.reconcileDashboard": ADMINS,
    "Mutation.reindexSearch": ADMINS,
}

# Introspection: any caller with a valid token in development; in production `__schema` and
# `__type` need analyst or admin (nexes.execution.permissions), `__typename` any token.
INTROSPECTION = frozenset({"__schema", "__type", "__typename"})

# Nested fields with a rule of their own -> the rule, in words (enforced by field guards).
OWNER_OR_ADMIN = "the job's creator (createdBy) and admins"
NESTED: dict[str, str] = {
    "ImportJob.errors": OWNER_OR_ADMIN,  # the rejected rows, raw content included
}

# HTTP routes besides /graphql: (method, path) -> roles. Routes not here and not PUBLIC
# need a valid token and nothing more.
ROUTES: dict[tuple[str, str], frozenset[Role]] = {
    ("POST", "/api/imports"): WRITERS,
    ("GET", "/api/exports/service-orders.csv"): ANALYSTS,
    ("GET", "/api/health/detail"): ADMINS,
}

# Served without a token: liveness, the short health (status only), and GraphiQL where it is
# on (nexes.http.ide): its page (/graphiql, and GET /graphql with no query) and its files
# under PUBLIC_PREFIXES, the same static text for everyone; preflights never reach the app.
# The reference SPA's files at /app (development only, nexes.http.spa) are public likewise.
PUBLIC_PATHS = frozenset({"/api/health/live", "/api/health", "/graphiql", "/app"})
PUBLIC_PREFIXES = ("/graphiql/assets/", "/app/")


def allowed(coordinate: str, roles: frozenset[str]) -> bool:
    """Whether a caller with `roles` may select the root field or mutation `coordinate`."""
    permitted = ROOT.get(coordinate)
    return permitted is not None and not permitted.isdisjoint(roles)


def describe(roles: frozenset[Role]) -> str:
    return ", ".join(r.value for r in Role if r in roles)


def markdown() -> str:
    """The README's table: every root field, mutation, nested rule and route, and who may."""
    lines = ["| operation | viewer | operator | analyst | admin |", "|---|---|---|---|---|"]
    for coordinate, roles in ROOT.items():
        lines.append(f"| `{coordinate}` | " + " | ".join("yes" if r in roles else "" for r in Role) + " |")
    for (method, path), roles in ROUTES.items():
        lines.append(f"| `{method} {path}` | " + " | ".join("yes" if r in roles else "" for r in Role) + " |")
    for coordinate, rule in NESTED.items():
        lines.append(f"| `{coordinate}` | {rule} | | | |")
    return "\n".join(lines)
