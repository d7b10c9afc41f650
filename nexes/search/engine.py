"""Search queries: Typesense through the alias, or pg_trgm on a replica when Typesense is
down, slow or erroring.

The circuit breakers are purgatory's asyncio ones (PyPI `purgatory`, pinned): pybreaker's
async support needs Tornado. There is one per Typesense node (NEXES_TYPESENSE_URLS). After
`search_breaker_failures` failures in a row a node's breaker opens and searches skip that
node for `search_breaker_reset` seconds; then one search tries it again and closes it on
success. A search that fails on one node goes on to the next within the same search
timeout, and one that a node is slow to answer is sent to the next as well (hedged);
one that no node answers within the timeout waits on up to `search_patience_seconds`
(every node slow at once: their cores starved), and a timeout counts as a node's failure
only when another node answered the search in time. Only when every node has failed, or
is skipped, or the patience ran out, does PostgreSQL answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from typesense.async_.client import AsyncClient
from typesense.exceptions import TypesenseClientError

from nexes.db import search as search_db
from nexes.db.connect.router import Router
from nexes.errors import Code, NexesError, bad_input
from nexes.search import collection
from nexes.search.client import async_clients
from nexes.search.metrics import BUSY, PATIENCE, SEARCHES, TYPESENSE_LATENCY
from nexes.settings import Settings

log = logging.getLogger(__name__)
Engine = Literal["TYPESENSE", "POSTGRES"]
MAX_QUERY = 200
MIN_FALLBACK_QUERY = 3
FALLBACK_CAP = 1_000  # the fallback pages through the newest 1,000 matches at most
TYPESENSE_MAX_PAGE = 250
WORD = re.compile(r"\w", re.UNICODE)
# A query that could be part of a SOD number: one run of SOD characters with a digit in it.
SOD_FRAGMENT = re.compile(r"[A-Za-z0-9-]*\d[A-Za-z0-9-]*")
BREAKER = "typesense"  # the one node's breaker; node K of a cluster has typesense-K
TYPESENSE_ERRORS = (TypesenseClientError, httpx.HTTPError, TimeoutError, OSError)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
LAYOUT_TTL = 60.0  # how long the alias's collection layout is trusted before it is read again
# Tokens a SOD fragment's prefix may expand to: Typesense's default (4) would find 4 of
# the 300 orders whose numbers hold a 5-digit fragment at 10M; 1,000 costs 12 ms there
# for a 3-digit one (bench/README.md "Search").
SOD_CANDIDATES = 1_000
# Names a customer-name lookup expands to (Typesense's default): the closest names' orders.
# A short prefix such as `summit` matches thousands of names; 100 expansions cost 65 ms at
# 10M against 7 ms, so `found` is then the closest names' orders, marked inexact.
NAME_CANDIDATES = 4
# Typesense marks matches with these instead of <mark>, and answers the text as it is stored,
# unescaped: `highlighted` escapes the text and turns only these into <mark> tags. Private-use
# characters, so that a `<mark>` typed into a customer's name stays text. One stored in a
# name can at worst move a mark: the text around it is escaped all the same.
MARK_START = "\ue000"
MARK_END = "\ue001"
_SENTINELS = re.compile(f"({MARK_START}|{MARK_END})")


@dataclass(frozen=True)
class SearchQuery:
    text: str
    statuses: tuple[str, ...]
    created_from: datetime | None
    created_to: datetime | None  # exclusive
    offset: int
    size: int


@dataclass(frozen=True)
class Hit:
    order_id: int
    score: float
    highlights: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Found:
    engine: Engine
    hits: list[Hit]
    found: int
    exact: bool
    more: bool


def checked_text(text: str) -> str:
    """The query text, or BAD_USER_INPUT: it must hold a letter or digit, and be short."""
    text = text.strip()
    if not text:
        raise bad_input("query must not be empty", field="query")
    if len(text) > MAX_QUERY:
        raise bad_input(f"query must be at most {MAX_QUERY} characters", field="query")
    if not WORD.search(text):
        raise bad_input("query must contain a letter or a digit", field="query")
    return text


def filter_by(query: SearchQuery) -> str:
    """Typesense's filter_by, built only from enum names and integers: the user's text
    never reaches it, so no query can change the filter."""
    parts = []
    if query.statuses:
        parts.append("status:=[" + ",".join(query.statuses) + "]")
    # A document's created_at is its order's time in whole epoch seconds, rounded down (an
    # order at 10:00:00.7 holds 10:00:00); the collection's schema stays so. For a whole
    # second S, t >= S exactly when floor(t) >= S, and t < S exactly when floor(t) < S: so
    # whole-second bounds are exact. A fractional bound is rounded inwards, so that no order
    # outside [createdFrom, createdTo) comes back. createdFrom goes up: from=10:00:00.5 as
    # 10:00:00 would let in an order at 10:00:00.2. createdTo goes down: to=10:00:00.5 as
    # 10:00:01 would let in an order at 10:00:00.7 (it holds 10:00:00). What remains
    # imprecise: Typesense leaves out the orders inside the fractional second at either end,
    # [from, ceil(from)) and [floor(to), to), which the pg_trgm fallback, comparing exact
    # timestamps, returns. (Orders before 1970 are stored rounded towards zero, i.e. up:
    # bounds there are not exact to the second.)
    if query.created_from is not None:
        parts.append(f"created_at:>={epoch_ceil(query.created_from)}")
    if query.created_to is not None:
        parts.append(f"created_at:<{epoch_floor(query.created_to)}")
    return " && ".join(parts)


def epoch_floor(moment: datetime) -> int:
    """Whole epoch seconds at or before `moment` (integer arithmetic: no float rounding)."""
    return (moment - EPOCH) // SECOND


def epoch_ceil(moment: datetime) -> int:
    """Whole epoch seconds at or after `moment`."""
    return -((EPOCH - moment) // SECOND)


def _paging(query: SearchQuery) -> tuple[int, int, int]:
    """(page, per_page, skip): Typesense pages by number; an offset that is not a
    multiple of the size is served from page 1."""
    if query.offset % max(query.size, 1) == 0:
        return query.offset // max(query.size, 1) + 1, query.size, 0
    if query.offset + query.size > TYPESENSE_MAX_PAGE:
        raise bad_input("page with the same `first` as the page the cursor came from", field="after")
    return 1, query.offset + query.size, query.offset


@dataclass
class _Attempt:
    """One search's times on Typesense (loop time): new tries start until `slow_at`
    (NEXES_TYPESENSE_TIMEOUT from the start); past it, tries wait on until `patience_at`
    (NEXES_SEARCH_PATIENCE_SECONDS) while no node has answered by `slow_at` (`prompt`).
    One node has no peer to be slower than: its patience is the timeout."""

    slow_at: float
    patience_at: float
    prompt: bool = False  # a node answered within the timeout

    @classmethod
    def starting(cls, now: float, settings: Settings, *, several: bool) -> _Attempt:
        slow_at = now + settings.typesense_timeout
        return cls(slow_at, max(slow_at, now + settings.search_patience_seconds) if several else slow_at)


class SearchService:
    """One per process and event loop: the async client and the breaker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.alias = settings.typesense_collection
        self.clients: list[AsyncClient] = async_clients(settings)
        count = len(self.clients)
        self.breaker_names = [BREAKER] if count == 1 else [f"{BREAKER}-{k}" for k in range(1, count + 1)]
        self._next = 0  # the node the next search starts with: searches spread over the nodes
        self.breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.search_breaker_failures, default_ttl=settings.search_breaker_reset
        )
        # Bulkheads: searches a process runs at once, and fallback searches among them. A
        # search waits for a slot at most `search_queue_seconds`, holding nothing meanwhile,
        # then is refused (SERVICE_UNAVAILABLE, search only): a slow engine, or the pg_trgm
        # fallback over millions of orders, must not take the connections and the CPU that
        # pages and mutations need.
        self.slots = asyncio.Semaphore(settings.search_concurrency)
        self.fallback_slots = asyncio.Semaphore(settings.search_fallback_concurrency)
        self._layout: tuple[float, frozenset[str]] | None = None  # (read at, the collection's fields)
        self._tries: set[asyncio.Task[Found | None]] = set()  # each node's try, the hedges' losers too
        # Hedges in flight at most: when every node is slow (their cores starved), each hedge
        # is more work for them; a few outrun one slow node, more would add to the load.
        self._hedges = 0
        self._hedge_cap = max(1, settings.search_concurrency // 4)

    async def breaker_state(self) -> str:
        """closed while any node's breaker is closed, else half-opened while any is, else opened."""
        states = set((await self.breaker_states()).values())
        return next((state for state in ("closed", "half-opened") if state in states), "opened")

    async def breaker_states(self) -> dict[str, str]:
        """Each node's breaker: closed, opened or half-opened."""
        return {name: str((await self.breakers.get_breaker(name)).context.state) for name in self.breaker_names}

    async def warm(self) -> None:
        """Connect to the nodes and read the collection's layout before the first search
        (at a worker's start: a search must not pay for it); bounded by the search timeout."""
        for client in self.clients:
            with contextlib.suppress(*TYPESENSE_ERRORS):
                await asyncio.wait_for(self._fields(client), self.settings.typesense_timeout)

    async def search(self, query: SearchQuery, router: Router) -> Found:
        async with self._slot(self.slots, "search", "search is busy with other searches; retry in a moment"):
            return await self._search(query, router)

    @asynccontextmanager
    async def _slot(self, slots: asyncio.Semaphore, bulkhead: str, refusal: str) -> AsyncIterator[None]:
        """A slot of the bulkhead, waited for at most `search_queue_seconds`."""
        try:
            await asyncio.wait_for(slots.acquire(), self.settings.search_queue_seconds)
        except TimeoutError:
            BUSY.labels(bulkhead).inc()
            raise NexesError(Code.SERVICE_UNAVAILABLE, refusal) from None
        try:
            yield
        finally:
            slots.release()

    async def _search(self, query: SearchQuery, router: Router) -> Found:
        # A page Typesense cannot serve is the client's error: refused here, whichever engine
        # would answer, since raised inside the breaker it would count as a Typesense failure
        # and a few such requests would send every user's search to the fallback.
        paging = _paging(query)
        found = await self._typesense_nodes(query, paging)
        if found is None:
            found = await self._postgres(query, router)
        SEARCHES.labels(found.engine).inc()
        return found

    async def _typesense_nodes(self, query: SearchQuery, paging: tuple[int, int, int]) -> Found | None:
        """Typesense's answer from the first node that gives one, or None. The search
        starts on the next node in turn. A node that fails (a dead one refuses at once;
        one that restarts answers 503) hands it to the next at once; one that has not
        answered after `search_hedge_seconds` gets company: the same search on the next
        node, and the first answer wins (a hedged request). A 1M-document cluster on two
        loaded cores answered most searches in 100-400 ms and some past the whole second,
        slow on one node at a time (the node that restarts and catches up, the leader
        taking the writes held back during an election): one try at a time gave the slow
        one all the time and sent 3% of searches to the fallback (bench/README.md
        "Failure drills"). New tries start within `typesense_timeout`; past it a try
        waits on only while no node has answered within it (`_Attempt`). Every try runs to
        its end in the background, the losers too, so each node's breaker counts what the
        node really did; a node whose breaker is open is skipped. At most a quarter of
        `search_concurrency` hedges run at once per process: on cores every node shares,
        unbounded hedges doubled the work of the slow searches just when the cores were
        starved (the Typesense drill's second round, bench/README.md)."""
        loop = asyncio.get_running_loop()
        count = len(self.clients)
        attempt = _Attempt.starting(loop.time(), self.settings, several=count > 1)
        start, self._next = self._next, (self._next + 1) % count
        untried = [(start + k) % count for k in range(count)]
        running: dict[asyncio.Task[Found | None], int] = {}
        while True:
            hedge = bool(running)  # another try while one runs: extra work for the cluster
            opening = untried and loop.time() < attempt.slow_at
            if opening and (not hedge or self._hedges < self._hedge_cap):
                index = untried.pop(0)
                task = asyncio.create_task(self._on_node(index, query, paging, attempt))
                self._tries.add(task)
                task.add_done_callback(self._tries.discard)
                if hedge:
                    self._hedges += 1
                    task.add_done_callback(self._hedge_done)
                running[task] = index
            if not running:
                return None
            # Until the timeout, wake to hedge; past it, wait for the tries, which end by
            # `patience_at` at the latest, so that their breakers have counted them before
            # the fallback answers.
            wait = min(self.settings.search_hedge_seconds, attempt.slow_at - loop.time()) if opening else None
            done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                del running[task]
                if (found := task.result()) is not None:
                    return found

    def _hedge_done(self, task: asyncio.Task[Found | None]) -> None:
        self._hedges -= 1

    async def _on_node(
        self, index: int, query: SearchQuery, paging: tuple[int, int, int], attempt: _Attempt
    ) -> Found | None:
        """One try on node `index` through its breaker; None when the node failed, timed
        out, is skipped (its breaker open) or was starved with the others (not counted)."""
        try:
            async with await self.breakers.get_breaker(self.breaker_names[index]):
                return await self._timed(self.clients[index], query, paging, attempt)
        except OpenedState:
            return None
        except TYPESENSE_ERRORS as exc:
            log.warning("search: Typesense node %d failed (%s: %s)", index + 1, type(exc).__name__, exc)
            return None

    async def _timed(
        self, client: AsyncClient, query: SearchQuery, paging: tuple[int, int, int], attempt: _Attempt
    ) -> Found | None:
        """The node's answer. Past `typesense_timeout`, a try whose search another node
        answered within it raises TimeoutError (the breaker counts it: this node is the
        slow one, hung or starved alone). One whose search no node has answered in time
        waits on until `patience_at`, and then gives up with no failure counted (the
        breaker sees a try that ended, as purgatory knows no third outcome): every
        node slow at once is cores starved under them all (in the Typesense drill, a node
        catching up on the two cores the three share), not a node to leave out, and the
        pg_trgm fallback costs those cores far more than the wait."""
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(self._typesense(client, query, paging))
        try:
            done, _ = await asyncio.wait({work}, timeout=max(0.0, attempt.slow_at - loop.time()))
            if not done and not attempt.prompt and attempt.patience_at > attempt.slow_at:
                done, _ = await asyncio.wait({work}, timeout=max(0.0, attempt.patience_at - loop.time()))
                if not done:
                    PATIENCE.labels("expired").inc()
                    return None
                PATIENCE.labels("answered" if work.exception() is None else "failed").inc()
            if not done:
                raise TimeoutError(f"no answer within NEXES_TYPESENSE_TIMEOUT ({self.settings.typesense_timeout:g} s)")
            found = work.result()
            attempt.prompt = attempt.prompt or loop.time() <= attempt.slow_at
            return found
        finally:
            work.cancel()

    async def _fields(self, client: AsyncClient) -> frozenset[str]:
        """The fields of the alias's collection: one made by an older schema lacks
        `sod_suffixes` (its `sod_number` indexed for infix instead) or `customer_key`, and
        is searched its way until `nexes reindex` replaces it. Read once a minute, so a
        reindex's collection is searched its way within a minute of the swap."""
        now = time.monotonic()
        if self._layout is None or now - self._layout[0] > LAYOUT_TTL:
            found: dict[str, Any] = await client.collections[self.alias].retrieve()  # type: ignore[assignment]
            fields = frozenset(str(f.get("name")) for f in found.get("fields", []))
            missing = {"sod_suffixes", "customer_key"} - fields
            if missing:
                log.warning("search: %s lacks %s until `nexes reindex`", self.alias, ", ".join(sorted(missing)))
            self._layout = (now, fields)
        return self._layout[1]

    async def _typesense(self, client: AsyncClient, query: SearchQuery, paging: tuple[int, int, int]) -> Found:
        page, per_page, skip = paging
        params: dict[str, Any] = {
            "q": query.text,
            "query_by": collection.QUERY_BY,
            "num_typos": collection.NUM_TYPOS,
            "sort_by": "_text_match:desc,created_at:desc",
            "page": page,
            "per_page": per_page,
            "include_fields": "id,sod_number,customer_name",
            "highlight_fields": collection.QUERY_BY,
            "highlight_start_tag": MARK_START,
            "highlight_end_tag": MARK_END,
            "search_cutoff_ms": min(self.settings.search_cutoff_ms, int(self.settings.typesense_timeout * 800)),
        }
        flt = filter_by(query)
        if flt:
            params["filter_by"] = flt
        fields = await self._fields(client)
        expansions = None
        if SOD_FRAGMENT.fullmatch(query.text):
            # Only a query that could be part of a SOD number searches its fragments.
            if "sod_suffixes" in fields:
                params["query_by"] = params["highlight_fields"] = collection.SOD_QUERY_BY
                params["num_typos"] = collection.SOD_NUM_TYPOS
                params["max_candidates"] = expansions = SOD_CANDIDATES
            else:
                params["infix"] = collection.LEGACY_INFIX
        elif "customer_key" in fields and len(key := collection.customer_key(query.text)) >= collection.MIN_NAME_KEY:
            by_name = {**params, "q": key, "query_by": collection.NAME_QUERY_BY, "num_typos": collection.NAME_NUM_TYPOS}
            by_name.update(highlight_fields=collection.NAME_QUERY_BY, max_candidates=NAME_CANDIDATES)
            answer = await self._documents(client, by_name)
            # Decided on `found`, not on this page's hits, so that every page of a query
            # comes from the same search.
            if answer.get("found"):
                return typesense_found(answer, query, skip, NAME_CANDIDATES)
        return typesense_found(await self._documents(client, params), query, skip, expansions)

    async def _documents(self, client: AsyncClient, params: dict[str, Any]) -> dict[str, Any]:
        with TYPESENSE_LATENCY.time():
            answer: dict[str, Any] = await client.collections[self.alias].documents.search(params)  # type: ignore[arg-type,assignment]
        return answer

    async def _postgres(self, query: SearchQuery, router: Router) -> Found:
        if len(query.text) < MIN_FALLBACK_QUERY:
            raise bad_input(f"search is in fallback mode: type at least {MIN_FALLBACK_QUERY} characters", field="query")
        refusal = "the search index is unavailable and its fallback is busy; retry in a moment"
        async with self._slot(self.fallback_slots, "fallback", refusal):
            return await self._postgres_search(query, router)

    async def _postgres_search(self, query: SearchQuery, router: Router) -> Found:
        rows = await router.read(
            lambda conn: search_db.fallback_search(
                conn,
                query.text,
                statuses=query.statuses,
                created_from=query.created_from,
                created_to=query.created_to,
                cap=FALLBACK_CAP,
            )
        )
        page = rows[query.offset : query.offset + query.size]
        hits = [Hit(r.id, r.score, _pg_highlights(r, query.text)) for r in page]
        return Found("POSTGRES", hits, len(rows), len(rows) < FALLBACK_CAP, more=query.offset + query.size < len(rows))


def typesense_found(answer: dict[str, Any], query: SearchQuery, skip: int, expansions: int | None = None) -> Found:
    """Typesense's answer as a Found. A search stopped by `search_cutoff_ms` says so
    (`search_cutoff: true`): its `found` counts only what it reached, a lower bound. So
    does one whose prefix could expand to `expansions` tokens (max_candidates) and found
    that many documents or more: each token holds a document at least, so fewer documents
    mean fewer tokens than the limit, and none was left out."""
    hits = [_hit(h, query.text) for h in answer.get("hits", [])][skip:]
    found = int(answer.get("found", 0))
    exact = answer.get("search_cutoff") is not True and (expansions is None or found < expansions)
    return Found("TYPESENSE", hits, found, exact, more=query.offset + len(hits) < found)


def _hit(raw: dict[str, Any], text: str) -> Hit:
    document = raw["document"]
    highlights: dict[str, str] = {}
    for h in raw.get("highlights", []):
        field = str(h["field"])
        if field == "sod_suffixes":  # a fragment of the SOD number: mark it there
            sod = str(document.get("sod_number", ""))
            field, snippet = "sod_number", mark(sod, text) or html.escape(sod)
        elif field == "customer_key":  # the whole name matched, typos and all
            field, snippet = "customer_name", f"<mark>{html.escape(str(document.get('customer_name', '')))}</mark>"
        else:  # a string[] field answers `snippets`, a string `snippet`
            snippet = highlighted(str(h.get("snippet") or " ".join(h.get("snippets") or ())))
        highlights.setdefault(field, snippet)
    return Hit(int(document["id"]), float(raw.get("text_match", 0)), tuple(highlights.items()))


def highlighted(snippet: str) -> str:
    """Typesense's snippet (matches between MARK_START and MARK_END) as HTML: the text
    escaped, the matches in <mark> tags, always balanced."""
    out: list[str] = []
    inside = False
    for part in _SENTINELS.split(snippet):
        if part == MARK_START:
            if not inside:
                out.append("<mark>")
            inside = True
        elif part == MARK_END:
            if inside:
                out.append("</mark>")
            inside = False
        else:
            out.append(html.escape(part))
    if inside:
        out.append("</mark>")
    return "".join(out)


def mark(value: str, text: str) -> str | None:
    """`value` as HTML with every occurrence of `text` in <mark> tags, as Typesense's
    snippets come out of `highlighted` (the rest escaped), or None when it holds none
    (case-insensitive)."""
    pattern = re.compile(re.escape(text), re.IGNORECASE)
    out: list[str] = []
    at = 0
    for match in pattern.finditer(value):
        out += [html.escape(value[at : match.start()]), "<mark>", html.escape(match.group(0)), "</mark>"]
        at = match.end()
    if not out:
        return None
    out.append(html.escape(value[at:]))
    return "".join(out)


def _pg_highlights(row: search_db.FallbackHit, text: str) -> tuple[tuple[str, str], ...]:
    """Fields that contain the text, marked and escaped as Typesense's snippets are."""
    found = []
    for name, value in (
        ("sod_number", row.sod_number),
        ("customer_name", row.customer_name),
        ("description", row.description),
    ):
        snippet = mark(value, text)
        if snippet is not None:
            found.append((name, snippet))
    return tuple(found)


_services: dict[tuple[int, int], SearchService] = {}


def service_for(settings: Settings) -> SearchService:
    """The service of this settings object on the running event loop (httpx clients are
    bound to their loop; production has one loop per process, tests one per test)."""
    key = (id(settings), id(asyncio.get_running_loop()))
    service = _services.get(key)
    if service is None:
        service = _services[key] = SearchService(settings)
    return service
