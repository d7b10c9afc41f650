"""Hostile text in search highlights, on the real stack: a customer named
`<img src=x onerror=alert(1)>` and a description holding `<script>` come back HTML-escaped,
with `<mark>` the only markup, from Typesense and from the pg_trgm fallback alike."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from nexes.search import engine
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.replicas import wait_for_replica
from tests.support.search import SEARCH, indexed_database, search_environ, sync_now

DB = "nexes_t_hostile_search"
REDIS_DB = 13
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: every search takes the fallback
NAME = "<img src=x onerror=alert(1)>"
DESCRIPTION = '<script>alert("x")</script> zebrafinch & boiler <b onmouseover=alert(2)>'
SOD = "HOSTILE-0001"
CUSTOMER = "HOSTILE-C1"
CREATE_CUSTOMER = "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { errors { code message } } }"
CREATE_ORDER = """mutation($input: CreateServiceOrderInput!) {
  createServiceOrder(input: $input) { serviceOrder { sodNumber } errors { code message } } }"""
# Only <mark> and </mark> may be tags in a snippet; everything else is text.
TAG = re.compile(r"<[^>]*>")


@pytest.fixture(scope="module")
def hostile_settings(template_settings: Settings) -> Iterator[Settings]:
    with indexed_database(template_settings, search_environ(DB, REDIS_DB), 200) as settings:
        yield settings


@pytest.fixture
def db_settings(hostile_settings: Settings) -> Settings:
    return hostile_settings


@pytest.fixture
async def api(hostile_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(hostile_settings) as client:
        yield client


@pytest.fixture
async def fallback_api(hostile_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(replace(hostile_settings, typesense_url=CLOSED_PORT)) as client:
        yield client


@pytest.fixture(scope="module")
def hostile_order(hostile_settings: Settings) -> str:
    """A customer and an order with hostile text, written through the API and indexed."""
    asyncio.run(create_hostile_order(hostile_settings))
    sync_now(hostile_settings)
    wait_for_replica(hostile_settings)
    return SOD


async def create_hostile_order(settings: Settings) -> None:
    async with client_for(settings) as api:
        body = await gql(api, CREATE_CUSTOMER, {"i": {"code": CUSTOMER, "name": NAME}})
        assert body["data"]["createCustomer"]["errors"] == [], body
        order = {
            "sodNumber": SOD,
            "customerCode": CUSTOMER,
            "description": DESCRIPTION,
            "lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "10.00"}],
        }
        body = await gql(api, CREATE_ORDER, {"input": order})
        assert body["data"]["createServiceOrder"]["errors"] == [], body


async def snippets(api: httpx.AsyncClient, q: str, engine_name: str) -> dict[str, str]:
    """The hostile order's highlights for `q`, after checking which engine answered."""
    body = await gql(api, SEARCH, {"q": q})
    assert error_codes(body) == [], body
    result: dict[str, Any] = body["data"]["search"]
    assert result["engine"] == engine_name, result
    (edge,) = [e for e in result["edges"] if e["node"]["sodNumber"] == SOD]
    assert edge["node"]["customer"]["name"] == NAME  # the data itself is returned as stored
    return {h["field"]: h["snippet"] for h in edge["highlights"]}


def assert_inert(snippet: str, original: str) -> None:
    """Only <mark> tags are markup, and unescaping the rest gives the original text back."""
    assert {t for t in TAG.findall(snippet)} <= {"<mark>", "</mark>"}, snippet
    assert "<mark>" in snippet, snippet
    text = html.unescape(snippet.replace("<mark>", "").replace("</mark>", ""))
    assert text in original or original in text, (snippet, original)


@pytest.mark.parametrize("engine_name", ["TYPESENSE", "POSTGRES"])
async def test_a_hostile_customer_name_comes_back_escaped_with_only_marks_as_markup(
    hostile_order: str, api: httpx.AsyncClient, fallback_api: httpx.AsyncClient, engine_name: str
) -> None:
    client = api if engine_name == "TYPESENSE" else fallback_api
    found = await snippets(client, "img src=x onerror=alert(1)", engine_name)
    snippet = found["customer_name"]
    assert "&lt;" in snippet and "&gt;" in snippet and "<img" not in snippet, snippet
    assert_inert(snippet, NAME)


@pytest.mark.parametrize("engine_name", ["TYPESENSE", "POSTGRES"])
async def test_a_hostile_description_comes_back_escaped_with_only_marks_as_markup(
    hostile_order: str, api: httpx.AsyncClient, fallback_api: httpx.AsyncClient, engine_name: str
) -> None:
    client = api if engine_name == "TYPESENSE" else fallback_api
    found = await snippets(client, "zebrafinch", engine_name)
    snippet = found["description"]
    assert "<mark>zebrafinch</mark>" in snippet, snippet
    assert "&lt;script&gt;" in snippet and "&lt;b onmouseover" in snippet and "&amp;" in snippet, snippet
    assert_inert(snippet, DESCRIPTION)


def test_highlighted_escapes_the_text_and_keeps_marks_balanced_even_with_sentinels_in_the_data() -> None:
    start, end = engine.MARK_START, engine.MARK_END
    assert engine.highlighted(f"a<b {start}x&y{end} <mark>z</mark>") == (
        "a&lt;b <mark>x&amp;y</mark> &lt;mark&gt;z&lt;/mark&gt;"
    )
    # Sentinels typed into the data itself can move a mark, never unbalance it or unescape text.
    assert engine.highlighted(f"{end}{start}{start}<i>") == "<mark>&lt;i&gt;</mark>"


def test_mark_escapes_around_and_inside_each_match() -> None:
    assert engine.mark("<MARK>mark</mark>", "mark") == (
        "&lt;<mark>MARK</mark>&gt;<mark>mark</mark>&lt;/<mark>mark</mark>&gt;"
    )
    assert engine.mark("<img>", "zzz") is None
