"""Typesense clients from the settings: the pinned `typesense` package, sync for workers
and the CLI, async (httpx underneath) for the API's event loop."""

from __future__ import annotations

import warnings
from urllib.parse import urlsplit

import typesense
from typesense.async_.client import AsyncClient
from typesense.configuration import ConfigDict, NodeConfigDict

from nexes.settings import Settings

# The 2.x client warns on every collection handle about APIs of servers v30+; this is 0.24.
warnings.filterwarnings("ignore", message=r".* is deprecated on v30\+", category=DeprecationWarning)
# Between two tries of a request the client sleeps this long (its default is 1.0 s, longer
# than the API's whole search timeout).
RETRY_INTERVAL = 0.1


def node(url: str) -> NodeConfigDict:
    """One node of the client's configuration, from its URL."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"host": parts.hostname or "127.0.0.1", "port": port, "protocol": parts.scheme or "http"}


def client_config(settings: Settings, *, timeout: float, retries: int, urls: tuple[str, ...] = ()) -> ConfigDict:
    """The client configuration: the nodes of `urls`, by default every node Nexes knows
    (NEXES_TYPESENSE_URLS, else NEXES_TYPESENSE_URL). With several, the client turns to the
    next node when one fails, and leaves a failed node alone for a minute."""
    return {
        "nodes": [node(url) for url in urls or settings.typesense_urls],
        "api_key": str(settings.typesense_api_key),
        "connection_timeout_seconds": timeout,
        "num_retries": retries,
        "retry_interval_seconds": RETRY_INTERVAL,
    }


def sync_client(settings: Settings, *, timeout: float = 30.0, retries: int = 2) -> typesense.Client:
    """A client for workers and the CLI: bulk imports may take seconds. At least one retry
    per other node, so that a dead node sends a write to the next (a follower hands it to
    the leader)."""
    retries = max(retries, len(settings.typesense_urls) - 1)
    return typesense.Client(client_config(settings, timeout=timeout, retries=retries))


def async_clients(settings: Settings) -> list[AsyncClient]:
    """The API's clients, one per node, each with no retries: the search service picks the
    node, with a circuit breaker per node, and a node that fails sends the search to the
    next one rather than to PostgreSQL. Their timeout is the search timeout, or with several
    nodes the patience, up to which the service may wait when every node is slow (it
    bounds each try itself)."""
    urls = settings.typesense_urls
    timeout = max(settings.typesense_timeout, settings.search_patience_seconds if len(urls) > 1 else 0.0)
    return [AsyncClient(client_config(settings, timeout=timeout, retries=0, urls=(url,))) for url in urls]
