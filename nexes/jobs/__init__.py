"""Dramatiq broker and actors. `dramatiq nexes.jobs` imports this module to run workers.

The broker is configured here, at import, because that import is the worker
process's entry point; settings are read once, from the environment.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage

from nexes import settings as settings_module

settings = settings_module.load()
broker = RedisBroker(url=settings.redis_url)  # type: ignore[no-untyped-call]
broker.add_middleware(AsyncIO())
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

from nexes.jobs import imports, maintenance  # noqa: E402  (actors register on the broker set above)

__all__ = ["broker", "imports", "maintenance", "settings"]
