"""What every mutation answers with: the object it changed (or found) and its errors."""

from __future__ import annotations

import strawberry

from nexes.errors import Code


@strawberry.type(description="A problem with a mutation's input: a stable code, the field, a message.")
class UserError:
    code: str
    field: str | None
    message: str


def user_error(code: Code | str, message: str, field: str | None = None) -> UserError:
    """An expected failure as a payload error (for a NexesError: its code, message and field)."""
    return UserError(code=str(code), field=field, message=message)
