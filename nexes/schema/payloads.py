"""What every mutation answers with: the object it changed (or found) and its errors."""

from __future__ import annotations

import strawberry

from nexes.errors import Code


@strawberry.type(description="A problem with a mutation's input: a stable code, the field, a message.")
class UserError:
    code: str = strawberry.field(
        description="Stable error code to branch on, e.g. DUPLICATE_CONFLICT, INVALID_TRANSITION, UNKNOWN_SKU, "
        "UNKNOWN_CUSTOMER, CONFLICT, NOT_FOUND, BAD_USER_INPUT (README: Error codes)."
    )
    field: str | None = strawberry.field(
        description="Path of the input field at fault, e.g. sodNumber or lines.2.sku; null when no one field is."
    )
    message: str = strawberry.field(description="What went wrong and what to do, for a person; may change wording.")


def user_error(code: Code | str, message: str, field: str | None = None) -> UserError:
    """An expected failure as a payload error (for a NexesError: its code, message and field)."""
    return UserError(code=str(code), field=field, message=message)
