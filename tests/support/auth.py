"""Bearer tokens for tests: minted with the stack's development secret (NEXES_JWT_SECRET)."""

from __future__ import annotations

from nexes.auth.tokens import mint
from nexes.settings import Settings


def token_for(settings: Settings, *roles: str, subject: str = "test-user", ttl: float = 3600.0) -> str:
    return mint(settings, roles, subject=subject, ttl=ttl)


def bearer_for(settings: Settings, *roles: str, subject: str = "test-user") -> dict[str, str]:
    """The Authorization header of a token with these roles."""
    return {"Authorization": f"Bearer {token_for(settings, *roles, subject=subject)}"}
