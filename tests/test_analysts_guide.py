"""docs/analysts.md cannot rot: every worked query in it runs against a freshly seeded
demo database through the real app, with its variables and a token of the roles it names;
the answer must have the documented shape and cost exactly the documented nodes and points.
The CSV export is fetched as documented, the import follows its upload, the read-your-write
query carries the mutation's LSN, and GraphiQL's saved tabs are the guide's queries."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from nexes.http import ide
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.auth import bearer_for
from tests.support.databases import TEMPLATE_DB, drop_database, environ_for, recreate_database
from tests.support.replicas import wait_for_replica

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "analysts.md"
SAMPLE_IMPORT = GUIDE.parent / "sample-import.csv"
DEMO_ORDERS = 3_000
EXAMPLE = re.compile(
    r"```graphql\n(?P<query>.*?)```\s*\nVariables:\s*\n```json\n(?P<variables>.*?)```\s*\n"
    r"Answer[^\n]*(?:\n(?!```)[^\n]*)*?\n```json\n(?P<answer>.*?)```\s*\n"
    r"\*\*Cost\*\* (?P<nodes>[\d,]+) nodes \((?P<points>\d+) points?\) · \*\*who\*\* (?P<who>[^\n]+)",
    re.S,
)
# The least role the guide's "who" names: what an analyst, operator or anyone would send.
ROLE_OF = {"any role": "viewer", "analyst, admin": "analyst", "operator, admin": "operator"}


@dataclass(frozen=True)
class Example:
    section: str
    query: str
    variables: dict[str, Any]
    answer: dict[str, Any]
    nodes: int
    points: int
    role: str

    @property
    def operation(self) -> str:
        match = re.match(r"(?:query|mutation) (\w+)", self.query)
        assert match, self.query
        return match[1]


def sections() -> list[tuple[str, str]]:
    """(heading, text) of each numbered example."""
    parts = re.split(r"^### ", GUIDE.read_text(), flags=re.M)[1:]
    return [(part.split("\n", 1)[0], part) for part in parts]


def examples() -> Iterator[Example]:
    for heading, text in sections():
        blocks = text.count("```graphql")
        found = list(EXAMPLE.finditer(text))
        assert len(found) == blocks, f"{heading}: every query needs Variables, Answer and Cost after it"
        for match in found:
            yield Example(
                section=heading,
                query=match["query"],
                variables=json.loads(match["variables"]),
                answer=json.loads(match["answer"]),
                nodes=int(match["nodes"].replace(",", "")),
                points=int(match["points"]),
                role=ROLE_OF[match["who"].strip()],
            )


def shape_errors(expected: Any, actual: Any, path: str = "data") -> list[str]:
    """Where `actual` differs in shape from the documented answer: other keys, a list where
    an object was, a string where a number was. Values may differ (and be null, and lists
    empty): the guide's values are the demo data's of one day."""
    if actual is None or expected is None:
        return []
    if type(expected) is not type(actual):
        return [f"{path}: {type(actual).__name__} {actual!r}, documented {type(expected).__name__} {expected!r}"]
    if isinstance(expected, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(actual)} differ from the documented {sorted(expected)}"]
        return [e for key in expected for e in shape_errors(expected[key], actual[key], f"{path}.{key}")]
    if isinstance(expected, list):
        return [e for i, item in enumerate(actual) for e in shape_errors(expected[0], item, f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def demo(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own with the demo seed (the guide's examples write to it)."""
    from nexes import settings as settings_module
    from nexes.db.seed import seed

    name = "nexes_t_analysts_guide"
    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    settings = settings_module.load(environ_for(name))
    seed(settings.admin_url, DEMO_ORDERS, defer=False)
    wait_for_replica(settings, timeout=120)
    yield settings
    drop_database(template_settings.admin_url, name)


def test_the_guide_has_at_least_twelve_worked_queries_with_the_asked_for_topics() -> None:
    found = list(examples())
    assert len(found) >= 12
    headings = " ".join(heading.lower() for heading, _ in sections())
    for topic in ("customer in a period", "by month", "top customers", "aging", "search", "cursors", "csv"):
        assert topic in headings, topic
    assert "import" in headings and "read your own write" in headings


async def test_every_query_of_the_guide_answers_in_its_documented_shape_and_cost(demo: Settings) -> None:
    lsn = ""
    job_id = await _upload_sample(demo)
    async with client_for(demo, roles=()) as client:
        for example in examples():
            variables = dict(example.variables)
            request_headers = bearer_for(demo, example.role, subject=f"guide-{example.role}")
            if example.operation == "ImportProgress":
                variables["id"] = job_id
            if example.query.startswith("query") and "X-Nexes-Min-LSN" in _section_text(example.section):
                assert lsn, "the mutation before it gave an LSN"
                request_headers["X-Nexes-Min-LSN"] = lsn
            response = await client.post(
                "/graphql", json={"query": example.query, "variables": variables}, headers=request_headers
            )
            body = response.json()
            where = f"{example.section}: {example.operation}"
            assert response.status_code == 200 and "errors" not in body, (where, body)
            assert shape_errors(example.answer, body["data"]) == [], where
            cost = body["extensions"]["cost"]
            assert (cost["requested"], cost["rateLimit"]["cost"]) == (example.nodes, example.points), where
            if example.query.startswith("mutation"):
                assert body["data"]["createServiceOrder"]["errors"] == [], body
                lsn = response.headers["X-Nexes-LSN"]


async def test_the_paging_example_walks_pages_without_gaps_or_repeats(demo: Settings) -> None:
    example = next(e for e in examples() if e.operation == "EveryOrder")
    seen: list[str] = []
    after = None
    async with client_for(demo, roles=("viewer",)) as client:
        for _ in range(3):
            response = await client.post("/graphql", json={"query": example.query, "variables": {"after": after}})
            page = response.json()["data"]["serviceOrders"]
            seen += [edge["node"]["createdAt"] + " " + edge["node"]["id"] for edge in page["edges"]]
            after = page["pageInfo"]["endCursor"]
    assert len(seen) == 300 and len(set(seen)) == 300
    assert seen == sorted(seen, key=lambda s: s.split(" ")[0])  # oldest first across pages


async def test_the_csv_export_of_the_guide_answers_with_the_documented_header(demo: Settings) -> None:
    text = _section_text(next(h for h, _ in sections() if "CSV" in h))
    command = re.search(r"```sh\n(.*?)```", text, re.S)
    assert command
    url = next(word for word in shlex.split(command[1].replace("\\\n", " ")) if word.startswith("http"))
    header = re.search(r"```csv\n([^\n]+)\n", text)
    assert header
    parts = urlsplit(url)
    async with client_for(demo, roles=("analyst",)) as client:
        response = await client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0] == header[1] and len(lines) > 1


def test_graphiql_opens_with_the_guides_queries_as_its_saved_tabs() -> None:
    def bare(query: str) -> str:
        return "\n".join(line for line in query.splitlines() if not line.startswith("#")).strip()

    tabs = ide.examples()
    assert [bare(tab["query"]) for tab in tabs] == [bare(e.query) for e in examples()]
    assert [json.loads(tab.get("variables", "{}")) for tab in tabs] == [e.variables for e in examples()]


def _section_text(heading: str) -> str:
    return next(text for h, text in sections() if h == heading)


async def _upload_sample(settings: Settings) -> str:
    """docs/sample-import.csv uploaded as the guide shows, by the operator whose job it is."""
    async with client_for(settings, roles=("operator",), subject="guide-operator") as client:
        response: httpx.Response = await client.post(
            "/api/imports",
            content=SAMPLE_IMPORT.read_bytes(),
            headers={"X-Nexes-CSRF": "1", "Content-Type": "text/csv"},
        )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_the_shape_check_tells_other_keys_and_types_but_not_other_values() -> None:
    documented = {"a": [{"b": 1, "c": "x"}], "d": None}
    assert shape_errors(documented, {"a": [{"b": 7, "c": "y"}, {"b": 8, "c": None}], "d": 3}) == []
    assert shape_errors(documented, {"a": [], "d": None}) == []
    assert shape_errors(documented, {"a": [{"b": 1}], "d": None}) != []
    assert shape_errors(documented, {"a": [{"b": "1", "c": "x"}], "d": None}) != []
    assert shape_errors(documented, {"a": {"b": 1, "c": "x"}, "d": None}) != []
