"""The reference SPA (examples/spa) end to end in Debian's chromium through Playwright, on a
live `nexes serve` (development, the SPA at /app) and a real worker, on a database of its
own: sign in, scroll three pages of orders (no repeats, no gaps, the API's order), search,
create an order and see it at once, upload a small import and watch it finish, and an
expired token back to sign-in. Allow-list mode is on (NEXES_TRUSTED_DOCUMENTS=on) with the
SPA's documents registered as `make run` registers them, so the test also proves they are
exactly what the SPA sends. Every request to another address is refused; screenshots go to
tests/artifacts/."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page

from nexes import settings as settings_module
from nexes.db.seed import seed
from nexes.search import collection
from nexes.search.client import sync_client
from nexes.search.reindex import reindex
from nexes.settings import Settings
from tests.support.auth import token_for
from tests.support.browser import ARTIFACTS, chromium, live, offline_context
from tests.support.databases import TEMPLATE_DB, drop_database, recreate_database
from tests.support.imports import close_worker_pool
from tests.support.processes import free_port
from tests.support.replicas import wait_for_replica
from tests.support.waits import wait_for
from tests.support.workers import OWNER_VARIABLES, environ, start_worker, stop_worker

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "examples" / "spa" / "dist"
DB = "nexes_t_spa"
COLLECTION = f"{DB}_service_orders"
VIEWER_POINTS = 3
IMPORT_CSV = (
    "sod_number,created_at,customer_code,status,description,currency,line_no,sku,quantity,unit_price\n"
    "SOD-SPA-IMPORT-1,2026-03-02T08:15:00Z,C000001,OPEN,Imported in the browser,EUR,1,SKU-00001,1,9.90\n"
    "SOD-SPA-IMPORT-2,2026-03-02T09:15:00Z,C000002,OPEN,Imported too,EUR,1,SKU-99999,1,9.90\n"
)


@pytest.fixture(scope="module")
def spa_stack(template_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """A seeded database, its worker, and `nexes serve` with the SPA; the base address."""
    if not (DIST / "index.html").exists():
        pytest.fail("examples/spa/dist is missing: `make spa` builds it (make test runs it)")
    env = {**environ(DB), "NEXES_TYPESENSE_COLLECTION": COLLECTION}
    worker_env = {k: v for k, v in env.items() if k not in OWNER_VARIABLES}
    recreate_database(template_settings.admin_url, DB, template=TEMPLATE_DB)
    settings = settings_module.load(env)
    seed(settings.admin_url, 100, defer=False)
    search = sync_client(settings)
    reindex(settings, search)  # the SPA's search answers from Typesense, as in production
    close_worker_pool()  # reindex's, in this process
    wait_for_replica(settings, timeout=120)
    documents = sorted(str(p) for p in (DIST / "documents").glob("*.graphql"))
    subprocess.run([sys.executable, "-m", "nexes.cli", "documents", "add", *documents], env=env, check=True)
    logs = tmp_path_factory.mktemp("spa")
    worker = start_worker(worker_env, logs / "worker.log")
    port = free_port()
    env.update(
        NEXES_ENV="development",
        NEXES_SPA_DIR=str(DIST),
        NEXES_TRUSTED_DOCUMENTS="on",
        NEXES_TRUSTED_DOCUMENTS_REFRESH="1",
        NEXES_OPS_LISTEN=f"127.0.0.1:{free_port()}",
        NEXES_ACCESS_LOG="false",
        NEXES_JWT_LEEWAY="0",  # a token is refused the second it expires
        NEXES_RATE_LIMIT_VIEWER=str(VIEWER_POINTS),  # a viewer's budget runs out within the test
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)],
        env=env,
        stdout=(logs / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: live(base), timeout=60, interval=0.2)
        yield base, settings
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        stop_worker(worker)
        for name in collection.versions(search, COLLECTION):
            search.collections[name].delete()
        search.aliases[COLLECTION].delete()
        drop_database(template_settings.admin_url, DB)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def _page(browser: Browser, base: str, refused: list[str]) -> Page:
    context = await offline_context(browser, base, [], refused)
    return await context.new_page()


async def _sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(base + "/app/")
    await page.fill("#sign-in-form input[name=token]", token)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#orders li")


async def _api_order(base: str, token: str, n: int) -> list[str]:
    query = "query($n: Int!) { serviceOrders(first: $n) { edges { node { sodNumber } } } }"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.post(base + "/graphql", json={"query": query, "variables": {"n": n}})
    return [e["node"]["sodNumber"] for e in response.json()["data"]["serviceOrders"]["edges"]]


async def test_the_spa_signs_in_scrolls_searches_creates_and_imports_in_chromium(
    spa_stack: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = spa_stack
    started = time.monotonic()
    refused: list[str] = []
    page = await _page(browser, base, refused)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    token = token_for(settings, "operator", subject="spa-user")
    await _sign_in(page, base, token)
    ARTIFACTS.mkdir(exist_ok=True)

    # Three pages: scroll the list to its end until 60 orders are there (the list is drawn
    # anew from the merged pages each time, so the scroll is the container's, not an item's).
    for _ in range(10):
        count = await page.locator("#orders li").count()
        if count >= 60:
            break
        await page.locator("#orders").evaluate("list => list.scrollTo(0, list.scrollHeight)")
        await page.wait_for_function(f"document.querySelectorAll('#orders li').length > {count}")
    shown = await page.locator("#orders li").evaluate_all("items => items.map(i => i.dataset.sod)")
    assert len(shown) >= 60 and len(set(shown)) == len(shown)
    # The API's order: no gap, no repeat (asked by an analyst, who may send any document).
    assert shown[:60] == await _api_order(base, token_for(settings, "analyst"), 60)
    assert "points" in await page.inner_text("#budget")  # the rate limit's remaining budget, in a corner
    await page.screenshot(path=ARTIFACTS / "spa-orders.png")

    # Search (Typesense): highlights are <mark> elements inside text, never markup from the snippet.
    await page.fill("#search-form input[name=query]", "SOD")
    await page.click("#search-form button")
    await page.wait_for_selector("#search-results li mark")
    assert await page.locator("#search-results li script, #search-results li img").count() == 0

    # Create: at once at the top of the list (read through X-Nexes-Min-LSN).
    await page.fill("#order-form input[name=sodNumber]", "SOD-SPA-0001")
    await page.click("#order-form button[type=submit]")
    await page.wait_for_selector("#orders li[data-sod='SOD-SPA-0001']")
    assert await page.locator("#orders li").first.get_attribute("data-sod") == "SOD-SPA-0001"
    # The same number with other content: the code is shown on the form.
    await page.fill("#order-form input[name=quantity]", "7")
    await page.click("#order-form button[type=submit]")
    await page.wait_for_selector("#order-form .form-errors li[data-code=DUPLICATE_CONFLICT]")

    # Edit: a COMPLETED order cannot go back to OPEN, and the form says so with the code.
    await page.locator("#orders li", has_text="COMPLETED").first.click()
    await page.select_option("#edit-form select[name=status]", "OPEN")
    await page.click("#edit-form button[type=submit]")
    await page.wait_for_selector("#edit-form .form-errors li[data-code=INVALID_TRANSITION]")

    # Import: upload, then importJob's progress until final, the rejected row listed.
    upload = ARTIFACTS / "spa-import.csv"
    upload.write_text(IMPORT_CSV)
    await page.set_input_files("#import-form input[type=file]", str(upload))
    await page.click("#import-form button")
    await page.wait_for_selector("#import-status[data-status=PARTIAL]", timeout=120_000)
    assert "UNKNOWN_SKU" in await page.inner_text("#import-errors")
    await page.screenshot(path=ARTIFACTS / "spa-import.png")

    # A token that has expired: its first call is UNAUTHENTICATED, and the app is back at sign-in.
    expired = token_for(settings, "operator", subject="spa-user", ttl=1.0)
    time.sleep(2.5)  # past its exp (the server allows no leeway here)
    await page.click("#sign-out")
    await page.fill("#sign-in-form input[name=token]", expired)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#sign-in:not([hidden])")
    await page.wait_for_function("document.querySelector('#sign-in-reason').textContent.includes('UNAUTHENTICATED')")

    assert refused == [] and errors == []
    print(f"SPA end to end in {time.monotonic() - started:.1f} s")


async def test_the_spa_turns_rate_limited_into_a_wait_not_a_sign_out(
    spa_stack: tuple[str, Settings], browser: Browser
) -> None:
    base, settings = spa_stack
    refused: list[str] = []
    page = await _page(browser, base, refused)
    # A subject of its own: the hour's points live in Redis across runs.
    await _sign_in(page, base, token_for(settings, "viewer", subject=f"spa-viewer-{uuid.uuid4().hex}"))
    for status in ("OPEN", "COMPLETED", "IN_PROGRESS", "DRAFT", ""):  # each a page read, a point each
        await page.select_option("#status-filter", status)
        await page.wait_for_timeout(300)
    notice = page.locator("#notice")
    await notice.get_by_text("used this hour's budget").wait_for()
    assert re.search(r"trying again in \d+ s", await notice.inner_text())
    assert await page.locator("#sign-in").is_hidden()  # a wait, not a sign-out
    await page.screenshot(path=ARTIFACTS / "spa-rate-limited.png")
    assert refused == []
