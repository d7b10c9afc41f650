"""What an operation may cost, computed before it runs, as GitHub's GraphQL API does.

The requested nodes of an operation: every connection asks for its `first`/`last` (or the
default page) times the objects it is asked under; a plain list asks for its `ids`,
`limit` or an assumed LIST_GUESS items; `totalCount` (and every count) adds COUNT_NODES per
parent, for the count query it runs. Fragments, inline fragments and aliases are counted
in full, wherever they are spread; @skip/@include are ignored (the cost is of what the
document could ask for). A connection's `edges`/`nodes` lists are its page, not a second
multiplication.

The pipeline (nexes.execution.pipeline) refuses an operation over the caller's limit
(NEXES_MAX_COST_<ROLE>, the most generous of the token's roles) with QUERY_TOO_COMPLEX
before any SQL runs, charges the rate limiter ceil(requested / 100) points (at least
one), and reports `extensions.cost` on the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)

from nexes.auth.ratelimit import RateLimited, most_generous
from nexes.errors import Code, NexesError
from nexes.resolvers.context import Context
from nexes.schema.rendered import Rendered

DEFAULT_PAGE = 20  # a connection without first/last (nexes.resolvers.pagination)
LIST_GUESS = 10  # items of a list whose size no argument gives (an order's lines)
COUNT_NODES = 10  # a count query, per parent, as this many nodes
POINTS_PER_NODES = 100  # the rate limit's price: ceil(requested / 100) points
COUNT_FIELDS = frozenset({"totalCount"})
SIZE_ARGUMENTS = ("first", "last", "limit")


@dataclass(slots=True)
class CostReport:
    """An operation's cost and the caller's budget, for `extensions.cost` and the headers."""

    requested: int
    limit: int
    points: int = 0
    rate_limit: int = 0  # points an hour
    remaining: int | None = None  # points left this hour (None: no rate limit was asked)
    reset: int = 0  # epoch seconds when the budget is full again
    actual_nodes: int | None = None

    def extensions(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "actualNodes": self.actual_nodes,
            "limit": self.limit,
            "remaining": self.remaining,
        }


def points_of(requested: int) -> int:
    return max(1, math.ceil(requested / POINTS_PER_NODES))


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: dict[str, Any] | None,
) -> int:
    """The nodes `operation` may ask for with these variables."""
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    walk = _Walk(schema, document, operation, variables or {})
    return walk.selections(root, operation.selection_set, 1, 1, ())


class CostCache:
    """operation_cost, remembered per (operation, the variables that can change it).

    The walk reads a variable only as an int (a page size) or a list (its length), so the
    key holds those and nothing else: a page's cursor changes the key of no request. The
    operations come from the pipeline's parse cache, so the same text is the same node;
    each entry keeps its node, so an id() is never taken for another's. Bounded: it is
    emptied when full (the parse cache itself holds at most a thousand documents)."""

    def __init__(self, size: int = 2000) -> None:
        self._size = size
        self._entries: dict[tuple[Any, ...], tuple[OperationDefinitionNode, int]] = {}

    def cost(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: dict[str, Any] | None,
    ) -> int:
        sizes = tuple(
            (k, v if isinstance(v, int) else len(v)) for k, v in (variables or {}).items() if isinstance(v, int | list)
        )
        key = (id(operation), sizes)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is operation:
            return entry[1]
        requested = operation_cost(schema, document, operation, variables)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (operation, requested)
        return requested


COSTS = CostCache()


class _Walk:
    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: dict[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.variables = dict(variables)
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            if name not in self.variables and isinstance(definition.default_value, IntValueNode):
                self.variables[name] = int(definition.default_value.value)

    def selections(
        self,
        parent: Any,
        selection_set: SelectionSetNode,
        multiplier: int,
        outer: int,
        spreading: tuple[str, ...],
    ) -> int:
        """Nodes under `selection_set` on `parent`, asked `multiplier` times; `outer` is the
        multiplier of the connection `parent` is (its counts run once per outer object)."""
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(parent, selection, multiplier, outer, spreading)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                total += self.selections(target, selection.selection_set, multiplier, outer, spreading)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in spreading:  # validation refuses both; no loop here
                    continue
                target = self.schema.get_type(fragment.type_condition.name.value)
                total += self.selections(target, fragment.selection_set, multiplier, outer, (*spreading, name))
        return total

    def field(self, parent: Any, node: FieldNode, multiplier: int, outer: int, spreading: tuple[str, ...]) -> int:
        name = node.name.value
        if name in COUNT_FIELDS:
            return outer * COUNT_NODES
        fields = getattr(parent, "fields", None)
        definition = fields.get(name) if fields else None
        if definition is None:  # __typename, introspection: no data nodes
            return 0
        named = get_named_type(definition.type)
        nullable = definition.type.of_type if isinstance(definition.type, GraphQLNonNull) else definition.type
        total = 0
        children = multiplier
        child_outer = multiplier
        if named.name.endswith("Connection"):
            size = self.size(node, DEFAULT_PAGE)
            total += multiplier * size
            children = multiplier * size
        elif isinstance(nullable, GraphQLList) and not parent.name.endswith("Connection"):
            size = self.size(node, LIST_GUESS)
            total += multiplier * size
            children = child_outer = multiplier * size
        if node.selection_set is not None and isinstance(
            named, GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType
        ):
            total += self.selections(named, node.selection_set, children, child_outer, spreading)
        return total

    def size(self, node: FieldNode, default: int) -> int:
        """The items a field asks for: first/last/limit, the length of a list argument, else `default`."""
        for argument in node.arguments or ():
            value = argument.value
            if isinstance(value, VariableNode):
                resolved = self.variables.get(value.name.value)
                if argument.name.value in SIZE_ARGUMENTS and isinstance(resolved, int) and resolved >= 0:
                    return resolved
                if isinstance(resolved, list):
                    return len(resolved)
            elif argument.name.value in SIZE_ARGUMENTS and isinstance(value, IntValueNode):
                return max(0, int(value.value))
            elif isinstance(value, ListValueNode):
                return len(value.values)
        return default


def count_nodes(data: Any) -> int:
    """The objects an answer holds (every JSON object below `data`): `actualNodes`.

    Plain loops and exact type checks: this runs on every answer, and a generator per
    object with isinstance checks cost about 3x as much on a 50-order page. Answers are
    built of plain dicts and lists (graphql-core's executor and the compiled one), and of
    Rendered values (nexes.schema.rendered)."""
    kind = type(data)
    if kind is dict:
        total = 1
        values: Any = data.values()
    elif kind is list:
        total = 0
        values = data
    else:
        return 0
    for value in values:
        kind = type(value)
        if kind is dict or kind is list:
            total += count_nodes(value)
        elif kind is Rendered:  # JSON made by PostgreSQL: its objects are counted once, when made
            total += value.nodes
    return total


async def charge(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: dict[str, Any] | None,
    context: Context,
    dry_run: bool,
) -> None:
    """The pipeline's budget: price the operation (context.cost), refuse it over the
    caller's limit, then take its points from the caller's hour (none on a dry run)."""
    viewer = context.viewer
    settings = context.settings
    requested = COSTS.cost(schema, document, operation, variables)
    report = context.cost = CostReport(requested, most_generous(viewer, settings.max_cost))
    if requested > report.limit:
        raise NexesError(
            Code.QUERY_TOO_COMPLEX,
            f"this operation may ask for {requested:,} nodes; your limit is {report.limit:,}: "
            "ask for smaller pages (first/last) or fewer nested connections",
            extensions={"cost": {"requested": requested, "limit": report.limit}},
        )
    limiter = context.limiter
    if limiter is None:  # no rate limiter (a pipeline without an app): cost alone
        return
    report.points = points_of(requested)
    report.rate_limit = most_generous(viewer, settings.rate_limits)
    try:
        budget = await limiter.charge(viewer.subject, report.rate_limit, report.points, dry_run=dry_run)
    except RateLimited as refused:
        report.remaining, report.reset = refused.budget.remaining, refused.budget.reset
        raise
    report.remaining, report.reset = budget.remaining, budget.reset
