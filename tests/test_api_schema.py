"""The schema contract: the code's schema is the committed schema.graphql."""

from __future__ import annotations

import re
from pathlib import Path

from graphql import parse, print_ast

from nexes.execution.schema import schema

SNAPSHOT = Path(__file__).resolve().parent.parent / "schema.graphql"


def test_code_schema_matches_committed_schema_graphql() -> None:
    committed = SNAPSHOT.read_text()
    assert schema.as_str() + "\n" == committed, (
        "the GraphQL schema changed: review it, then `nexes schema > schema.graphql`"
    )


def sdl_without_descriptions() -> str:
    """The SDL with every description left out (strawberry prints each as a block string),
    printed again so fields and arguments each stand on one line, as the contract names them
    (descriptions are tests/test_schema_docs.py's)."""
    return print_ast(parse(re.sub(r'"""(?:.|\n)*?"""', "", schema.as_str())))


def test_contract_names_are_present() -> None:
    sdl = sdl_without_descriptions()
    for name in (
        "interface Node",
        "node(id: ID!): Node",
        "nodes(ids: [ID!]!): [Node]!",
        "serviceOrder(sodNumber: String!): ServiceOrder",
        "serviceOrders(first: Int = null, after: String = null, last: Int = null, before: String = null, "
        "filter: ServiceOrderFilter = null, orderBy: ServiceOrderOrder = CREATED_AT_DESC): ServiceOrderConnection!",
        "totalCountExact: Boolean!",
        "scalar DateTime",
        "scalar Decimal",
        "dashboard(from: Date = null, to: Date = null): Dashboard!",
    ):
        assert name in sdl, name
