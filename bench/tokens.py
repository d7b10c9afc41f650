"""Bearer tokens for the benchmarks' clients: minted with the stack's development secret
(NEXES_JWT_SECRET from `infra/stack env`), one per benchmark run, as one signed-in user of
the SPA would send on every request (the API checks its signature once, then remembers it)."""

from __future__ import annotations

from collections.abc import Mapping

from nexes import settings as settings_module
from nexes.auth.tokens import MAX_TTL, mint


def bearer(env: Mapping[str, str], *roles: str) -> dict[str, str]:
    """The Authorization header of a token with `roles` (default admin) for `env`'s secret."""
    settings = settings_module.load(dict(env))
    token = mint(settings, roles or ("admin",), subject="bench", ttl=min(MAX_TTL, 12 * 3600.0))
    return {"Authorization": f"Bearer {token}"}
