"""The request context handed to every resolver: request id, viewer, router, loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from nexes.db.connect.router import Router
from nexes.settings import Settings

if TYPE_CHECKING:
    from nexes.resolvers.ids import CursorCodec
    from nexes.resolvers.loaders import Loaders


@dataclass(frozen=True)
class Viewer:
    """Who is asking. Anonymous until authentication plugs in here."""

    subject: str = "anonymous"
    roles: frozenset[str] = frozenset()


@dataclass
class Context:
    request_id: str
    settings: Settings
    router: Router
    cursors: CursorCodec
    viewer: Viewer = field(default_factory=Viewer)

    @cached_property
    def loaders(self) -> Loaders:
        """Per-request DataLoaders, made on first use: most requests need none."""
        from nexes.resolvers.loaders import Loaders

        return Loaders(self.router)
