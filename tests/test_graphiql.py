"""GraphiQL served from the package (nexes.http.ide): where it is on, who gets which page,
that it asks for nothing outside the API, and that its saved examples are valid operations.
The browser itself is tests/test_graphiql_browser.py."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from graphql import parse, validate

from nexes.execution.schema import schema
from nexes.http import ide
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.auth import bearer_for

INTROSPECTION = "{ __schema { queryType { name } } }"


def _config(page: str) -> dict[str, Any]:
    match = re.search(r'<script id="nexes-graphiql-config" type="application/json">(.*?)</script>', page, re.S)
    assert match, "the page carries its settings as JSON"
    config: dict[str, Any] = json.loads(match[1])
    return config


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


async def test_development_serves_graphiql_at_both_paths_with_every_file_from_the_api(seeded: Settings) -> None:
    async with client_for(replace(seeded, env="development"), roles=()) as client:
        for path in ("/graphiql", "/graphql"):
            page = await client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert "connect-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["cache-control"] == "no-store"
        config = _config(page.text)
        assert config["headers"]["Authorization"].startswith("Bearer ey")  # the development token
        assert [tab["query"] for tab in config["examples"]] == [tab["query"] for tab in ide.examples()]
        assets = [a for a in _assets(page.text) if not a.startswith("data:")]
        assert len(assets) >= 7
        for asset in assets:
            assert asset.startswith("/graphiql/assets/"), asset  # nothing from another origin
            response = await client.get(asset)  # without a token: the files are public
            assert response.status_code == 200, asset
            assert len(response.content) > 10, asset


async def test_production_serves_no_graphiql_unless_it_is_turned_on(seeded: Settings) -> None:
    async with client_for(replace(seeded, env="production"), roles=()) as client:
        assert (await client.get("/graphiql")).status_code == 404
        assert (await client.get("/graphiql/assets/start.js")).status_code == 404
        assert (await client.get("/graphql")).status_code == 400  # a GET without a query


async def test_production_graphiql_carries_no_token_and_introspection_follows_the_callers_roles(
    seeded: Settings,
) -> None:
    settings = replace(seeded, env="production", graphiql=True)
    async with client_for(settings, roles=()) as client:
        page = await client.get("/graphiql")
        assert page.status_code == 200
        assert _config(page.text)["headers"] == {"Authorization": ide.TOKEN_PLACEHOLDER}
        assert "eyJ" not in page.text  # no JWT of any kind in the page
        assert (await client.get("/graphiql/assets/vendor/graphiql.min.js")).status_code == 200
        anonymous = await gql(client, INTROSPECTION)
        viewer = await gql(client, INTROSPECTION, **bearer_for(settings, "viewer"))
        analyst = await gql(client, INTROSPECTION, **bearer_for(settings, "analyst"))
    assert anonymous["_response"].status_code == 401
    assert error_codes(viewer) == ["FORBIDDEN"] and viewer.get("data") is None
    assert analyst["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_the_assets_mount_serves_no_file_outside_its_folder(seeded: Settings) -> None:
    async with client_for(replace(seeded, env="development"), roles=()) as client:
        for path in ("/graphiql/assets/../index.html", "/graphiql/assets/%2e%2e/index.html", "/graphiql/assets/"):
            response = await client.get(path)
            assert response.status_code in (401, 404), path
            assert "__CONFIG__" not in response.text


def test_a_copy_without_the_built_files_says_how_to_get_them(seeded: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ide, "STATIC", ide.STATIC / "missing")
    response = ide.page_response(replace(seeded, env="development"))
    assert response.status_code == 503 and b"make graphiql" in response.body


def test_every_saved_example_is_a_valid_operation_with_json_variables() -> None:
    tabs = ide.examples()
    assert len(tabs) >= 12
    for tab in tabs:
        document = parse(tab["query"])
        assert validate(schema._schema, document) == [], tab["query"]
        assert "# variables:" not in tab["query"]
