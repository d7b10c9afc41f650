"""Which fields a query selected under the current one, so prefetches fetch only those."""

from __future__ import annotations

from typing import Any

from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from strawberry import Info

from nexes.db.rendering import MAX_NAME, RENDERABLE, ROOT, Spec, intern, renderable


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


def node_render_spec(info: Info[Any, Any]) -> Spec | None:
    """What PostgreSQL may render of a connection's `edges { node { ... } }` (nexes.schema.rendered):
    the node's fields when all are plain fields of RENDERABLE, selected without fragments,
    directives or arguments, each response name once; else None. The compiled completer
    derives the same spec from the same selection (nexes.execution.compiled) and uses a
    rendered object only when the two are the same spec."""
    nodes = info._raw_info.field_nodes
    if len(nodes) != 1:
        return None
    edges = _only(nodes[0].selection_set, "edges")
    node = _only(edges.selection_set, "node") if edges is not None else None
    return _spec(ROOT, node.selection_set) if node is not None else None


def edges_render_spec(info: Info[Any, Any], node: Spec) -> Spec | None:
    """((the node's response name, "node", `node`),) when the connection's edges select their
    node and nothing else, so that PostgreSQL's JSON makes the whole list; else None."""
    edges = _only(info._raw_info.field_nodes[0].selection_set, "edges")
    selections = edges.selection_set.selections if edges is not None and edges.selection_set is not None else ()
    if len(selections) != 1:
        return None
    (sel,) = selections
    if not isinstance(sel, FieldNode) or sel.name.value != "node" or sel.directives or sel.arguments:
        return None
    key = sel.alias.value if sel.alias is not None else "node"
    return intern(((key, "node", node),)) if len(key.encode()) <= MAX_NAME else None


def _only(selection_set: SelectionSetNode | None, name: str) -> FieldNode | None:
    """The one field `name` of a selection set of plain fields (no fragments or directives), else None."""
    if selection_set is None:
        return None
    found = None
    for sel in selection_set.selections:
        if not isinstance(sel, FieldNode) or sel.directives:
            return None
        if sel.name.value == name:
            if found is not None:
                return None
            found = sel
    return found


def _spec(type_name: str, selection_set: SelectionSetNode | None) -> Spec | None:
    if selection_set is None:
        return None
    fields = RENDERABLE[type_name]
    out: list[tuple[str, str, Spec | None]] = []
    keys: set[str] = set()
    for sel in selection_set.selections:
        if not isinstance(sel, FieldNode):
            return None
        name = sel.name.value
        key = sel.alias.value if sel.alias is not None else name
        if key in keys or not renderable(type_name, name, key, sel.arguments, sel.directives):
            return None
        keys.add(key)
        inner = fields[name]
        if inner is None:
            if sel.selection_set is not None:
                return None
            out.append((key, name, None))
        else:
            sub = _spec(inner, sel.selection_set)
            if sub is None:
                return None
            out.append((key, name, sub))
    return intern(tuple(out)) if out else None
