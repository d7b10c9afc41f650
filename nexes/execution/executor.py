"""A faster executor for the common case: plain attribute leaves.

graphql-core spends several microseconds on every field (a Path, a ResolveInfo, the
resolver wrapper, argument coercion, completion dispatch). On a page of 50 orders
that is about 400 fields, most of them scalars read straight off an object. This
executor, plugged in through Strawberry's `execution_context_class`, plans each
selection set once (per type and field list) and reads such leaves directly:
`getattr` plus the type's own `serialize`.

Anything else takes graphql-core's own path, field by field: fields with resolvers,
arguments, permissions or extensions; fields a field guard covers (hooks.FieldGuard);
objects, lists and abstract types; and any leaf whose value is None or fails to
serialize, so that nulls and errors (non-null propagation, messages, paths) are exactly
the stock executor's. The one field with a resolver it takes off graphql-core's hands is a
field with a batch under a compiled list (Customer.serviceOrders under a page of
customers: compiled.Slot, `_fill`), resolved once for the whole list; should the batch
fail, the list is completed again the stock way. Before a root field's resolver runs, the
executor tells it which batches its value's completion will run (`Ahead`, in the context):
Query.customers so reads its customers' pages of orders in its own round trip (issue 21).
Tests compare the two on the same documents. It relies on
graphql-core internals (`execute_fields`, `execute_field`), so graphql-core and
strawberry are pinned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from graphql import GraphQLNonNull, GraphQLObjectType, GraphQLOutputType, OperationType, get_named_type, is_leaf_type
from graphql.execution.executor import gather_with_cancel  # type: ignore[attr-defined]
from graphql.execution.values import get_argument_values
from graphql.pyutils import Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.arguments import convert_arguments

from nexes.execution.compiled import CompiledCache, Completer, Slot, compile_completer, no_directives
from nexes.execution.deadline import DeadlineSignal
from nexes.execution.hooks import FieldCheck, FieldGuard

PLAN_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Leaf:
    attr: str | None  # None: __typename
    serialize: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Child:
    """A plain attribute holding one object (not a list, not an abstract type)."""

    attr: str
    return_type: Any  # as declared, NonNull included: for error handling
    object_type: GraphQLObjectType


Plan = dict[str, Leaf | Child]
Guarded = Callable[[str, str], bool]


class HookedExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's stock execution (through Strawberry's context) that runs the field
    guards before the fields they cover. `with_guards` makes the class for a set of guards;
    without guards it is the stock path, at the cost of one attribute test per field."""

    field_guards: ClassVar[tuple[FieldGuard, ...]] = ()
    _checks: ClassVar[dict[tuple[str, str], tuple[FieldCheck, ...]]] = {}

    @classmethod
    def with_guards(cls, guards: tuple[FieldGuard, ...]) -> type[Self]:
        """This executor with these field guards (itself when there are none). Its plans
        and compiled completers are its own: they depend on what the guards cover."""
        if not guards:
            return cls
        caches = {"_checks": {}, "_plans": {}, "_completers": CompiledCache()}
        return type(cls.__name__, (cls,), {"field_guards": guards, **caches})

    @classmethod
    def checks_for(cls, type_name: str, field_name: str) -> tuple[FieldCheck, ...]:
        """The checks of the guards that cover this field, found once per field."""
        key = (type_name, field_name)
        checks = cls._checks.get(key)
        if checks is None:
            coordinate = f"{type_name}.{field_name}"
            covered = () if field_name.startswith("__") else cls.field_guards
            checks = cls._checks[key] = tuple(g.check for g in covered if g.covers(coordinate))
        return checks

    @classmethod
    def is_guarded(cls, type_name: str, field_name: str) -> bool:
        return bool(cls.field_guards) and bool(cls.checks_for(type_name, field_name))

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        if self.field_guards:
            name = field_details_list[0].node.name.value
            checks = self.checks_for(parent_type.name, name)
            if checks:
                coordinate = f"{parent_type.name}.{name}"
                try:
                    for check in checks:
                        check(self.context_value, coordinate, source)
                except Exception as raw_error:
                    self.handle_field_error(raw_error, parent_type.fields[name].type, field_details_list, path)
                    return None
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    async def with_abort_signal(self, awaitable: Any) -> Any:
        """A resolver's awaitable under the request's deadline (nexes.execution.deadline):
        one timer where graphql-core's own path runs two tasks and a wait."""
        signal = self.abort_signal
        if isinstance(signal, DeadlineSignal):
            return await signal.bound(awaitable)
        return await super().with_abort_signal(awaitable)

    async def with_aborted_execution_error(self, awaitable: Any) -> Any:
        """The whole execution under the deadline: its fields stop by themselves (above)."""
        signal = self.abort_signal
        if isinstance(signal, DeadlineSignal):
            return await signal.settle(awaitable)
        return await super().with_aborted_execution_error(awaitable)


def _leaf(parent_type: GraphQLObjectType, node: Any, guarded: Guarded) -> Leaf | Child | None:
    """The fast reading of one field, or None when it must take the stock path."""
    name = node.name.value
    if name == "__typename":
        type_name = parent_type.name
        return Leaf(None, lambda _: type_name)
    field_def = parent_type.fields.get(name)
    if field_def is None or node.arguments or field_def.args or node.directives or guarded(parent_type.name, name):
        return None
    named = field_def.type.of_type if isinstance(field_def.type, GraphQLNonNull) else field_def.type
    definition = field_def.extensions.get("strawberry-definition")
    if (
        definition is None
        or definition.base_resolver is not None
        or definition.permission_classes
        or definition.extensions
    ):
        return None
    if is_leaf_type(named):
        return Leaf(definition.python_name, named.serialize)
    if isinstance(named, GraphQLObjectType) and named.is_type_of is not None:
        return Child(definition.python_name, field_def.type, named)
    return None


def plan_for(
    parent_type: GraphQLObjectType,
    grouped_field_set: Any,
    plans: dict[tuple[Any, ...], Plan],
    guarded: Guarded,
) -> Plan:
    key = (parent_type.name, *((name, details[0].node.name.value) for name, details in grouped_field_set.items()))
    plan = plans.get(key)
    if plan is None:
        plan = {}
        for response_name, details in grouped_field_set.items():
            leaf = _leaf(parent_type, details[0].node, guarded)
            if leaf is not None and all(_leaf(parent_type, d.node, guarded) is not None for d in details[1:]):
                plan[response_name] = leaf
        if len(plans) >= PLAN_CACHE_LIMIT:
            plans.clear()
        plans[key] = plan
    return plan


class FastExecutor(HookedExecutor):
    """Strawberry's execution context with plain leaves read directly, and whole
    plain selection sets completed by compiled functions (nexes.execution.compiled).
    Fields a guard covers are never read directly: they take `execute_field`."""

    _plans: ClassVar[dict[tuple[Any, ...], Plan]] = {}
    _completers: ClassVar[CompiledCache] = CompiledCache()

    def complete_value(
        self,
        return_type: GraphQLOutputType,
        field_details_list: Any,
        info: Any,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        stock = super().complete_value
        if not isinstance(result, Exception) and not is_leaf_type(return_type):
            completer = self._completer(return_type, field_details_list)
            if completer is not None:
                try:
                    return self._run(
                        completer,
                        result,
                        lambda: stock(return_type, field_details_list, info, path, result, position_context),
                    )
                except Exception:  # noqa: S110  # the stock path below reports it exactly
                    pass
        return stock(return_type, field_details_list, info, path, result, position_context)

    def _run(self, completer: Completer, value: Any, stock: Callable[[], Any]) -> Any:
        """`completer(value)`; when it left fields to batches (compiled.Slot), an awaitable
        that fills them in and gives the whole. Should a batch fail, `stock` completes the
        value again the stock way, which reports exactly what went wrong where."""
        namespace = getattr(completer, "namespace", None)
        if namespace is None:
            return completer(value)
        pending: list[Any] = []
        namespace["PENDING"] = pending
        completed = completer(value)
        if not pending:
            return completed
        return self._fill(completed, pending, namespace, stock)

    async def _fill(
        self, completed: Any, pending: list[Any], namespace: dict[str, Any], stock: Callable[[], Any]
    ) -> Any:
        try:
            while pending:
                by_slot: dict[Slot, list[tuple[Any, dict[str, Any], str]]] = {}
                for slot, source, into, key in pending:
                    by_slot.setdefault(slot, []).append((source, into, key))
                pending = []
                for slot, entries in by_slot.items():
                    values = await self.with_abort_signal(self._batch(slot, [source for source, _, _ in entries]))
                    if len(values) != len(entries):
                        raise ValueError(f"{slot.definition.python_name}: {len(values)} values for {len(entries)}")
                    complete = namespace[slot.complete_name]
                    namespace["PENDING"] = pending  # after the await, before the synchronous calls
                    for (_, into, key), value in zip(entries, values, strict=True):
                        into[key] = complete(value)
        except Exception:
            again = stock()
            return await again if self.is_awaitable(again) else again
        return completed

    def _batch(self, slot: Slot, sources: list[Any]) -> Awaitable[list[Any]]:
        """The slot's batch with the field's arguments, converted as Strawberry converts a
        resolver's: once for the whole list."""
        info, arguments = self.slot_call(slot)
        return slot.batch(sources, info, **arguments)

    def slot_call(self, slot: Slot) -> tuple[Any, dict[str, Any]]:
        """The slot's field's info and arguments (Strawberry's), made once per execution: a
        look ahead (`Ahead`) may ask for them before the batch runs."""
        memo: dict[int, tuple[Slot, Any, dict[str, Any]]] = self.__dict__.setdefault("_nexes_slot_calls", {})
        made = memo.get(id(slot))
        if made is not None and made[0] is slot:
            return made[1], made[2]
        details = slot.field_details
        node = details[0].node
        raw = get_argument_values(slot.field_def, node, self.variable_values, details[0].fragment_variable_values)
        path = Path(None, node.name.value, slot.parent_type.name)
        raw_info = self.build_resolve_info(slot.field_def, [d.node for d in details], slot.parent_type, path)
        strawberry_schema = self.schema._strawberry_schema  # type: ignore[attr-defined]
        info = strawberry_schema.config.info_class(_raw_info=raw_info, _field=slot.definition)
        arguments = convert_arguments(
            raw,
            slot.definition.arguments,
            scalar_registry=strawberry_schema.schema_converter.scalar_registry,
            config=strawberry_schema.config,
            info=info,
        )
        memo[id(slot)] = (slot, info, arguments)
        return info, arguments

    def look_ahead(self, context: Any, key: str, completer: Completer | None) -> None:
        """Tell the resolver of root field `key` the batches its value's completion will run
        (context.ahead, by response name), before it runs: so that it may read their data in
        its own round trip (Query.customers with its customers' orders)."""
        slots = getattr(completer, "slots", None)
        if slots and hasattr(context, "ahead"):
            if context.ahead is None:
                context.ahead = {}
            context.ahead[key] = Ahead(self, slots)

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        if path.prev is None and self.operation.operation is OperationType.QUERY:
            # A root field: its resolver may look ahead at the batches below it (look_ahead).
            field_def = parent_type.fields.get(field_details_list[0].node.name.value)
            if field_def is not None and isinstance(get_named_type(field_def.type), GraphQLObjectType):
                completer = self._completer(field_def.type, field_details_list)
                self.look_ahead(self.context_value, str(path.key), completer)
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    def _completer(self, return_type: GraphQLOutputType, field_details_list: Any) -> Completer | None:
        """The compiled completer for this field's selection (memoized per execution too:
        list items come back with the same field details)."""
        memo: dict[tuple[int, int], Completer | None] = self.__dict__.setdefault("_nexes_completers", {})
        key = (id(return_type), id(field_details_list))
        if key in memo:
            return memo[key]
        manager = self.middleware_manager
        if manager is not None and manager.middlewares:
            completer = None
        else:
            nodes = [details.node for details in field_details_list]
            completer = self._completers.get(return_type, nodes, lambda: self._compile(return_type, field_details_list))
        memo[key] = completer
        self.__dict__.setdefault("_nexes_keep", []).append(field_details_list)  # its id stays unique
        return completer

    def _compile(self, return_type: GraphQLOutputType, field_details_list: Any) -> Completer | None:
        if not no_directives([d.node for d in field_details_list], self.fragments):
            return None

        def collect(type_: GraphQLObjectType, details: Any) -> tuple[dict[str, Any], bool]:
            collected = self.collect_subfields(type_, details)
            return collected.grouped_field_set, bool(collected.new_defer_usages)

        return compile_completer(return_type, field_details_list, collect, self.is_guarded)

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Any,
        position_context: Any,
    ) -> Any:
        manager = self.middleware_manager
        if manager is not None and manager.middlewares:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        # The same grouped field set object comes back for every row of a list.
        plans = self.__dict__.setdefault("_nexes_plans", {})
        plan = plans.get(id(grouped_field_set))
        if plan is None:
            plan = plans[id(grouped_field_set)] = plan_for(parent_type, grouped_field_set, self._plans, self.is_guarded)
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list in grouped_field_set.items():
                entry = plan.get(response_name)
                result = (
                    Undefined
                    if entry is None
                    else self._fast(
                        entry, source_value, path, response_name, parent_type, field_details_list, position_context
                    )
                )
                if result is Undefined:
                    # The stock path, for everything else and for nulls and errors.
                    field_path = Path(path, response_name, parent_type.name)
                    result = self.execute_field(
                        parent_type, source_value, field_details_list, field_path, position_context
                    )
                    if result is Undefined:
                        continue
                results[response_name] = result
                if is_awaitable(result):
                    awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results

        async def get_results() -> dict[str, Any]:
            if len(awaitable_fields) == 1:
                field = awaitable_fields[0]
                results[field] = await results[field]
            else:
                awaited = await gather_with_cancel(*(results[field] for field in awaitable_fields))
                results.update(zip(awaitable_fields, awaited, strict=True))
            return results

        return get_results()

    def _fast(
        self,
        entry: Leaf | Child,
        source: Any,
        path: Path | None,
        response_name: str,
        parent_type: GraphQLObjectType,
        field_details_list: Any,
        position_context: Any,
    ) -> Any:
        """The field's completed value, or Undefined to hand it to the stock path (nulls,
        errors, wrong types). An object is completed as graphql-core completes one."""
        if isinstance(entry, Leaf):
            value = _read(entry, source)
            return Undefined if value is None else value
        child = entry
        try:
            value = getattr(source, child.attr)
        except Exception:  # the stock path re-resolves it and reports the error
            return Undefined
        if value is None or child.object_type.is_type_of(value, None) is not True:  # type: ignore[arg-type,misc]
            return Undefined
        field_path = Path(path, response_name, parent_type.name)
        return self._complete_child(child, value, field_path, field_details_list, position_context)

    def _complete_child(
        self,
        child: Child,
        value: Any,
        field_path: Path,
        field_details_list: Any,
        position_context: Any,
    ) -> Any:
        completer = self._completer(child.object_type, field_details_list)
        if completer is not None:
            try:
                return self._run(
                    completer,
                    value,
                    lambda: self._complete_child_stock(child, value, field_path, field_details_list, position_context),
                )
            except Exception:  # noqa: S110  # the stock path below reports it exactly
                pass
        return self._complete_child_stock(child, value, field_path, field_details_list, position_context)

    def _complete_child_stock(
        self, child: Child, value: Any, field_path: Path, field_details_list: Any, position_context: Any
    ) -> Any:
        try:
            completed = self.collect_and_execute_subfields(
                child.object_type, field_details_list, field_path, value, position_context
            )
        except Exception as raw_error:
            self.handle_field_error(raw_error, child.return_type, field_details_list, field_path)
            return None
        if not self.is_awaitable(completed):
            return completed

        async def await_completed() -> Any:
            try:
                return await completed
            except Exception as raw_error:
                self.handle_field_error(raw_error, child.return_type, field_details_list, field_path)
                return None

        return await_completed()


class Ahead:
    """The batches (compiled.Slot) one root field's completion will run, for its resolver
    to look ahead at (nexes.resolvers.context.batch_ahead): the info and arguments of a
    batch's field as the batch itself will get them.

    It never changes what the batch does: a resolver that reads a batch's data early hands
    it over keyed by exactly what was read (the batch's own page spec and ids), and the
    batch reads for itself whatever does not match."""

    __slots__ = ("_executor", "_slots")

    def __init__(self, executor: FastExecutor, slots: tuple[Slot, ...]) -> None:
        self._executor = executor
        self._slots = slots

    def call(self, batch: Callable[..., Any]) -> tuple[Any, dict[str, Any]] | None:
        """(info, arguments) of the one field below that `batch` fills; None when none does,
        more than one does (which would the resolver read for?), or its arguments do not
        convert (the batch reports that itself)."""
        found = [slot for slot in self._slots if slot.batch is batch]
        if len(found) != 1:
            return None
        try:
            return self._executor.slot_call(found[0])
        except Exception:
            return None


def _read(leaf: Leaf, source: Any) -> Any:
    """The serialized value, or None to hand the field to the stock path."""
    try:
        raw = source if leaf.attr is None else getattr(source, leaf.attr)
        if raw is None:
            return None
        serialized = leaf.serialize(raw)
    except Exception:  # the stock path re-resolves it and reports the error properly
        return None
    return None if serialized is Undefined else serialized


# The unguarded executor's caches (tests clear and inspect them).
_plans = FastExecutor._plans
_completers = FastExecutor._completers
