"""GraphiQL in a real browser, offline: Debian's chromium, driven by Playwright, opens the
page of a live `nexes serve` (development) with every request to any other address refused,
runs the first saved example, and finds ServiceOrder in the documentation explorer.

The browser is /usr/bin/chromium (`make chromium` apt-gets it); Playwright's own browser
download is never used. A screenshot goes to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser
from psycopg.conninfo import conninfo_to_dict

from nexes.execution.schema import schema
from nexes.settings import Settings
from tests.support.browser import ARTIFACTS, chromium, live, offline_context
from tests.support.databases import environ_for
from tests.support.processes import free_port
from tests.support.waits import wait_for


@pytest.fixture(scope="module")
def served_dev(seeded: Settings) -> Iterator[str]:
    """`nexes serve` in development on the seeded database; its base address."""
    env = environ_for(str(conninfo_to_dict(seeded.primary_url)["dbname"]))
    env.update(NEXES_ENV="development", NEXES_OPS_LISTEN=f"127.0.0.1:{free_port()}", NEXES_ACCESS_LOG="false")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: live(base), timeout=60, interval=0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_graphiql_runs_a_query_and_documents_service_order_with_no_other_address_reached(
    served_dev: str, browser: Browser
) -> None:
    requested: list[str] = []
    refused: list[str] = []
    context = await offline_context(browser, served_dev, requested, refused)
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    await page.goto(served_dev + "/graphiql")
    await page.wait_for_selector(".graphiql-container")
    # The first saved example (docs/analysts.md), with its variables, runs with the page's token.
    await page.click(".graphiql-execute-button")
    result = page.locator(".graphiql-response")
    await result.get_by_text('"sodNumber"').first.wait_for()
    result_text = await result.inner_text()
    assert '"SOD-' in result_text and '"errors"' not in result_text, result_text[:2000]

    await page.click("button[aria-label='Show Documentation Explorer']")
    explorer = page.locator(".graphiql-doc-explorer")
    await explorer.get_by_text("ServiceOrder", exact=True).first.wait_for()
    await explorer.get_by_text("ServiceOrder", exact=True).first.click()
    await explorer.locator(".graphiql-doc-explorer-title", has_text="ServiceOrder").wait_for()
    documented = await explorer.inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "graphiql.png", full_page=True)
    await context.close()

    assert "sodNumber" in documented, documented[:2000]
    described = schema._schema.get_type("ServiceOrder").description  # type: ignore[union-attr]
    assert described and described.split(":")[0] in documented, documented[:2000]
    assert refused == [], refused
    assert requested and all(url.startswith(served_dev + "/") for url in requested), requested
    assert page_errors == []
