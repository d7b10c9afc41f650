"""What every mutation answers with: the object it changed (or found) and its errors."""

from __future__ import annotations

import strawberry

from nexes.errors import NexesError


@strawberry.type(description="A problem with a mutation's input: a stable code, the field, a message.")
class UserError:
    code: str
    field: str | None
    message: str


def user_error(exc: NexesError) -> UserError:
    """An expected failure as a payload error."""
    return UserError(code=exc.code.value, field=exc.field, message=exc.message)
