"""The permission table (nexes.auth.permissions) in the pipeline: an operation guard that
refuses, before anything runs, an operation selecting a root field or mutation the caller's
roles may not use; and field guards for the nested fields with rules of their own, on both
executor paths."""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from nexes.auth.permissions import ANALYSTS, INTROSPECTION, NESTED, OWNER_OR_ADMIN, ROOT, describe
from nexes.errors import Code, NexesError
from nexes.execution.hooks import FieldGuard
from nexes.resolvers.context import Context

ROOT_TYPES = {"query": "Query", "mutation": "Mutation", "subscription": "Subscription"}
# Introspection: any token in development; in production `__schema` and `__type` are for
# analysts and admins (issue 17: the SPA needs no schema), `__typename` for every token.
PRODUCTION_INTROSPECTION = {"Query.__schema": ANALYSTS, "Query.__type": ANALYSTS}
FREE_IN_PRODUCTION = INTROSPECTION - {"__schema", "__type"}
NEEDS = {**ROOT, **PRODUCTION_INTROSPECTION}  # who may select each root field, in production


def root_fields(document: DocumentNode, operation: OperationDefinitionNode) -> list[str]:
    """The root fields an operation selects, through fragments and inline fragments (each
    counted, whatever its alias)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    found: list[str] = []
    seen: set[str] = set()

    def walk(selection_set: SelectionSetNode) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value not in found:
                    found.append(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                seen.add(selection.name.value)
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    walk(fragment.selection_set)

    walk(operation.selection_set)
    return found


def require_roles(document: DocumentNode, operation: OperationDefinitionNode, context: Context) -> None:
    """FORBIDDEN, naming each refused field and who may use it, unless the caller may use
    every root field the operation selects."""
    root = ROOT_TYPES[operation.operation.value]
    roles = context.viewer.roles
    free = INTROSPECTION if context.settings.development else FREE_IN_PRODUCTION
    refused = [
        f"{root}.{name}"
        for name in root_fields(document, operation)
        if name not in free and NEEDS.get(f"{root}.{name}", frozenset()).isdisjoint(roles)
    ]
    if not refused:
        return
    held = ", ".join(sorted(roles)) or "no role"
    needs = "; ".join(f"`{c.split('.', 1)[1]}` needs one of {describe(NEEDS.get(c, frozenset()))}" for c in refused)
    raise NexesError(Code.FORBIDDEN, f"{needs} (the token has {held})", field=refused[0].split(".", 1)[1])


def _owner_or_admin(context: Context, coordinate: str, parent: Any) -> None:
    if not context.viewer.owns(getattr(parent, "created_by", None)):
        raise NexesError(Code.FORBIDDEN, f"{coordinate} is shown only to {OWNER_OR_ADMIN}")


RULES = {OWNER_OR_ADMIN: _owner_or_admin}
FIELD_GUARDS = tuple(FieldGuard.on({coordinate}, RULES[rule]) for coordinate, rule in NESTED.items())
