"""The reference SPA's files at /app (nexes.http.spa): in development with NEXES_SPA_DIR only,
public like any static file, and nothing outside its folder. The app itself runs in
tests/test_spa_browser.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nexes.settings import Settings
from tests.conftest import client_for


def _dist(tmp_path: Path) -> Path:
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "index.html").write_text("<!doctype html><title>spa</title>")
    (tmp_path / "secret.txt").write_text("outside the build")
    return tmp_path / "dist"


async def test_development_serves_the_spa_without_a_token(seeded: Settings, tmp_path: Path) -> None:
    settings = replace(seeded, env="development", spa_dir=str(_dist(tmp_path)))
    async with client_for(settings, roles=()) as client:
        page = await client.get("/app/")
        outside = await client.get("/app/../secret.txt")
        escaped = await client.get("/app/%2e%2e/secret.txt")
    assert page.status_code == 200 and "<title>spa</title>" in page.text
    assert outside.status_code in (401, 404) and escaped.status_code == 404
    assert "outside the build" not in outside.text + escaped.text


async def test_production_or_no_build_serves_no_spa(seeded: Settings, tmp_path: Path) -> None:
    dist = str(_dist(tmp_path))
    async with client_for(replace(seeded, env="production", spa_dir=dist), roles=()) as client:
        assert (await client.get("/app/")).status_code == 404
    async with client_for(replace(seeded, env="development", spa_dir=""), roles=()) as client:
        assert (await client.get("/app/")).status_code == 404
