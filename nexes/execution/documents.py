"""Trusted documents and persisted queries (issue 17): which query text a request runs.

Apollo's persisted-query protocol: a request may carry `extensions.persistedQuery =
{version: 1, sha256Hash}` with or without `query`.

- Hash and query: the hash must be the query's SHA-256 (else BAD_USER_INPUT), and the
  document may be stored as an automatic persisted query (APQ).
- Hash alone: the registered or stored document runs; else PERSISTED_QUERY_NOT_FOUND
  (message `PersistedQueryNotFound`, as Apollo's clients expect), and the client sends
  the query with its hash.

Who may register and run what (the roles):

- Allow-list mode (NEXES_TRUSTED_DOCUMENTS=on): a token holding neither analyst nor admin
  (viewer, operator) runs only documents registered with `nexes documents add`, by hash
  or by their full text; anything else is PERSISTED_QUERY_NOT_FOUND (a hash) or
  DOCUMENT_NOT_TRUSTED (a text), and nothing it sends is stored. Analysts and admins stay
  ad hoc.
- Automatic registration is for analysts and admins, and for everyone when the mode is off.

What it may cost: registered hashes are read into a per-process copy (a frozenset, at
most nexes.db.documents.MAX_TRUSTED) at most once every NEXES_TRUSTED_DOCUMENTS_REFRESH
seconds, and registered texts kept in a small LRU (DOCUMENT_CACHE entries and bytes), so
the hot path runs no SQL; an unknown hash costs a set lookup. APQs live in Redis, bounded
by count (NEXES_APQ_MAX_DOCUMENTS, oldest out first), per-document bytes
(NEXES_APQ_MAX_DOCUMENT_BYTES; a longer one runs but is not stored) and age (NEXES_APQ_TTL),
each call bounded by NEXES_REDIS_TIMEOUT; when Redis fails, a hash is not found (the
client then sends the query, which runs) and nothing is stored, with a warning.

What it may reveal: an unknown hash and a hash the caller may not run get the same answer;
`nexes documents list` shows hashes, operation names and who added them, not the texts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis
from graphql import GraphQLError, OperationDefinitionNode, parse, specified_rules, validate

from nexes.auth.identity import Role, Viewer
from nexes.db import documents as db
from nexes.db.connect.router import Router
from nexes.errors import Code, NexesError, bad_input
from nexes.settings import Settings

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
UNRESTRICTED = frozenset({Role.ANALYST, Role.ADMIN})  # ad hoc even in allow-list mode
APQ_PREFIX = "nexes:apq:"
APQ_INDEX = "nexes:apq:index"  # sorted set: hash -> when stored (epoch seconds)
DOCUMENT_CACHE = 512  # registered texts an API process keeps, and at most...
DOCUMENT_CACHE_BYTES = 8_000_000  # ...this many bytes of them
RETRY_AFTER_FAILURE = 1.0  # seconds before a failed read of the hashes is tried again


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def not_found() -> NexesError:
    return NexesError(Code.PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound")


def not_trusted() -> NexesError:
    return NexesError(
        Code.DOCUMENT_NOT_TRUSTED,
        "this document is not registered: with NEXES_TRUSTED_DOCUMENTS=on a viewer or operator runs only "
        "documents added with `nexes documents add` (an analyst or admin token runs any)",
    )


def persisted_hash(extensions: Any) -> str | None:
    """The `sha256Hash` of a request's `extensions.persistedQuery` (lowercase), if it has one."""
    if extensions is None:
        return None
    if not isinstance(extensions, dict):
        raise bad_input("'extensions' must be a JSON object")
    persisted = extensions.get("persistedQuery")
    if persisted is None:
        return None
    if not isinstance(persisted, dict):
        raise bad_input("'extensions.persistedQuery' must be an object {version: 1, sha256Hash}")
    if persisted.get("version") != 1:
        raise bad_input("'extensions.persistedQuery.version' must be 1 (the only version)")
    sha = persisted.get("sha256Hash")
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        raise bad_input("'extensions.persistedQuery.sha256Hash' must be 64 hexadecimal digits (SHA-256)")
    return sha.lower()


class DocumentError(ValueError):
    """A document `nexes documents add` refuses; the message says why."""


def prepare(text: str, schema: Any, rules: tuple[Any, ...] = ()) -> tuple[str, list[str]]:
    """The hash and operation names of a document to register, after it parses and
    validates against `schema` (a GraphQLSchema) with graphql-core's rules and `rules`."""
    if not text.strip():
        raise DocumentError("the document is empty")
    try:
        document = parse(text)
    except GraphQLError as exc:
        raise DocumentError(f"it does not parse: {exc.message}") from None
    errors = validate(schema, document, (*specified_rules, *rules))
    if errors:
        raise DocumentError("it does not validate: " + "; ".join(e.message for e in errors[:5]))
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return sha256_hex(text), [o.name.value for o in operations if o.name is not None]


class TrustedCopy:
    """This process's copy of the registered hashes (refreshed at most every `refresh`
    seconds, when a request needs it) and an LRU of their texts."""

    def __init__(self, router: Router, refresh: float) -> None:
        self._router = router
        self._refresh = refresh
        self._hashes: frozenset[str] = frozenset()
        self._next_read = 0.0  # monotonic: when the hashes are stale
        self._lock = asyncio.Lock()
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._text_bytes = 0

    def invalidate(self) -> None:
        """Read the hashes again on the next request that needs them."""
        self._next_read = 0.0

    async def has(self, sha: str) -> bool:
        if time.monotonic() >= self._next_read:
            await self._read_hashes()
        return sha in self._hashes

    async def text(self, sha: str) -> str | None:
        """The registered text of `sha`, or None when it is not registered."""
        if not await self.has(sha):
            return None
        text = self._texts.get(sha)
        if text is not None:
            self._texts.move_to_end(sha)
            return text
        text = await self._router.read(lambda conn: db.document(conn, sha))
        if text is not None:
            self._remember(sha, text)
        return text

    def _remember(self, sha: str, text: str) -> None:
        size = len(text)
        if size > DOCUMENT_CACHE_BYTES:
            return
        self._texts[sha] = text
        self._text_bytes += size
        while len(self._texts) > DOCUMENT_CACHE or self._text_bytes > DOCUMENT_CACHE_BYTES:
            _, old = self._texts.popitem(last=False)
            self._text_bytes -= len(old)

    async def _read_hashes(self) -> None:
        async with self._lock:  # one read at a time; the waiters use its result
            if time.monotonic() < self._next_read:
                return
            try:
                hashes = await self._router.read(db.hashes)
            except Exception as exc:  # any failure: keep the last copy, and say so
                log.warning("trusted documents: the registered hashes could not be read: %s", type(exc).__name__)
                self._next_read = time.monotonic() + RETRY_AFTER_FAILURE
                return
            self._hashes = hashes
            for gone in [sha for sha in self._texts if sha not in hashes]:
                self._text_bytes -= len(self._texts.pop(gone))
            self._next_read = time.monotonic() + self._refresh


# Store one APQ, evicting the oldest past the cap; entries older than the TTL leave the
# index (their keys expire by themselves). KEYS[1] the index; ARGV: hash, text, now, ttl,
# max count, key prefix.
_STORE = """
local index, sha, text = KEYS[1], ARGV[1], ARGV[2]
local now, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix = ARGV[6]
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
if not redis.call('ZSCORE', index, sha) then
  local over = redis.call('ZCARD', index) - max + 1
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
      redis.call('DEL', prefix .. old)
    end
    redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
  end
end
redis.call('SET', prefix .. sha, text, 'EX', ttl)
redis.call('ZADD', index, now, sha)
redis.call('EXPIRE', index, ttl)
return 1
"""


class AutomaticStore:
    """Automatic persisted queries in Redis: bounded by count, bytes per document and age."""

    def __init__(self, settings: Settings) -> None:
        timeout = settings.redis_timeout
        self._client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._store = self._client.register_script(_STORE)
        self._max_documents = settings.apq_max_documents
        self._max_bytes = settings.apq_max_document_bytes
        self._ttl = int(settings.apq_ttl)

    async def get(self, sha: str) -> str | None:
        try:
            value = await self._client.get(APQ_PREFIX + sha)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("persisted queries: Redis did not answer a lookup: %s", type(exc).__name__)
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, sha: str, text: str) -> bool:
        """Store `text` under `sha` unless it is too long or APQs are off; False if not stored."""
        data = text.encode()
        if self._max_documents == 0 or len(data) > self._max_bytes:
            return False
        try:
            await self._store(
                keys=[APQ_INDEX], args=[sha, data, time.time(), self._ttl, self._max_documents, APQ_PREFIX]
            )
        except (aioredis.RedisError, OSError) as exc:
            log.warning("persisted queries: Redis did not store a document: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()


class Documents:
    """Resolves the text a request runs: its query, a registered document or an APQ."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.allow_list = settings.trusted_documents
        self.trusted = TrustedCopy(router, settings.trusted_documents_refresh)
        self.automatic = AutomaticStore(settings)

    def restricted(self, viewer: Viewer) -> bool:
        """Whether `viewer` runs registered documents only."""
        return self.allow_list and not viewer.has_any(UNRESTRICTED)

    async def resolve(self, query: str, sha: str | None, viewer: Viewer) -> str:
        """The query text to run; NexesError when there is none the caller may run."""
        restricted = self.restricted(viewer)
        if sha is None:
            if restricted and not await self.trusted.has(sha256_hex(query)):
                raise not_trusted()
            return query
        if query:
            if sha256_hex(query) != sha:
                raise bad_input("provided sha does not match query")
            if await self.trusted.has(sha):
                return query
            if restricted:
                raise not_trusted()  # and never stored
            await self.automatic.put(sha, query)
            return query
        text = await self.trusted.text(sha)
        if text is None and not restricted:
            text = await self.automatic.get(sha)
        if text is None:
            raise not_found()
        return text

    async def close(self) -> None:
        await self.automatic.close()
