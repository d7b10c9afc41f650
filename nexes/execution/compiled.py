"""Compiled completion: one generated Python function per cached selection set.

graphql-core completes a list of objects field by field: a Path, a dispatch on the
return type and a coercion call for every field of every row, about 4-5 µs each.
For a selection set that reads only plain attributes (no resolvers, arguments,
directives, abstract types or deferred fragments), this module generates, once per
document, a function that builds the whole result (lists, objects, leaves) in one
pass, with the same null checks and the same output coercion as graphql-core.

A field that names a batch in its metadata (nexes.schema.types.BATCH: Customer.serviceOrders)
is the one exception to "plain attributes": the generated code leaves it empty and records
where it goes (`Slot`); the executor then resolves it for every object of the list in one
call, with the field's arguments converted once, and completes each value with code
generated the same way. Under a page of 20 customers that is one call where graphql-core
made 20 resolver calls, 20 argument conversions and 20 awaits.

The generated code never reports an error itself. On anything unusual (a null in a
non-null position, a value its type cannot coerce, an object of the wrong type, a
missing attribute) it raises, and the caller completes the same value again through
graphql-core, which then produces exactly the stock data, errors and paths. Plain
attributes are side-effect free, so completing twice is safe.

The generated source is built only from schema names (checked to be identifiers),
`repr()` of response names, and names of objects held in its own namespace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLID,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    InlineFragmentNode,
    SelectionSetNode,
    is_leaf_type,
)
from graphql.pyutils import Undefined
from strawberry.types.cast import TYPE_CAST_ATTRIBUTE

from nexes.db.rendering import MAX_NAME, RENDERABLE, ROOT, Spec, intern, nodes_of, renderable
from nexes.schema.rendered import Rendered, RenderedEdges
from nexes.schema.types import BATCH

Completer = Callable[[Any], Any]
# Whether a field guard covers (type name, field name): such fields are never compiled.
Guarded = Callable[[str, str], bool]
# How a caller asks for the sub-selection of a field: (object type, field details) ->
# the grouped field set and whether it defers anything (graphql-core's collect_subfields).
Collect = Callable[[GraphQLObjectType, Any], tuple[dict[str, Any], bool]]

CACHE_LIMIT = 10_000
EDGE = "ServiceOrderEdge"  # the edges whose nodes PostgreSQL may render (RenderedEdges)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class NotCompilable(Exception):
    """The selection set needs graphql-core's general path."""


def no_directives(field_nodes: Sequence[FieldNode], fragments: dict[str, Any]) -> bool:
    """Whether no selection below these fields (fragments included) carries a directive,
    so that collecting its fields does not depend on variables."""
    seen: set[str] = set()

    def clean(selection_set: SelectionSetNode | None) -> bool:
        if selection_set is None:
            return True
        for sel in selection_set.selections:
            if sel.directives:
                return False
            if isinstance(sel, FieldNode | InlineFragmentNode):
                if not clean(sel.selection_set):
                    return False
            elif isinstance(sel, FragmentSpreadNode):
                name = sel.name.value
                if name in seen:
                    continue
                seen.add(name)
                details = fragments.get(name)
                if details is None or details.definition.directives or not clean(details.definition.selection_set):
                    return False
        return True

    return all(clean(node.selection_set) for node in field_nodes)


@dataclass(frozen=True, slots=True, eq=False)
class Slot:
    """A field filled in by a batch: a compiled completer leaves it None and records
    (slot, source, result object, response name) in its PENDING list; the executor then
    calls `batch(sources, info, **arguments)` once for all of them and completes each value
    with `complete` (itself compiled, in the same namespace: it may record slots too)."""

    parent_type: GraphQLObjectType
    field_def: Any
    definition: Any  # the field's StrawberryField
    field_details: Any
    batch: Callable[..., Awaitable[list[Any]]]
    complete_name: str


class _Builder:
    """Generates the source of one completer and the namespace it runs in."""

    def __init__(self, collect: Collect, guarded: Guarded) -> None:
        self.collect = collect
        self.guarded = guarded
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"UNDEF": Undefined, "TCA": TYPE_CAST_ATTRIBUTE, "PENDING": []}
        self.counter = 0
        self.object_types: set[str] = set()
        self.batched = False  # some field is filled in by a batch (Slot)
        self.slots: list[Slot] = []

    def name(self, prefix: str, value: Any = None) -> str:
        self.counter += 1
        name = f"{prefix}{self.counter}"
        if value is not None:
            self.namespace[name] = value
        return name

    def value(self, type_: GraphQLOutputType, details: Any, src: str, dst: str, indent: str) -> list[str]:
        """Lines that complete `src` of `type_` into `dst`, or raise."""
        if isinstance(type_, GraphQLNonNull):
            inner = self.nonnull(type_.of_type, details, src, dst, indent)
            return [f"{indent}if {src} is None: raise ValueError", *inner]
        return [
            f"{indent}if {src} is None: {dst} = None",
            f"{indent}else:",
            *self.nonnull(type_, details, src, dst, indent + "    "),
        ]

    def nonnull(self, type_: GraphQLOutputType, details: Any, src: str, dst: str, indent: str) -> list[str]:
        if isinstance(type_, GraphQLList):
            item = type_.of_type
            rendered = None
            if isinstance(item, GraphQLNonNull) and isinstance(item.of_type, GraphQLObjectType):
                fn = self.object(item.of_type, details)  # it refuses None itself
                call = f"[{fn}(x) for x in {src}]"
                rendered = self.edges_spec(item.of_type, details)
            else:
                fn = self.function(item, details)
                call = f"[{fn}(x) for x in {src}]"
            if rendered is None:
                return [
                    f"{indent}if {src}.__class__ is not list and {src}.__class__ is not tuple: raise ValueError",
                    f"{indent}{dst} = {call}",
                ]
            # A page's edges PostgreSQL rendered for this very selection: one JSON array.
            (_, _, node_spec) = rendered[0]
            assert node_spec is not None
            edges, same = self.name("RenderedEdges", RenderedEdges), self.name("spec", rendered)
            return [
                f"{indent}if {src}.__class__ is {edges} and {src}.spec is {same}:",
                f"{indent}    {dst} = {src}.rendered({1 + nodes_of(node_spec)})",
                f"{indent}elif {src}.__class__ is not list and {src}.__class__ is not tuple: raise ValueError",
                f"{indent}else: {dst} = {call}",
            ]
        if is_leaf_type(type_):
            return self.leaf(type_, src, dst, indent)
        if isinstance(type_, GraphQLObjectType):
            return [f"{indent}{dst} = {self.object(type_, details)}({src})"]
        raise NotCompilable  # abstract types: resolve_type is graphql-core's business

    def leaf(self, type_: Any, src: str, dst: str, indent: str) -> list[str]:
        coerce = self.name("coerce", type_.coerce_output_value)
        general = [
            f"{indent}    {dst} = {coerce}({src})",
            f"{indent}    if {dst} is None or {dst} is UNDEF: raise ValueError",
        ]
        if type_ is GraphQLString or type_ is GraphQLID:
            fast = f"{src}.__class__ is str"
        elif type_ is GraphQLInt:
            fast = f"{src}.__class__ is int and {INT_MIN} <= {src} <= {INT_MAX}"
        elif type_ is GraphQLBoolean:
            fast = f"{src} is True or {src} is False"
        elif isinstance(type_, GraphQLEnumType) and hasattr(type_, "wrapped_cls"):
            # Strawberry's enum: the member's name, as coerce_output_value finds it.
            members = self.name("names", {m: type_.coerce_output_value(m) for m in type_.wrapped_cls})
            cls = self.name("enum", type_.wrapped_cls)
            return [
                f"{indent}if {src}.__class__ is {cls}: {dst} = {members}[{src}]",
                f"{indent}else:",
                *general,
            ]
        else:
            return [f"{indent}if True:", *general]
        return [f"{indent}if {fast}: {dst} = {src}", f"{indent}else:", *general]

    def function(self, type_: GraphQLOutputType, details: Any) -> str:
        """A function completing one value of `type_` (list items)."""
        fn = self.name("item")
        body = self.value(type_, details, "v", "r", "    ")
        self.lines += [f"def {fn}(v):", *body, "    return r", ""]
        return fn

    def object(self, type_: GraphQLObjectType, details: Any) -> str:
        """A function completing one object of `type_` with the selection in `details`."""
        grouped, defers = self.collect(type_, details)
        if defers:
            raise NotCompilable
        fn = self.name("obj")
        self.object_types.add(type_.name)
        body: list[str] = []
        # An object PostgreSQL rendered for this very selection (nexes.schema.rendered) is
        # its JSON; it is a subclass, so only objects of another class look for it.
        spec = self.render_spec(type_, grouped) if type_.name == ROOT else None
        rendered = []
        if spec is not None:
            same, made, nodes = self.name("spec", spec), self.name("Rendered", Rendered), nodes_of(spec)
            rendered = [
                f"        if o.__dict__.get('_rendered_spec') is {same}:",
                f"            return {made}(o.__dict__['_rendered_json'], {nodes})",
            ]
        is_type_of = type_.is_type_of
        if is_type_of is not None:
            definition = getattr(type_, "extensions", {}).get("strawberry-definition")
            origin = getattr(definition, "origin", None)
            check = self.name("is_type_of", is_type_of)
            if origin is not None:
                cls = self.name("cls", origin)
                body.append(f"    if o.__class__ is not {cls} or TCA in o.__dict__:")
                body += rendered
                body.append(f"        if {check}(o, None) is not True: raise ValueError")
            else:
                body.append(f"    if {check}(o, None) is not True: raise ValueError")
        items: list[str] = []
        slots: list[str] = []
        for i, (response_name, field_details) in enumerate(grouped.items()):
            node = field_details[0].node
            key = repr(response_name)
            if any(d.fragment_variable_values is not None or d.defer_usage is not None for d in field_details):
                raise NotCompilable
            if node.name.value == "__typename":
                items.append(f"{key}: {type_.name!r}")
                continue
            slot = self.batch_slot(type_, field_details)
            if slot is not None:
                # Filled in later, for every object of the list at once (`Slot`).
                items.append(f"{key}: None")
                slots.append(f"    PENDING.append(({slot}, o, d, {key}))")
                continue
            attr, field_type = self.plain_field(type_, field_details)
            body.append(f"    v = o.{attr}")
            body += self.value(field_type, field_details, "v", f"r{i}", "    ")
            items.append(f"{key}: r{i}")
        self.lines += [f"def {fn}(o):", *body, f"    d = {{{', '.join(items)}}}", *slots, "    return d", ""]
        return fn

    def edges_spec(self, type_: GraphQLObjectType, details: Any) -> Spec | None:
        """((node's response name, "node", node's spec),) for a list of ServiceOrderEdge that
        selects its node alone, rendered whole (nexes.resolvers.selection.edges_render_spec
        finds the same in the document); else None."""
        if type_.name != EDGE:
            return None
        grouped, defers = self.collect(type_, details)
        if defers or len(grouped) != 1:
            return None
        ((key, field_details),) = grouped.items()
        node = field_details[0].node
        if len(field_details) != 1 or node.name.value != "node" or node.arguments or node.directives:
            return None
        node_type = type_.fields["node"].type
        named = node_type.of_type if isinstance(node_type, GraphQLNonNull) else node_type
        if not isinstance(named, GraphQLObjectType) or named.name != ROOT or len(key.encode()) > MAX_NAME:
            return None
        node_grouped, node_defers = self.collect(named, field_details)
        spec = None if node_defers else self.render_spec(named, node_grouped)
        return None if spec is None else intern(((key, "node", spec),))

    def render_spec(self, type_: GraphQLObjectType, grouped: dict[str, Any]) -> Spec | None:
        """The spec of this selection when PostgreSQL can render all of it (the same one
        nexes.resolvers.selection.node_render_spec finds in the document), else None."""
        fields = RENDERABLE[type_.name]
        out: list[tuple[str, str, Spec | None]] = []
        for response_name, field_details in grouped.items():
            node = field_details[0].node
            name = node.name.value
            if len(field_details) != 1 or not renderable(
                type_.name, name, response_name, node.arguments, node.directives
            ):
                return None
            inner = fields[name]
            if inner is None:
                out.append((response_name, name, None))
                continue
            field_type = type_.fields[name].type
            named = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
            if not isinstance(named, GraphQLObjectType) or named.name != inner:
                return None
            sub_grouped, defers = self.collect(named, field_details)
            sub = None if defers else self.render_spec(named, sub_grouped)
            if sub is None:
                return None
            out.append((response_name, name, sub))
        return intern(tuple(out)) if out else None

    def batch_slot(self, type_: GraphQLObjectType, field_details: Any) -> str | None:
        """The name of the Slot for a field with a batch (nexes.schema.types.BATCH) and no
        guard, permission or extension; None for any other field."""
        name = field_details[0].node.name.value
        field_def = type_.fields.get(name)
        if field_def is None:
            return None
        definition = field_def.extensions.get("strawberry-definition")
        batch = None if definition is None else definition.metadata.get(BATCH)
        if definition is None or batch is None:
            return None
        if definition.permission_classes or definition.extensions or self.guarded(type_.name, name):
            raise NotCompilable
        completer = self.function(field_def.type, field_details)
        self.batched = True
        slot = Slot(type_, field_def, definition, field_details, batch, completer)
        self.slots.append(slot)
        return self.name("slot", slot)

    def plain_field(self, type_: GraphQLObjectType, field_details: Any) -> tuple[str, GraphQLOutputType]:
        """The attribute behind an unguarded field Strawberry resolves with plain getattr,
        else NotCompilable."""
        name = field_details[0].node.name.value
        field_def = type_.fields.get(name)
        if field_def is None or field_def.args or any(d.node.arguments for d in field_details):
            raise NotCompilable
        if self.guarded(type_.name, name):
            raise NotCompilable
        definition = field_def.extensions.get("strawberry-definition")
        if (
            definition is None
            or definition.base_resolver is not None
            or definition.permission_classes
            or definition.extensions
            or not definition.python_name.isidentifier()
        ):
            raise NotCompilable
        return definition.python_name, field_def.type

    def build(self, type_: GraphQLOutputType, details: Any) -> Completer:
        top = self.function(type_, details)
        code = compile("\n".join(self.lines), "<nexes-compiled>", "exec")
        exec(code, self.namespace)  # noqa: S102  # source built only from checked names, see the module doc
        completer: Completer = self.namespace[top]
        setattr(completer, "object_types", frozenset(self.object_types))  # noqa: B010  # for tests
        if self.batched:
            # Whoever calls it sets namespace["PENDING"] first and reads the slots after
            # (nexes.execution.executor): no await comes between the two.
            setattr(completer, "namespace", self.namespace)  # noqa: B010
            setattr(completer, "slots", tuple(self.slots))  # noqa: B010  # for a look ahead (executor.Ahead)
        return completer


def compile_completer(type_: GraphQLOutputType, details: Any, collect: Collect, guarded: Guarded) -> Completer | None:
    """A function completing a value of `type_` for this selection, or None when the
    selection needs graphql-core's general path (or a guard covers one of its fields)."""
    try:
        return _Builder(collect, guarded).build(type_, details)
    except NotCompilable:
        return None


class CompiledCache:
    """Completers by return type and field nodes: the same cached document yields the
    same node objects, so a completer serves every request with that document. Each
    entry holds its nodes and type, so their ids cannot be reused while it lives."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._entries: dict[tuple[int, ...], tuple[tuple[Any, ...], Completer | None]] = {}

    def get(
        self, type_: GraphQLOutputType, field_nodes: Sequence[FieldNode], make: Callable[[], Completer | None]
    ) -> Completer | None:
        key = (id(type_), *map(id, field_nodes))
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            entry = self._entries[key] = ((type_, *field_nodes), make())
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()

    def compiled_types(self) -> set[str]:
        """Names of the object types some cached completer handles (for tests)."""
        return {name for _, completer in self._entries.values() for name in getattr(completer, "object_types", ())}
