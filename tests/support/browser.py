"""Debian's chromium through Playwright for Python, for the browser tests: launched from
/usr/bin/chromium (`make chromium`; never `playwright install`, which downloads browsers),
with every request to any other address than the API's refused and recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Route, async_playwright

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # screenshots; git-ignored
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: two cores shared with the rest of the suite


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (make test runs it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def offline_context(browser: Browser, base: str, requested: list[str], refused: list[str]) -> BrowserContext:
    """A browser context that reaches `base` (and data: URLs) only; every request's URL goes
    to `requested`, every refused one also to `refused`."""
    origin = urlsplit(base)

    async def only_the_api(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc) or parts.scheme == "data":
            await route.continue_()
        else:
            refused.append(url)
            await route.abort("blockedbyclient")

    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    await context.route("**/*", only_the_api)
    return context


def live(base: str) -> bool:
    try:
        return httpx.get(base + "/api/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
