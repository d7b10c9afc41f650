"""The caller of a request: a subject and its roles."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ANALYST = "analyst"
    ADMIN = "admin"


ROLES = frozenset(Role)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking: the token's `sub`, its known roles (unknown role names are dropped),
    its id (`jti`, for revocation) and expiry (epoch seconds)."""

    subject: str = "anonymous"
    roles: frozenset[str] = frozenset()
    token_id: str | None = None
    expires: float | None = None

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def has_any(self, roles: frozenset[str]) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def analyst_only(self) -> bool:
        """Reads go through the analyst role and pools: an analyst that may not write."""
        return Role.ANALYST in self.roles and not self.has_any(WRITERS)

    def owns(self, created_by: str | None) -> bool:
        """Whether this caller may see or change a thing `created_by` made (admins: all)."""
        return self.is_admin or (created_by is not None and created_by == self.subject)


WRITERS = frozenset({Role.OPERATOR, Role.ADMIN})  # the roles that may write (permissions' table too)
ANONYMOUS = Viewer()
ADMIN_VIEWER = Viewer(subject="admin", roles=frozenset({Role.ADMIN}))
