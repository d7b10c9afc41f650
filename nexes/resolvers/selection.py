"""Which fields a query selected under the current one, so prefetches fetch only those."""

from __future__ import annotations

from typing import Any

from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from strawberry import Info


def selected_paths(info: Info[Any, Any]) -> frozenset[str]:
    """Dotted paths of every field selected below this one, through fragments.

    @skip/@include are not evaluated: a skipped field costs an unused prefetch, never
    a missing one.
    """
    raw = info._raw_info
    found: set[str] = set()

    def walk(selection_set: SelectionSetNode, prefix: str, seen: frozenset[str]) -> None:
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                path = prefix + sel.name.value
                found.add(path)
                if sel.selection_set is not None:
                    walk(sel.selection_set, path + ".", seen)
            elif isinstance(sel, InlineFragmentNode):
                walk(sel.selection_set, prefix, seen)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                fragment = raw.fragments.get(sel.name.value)
                if fragment is not None:
                    walk(fragment.selection_set, prefix, seen | {sel.name.value})

    for node in raw.field_nodes:
        if node.selection_set is not None:
            walk(node.selection_set, "", frozenset())
    return frozenset(found)
