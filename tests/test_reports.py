"""GraphQL reports for analysts: on a replica, from the summary tables, equal to what
the orders themselves say."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import psycopg

from nexes.db import reports
from nexes.settings import Settings
from tests.conftest import gql

WIDE = {
    "from": (dt.date.today() - dt.timedelta(days=3000)).isoformat(),
    "to": (dt.date.today() + dt.timedelta(days=400)).isoformat(),
}


async def test_orders_by_period_sum_to_the_orders(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM service_order").fetchone() or (0,)
    first, last = dt.date.fromisoformat(WIDE["from"]), dt.date.fromisoformat(WIDE["to"])
    # DAY spans at most 1,100 days: the wide range in consecutive slices.
    day_slices = [
        (start, min(start + dt.timedelta(days=1_000), last))
        for start in (first + dt.timedelta(days=1_001 * i) for i in range((last - first).days // 1_001 + 1))
    ]
    cases = [("DAY", a, b) for a, b in day_slices] + [("WEEK", first, last), ("MONTH", first, last)]
    totals: dict[str, int] = {}
    for granularity, a, b in cases:
        body = await gql(
            app_client,
            "query($from: Date!, $to: Date!, $g: ReportGranularity!) { reports { ordersByPeriod(from: $from, to: $to,"
            " granularity: $g) { period status currency orderCount totalAmount } } }",
            {"from": a.isoformat(), "to": b.isoformat(), "g": granularity},
        )
        assert "errors" not in body, body
        rows = body["data"]["reports"]["ordersByPeriod"]
        totals[granularity] = totals.get(granularity, 0) + sum(r["orderCount"] for r in rows)
        keys = [(r["period"], r["status"], r["currency"]) for r in rows]
        assert keys == sorted(keys)
        if granularity == "MONTH":
            assert all(r["period"].endswith("-01") for r in rows)
    assert totals == {"DAY": count, "WEEK": count, "MONTH": count}


async def test_top_customers_match_the_orders(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    body = await gql(
        app_client,
        'query($from: Date!, $to: Date!) { reports { topCustomers(from: $from, to: $to, limit: 5, currency: "EUR")'
        " { customer { code } currency orderCount totalAmount } } }",
        WIDE,
    )
    assert "errors" not in body, body
    top = body["data"]["reports"]["topCustomers"]
    with psycopg.connect(seeded.admin_url) as conn:
        expected = conn.execute(
            "SELECT c.code, count(*), sum(o.total_amount) FROM service_order o JOIN customer c ON c.id = o.customer_id "
            "WHERE o.status <> 'CANCELLED' AND o.currency = 'EUR' GROUP BY c.id, c.code "
            "ORDER BY sum(o.total_amount) DESC, c.id LIMIT 5"
        ).fetchall()
    assert [(t["customer"]["code"], t["orderCount"], Decimal(t["totalAmount"])) for t in top] == [
        (code, n, amount) for code, n, amount in expected
    ]


async def test_aging_buckets_count_the_open_orders(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    body = await gql(app_client, "{ reports { aging { bucket currency orderCount totalAmount } } }")
    assert "errors" not in body, body
    buckets = body["data"]["reports"]["aging"]
    assert {b["bucket"] for b in buckets} <= {"0-7", "8-30", "31-90", "90+"}
    with psycopg.connect(seeded.admin_url) as conn:
        (open_orders,) = conn.execute(
            "SELECT count(*) FROM service_order WHERE status IN ('DRAFT', 'OPEN', 'IN_PROGRESS')"
        ).fetchone() or (0,)
    assert sum(b["orderCount"] for b in buckets) == open_orders


async def test_a_reversed_range_is_bad_user_input(app_client: httpx.AsyncClient) -> None:
    query = '{ reports { ordersByPeriod(from: "2025-02-01", to: "2025-01-01") { period } } }'
    body = await gql(app_client, query)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


TOP = (
    "query($from: Date!, $to: Date!) { reports { topCustomers(from: $from, to: $to, limit: 100)"
    " { customer { code } currency orderCount totalAmount } } }"
)


async def test_top_customers_match_the_orders_over_ranges_inside_and_across_years(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        lo, hi = conn.execute(
            "SELECT (min(created_at) AT TIME ZONE 'UTC')::date, (max(created_at) AT TIME ZONE 'UTC')::date "
            "FROM service_order"
        ).fetchone() or (None, None)
        assert lo and hi and hi.year > lo.year, "the seed spans more than one year"
        # The only range whose whole months lie before the first order on every day: the month
        # of lo - 40 days ends by lo - 10 days. (A range starting more than 30 days before lo is
        # not enough: (lo.year-11-02, ...) does whenever the first order falls after 2 December.)
        before_every_order = (lo - dt.timedelta(days=400), lo - dt.timedelta(days=40))
        ranges = [
            (lo, hi),  # everything
            (dt.date(hi.year, 1, 1), dt.date(hi.year, 12, 31)),  # one whole year
            (dt.date(hi.year, 3, 15), dt.date(hi.year, 3, 20)),  # one month, days inside it
            (dt.date(lo.year, 11, 2), dt.date(lo.year + 1, 2, 1)),  # across a year end
            (dt.date(hi.year - 1, 1, 1), dt.date(hi.year - 1, 1, 31)),  # January alone
            (dt.date(hi.year - 1, 6, 1), dt.date(hi.year + 5, 12, 31)),  # past the horizon
            before_every_order,
        ]
        for first, last in ranges:
            body = await gql(app_client, TOP, {"from": first.isoformat(), "to": last.isoformat()})
            assert "errors" not in body, body
            got = [
                (t["customer"]["code"], t["currency"], t["orderCount"], Decimal(t["totalAmount"]))
                for t in body["data"]["reports"]["topCustomers"]
            ]
            expected = conn.execute(
                "SELECT c.code, o.currency, count(*), sum(o.total_amount) FROM service_order o "
                "JOIN customer c ON c.id = o.customer_id WHERE o.status <> 'CANCELLED' "
                "AND o.created_at >= %(lo)s AND o.created_at < %(hi)s "
                "GROUP BY c.id, c.code, o.currency ORDER BY sum(o.total_amount) DESC, c.id LIMIT 100",
                {"lo": _month_start(first), "hi": _month_start(last.replace(day=28) + dt.timedelta(days=4))},
            ).fetchall()
            assert got == [tuple(r) for r in expected], (first, last)
            if (first, last) == before_every_order:
                assert got == []


def _month_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)


async def test_the_threshold_rounds_give_what_one_pass_over_every_customer_gives(seeded: Settings) -> None:
    """From one leader per year up (every round of the threshold algorithm), for each
    range and limit, the same customers as the pass over all of them."""
    async with await psycopg.AsyncConnection.connect(seeded.admin_url) as conn:
        row = await (
            await conn.execute(
                "SELECT (min(created_at) AT TIME ZONE 'UTC')::date, (max(created_at) AT TIME ZONE 'UTC')::date "
                "FROM service_order"
            )
        ).fetchone()
        assert row is not None
        lo, hi = row
        # Inside one year, up to the newest order: its year once that holds 60 days of orders, the
        # year before until then (1 January to 1 March), when this year may have fewer than
        # `limit` customers yet (a few hours' orders on 1 January).
        year = (hi - dt.timedelta(days=60)).year
        ranges = [
            (lo, hi),
            (dt.date(hi.year - 1, 5, 1), dt.date(hi.year, 2, 28)),
            (dt.date(year, 1, 1), min(hi, dt.date(year, 12, 31))),
        ]
        for first, last in ranges:
            for limit in (1, 3, 10):
                for currency in (None, "EUR"):
                    everyone = await reports.top_customers(
                        conn, first, last, limit, currency, first_depth=reports.FULL_SCAN_DEPTH
                    )
                    rounds = await reports.top_customers(conn, first, last, limit, currency, first_depth=1)
                    assert rounds == everyone, (first, last, limit, currency)
                    assert len(everyone) == limit


async def test_day_granularity_past_its_span_is_bad_user_input_and_week_still_answers(
    app_client: httpx.AsyncClient,
) -> None:
    span = {"f": "2020-01-01", "t": "2023-01-06"}  # 1,101 days
    query = (
        "query($f: Date!, $t: Date!, $g: ReportGranularity!) { reports { ordersByPeriod(from: $f, to: $t, "
        "granularity: $g) { period } } }"
    )
    refused = await gql(app_client, query, {**span, "g": "DAY"})
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "WEEK or MONTH" in refused["errors"][0]["message"]
    weekly = await gql(app_client, query, {**span, "g": "WEEK"})
    assert "errors" not in weekly, weekly
    daily = await gql(app_client, query, {"f": "2020-01-01", "t": "2023-01-05", "g": "DAY"})  # 1,100 days
    assert "errors" not in daily, daily
    periods = [row["period"] for row in daily["data"]["reports"]["ordersByPeriod"]]
    assert periods == sorted(periods)
