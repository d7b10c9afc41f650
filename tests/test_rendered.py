"""Orders whose JSON PostgreSQL builds (nexes.schema.rendered, NEXES_RENDER_SQL).

Who may use it: anyone whose selection under `edges { node }` is plain fields; guards and
cost apply as before. What it may cost: one expression per row in the page's statement.
What it may reveal: exactly what Python's answer holds. Every test here compares the app
with rendering on against the app with it off (Python builds every answer), on the real
database and replica, including text and timestamps chosen to break a JSON writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql

from nexes.auth.identity import ADMIN_VIEWER as ADMIN
from nexes.db.rendering import printable
from nexes.resolvers.ids import global_id
from nexes.schema.rendered import Rendered
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.databases import own_database
from tests.support.rendered import plain
from tests.support.replicas import wait_for_replica

DB = "nexes_t_rendered"
# Text a JSON writer must escape or keep as it is: quotes, backslashes, every control
# character class, a brace, markup, non-BMP characters, U+2028/U+2029, a lone combining mark.
HOSTILE_NAME = 'Q"uote\\back\nline\ttab\x01\x1f\x7f {brace} </script> \u2028\u2029 \U0001f6e0 \u0301 Zürich'
HOSTILE_DESCRIPTION = '\\"\\u0000 \r\n\b\f \u2211 \U0001d518 ' + "x" * 1500
ORDER_FIELDS = "id sodNumber status createdAt updatedAt totalAmount currency description __typename"
CUSTOMER_FIELDS = "id code name __typename"

DOCUMENTS = [
    # the benchmark's reads 1, 3 and 5
    "{ serviceOrders(first: 50) { edges { node { id sodNumber status createdAt totalAmount customer { name } } } } }",
    "{ serviceOrders(first: 50, filter: {status: [OPEN]}) { edges { node { id sodNumber customer { name } } } } }",
    "{ customers(first: 20) { edges { node { id name serviceOrders(first: 10) "
    "{ edges { node { id sodNumber status createdAt totalAmount } } } } } } }",
    # every field, aliases, __typename, cursors, pageInfo and the count beside the nodes
    f"{{ serviceOrders(first: 30) {{ totalCount edges {{ cursor node {{ {ORDER_FIELDS} "
    f"customer {{ {CUSTOMER_FIELDS} }} }} }} pageInfo {{ hasNextPage startCursor endCursor }} }} }}",
    "{ serviceOrders(first: 7, orderBy: TOTAL_AMOUNT_DESC) { edges { node { a: totalAmount b: id c: __typename "
    "k: customer { x: name y: code } } } } }",
    "{ serviceOrders(last: 5, filter: {status: [OPEN, DRAFT, IN_PROGRESS]}) "
    "{ edges { node { sodNumber updatedAt } } } }",
    "{ serviceOrders(first: 5, orderBy: UPDATED_AT_DESC) { edges { node { updatedAt description } } } }",
    "{ customers(first: 3) { edges { node { serviceOrders(first: 4, orderBy: CREATED_AT_ASC) "
    "{ edges { cursor node { createdAt customer { id name serviceOrders(first: 1) { edges { node { id } } } } } } "
    "} } } } }",
    # not rendered (a fragment, lines, a directive, the same name twice): answered by Python
    "{ serviceOrders(first: 5) { edges { node { ...O } } } } fragment O on ServiceOrder { id sodNumber }",
    "{ serviceOrders(first: 5) { edges { node { id lines { lineNo quantity unitPrice } } } } }",
    "{ serviceOrders(first: 5) { edges { node { id sodNumber @include(if: true) } } } }",
    "{ serviceOrders(first: 5) { edges { node { id id } } } }",
]
RENDERED = set(range(8))  # the indexes of DOCUMENTS the database renders
WHOLE_LISTS = {0, 1, 2, 4, 5, 6, 7}  # ... of which edges with nothing but their node


@pytest.fixture(scope="module")
def rendered_db(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own, seeded small, with one customer and two orders of
    hostile text, and an order created at a whole second (isoformat prints .000000)."""
    with own_database(template_settings, DB, orders=300) as settings:
        with psycopg.connect(settings.admin_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE customer SET name = %s WHERE id = (SELECT customer_id FROM service_order "
                "GROUP BY customer_id HAVING count(*) >= 3 ORDER BY customer_id LIMIT 1)",
                [HOSTILE_NAME],
            )
            conn.execute(
                "UPDATE service_order SET description = %s WHERE id IN (SELECT o.id FROM service_order AS o "
                "JOIN customer AS c ON c.id = o.customer_id WHERE c.name = %s ORDER BY o.created_at DESC LIMIT 2)",
                [HOSTILE_DESCRIPTION, HOSTILE_NAME],
            )
            conn.execute(
                "UPDATE service_order SET updated_at = date_trunc('second', "
                "(SELECT max(updated_at) FROM service_order)) + interval '1 second' "
                "WHERE id = (SELECT max(id) FROM service_order)"
            )
        wait_for_replica(settings, timeout=120)
        yield settings


async def answers(
    settings: Settings, document: str, variables: dict[str, Any] | None = None
) -> dict[bool, tuple[int, Any, Any]]:
    """The status, data and actualNodes of the document with rendering on and off."""
    out = {}
    for render in (True, False):
        async with client_for(replace(settings, render_sql=render)) as client:
            response = await client.post("/graphql", json={"query": document, "variables": variables})
            body = response.json()
        out[render] = (response.status_code, body.get("data"), body["extensions"]["cost"]["actualNodes"])
    return out


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_rendered_answers_are_python_answers(rendered_db: Settings, document: str) -> None:
    got = await answers(rendered_db, document)
    assert got[True] == got[False]
    status, data, nodes = got[True]
    assert status == 200 and data is not None and nodes > 0


async def test_hostile_text_comes_back_exactly_as_stored(rendered_db: Settings) -> None:
    with psycopg.connect(rendered_db.admin_url) as conn:
        (row_id,) = conn.execute("SELECT id FROM customer WHERE name = %s", [HOSTILE_NAME]).fetchone() or (0,)
    async with client_for(rendered_db) as client:
        customer = global_id("Customer", row_id)
        query = (
            "query($c: ID!) { serviceOrders(first: 3, filter: {customerId: $c}) "
            f"{{ edges {{ node {{ {ORDER_FIELDS} customer {{ {CUSTOMER_FIELDS} }} }} }} }} }}"
        )
        body = (await client.post("/graphql", json={"query": query, "variables": {"c": customer}})).json()
    nodes = [e["node"] for e in body["data"]["serviceOrders"]["edges"]]
    assert [n["customer"]["name"] for n in nodes] == [HOSTILE_NAME] * 3
    assert [n["description"] for n in nodes][:2] == [HOSTILE_DESCRIPTION] * 2
    got = await answers(rendered_db, query, {"c": customer})
    assert got[True] == got[False]


async def test_a_whole_second_keeps_its_six_zeros(rendered_db: Settings) -> None:
    got = await answers(
        rendered_db, "{ serviceOrders(first: 1, orderBy: UPDATED_AT_DESC) { edges { node { updatedAt } } } }"
    )
    assert got[True] == got[False]
    ((_, data, _),) = [got[True]]
    assert data["serviceOrders"]["edges"][0]["node"]["updatedAt"].endswith(".000000+00:00")


@pytest.mark.parametrize("zone, offset", [("Asia/Kolkata", "+05:30"), ("America/St_Johns", ("-03:30", "-02:30"))])
async def test_timestamps_follow_the_session_time_zone_as_psycopg_reads_them(
    rendered_db: Settings, monkeypatch: pytest.MonkeyPatch, zone: str, offset: Any
) -> None:
    # PGTZ: libpq sends it as the session's TimeZone (PgBouncer passes it on).
    monkeypatch.setenv("PGTZ", zone)
    got = await answers(rendered_db, "{ serviceOrders(first: 20) { edges { node { createdAt updatedAt } } } }")
    assert got[True] == got[False]
    stamps = [e["node"]["createdAt"] for e in got[True][1]["serviceOrders"]["edges"]]
    assert stamps and all(s.endswith(offset) for s in stamps)


@pytest.mark.parametrize(
    "zone, stamp, expected",
    [
        ("UTC", "2025-06-01 10:00:00.5+00", True),
        ("Europe/Amsterdam", "1800-01-01 00:00:00+00", False),  # local mean time: +00:19:32
        ("UTC", "0001-01-01 00:00:00+00", False),  # -05:00 elsewhere: year 0, which Python lacks
        ("UTC", "9999-12-31 12:00:00+00", False),
        ("UTC", "infinity", False),
    ],
)
def test_rows_python_would_print_otherwise_are_left_to_python(
    rendered_db: Settings, zone: str, stamp: str, expected: bool
) -> None:
    with psycopg.connect(rendered_db.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        query = sql.SQL("SELECT {} FROM (SELECT %s::timestamptz AS created_at) AS p").format(
            printable(sql.SQL("p.created_at"))
        )
        assert conn.execute(query, [stamp]).fetchone() == (expected,)


async def test_the_fast_executor_uses_the_rendered_json_and_the_stock_one_the_objects(rendered_db: Settings) -> None:
    from nexes.execution.pipeline import Pipeline
    from nexes.execution.schema import make_schema
    from nexes.resolvers.context import Context

    async with client_for(rendered_db) as client:
        state = client.app.state  # type: ignore[attr-defined]

        def context(render: bool) -> Context:
            settings = replace(state.settings, render_sql=render)
            return Context(request_id="r", settings=settings, router=state.router, cursors=state.cursors, viewer=ADMIN)

        for i, document in enumerate(DOCUMENTS):
            fast = await state.pipeline.run(document, None, None, context(True), queries_only=True)
            # graphql-core's own executor on the same rendered objects: it reads their attributes
            stock = await Pipeline(make_schema(None)).run(document, None, None, context(True), queries_only=True)
            python = await state.pipeline.run(document, None, None, context(False), queries_only=True)
            assert fast.errors is None and stock.errors is None and python.errors is None
            assert plain(fast.data) == stock.data == python.data
            assert (count_rendered(fast.data) > 0) == (i in RENDERED), document
            # edges that select their node alone come as one array, not one value per order
            assert (count_rendered(fast.data, lists=True) > 0) == (i in WHOLE_LISTS), document
            assert count_rendered(stock.data) == count_rendered(python.data) == 0


def count_rendered(value: Any, lists: bool = False) -> int:
    """The Rendered values in an answer (`lists`: only those of a whole list of edges)."""
    if isinstance(value, Rendered):
        return 1 if not lists or value.json.startswith("[") else 0
    if isinstance(value, dict):
        return sum(count_rendered(v, lists) for v in value.values())
    if isinstance(value, list):
        return sum(count_rendered(v, lists) for v in value)
    return 0


async def test_a_row_the_page_did_not_render_is_read_whole(rendered_db: Settings) -> None:
    # The database leaves a row unrendered only for a timestamp Python would print otherwise
    # (test above), which no partition of this database can hold: a real rendered page with
    # one row's JSON cleared stands in for it.
    from nexes.db import orders as orders_db
    from nexes.db.rendering import intern
    from nexes.resolvers.orders import RenderedOrder, hydrate

    spec = intern((("sodNumber", "sodNumber", None), ("customer", "customer", (("name", "name", None),))))
    page = partial(orders_db.orders_page, flt=orders_db.OrderFilter(), sort="CREATED_AT_DESC", backward=False)
    async with client_for(rendered_db) as client:
        router = client.app.state.router  # type: ignore[attr-defined]

        async def read(conn: Any) -> tuple[list[Any], list[Any]]:
            rows = await page(conn, after=None, limit=5, with_customer=True, render=spec)
            rows[2] = rows[2]._replace(rendered=None)
            nodes = await hydrate(conn, rows, customers=True, lines=False, archived=False, render=spec)
            return nodes, await page(conn, after=None, limit=5, with_customer=True)

        nodes, whole = await router.read(read)
    assert [type(n) is RenderedOrder for n in nodes] == [True, True, False, True, True]
    # every one reads as the unrendered page's order, the RenderedOrders from their JSON
    assert [(n.sod_number, n.customer.name) for n in nodes] == [(r.sod_number, r.customer_name) for r in whole]
    assert (nodes[2].status.value, nodes[2].total_amount) == (whole[2].status, whole[2].total_amount)


# Packed pages (nexes.db.orders.packed_sql): edges that select their node alone, with no
# cursor, come from PostgreSQL as one row per page.
PACKED_PAGES = [
    (
        "query($c: String) { serviceOrders(first: 4, after: $c) { pageInfo { hasNextPage hasPreviousPage } "
        "edges { node { id sodNumber } } } }",
        "endCursor",
    ),
    (
        "query($c: String) { serviceOrders(last: 4, before: $c) { pageInfo { hasNextPage hasPreviousPage } "
        "edges { node { id createdAt } } } }",
        "startCursor",
    ),
    (
        "query($c: String) { serviceOrders(last: 2, before: $c, filter: {status: [OPEN, DRAFT]}) "
        "{ pageInfo { hasNextPage hasPreviousPage } edges { node { sodNumber status } } } }",
        "startCursor",
    ),
    # no pageInfo, or not the flag the extra row answers: no extra row is read
    ("query($c: String) { serviceOrders(first: 4, after: $c) { edges { node { id sodNumber } } } }", "endCursor"),
    (
        "query($c: String) { serviceOrders(last: 3, before: $c) { pageInfo { hasNextPage } "
        "edges { node { createdAt } } } }",
        "startCursor",
    ),
]


@pytest.fixture
def packed_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each call of the packed readers returned (None: PostgreSQL left a row unrendered)."""
    from nexes.db import orders as orders_db

    calls: list[Any] = []
    for name in ("orders_page_packed", "orders_pages_packed_by_customer"):
        real = getattr(orders_db, name)

        async def spy(*args: Any, real: Any = real, **kwargs: Any) -> Any:
            calls.append(result := await real(*args, **kwargs))
            return result

        monkeypatch.setattr(orders_db, name, spy)
    return calls


@pytest.mark.parametrize("document, cursor", PACKED_PAGES)
async def test_packed_pages_page_through_as_python_does(
    rendered_db: Settings, packed_calls: list[Any], document: str, cursor: str
) -> None:
    """Every page of the way, forward and backward, to the end of the orders: the same
    orders, and the same hasNextPage and hasPreviousPage, as Python's rows give."""
    from nexes.db.orders import Packed

    # Python's own run of the same pages (rendering off) gives the cursors to page on with.
    walker = document.replace("edges {", f"pageInfo {{ hasNextPage hasPreviousPage {cursor} }} edges {{", 1)
    size = int(document.partition("first: " if cursor == "endCursor" else "last: ")[2].partition(",")[0])
    extra = ("hasNextPage" if cursor == "endCursor" else "hasPreviousPage") in document
    at, pages = None, 0
    async with (
        client_for(rendered_db) as packing,
        client_for(replace(rendered_db, render_sql=False)) as python,
    ):

        async def data(client: Any, query: str) -> Any:
            response = await client.post("/graphql", json={"query": query, "variables": {"c": at}})
            assert response.status_code == 200 and "errors" not in response.json()
            return response.json()["data"]["serviceOrders"]

        while True:
            got, walked = await data(packing, document), await data(python, walker)
            assert got == await data(python, document)
            assert got["edges"] == walked["edges"] and got["edges"]
            assert packed_calls[-1].rows <= size + extra  # the page's rows, and one more only when asked
            pages += 1
            info = walked["pageInfo"]
            if not (info["hasPreviousPage"] if cursor == "startCursor" else info["hasNextPage"]):
                break
            at = info[cursor]
    assert pages >= 3  # several pages, then the last (full or not)
    packed = [c for c in packed_calls if isinstance(c, Packed)]
    assert len(packed) == pages and len(packed_calls) == pages  # each page was packed, once
    assert walked["pageInfo"]["hasNextPage" if cursor == "endCursor" else "hasPreviousPage"] is False
    if extra:  # the extra row was read on every page but the last, to answer the flag
        assert [c.rows for c in packed] == [size + 1] * (pages - 1) + [packed[-1].rows]


async def test_empty_and_zero_packed_pages(rendered_db: Settings, packed_calls: list[Any]) -> None:
    for document in (
        "{ serviceOrders(first: 0) { pageInfo { hasNextPage } edges { node { id } } } }",
        '{ serviceOrders(first: 5, filter: {sodNumberPrefix: "NO-SUCH-"}) '
        "{ pageInfo { hasNextPage hasPreviousPage } edges { node { id } } } }",
        '{ customers(first: 4) { edges { node { serviceOrders(first: 2, filter: {sodNumberPrefix: "NO-SUCH-"}) '
        "{ pageInfo { hasNextPage } edges { node { id } } } } } } }",
    ):
        got = await answers(rendered_db, document)
        assert got[True] == got[False] and got[True][0] == 200
    # first: 0 reads nothing; the two empty pages were packed (two customers' pages: one statement)
    assert [(c.rows, c.edges) if hasattr(c, "rows") else sorted(set(c.values())) for c in packed_calls] == [
        (0, ""),
        [(0, "")],
    ]


async def test_a_packed_page_with_an_unrendered_row_is_read_row_by_row(
    rendered_db: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL leaves a row unrendered only for a timestamp Python would print otherwise,
    # which no partition of this database can hold (test_rows_python_would_print_otherwise_
    # are_left_to_python): readers that report such a row (None) stand in for it here.
    from nexes.db import orders as orders_db

    asked: list[str] = []

    async def unrendered(conn: Any, *args: Any, alongside: Any = None, **kwargs: Any) -> None:
        asked.append(kwargs["head"])
        if alongside is not None:  # the customers' own page, read with theirs (resolvers.catalog): run for real
            cursor, query, params = alongside
            await cursor.execute(query, params)

    monkeypatch.setattr(orders_db, "orders_page_packed", unrendered)
    monkeypatch.setattr(orders_db, "orders_pages_packed_by_customer", unrendered)
    for document in (DOCUMENTS[0], DOCUMENTS[2]):
        got = await answers(rendered_db, document)
        assert got[True] == got[False] and got[True][0] == 200
    # the customers' pages: asked for with the customers' page (read ahead), then by their batch
    assert asked == ['{"node":', '{"node":', '{"node":']


def test_packed_sql_leaves_out_the_extra_row_and_reports_an_unrendered_one(rendered_db: Settings) -> None:
    from nexes.db.orders import packed_sql

    rows = "(1, 10, '{\"n\":1}'), (2, 20, '{\"n\":2}'), (3, 30, '{\"n\":3}'), (4, 40, LAST)"
    page = "SELECT * FROM (VALUES ROWS) AS v (id, created_at, rendered) ORDER BY created_at DIR, id DIR LIMIT %(limit)s"
    with psycopg.connect(rendered_db.admin_url) as conn:

        def packed(backward: bool, limit: int, last: str = "'{\"n\":4}'", extra: bool = True) -> tuple[Any, ...]:
            direction = "ASC" if backward else "DESC"
            inner = sql.SQL(page.replace("ROWS", rows.replace("LAST", last)).replace("DIR", direction))
            query = packed_sql(inner, "CREATED_AT_DESC", backward=backward, head='{"x":')
            shown = limit - 1 if extra else limit
            return conn.execute(query, {"limit": limit, "shown": shown}).fetchone()  # type: ignore[return-value]

        # a page of 2 reads 3 rows: the third only says there is more
        assert packed(False, 3) == (3, True, '{"x":{"n":4}},{"x":{"n":3}}')
        # backward: read from the oldest, shown newest first, the extra row (the third oldest) left out
        assert packed(True, 3) == (3, True, '{"x":{"n":2}},{"x":{"n":1}}')
        assert packed(False, 9) == (4, True, '{"x":{"n":4}},{"x":{"n":3}},{"x":{"n":2}},{"x":{"n":1}}')
        assert packed(False, 3, last="NULL") == (3, False, '{"x":{"n":3}}')
        assert packed(False, 1) == (1, True, "")
        # no extra row read: every row read is shown
        assert packed(False, 2, extra=False) == (2, True, '{"x":{"n":4}},{"x":{"n":3}}')
        assert packed(True, 2, extra=False) == (2, True, '{"x":{"n":2}},{"x":{"n":1}}')


@pytest.mark.parametrize("type_name", ["ServiceOrder", "Customer", "StockItem", "ServiceOrderLine"])
def test_global_ids_printed_by_postgresql_are_pythons(rendered_db: Settings, type_name: str) -> None:
    """base64url of "Type:key" as PostgreSQL prints it (translate() left out where base64 of
    the key's characters can hold no '+' or '/'), for every length of key and both signs."""
    from nexes.db.rendering import _global_id

    keys = [0, 7, 42, 999, 2**31, 2**63 - 1, -1, -(2**63), *range(10**5, 10**5 + 700, 7)]
    constant, *rest = _global_id(type_name, sql.SQL("k"))
    query = sql.SQL("SELECT k, {} FROM unnest(%s::bigint[]) AS k").format(
        sql.SQL(" || ").join(
            [sql.Literal(constant), *(r if isinstance(r, sql.Composable) else sql.Literal(r) for r in rest)]
        )
    )
    with psycopg.connect(rendered_db.admin_url) as conn:
        rows = conn.execute(query, [keys]).fetchall()
    assert [text for _, text in rows] == [global_id(type_name, key) for key, _ in rows]
    assert len(rows) == len(keys)


def test_translate_is_left_out_only_where_base64_cannot_hold_plus_or_slash() -> None:
    from nexes.db.rendering import _plain_base64

    assert _plain_base64(b":-0123456789")
    assert _plain_base64(b"e:-0123456789")
    assert not _plain_base64(b"?>")  # b"?>?" is "Pz4/"
    assert not _plain_base64(b"\xfb")  # b"\xfb\xfb\xfb" is "+/v7"
