"""A request's deadline: past it, what still runs is cancelled and the answer is TIMEOUT
with what finished.

Who: every GraphQL operation (queries and mutations) of every caller. Its length is the
caller's most generous role's `NEXES_REQUEST_DEADLINE_<ROLE>` (a token holding analyst
and viewer gets the analyst's 30 s); a token with no known role gets the shortest.

Cost: one timer per request and, per awaiting resolver, an `asyncio.timeout` that the
request's timer fires (no timer, no task per field: graphql-core's own abort path runs
two tasks and a wait for each): about 15 us a request with one awaiting resolver.

Reveals: the error names the deadline, its variable and the caller's role, which the
caller knows already; never the statement or the server.

How it stops work: graphql-core's abort signal (`execute(..., abort_signal=)`) stops
the execution at field boundaries; every resolver still awaiting is cancelled where it
waits (`DeadlineSignal.bound`, through the executor's `with_abort_signal`), and its field
gets the TIMEOUT, so the execution completes with the partial result by itself.
graphql-core's own wrapping of the whole execution (`with_aborted_execution_error`: a
task, a waiter task and a wait) is replaced by a timeout that cancels the whole only if
it has not completed UNWIND_SECONDS after the deadline.

A cancelled psycopg query sends a cancel request to the server (psycopg's
AsyncConnection.wait on CancelledError: cancel_safe, then it waits for the query to
end; PgBouncer forwards the cancel), so the statement stops there too, and the
connection returns to its pool idle; a transaction block rolls back on the way out. A
DataLoader's batch is cancelled once every caller waiting on it was (strawberry's
DataLoader), so a batched read stops alike, in its own task, just after the answer.

A write cut at its deadline rolls back, unless the deadline falls on its COMMIT, which
the server finishes: a TIMEOUT from a mutation may have committed, as after a broken
connection; read it back, or send it again (creates are create-or-identical, stock
receipts keyed by their reference).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from graphql import (
    AbortedGraphQLExecutionError,
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    execute,
)
from graphql.pyutils import AbortController, AbortSignal
from strawberry.execution.is_awaitable import optimized_is_awaitable

from nexes.errors import Code, NexesError
from nexes.resolvers.context import Context

T = TypeVar("T")
# A direct plan's run: (context, variables, signal) -> its result, or None for the stock path.
DirectRun = Callable[[Context, "dict[str, Any] | None", "DeadlineSignal"], Awaitable[ExecutionResult | None]]
# Once aborted, how long the cancelled work may take to unwind (its server-side cancels
# included) before the answer goes without the partial result.
UNWIND_SECONDS = 2.0


class DeadlineSignal(AbortSignal):
    """graphql-core's abort signal, with the loop time it fires at, its error, and the
    timeouts of the work waiting under it: timeouts without a timer of their own, fired
    by the deadline's one timer (`Deadline.expire`)."""

    def __init__(self, when: float, error: Callable[[], NexesError]) -> None:
        super().__init__()
        self.when = when
        self.error = error
        self.waiting: set[asyncio.Timeout] = set()
        self.whole: asyncio.Timeout | None = None

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`, cancelled where it waits at the deadline, which raises the TIMEOUT."""
        timeout = asyncio.timeout(0 if self.aborted else None)
        try:
            async with timeout:
                self.waiting.add(timeout)
                try:
                    return await awaitable
                finally:
                    self.waiting.discard(timeout)
        except TimeoutError:
            if timeout.expired():
                raise self.error() from None
            raise  # the awaitable's own timeout, not the deadline

    async def settle(self, awaitable: Awaitable[T]) -> T:
        """The whole execution: its waiting fields stop at the deadline (`bound`), so it
        completes with the partial result by itself; cancelled whole (TIMEOUT, no data)
        only if it has not UNWIND_SECONDS after the deadline."""
        timeout = self.whole = asyncio.timeout(UNWIND_SECONDS if self.aborted else None)
        try:
            async with timeout:
                return await awaitable
        except TimeoutError:
            if timeout.expired():
                raise self.error() from None
            raise


class Deadline(AbortController):
    """One request's deadline: `seconds` from now, for a caller of `role`."""

    signal: DeadlineSignal

    def __init__(self, seconds: float, role: str) -> None:
        super().__init__()
        self.seconds = seconds
        self.role = role
        self.signal = DeadlineSignal(asyncio.get_running_loop().time() + seconds, self.error)

    def error(self) -> NexesError:
        variable = f"NEXES_REQUEST_DEADLINE_{self.role.upper()}"
        return NexesError(
            Code.TIMEOUT,
            f"the request ran past its deadline of {self.seconds:g} s ({self.role}, {variable}) and this part "
            "was stopped; ask for less (smaller pages, fewer fields or connections)",
        )

    def expire(self) -> None:
        """The deadline's timer: abort (graphql-core stops at field boundaries), cancel the
        work waiting now, and give the whole execution UNWIND_SECONDS to complete."""
        signal = self.signal
        self.abort(self.error())
        now = asyncio.get_running_loop().time()
        for timeout in signal.waiting:
            timeout.reschedule(now)
        if signal.whole is not None:
            signal.whole.reschedule(now + UNWIND_SECONDS)


def deadline_for(context: Context) -> Deadline:
    """The deadline of the context's caller: the longest among its roles' deadlines."""
    deadlines = context.settings.request_deadlines
    held = [role for role in context.viewer.roles if role in deadlines]
    role = max(held, key=deadlines.__getitem__) if held else min(deadlines, key=deadlines.__getitem__)
    return Deadline(deadlines[role], role)


async def execute_within(
    schema: GraphQLSchema,
    document: DocumentNode,
    context: Context,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    executor: Any,
    direct: DirectRun | None = None,
) -> ExecutionResult:
    """graphql-core's execute, aborted at the caller's deadline: then the partial result
    (data where the schema allows, TIMEOUT at every path that did not finish).

    `direct` (nexes.execution.direct's plan for this document) runs it first; when it gives
    None, graphql-core runs the operation."""
    deadline = deadline_for(context)
    timer = asyncio.get_running_loop().call_at(deadline.signal.when, deadline.expire)
    try:
        if direct is not None:
            answered = await direct(context, variables, deadline.signal)
            if answered is not None:
                return answered
        result = execute(
            schema,
            document,
            context_value=context,
            variable_values=variables,
            operation_name=operation_name,
            executor_class=executor,
            is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # a bool-returning check, as Strawberry's
            abort_signal=deadline.signal,
        )
        return result if isinstance(result, ExecutionResult) else await result
    except AbortedGraphQLExecutionError as aborted:  # aborted while running synchronously: what it completed
        if isinstance(aborted.aborted_result, ExecutionResult):
            return aborted.aborted_result
        return _stopped(deadline.error())
    except NexesError as error:  # stopped whole: too slow to unwind, or a mutation's next field
        if error.code is not Code.TIMEOUT:
            raise
        return _stopped(error)
    finally:
        timer.cancel()


def _stopped(error: NexesError) -> ExecutionResult:
    return ExecutionResult(data=None, errors=[GraphQLError(error.message, original_error=error)])
