"""Issue 20's settings on the ordinary stack: several Typesense nodes (one of them a closed
port, a dead node for real), the broker's URL, and nexes_monitor's connection limit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from nexes import settings as settings_module
from nexes.db.migrate import ensure_monitor
from nexes.jobs.runtime import make_broker
from nexes.search.engine import service_for
from nexes.settings import Settings, SettingsError
from tests.conftest import client_for
from tests.support.databases import superuser_url
from tests.support.replicas import health_detail
from tests.support.search import SEARCH, indexed_database, pick, search_environ

DB = "nexes_t_scale"
REDIS_DB = 13
DEAD_NODE = "http://127.0.0.1:9"  # nothing listens there: every connection is refused at once


def load(**env: str) -> Settings:
    return settings_module.load({"NEXES_PRIMARY_URL": "postgresql://127.0.0.1:1/x", **env})


def test_typesense_urls_name_every_node_and_default_to_the_one_url() -> None:
    assert load(NEXES_TYPESENSE_URL="http://a:1").typesense_urls == ("http://a:1",)
    both = load(NEXES_TYPESENSE_URL="http://a:1", NEXES_TYPESENSE_URLS="http://a:1  http://b:2\thttp://c:3")
    assert both.typesense_urls == ("http://a:1", "http://b:2", "http://c:3")


def test_the_broker_url_takes_redis_or_amqp_and_names_itself_on_anything_else() -> None:
    assert load(NEXES_REDIS_URL="redis://r:1/0").dramatiq_url == "redis://r:1/0"
    assert load(NEXES_BROKER_URL="amqp://u:p@h:5672/%2F").dramatiq_url == "amqp://u:p@h:5672/%2F"
    for wrong in ("http://u:secret@h/", "u:secret@h"):
        with pytest.raises(SettingsError, match="NEXES_BROKER_URL") as caught:
            load(NEXES_BROKER_URL=wrong)
        assert "secret" not in str(caught.value)


def test_make_broker_picks_rabbitmq_for_amqp_and_redis_otherwise() -> None:
    # Neither connects before it is used.
    assert isinstance(make_broker("amqp://guest:guest@127.0.0.1:1/%2F", 1.0), RabbitmqBroker)
    assert isinstance(make_broker("redis://127.0.0.1:1/0", 1.0), RedisBroker)


def test_migrate_sets_the_monitor_connection_limit_from_the_setting(settings: Settings) -> None:
    assert load(NEXES_MONITOR_CONNECTION_LIMIT="9").monitor_connection_limit == 9

    def limit() -> int:
        with psycopg.connect(settings.admin_url) as conn:
            row = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'nexes_monitor'").fetchone()
        assert row
        return int(row[0])

    with psycopg.connect(superuser_url(settings.admin_url, "nexes"), autocommit=True) as conn:
        try:
            ensure_monitor(conn, 9)
            assert limit() == 9
        finally:
            ensure_monitor(conn, settings.monitor_connection_limit)
    assert limit() == settings.monitor_connection_limit


def test_nexes_serve_refuses_more_workers_than_the_monitor_role_allows() -> None:
    env = {**os.environ, "NEXES_MONITOR_CONNECTION_LIMIT": "5"}
    cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", "9", "--workers", "5"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "NEXES_MONITOR_CONNECTION_LIMIT of at least 6" in done.stderr


@pytest.fixture(scope="module")
def scale_settings(template_settings: Settings) -> Iterator[Settings]:
    with indexed_database(template_settings, search_environ(DB, REDIS_DB), 200) as settings:
        yield settings


async def test_a_dead_typesense_node_sends_no_search_to_the_fallback(scale_settings: Settings) -> None:
    live = scale_settings.typesense_urls[0]
    settings = replace(scale_settings, typesense_cluster=(DEAD_NODE, live), search_breaker_failures=2)
    with psycopg.connect(settings.admin_url) as conn:
        _, sod, _, _ = pick(conn)
    async with client_for(settings) as client:
        engines = []
        for _ in range(10):
            answer = await client.post("/graphql", json={"query": SEARCH, "variables": {"q": sod, "first": 5}})
            engines.append(answer.json()["data"]["search"]["engine"])
        states = await service_for(settings).breaker_states()
    assert engines == ["TYPESENSE"] * 10
    assert states == {"typesense-1": "opened", "typesense-2": "closed"}  # counted per node


async def test_every_node_dead_is_what_sends_a_search_to_the_fallback(scale_settings: Settings) -> None:
    settings = replace(scale_settings, typesense_cluster=(DEAD_NODE, DEAD_NODE.replace(":9", ":7")))
    with psycopg.connect(settings.admin_url) as conn:
        _, sod, _, _ = pick(conn)
    async with client_for(settings) as client:
        answer = await client.post("/graphql", json={"query": SEARCH, "variables": {"q": sod, "first": 5}})
    assert answer.json()["data"]["search"]["engine"] == "POSTGRES"


async def test_health_reports_each_typesense_node_and_a_degraded_cluster(scale_settings: Settings) -> None:
    live = scale_settings.typesense_urls[0]
    settings = replace(scale_settings, typesense_cluster=(live, DEAD_NODE))
    async with client_for(settings) as client:
        detail = await health_detail(client)
    search = detail["search"]
    assert search["typesense"] == "degraded" and detail["typesense"]["reachable"] is True
    assert [(n["node"], n["typesense"]) for n in search["nodes"]] == [(1, "ok"), (2, "down")]
    assert search["nodes"][1]["error"]["code"] == "CONNECTION_REFUSED"
    assert DEAD_NODE.split("//")[1] not in str(detail)  # no addresses in health
