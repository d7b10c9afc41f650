"""Typesense clients from the settings: the pinned `typesense` package, sync for workers
and the CLI, async (httpx underneath) for the API's event loop."""

from __future__ import annotations

import warnings
from urllib.parse import urlsplit

import typesense
from typesense.async_.client import AsyncClient
from typesense.configuration import ConfigDict

from nexes.settings import Settings

# The 2.x client warns on every collection handle about APIs of servers v30+; this is 0.24.
warnings.filterwarnings("ignore", message=r".* is deprecated on v30\+", category=DeprecationWarning)


def client_config(settings: Settings, *, timeout: float, retries: int) -> ConfigDict:
    """The client configuration: one node from NEXES_TYPESENSE_URL."""
    url = urlsplit(settings.typesense_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return {
        "nodes": [{"host": url.hostname or "127.0.0.1", "port": port, "protocol": url.scheme or "http"}],
        "api_key": str(settings.typesense_api_key),
        "connection_timeout_seconds": timeout,
        "num_retries": retries,
        "retry_interval_seconds": 0.1,
    }


def sync_client(settings: Settings, *, timeout: float = 30.0, retries: int = 2) -> typesense.Client:
    """A client for workers and the CLI: bulk imports may take seconds."""
    return typesense.Client(client_config(settings, timeout=timeout, retries=retries))


def async_client(settings: Settings) -> AsyncClient:
    """The API's client: no retries and the search timeout, so a sick server fails fast
    and the circuit breaker sends search to PostgreSQL."""
    return AsyncClient(client_config(settings, timeout=settings.typesense_timeout, retries=0))
