"""The schema is the analysts' manual: every type, field, argument, input field and enum
value has a description that says more than its name, and every deprecation its reason.
The test walks the introspection result, as GraphiQL's documentation explorer does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from graphql import get_introspection_query, graphql_sync

from nexes.execution.schema import schema

# Words that add nothing to a name ("The SOD number." for sodNumber says nothing more).
FILLER = frozenset({"the", "a", "an", "of", "this", "its", "is", "it", "for", "to", "in", "as", "s"})


def introspection() -> dict[str, Any]:
    query = get_introspection_query(descriptions=True, input_value_deprecation=True)
    result = graphql_sync(schema._schema, query)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data["__schema"]


def members(data: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(coordinate, name, introspection entry) of every type, field, argument, input field
    and enum value, and of every directive and its arguments; introspection's own types
    (__Schema, __Type...) are graphql-core's, not the API's."""
    for kind in data["types"]:
        if kind["name"].startswith("__"):
            continue
        yield kind["name"], kind["name"], kind
        for field in kind.get("fields") or []:
            coordinate = f"{kind['name']}.{field['name']}"
            yield coordinate, field["name"], field
            for arg in field["args"]:
                yield f"{coordinate}({arg['name']}:)", arg["name"], arg
        for field in kind.get("inputFields") or []:
            yield f"{kind['name']}.{field['name']}", field["name"], field
        for value in kind.get("enumValues") or []:
            yield f"{kind['name']}.{value['name']}", value["name"], value
    for directive in data["directives"]:
        yield f"@{directive['name']}", directive["name"], directive
        for arg in directive["args"]:
            yield f"@{directive['name']}({arg['name']}:)", arg["name"], arg


def words(text: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [w for w in re.findall(r"[a-z0-9]+", spaced.lower()) if w not in FILLER]


def repeats_its_name(name: str, description: str) -> bool:
    """Whether the description's words are only the name's (in any order, or run together)."""
    said, named = words(description), words(name)
    return not said or set(said) <= set(named) or "".join(said) == "".join(named)


def test_every_schema_member_has_a_description_that_says_more_than_its_name() -> None:
    missing, repeating = [], []
    for coordinate, name, entry in members(introspection()):
        description = (entry.get("description") or "").strip()
        if not description:
            missing.append(coordinate)
        elif repeats_its_name(name, description):
            repeating.append(f"{coordinate}: {description!r}")
    assert missing == [], f"{len(missing)} schema members have no description: {missing}"
    assert repeating == [], f"descriptions that only repeat the name: {repeating}"


def test_every_deprecation_gives_its_reason() -> None:
    for coordinate, _, entry in members(introspection()):
        if entry.get("isDeprecated"):
            assert (entry.get("deprecationReason") or "").strip(), coordinate


def test_the_name_check_catches_a_repeated_name() -> None:
    assert repeats_its_name("sodNumber", "The SOD number.")
    assert repeats_its_name("totalCountExact", "Total count exact")
    assert repeats_its_name("currency", "")
    assert not repeats_its_name("currency", "ISO 4217 code of the amounts, e.g. EUR.")
