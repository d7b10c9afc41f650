"""Search paths the main search tests leave out, on the real stack: the fallback when
Typesense is slow or erroring and the breaker around it, createdFrom/createdTo on both
engines, the fallback's bounded `found` and its status filter, hostile queries in
fallback mode, the scheduled sweep, X-Nexes-Min-LSN for hits, scores and highlights."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from nexes.search import engine
from nexes.search.client import sync_client
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.brokers import broker_for, empty, waiting
from tests.support.replicas import fast, replay_paused, wait_for_replica, wait_for_state
from tests.support.search import SEARCH, indexed_database, pick, search_environ, sync_now
from tests.support.waits import eventually

DB = "nexes_t_search_paths"
REDIS_DB = 11
ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: every connection is refused
CREATE = """mutation($input: CreateServiceOrderInput!) {
  createServiceOrder(input: $input) { serviceOrder { sodNumber createdAt } errors { code message } } }"""
UPDATE = """mutation($sod: String!, $description: String!) {
  updateServiceOrder(sodNumber: $sod, input: {description: $description}) { errors { code message } } }"""


def environ() -> dict[str, str]:
    return search_environ(DB, REDIS_DB, NEXES_SEARCH_SWEEP_SECONDS="0.5")


@pytest.fixture(scope="module")
def paths_settings(template_settings: Settings) -> Iterator[Settings]:
    """A seeded database of this module's own, with its own collection and Redis db."""
    with indexed_database(template_settings, environ(), 2_000) as settings:
        wait_for_replica(settings)
        yield settings


@pytest.fixture
def db_settings(paths_settings: Settings) -> Settings:
    return paths_settings


@pytest.fixture
async def api(paths_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(paths_settings) as client:
        yield client


@pytest.fixture
async def fallback_api(paths_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with Typesense at a closed port: every search takes the pg_trgm fallback."""
    async with client_for(replace(paths_settings, typesense_url=CLOSED_PORT)) as client:
        yield client


async def search(api: httpx.AsyncClient, q: str, headers: dict[str, str] | None = None, **variables: Any) -> Any:
    body = await gql(api, SEARCH, {"q": q, **variables}, **(headers or {}))
    assert body["_response"].status_code in (200, 400), body
    return body


def answered_by(body: dict[str, Any], engine_name: str) -> dict[str, Any]:
    """The search result, after checking it has no errors and which engine answered."""
    assert error_codes(body) == [], body
    result: dict[str, Any] = body["data"]["search"]
    assert result["engine"] == engine_name, result
    return result


# --- 1. slow and erroring Typesense: fallback and breaker ---------------------------


class FakeTypesense:
    """A fake HTTP server standing in for Typesense, for faults the real server cannot
    produce on demand. `hang` accepts every request and never answers (slower than any
    timeout); `503` answers every request with HTTP 503 and Typesense's own body for it;
    `real` passes each request through to the stack's real Typesense (the fault is over).
    One request per connection, answered with `Connection: close`."""

    def __init__(self, mode: str, real_url: str) -> None:
        self.mode = mode
        self.real_url = real_url.rstrip("/")
        self.requests = 0
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeTypesense:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()  # lets the hanging handlers end
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target = head[0].split(" ")[:2]
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests += 1
            if self.mode == "hang":
                await self._released.wait()
                return
            if self.mode == "503":
                status, content_type, payload = 503, "application/json", b'{"message": "Not Ready or Lagging"}'
            else:
                status, content_type, payload = await self._forward(method, target, headers, body)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, content_type.encode(), len(payload))
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up (its timeout)
        finally:
            writer.close()

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        passed = {k: v for k, v in headers.items() if k not in ("host", "connection", "content-length")}
        async with httpx.AsyncClient(timeout=10) as real:
            answer = await real.request(method, self.real_url + target, headers=passed, content=body)
        return answer.status_code, answer.headers.get("content-type", "application/json"), answer.content


@pytest.mark.parametrize("fault", ["hang", "503"])
async def test_slow_or_erroring_typesense_falls_back_to_postgres_opens_the_breaker_until_typesense_answers(
    paths_settings: Settings, db: psycopg.Connection, fault: str
) -> None:
    """Typesense slow past NEXES_TYPESENSE_TIMEOUT (`hang`) or answering HTTP 503: the real
    server does neither on demand, so FakeTypesense (a fake, above) stands in for it."""
    _, sod, _, _ = pick(db)
    async with FakeTypesense(fault, paths_settings.typesense_url) as fake:
        settings = replace(
            paths_settings,
            typesense_url=fake.url,
            typesense_timeout=0.5,
            search_breaker_failures=3,
            search_breaker_reset=1.0,
        )
        async with client_for(settings) as api:
            service = engine.service_for(settings)
            for attempt in range(1, settings.search_breaker_failures + 1):
                started = time.monotonic()
                result = answered_by(await search(api, sod), "POSTGRES")
                elapsed = time.monotonic() - started
                assert sod in [e["node"]["sodNumber"] for e in result["edges"]]
                if fault == "hang":  # waited for the timeout, and no longer than a generous bound
                    assert settings.typesense_timeout * 0.9 <= elapsed < settings.typesense_timeout + 10
                state = await service.breaker_state()
                assert state == ("opened" if attempt == settings.search_breaker_failures else "closed"), attempt
            asked = fake.requests
            assert asked >= settings.search_breaker_failures
            # Open: PostgreSQL answers without Typesense being asked.
            answered_by(await search(api, sod), "POSTGRES")
            assert fake.requests == asked and await service.breaker_state() == "opened"
            # The fault is over: after the reset time a search tries Typesense and closes it.
            # On a loaded machine the real server may miss this test's 0.5 s timeout once
            # (seen with other sessions' drills on the two cores): the breaker then opens for
            # another reset time and a later search closes it.
            fake.mode = "real"
            await asyncio.sleep(settings.search_breaker_reset + 0.3)

            async def by_typesense() -> dict[str, Any] | None:
                body = await search(api, sod)
                assert error_codes(body) == [], body
                found: dict[str, Any] = body["data"]["search"]
                if found["engine"] == "TYPESENSE":
                    return found
                await asyncio.sleep(settings.search_breaker_reset)
                return None

            result = await eventually(by_typesense, timeout=30)
            assert result is not None, "Typesense answered again, but the breaker never closed"
            assert sod in [e["node"]["sodNumber"] for e in result["edges"]]
            assert fake.requests > asked and await service.breaker_state() == "closed"


# --- 2. createdFrom / createdTo on both engines --------------------------------------


async def create_orders(api: httpx.AsyncClient, orders: dict[str, datetime], description: str) -> str:
    """Create one order per (sod, createdAt); the last answer's LSN, for reading them back."""
    lsn = ""
    for sod, created in orders.items():
        order = {
            "sodNumber": sod,
            "customerCode": "C000001",
            "createdAt": created.isoformat(timespec="microseconds"),
            "status": "OPEN",
            "description": description,
            "currency": "EUR",
            "lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "10.00"}],
        }
        body = await gql(api, CREATE, {"input": order})
        assert body["data"]["createServiceOrder"]["errors"] == [], body
        lsn = body["_response"].headers["x-nexes-lsn"]
    return lsn


async def test_created_from_and_to_keep_only_orders_in_the_half_open_range_on_both_engines(
    paths_settings: Settings, api: httpx.AsyncClient, fallback_api: httpx.AsyncClient
) -> None:
    """Typesense holds created_at in whole seconds: whole-second bounds are exact there; a
    fractional bound is rounded inwards, so Typesense may leave out orders within that
    second but never returns one outside the range. The fallback is exact."""
    base = (datetime.now(UTC) - timedelta(days=40)).replace(minute=0, second=0, microsecond=0)
    at = {
        "SRCH-RANGE-BEFORE": base - timedelta(microseconds=1),
        "SRCH-RANGE-AT-FROM": base,
        "SRCH-RANGE-FROM-FRACTION": base + timedelta(seconds=0.7),
        "SRCH-RANGE-LAST": base + timedelta(hours=1, microseconds=-1),
        "SRCH-RANGE-AT-TO": base + timedelta(hours=1),
        "SRCH-RANGE-AFTER": base + timedelta(hours=1, seconds=0.3),
    }
    lsn = await create_orders(api, at, "Quokka enclosure heating")
    sync_now(paths_settings)
    headers = {"x-nexes-min-lsn": lsn}
    half = timedelta(seconds=0.5)
    for start, end in [
        (base, base + timedelta(hours=1)),  # whole seconds
        (base + half, base + timedelta(hours=1) + half),  # both fractional
        (base, base + half),  # an order at base + 0.7 s is outside, though in to's second
        (base - half, base + timedelta(hours=1)),
    ]:
        flt = {"createdFrom": start.isoformat(), "createdTo": end.isoformat()}
        exact = {sod for sod, t in at.items() if start <= t < end}
        # Typesense: documents hold whole seconds (rounded down); from rounds up, to down.
        lo, hi = math.ceil(start.timestamp()), math.floor(end.timestamp())
        whole = {sod for sod, t in at.items() if lo <= math.floor(t.timestamp()) < hi}
        assert whole <= exact
        for client, engine_name, expected in ((api, "TYPESENSE", whole), (fallback_api, "POSTGRES", exact)):
            result = answered_by(await search(client, "quokka", headers, first=50, filter=flt), engine_name)
            created = {e["node"]["sodNumber"]: datetime.fromisoformat(e["node"]["createdAt"]) for e in result["edges"]}
            assert all(start <= t < end for t in created.values()), (engine_name, start, end, created)
            assert {s for s in created if s.startswith("SRCH-RANGE-")} == expected, (engine_name, start, end)
        if start.microsecond == end.microsecond == 0:
            assert whole == exact  # whole-second bounds are exact on Typesense too


# --- 3. the fallback: bounded found, status filter, hostile and short queries --------


async def test_the_fallback_caps_found_marks_it_inexact_and_applies_the_status_filter(
    fallback_api: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    # Every seeded SOD number holds "SOD": more matches than the cap.
    (matching,) = db.execute("SELECT count(*) FROM service_order WHERE sod_number ILIKE '%sod%'").fetchone()  # type: ignore[misc]
    assert matching > engine.FALLBACK_CAP
    result = answered_by(await search(fallback_api, "SOD", first=100), "POSTGRES")
    assert (result["found"], result["foundExact"]) == (engine.FALLBACK_CAP, False)
    assert result["pageInfo"]["hasNextPage"] and len(result["edges"]) == 100
    # Filtered: every CANCELLED order holds "SOD" in its number, so all of them, and only them.
    cancelled = {r[0] for r in db.execute("SELECT sod_number FROM service_order WHERE status = 'CANCELLED'")}
    assert 0 < len(cancelled) < engine.FALLBACK_CAP and all("SOD" in s for s in cancelled)
    seen: list[str] = []
    after = None
    while True:
        page = answered_by(
            await search(fallback_api, "SOD", first=100, after=after, filter={"status": ["CANCELLED"]}), "POSTGRES"
        )
        assert (page["found"], page["foundExact"]) == (len(cancelled), True)
        assert all(e["node"]["status"] == "CANCELLED" for e in page["edges"])
        seen += [e["node"]["sodNumber"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert sorted(seen) == sorted(cancelled)


async def test_hostile_and_short_queries_in_fallback_mode_get_a_result_or_bad_user_input_and_keep_the_filter(
    fallback_api: httpx.AsyncClient,
) -> None:
    hostile = [
        "",
        "   ",
        "x" * 10_000,
        "!!!",
        "*&&||()[]:=<>",
        "%_\\'\";--",
        "x && status:=CANCELLED",
        "boiler && status:=[CANCELLED]",
        "boiler) || status:=[CANCELLED",
        "boiler`,filter_by=status:=[CANCELLED]",
        "* || created_at:>0",
        "boiler' OR status = 'CANCELLED' --",
        "boiler%",
        "SOD%",
        "S_D",
    ]
    answered = 0
    for q in hostile:
        body = await search(fallback_api, q, first=100, filter={"status": ["OPEN"]})
        assert error_codes(body) in ([], ["BAD_USER_INPUT"]), (q[:30], body)
        if not error_codes(body):
            answered += 1
            result = body["data"]["search"]
            assert result["engine"] == "POSTGRES"
            assert all(e["node"]["status"] == "OPEN" for e in result["edges"]), q
    assert answered >= 8  # most of them were searched, not refused
    # The check above is live: a plain word with the same filter finds OPEN orders only.
    control = answered_by(await search(fallback_api, "boiler", first=100, filter={"status": ["OPEN"]}), "POSTGRES")
    assert control["edges"] and all(e["node"]["status"] == "OPEN" for e in control["edges"])
    # LIKE's wildcards are matched literally: "SOD%" and "S_D" find nothing; "SOD" finds orders.
    for q in ("SOD%", "S_D"):
        assert answered_by(await search(fallback_api, q), "POSTGRES")["found"] == 0, q
    assert answered_by(await search(fallback_api, "SOD"), "POSTGRES")["found"] > 0
    # Queries under 3 characters are refused in fallback mode (after trimming).
    for q in ("ab", " 1 ", "é"):
        body = await search(fallback_api, q)
        assert error_codes(body) == ["BAD_USER_INPUT"], (q, body)
        assert "at least 3 characters" in body["errors"][0]["message"]


# --- 4. the scheduled sweep ----------------------------------------------------------


@contextlib.contextmanager
def search_worker(tmp_path: Path) -> Iterator[None]:
    """A real Dramatiq worker on this module's database and Redis db, search queue only."""
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "nexes.jobs", "--processes", "1", "--threads", "2", "--queues", "search"],
        env=environ(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def scheduler_running(settings: Settings) -> Iterator[None]:
    from nexes.jobs import scheduler

    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(settings, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def indexed_description(settings: Settings, order_id: int) -> str:
    document = sync_client(settings).collections[settings.typesense_collection].documents[str(order_id)].retrieve()
    return str(document["description"])


async def test_the_scheduled_sweep_indexes_changes_whose_sync_request_was_never_sent_or_was_lost(
    paths_settings: Settings,
    api: httpx.AsyncClient,
    db: psycopg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No worker runs while the changes are made: the only messages the worker later gets
    are the ones the real scheduler sends (sweep_search, every NEXES_SEARCH_SWEEP_SECONDS)."""
    from nexes.jobs.search import sweep_search, sync_search

    empty(paths_settings)
    broker = broker_for(paths_settings)
    broker.declare_queue("search")
    monkeypatch.setattr(sync_search, "broker", broker)
    monkeypatch.setattr(sweep_search, "broker", broker)
    sync_now(paths_settings)
    (silent, _), (lost, lost_sod) = db.execute(
        "SELECT id, sod_number FROM service_order WHERE status = 'OPEN' ORDER BY id LIMIT 2"
    )
    # Never sent: a change made in SQL records its outbox row, and nothing asks for a sync.
    db.execute(
        "UPDATE service_order SET description = 'Swept silent change', updated_at = clock_timestamp() WHERE id = %s",
        [silent],
    )
    # Lost: a mutation sends its sync request; the message is deleted from the broker unread.
    body = await gql(api, UPDATE, {"sod": lost_sod, "description": "Swept lost change"})
    assert body["data"]["updateServiceOrder"]["errors"] == [], body
    deadline = time.monotonic() + 15
    while not waiting(paths_settings, "search"):
        assert time.monotonic() < deadline, "the mutation's sync request never reached the broker"
        await asyncio.sleep(0.05)
    empty(paths_settings)
    pending = {r[0] for r in db.execute("SELECT DISTINCT order_id FROM search_outbox")}
    assert {silent, lost} <= pending
    assert "Swept" not in indexed_description(paths_settings, silent) + indexed_description(paths_settings, lost)

    with search_worker(tmp_path), scheduler_running(paths_settings):
        deadline = time.monotonic() + 90
        while (indexed_description(paths_settings, silent), indexed_description(paths_settings, lost)) != (
            "Swept silent change",
            "Swept lost change",
        ):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            await asyncio.sleep(0.2)
    assert db.execute("SELECT count(*) FROM search_outbox WHERE order_id = ANY(%s)", [[silent, lost]]).fetchone() == (
        0,
    )
    broker.close()
    empty(paths_settings)


# --- 5. X-Nexes-Min-LSN --------------------------------------------------------------


async def test_search_hits_are_loaded_from_a_node_at_least_at_the_min_lsn_with_replay_paused_on_both_engines(
    paths_settings: Settings, db: psycopg.Connection
) -> None:
    """Mirrors the read-your-writes test of tests/test_replicas.py: the replica stays in
    rotation (a long lag threshold), so only the LSN keeps the hits fresh."""
    settings = fast(paths_settings, replica_max_lag=60.0)
    _, sod, _, old = pick(db, "o.status = 'OPEN' AND o.description NOT LIKE 'Swept%'")
    marker = f"Xylophone tuning {uuid.uuid4().hex[:8]}"
    wait_for_replica(paths_settings)
    async with client_for(settings) as api, client_for(replace(settings, typesense_url=CLOSED_PORT)) as fallback:
        await wait_for_state(api, "healthy", 10)
        await wait_for_state(fallback, "healthy", 10)
        with replay_paused(paths_settings):
            body = await gql(api, UPDATE, {"sod": sod, "description": marker})
            assert body["data"]["updateServiceOrder"]["errors"] == [], body
            headers = {"x-nexes-min-lsn": body["_response"].headers["x-nexes-lsn"]}
            sync_now(paths_settings)  # Typesense has the new text; the replica has not
            control = answered_by(await search(api, "xylophone"), "TYPESENSE")
            assert [e["node"]["description"] for e in control["edges"]] == [old], "the replica was not behind"
            assert answered_by(await search(fallback, "xylophone"), "POSTGRES")["edges"] == []
            for _ in range(20):
                fresh = answered_by(await search(api, "xylophone", headers), "TYPESENSE")
                assert [(e["node"]["sodNumber"], e["node"]["description"]) for e in fresh["edges"]] == [(sod, marker)]
                fresh = answered_by(await search(fallback, "xylophone", headers), "POSTGRES")
                assert [(e["node"]["sodNumber"], e["node"]["description"]) for e in fresh["edges"]] == [(sod, marker)]


# --- 6. scores and highlights --------------------------------------------------------

MARKED = re.compile(r"<mark>(.*?)</mark>")
NODE_FIELD = {
    "sod_number": lambda node: node["sodNumber"],
    "customer_name": lambda node: node["customer"]["name"],
    "customer_code": lambda node: node["customer"]["code"],
    "description": lambda node: node["description"],
}


async def test_typesense_hits_have_a_positive_score_and_highlights_that_name_the_matched_field(
    api: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    customer = pick(db, "o.sod_number LIKE '%1234'")[2]
    for q, field in (("boiler", "description"), ("01234", "sod_number"), (customer, "customer_name")):
        result = answered_by(await search(api, q, first=20), "TYPESENSE")
        assert result["edges"], q
        for edge in result["edges"]:
            assert isinstance(edge["score"], int | float) and edge["score"] > 0, (q, edge)
            assert field in [h["field"] for h in edge["highlights"]], (q, edge)
            for h in edge["highlights"]:
                marked = MARKED.findall(h["snippet"])
                assert marked, (q, h)
                value = NODE_FIELD[h["field"]](edge["node"]).lower()
                assert all(m.lower() in value for m in marked), (q, h, value)


async def test_a_page_refused_as_bad_user_input_is_not_counted_as_a_typesense_failure(
    paths_settings: Settings,
) -> None:
    """A client that paged past 250 hits with `first: 20`, then asks for `first: 30` (which
    Typesense's page numbers cannot serve): the refusal is the client's error, and must not
    open the breaker for everyone."""
    settings = replace(paths_settings, search_breaker_failures=2, search_breaker_reset=60.0)
    async with client_for(settings) as api:
        after = api.app.state.cursors.encode("SEARCH", "260", 0)  # type: ignore[attr-defined]
        for _ in range(settings.search_breaker_failures + 1):
            body = await search(api, "boiler", first=30, after=after)
            assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert await engine.service_for(settings).breaker_state() == "closed"
        answered_by(await search(api, "boiler"), "TYPESENSE")
    # Refused the same way when the fallback would answer: the answer does not depend on the engine.
    async with client_for(replace(settings, typesense_url=CLOSED_PORT)) as fallback:
        after = fallback.app.state.cursors.encode("SEARCH", "260", 0)  # type: ignore[attr-defined]
        assert error_codes(await search(fallback, "boiler", first=30, after=after)) == ["BAD_USER_INPUT"]
