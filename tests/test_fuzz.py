"""Schemathesis fuzzes every query and mutation of schema.graphql (startImport's Upload is
left to the upload tests) against a live server: uvicorn serving the app on a free port,
on a seeded database of this module's own (the mutations write), with an admin token whose
cost limit and rate limit are raised so that the fuzzer is never refused for its volume.

The bar: no server error. No answer may carry INTERNAL in an error's extensions.code, and
no status may be 5xx, except the replica registry's 503 SERVICE_UNAVAILABLE.

Scalars: DateTime, Date, Decimal and the global ID have strategies of their own, and so
has String. The fuzz dictionary holds real ids, cursors, SOD numbers, customer codes and
SKUs, read through the API before the run: ids are drawn from it half the time (else ids of
the wrong type, malformed ids, random text); strings mix random text, hostile strings (SQL
quoting, NUL, digits int() refuses) and the dictionary's keys and cursors; `after`/`before`
arguments are swapped for a real cursor most of the time. Queries so reach the resolvers
and the SQL, not only the validators (this run found the NUL and the "²" bugs).
The run is reproducible: a fixed seed per operation, no example database.
"""

from __future__ import annotations

import base64
import random
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import graphql
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from schemathesis.graphql import nodes

from nexes.http.app import create_app
from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.databases import own_database
from tests.support.replicas import wait_for_replica
from tests.support.waits import wait_for

SCHEMA = Path(__file__).resolve().parent.parent / "schema.graphql"
EXAMPLES_PER_OPERATION = 100
MIN_CASES = 1_000
SEED = 20_261_206
RAISED = 10**12  # the admin's cost limit and points an hour during the run

# The fuzz dictionary: filled from the live server before the first case is drawn (the
# strategies below read it lazily).
REAL_IDS: list[str] = []
REAL_CURSORS: list[str] = []
REAL_KEYS: list[str] = []  # SOD numbers, customer codes, SKUs
# Strings a person would not type: quoting, NUL, digits int() refuses, long text.
HOSTILE_STRINGS = [
    "' OR '1'='1",
    "'; DROP TABLE service_order; --",
    "%",
    "_",
    "\\",
    "a\x00b",
    "\x00",
    "\u00b2",
    "\u0661\u0662",
    "\ud7ff\ufffd",
    "x" * 10_000,
]
CASES: list[int] = [0]

DICTIONARY_QUERY = """{
  serviceOrders(first: 30) {
    edges { cursor node { id sodNumber customer { id code } lines { stockItem { id sku } } } }
  }
  customers(first: 20) { edges { cursor node { id code } } }
  stockItems(first: 20) { edges { cursor node { id sku } } }
  importJobs(first: 10) { edges { cursor node { id } } }
  auditEvents(first: 10) { edges { cursor } }
}"""


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _ids() -> st.SearchStrategy[str]:
    crafted = st.builds(
        lambda kind, key: _b64(f"{kind}:{key}"),
        st.sampled_from(["ServiceOrder", "Customer", "StockItem", "ImportJob", "Nope", ""]),
        st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=24)),
    )
    return st.one_of(
        st.deferred(lambda: st.sampled_from(REAL_IDS)),
        st.deferred(lambda: st.sampled_from(REAL_IDS)),
        crafted,
        st.text(max_size=40),
    )


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.text(max_size=40),
        st.sampled_from(HOSTILE_STRINGS),
        st.deferred(lambda: st.sampled_from(REAL_KEYS)),
        st.deferred(lambda: st.sampled_from(REAL_CURSORS)),
    )


def _datetimes() -> st.SearchStrategy[str]:
    aware = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    return st.one_of(aware, aware, st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=40))


def _decimals() -> st.SearchStrategy[str]:
    return st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.decimals(min_value=-(10**12), max_value=10**12, places=2).map(str),
        st.text(max_size=40),
    )


schemathesis.graphql.scalar("ID", _ids().map(nodes.String))
schemathesis.graphql.scalar("String", _strings().map(nodes.String))
schemathesis.graphql.scalar("DateTime", _datetimes().map(nodes.String))
schemathesis.graphql.scalar("Date", st.one_of(st.dates().map(str), st.text(max_size=20)).map(nodes.String))
schemathesis.graphql.scalar("Decimal", _decimals().map(nodes.String))


@pytest.fixture(scope="module")
def fuzz_settings(template_settings: Settings) -> Iterator[Settings]:
    with own_database(template_settings, "nexes_fuzz", orders=300) as own:
        wait_for_replica(own, timeout=120)
        yield replace(
            own,
            max_cost={role: RAISED for role in own.max_cost},
            rate_limits={role: RAISED for role in own.rate_limits},
        )


@pytest.fixture(scope="module")
def server(fuzz_settings: Settings) -> Iterator[str]:
    """uvicorn (httptools, as `nexes serve` runs it) serving the app on a free port, in a thread."""
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(fuzz_settings), http="httptools", lifespan="on", log_level="warning")
    live = uvicorn.Server(config)
    thread = threading.Thread(target=live.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: live.started, 30, 0.05)
    host, port = sock.getsockname()[:2]
    yield f"http://{host}:{port}"
    live.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def session(fuzz_settings: Settings) -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.headers.update(bearer_for(fuzz_settings, "admin", subject="fuzzer"))
        yield http


@pytest.fixture(scope="module")
def dictionary(server: str, session: requests.Session) -> None:
    """The fuzz dictionary: the live server's ids and cursors."""
    body = session.post(f"{server}/graphql", json={"query": DICTIONARY_QUERY}, timeout=30).json()
    assert "errors" not in body, body
    REAL_IDS.clear()
    REAL_CURSORS.clear()
    REAL_KEYS.clear()
    for connection in body["data"].values():
        for edge in connection["edges"]:
            REAL_CURSORS.append(edge["cursor"])
            node = edge.get("node") or {}
            REAL_IDS.extend(_values_in(node, "id"))
            REAL_KEYS.extend(v for key in ("sodNumber", "code", "sku") for v in _values_in(node, key))
    assert len(REAL_IDS) > 50 and len(REAL_CURSORS) > 50 and len(REAL_KEYS) > 50


def _values_in(value: Any, name: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == name and isinstance(item, str):
                yield item
            else:
                yield from _values_in(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _values_in(item, name)


def with_real_cursors(query: str) -> str:
    """`query` with most `after`/`before` string arguments replaced by a real cursor (of
    any connection: a foreign one must be BAD_CURSOR). Chosen from the query's own hash,
    so a case sends the same text each time it is replayed."""
    try:
        document = graphql.parse(query)
    except graphql.GraphQLError:
        return query
    rng = random.Random(zlib.crc32(query.encode()))

    class Cursors(graphql.Visitor):
        def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> Any:
            cursor = node.name.value in ("after", "before") and isinstance(node.value, graphql.StringValueNode)
            if cursor and rng.random() < 0.75:
                value = graphql.StringValueNode(value=rng.choice(REAL_CURSORS))
                return graphql.ArgumentNode(name=node.name, value=value)
            return None

    return graphql.print_ast(graphql.visit(document, Cursors()))


def server_errors(response: requests.Response) -> list[str]:
    """What in this answer is a server error: a 5xx (but the registry's 503), or INTERNAL."""
    found: list[str] = []
    try:
        body = response.json()
    except ValueError:
        body = {}
    errors = body.get("errors") or [] if isinstance(body, dict) else []
    codes = [(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)]
    if response.status_code >= 500 and not (response.status_code == 503 and "SERVICE_UNAVAILABLE" in codes):
        found.append(f"HTTP {response.status_code}: {response.text[:2000]}")
    found += [f"INTERNAL: {e}" for e, code in zip(errors, codes, strict=True) if code == "INTERNAL"]
    return found


# Loaded from the file, not through the server's introspection (the file is the contract;
# test_api_schema checks that the server serves it). Not schemathesis.pytest.from_fixture:
# its lazy schema sets pytest's private Node._nodeid, which pytest 9 no longer has.
schema = schemathesis.graphql.from_path(SCHEMA).exclude(name="Mutation.startImport")


@schema.parametrize()
@seed(SEED)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_a_server_error(
    case: Any, server: str, session: requests.Session, dictionary: None
) -> None:
    case.body = with_real_cursors(case.body)
    response = case.call(base_url=f"{server}/graphql", session=session, timeout=60)
    CASES[0] += 1
    assert not server_errors(response), (case.body, server_errors(response))
    assert {"data", "errors"} & set(response.json()), (response.status_code, response.text[:500])


def test_the_fuzzer_ran_at_least_1000_cases_and_the_server_still_answers(
    server: str, session: requests.Session
) -> None:
    assert CASES[0] >= MIN_CASES, CASES[0]
    answer = session.post(f"{server}/graphql", json={"query": "{ serviceOrders(first: 1) { edges { cursor } } }"})
    assert answer.status_code == 200 and len(answer.json()["data"]["serviceOrders"]["edges"]) == 1
