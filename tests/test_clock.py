"""The tests and the databases read one clock: the real one under `make test`, the
moved one under `make test-dates` (PostgreSQL under libfaketime, pytest under
time-machine). If they disagreed, a date test would compare two different days."""

from __future__ import annotations

import datetime as dt
import os

import psycopg

from nexes.settings import Settings
from tests.support.databases import superuser_url


def test_the_primary_the_replica_and_the_tests_read_the_same_clock(settings: Settings) -> None:
    urls = {"primary": settings.admin_url, **{f"replica {i}": u for i, u in enumerate(settings.replica_admin_urls)}}
    assert len(urls) >= 2, "the stack has a replica"
    ours = dt.datetime.now(dt.UTC)
    if fake_now := os.environ.get("NEXES_FAKE_NOW"):
        # `make test-dates`: the tests' clock was moved to that day and ticks from there.
        assert dt.timedelta(0) <= ours - dt.datetime.fromisoformat(fake_now) < dt.timedelta(hours=1), ours
    for name, url in urls.items():
        with psycopg.connect(superuser_url(url)) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        ours = dt.datetime.now(dt.UTC)
        assert abs((row[0] - ours).total_seconds()) < 30, (name, row[0], ours)
