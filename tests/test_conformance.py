"""GraphQL over HTTP as clients see it, against a live `nexes serve` (read-only queries on
the seeded database):

- graphql-http@1.23.1's `auditServer` (tests/conformance/audit.mjs, run by Node) with an
  analyst's token on every request: 0 errors, 0 warnings, and each notice explained in
  the README;
- Python's `gql` as a SPA uses a GraphQL client: BAD_CURSOR is a GraphQL error with its
  code (TransportQueryError), not a network or HTTP failure, under either media type.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql import Client
from gql import gql as document
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from psycopg.conninfo import conninfo_to_dict

from nexes.settings import Settings
from tests.support.auth import token_for
from tests.support.databases import environ_for
from tests.support.processes import free_port
from tests.support.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "tests" / "conformance"
NPM_MISSING = (
    "npm is missing: the GraphQL-over-HTTP audit runs graphql-http under Node.js. Install Node.js 20 "
    "with npm (Debian/Ubuntu: `apt-get install nodejs npm`, or https://nodejs.org), then run `make test` again"
)


def _live(base: str) -> bool:
    try:
        return httpx.get(base + "/api/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(seeded: Settings) -> Iterator[str]:
    """`nexes serve` on free ports on the seeded database; its /graphql address."""
    env = environ_for(str(conninfo_to_dict(seeded.primary_url)["dbname"]))
    port = free_port()
    # The audit sends its ~60 requests at once: admission control must not refuse them.
    env.update(
        NEXES_OPS_LISTEN=f"127.0.0.1:{free_port()}", NEXES_ACCESS_LOG="false", NEXES_MAX_CONCURRENT_REQUESTS="200"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _live(base), timeout=60, interval=0.2)
        yield base + "/graphql"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail(NPM_MISSING)
    return npm


def _install_audit() -> None:
    """`npm ci` from the committed lock (no registry URLs in it) when node_modules is missing."""
    if (CONFORMANCE / "node_modules" / "graphql-http" / "package.json").exists():
        return
    subprocess.run(
        [_npm(), "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CONFORMANCE, check=True, timeout=300
    )


def _audit(url: str, token: str) -> list[dict[str, Any]]:
    _npm()
    _install_audit()
    env = {"PATH": str(Path(shutil.which("node") or "node").parent), "NEXES_AUDIT_URL": url, "NEXES_AUDIT_TOKEN": token}
    done = subprocess.run(
        ["node", "audit.mjs"], cwd=CONFORMANCE, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_graphql_http_audit_passes_with_no_error_or_warning_and_every_notice_explained(
    served: str, seeded: Settings
) -> None:
    results = _audit(served, token_for(seeded, "analyst", subject="conformance-audit"))
    by_status: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_status.setdefault(result["status"], []).append(result)
    assert len(results) > 50, results
    assert by_status.get("error", []) == []
    assert by_status.get("warn", []) == []
    readme = (ROOT / "README.md").read_text()
    for notice in by_status.get("notice", []):
        assert f"`{notice['id']}`" in readme, notice


PAGE = "query($after: String) { serviceOrders(first: 2, after: $after) { edges { cursor node { id } } } }"


# What Apollo Client sends (and urql's default, application/json alone).
ACCEPTS = ["application/graphql-response+json,application/json;q=0.9", "application/json"]


@pytest.mark.parametrize("accept", ACCEPTS)
async def test_a_graphql_client_sees_bad_cursor_as_a_graphql_error_with_its_code(
    served: str, seeded: Settings, accept: str
) -> None:
    # Apollo Client and urql take any non-2xx answer for a network error; gql does not
    # itself, so the statuses are kept and checked here as theirs would be.
    statuses: list[int] = []

    async def keep_status(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    headers = {"Authorization": f"Bearer {token_for(seeded, 'viewer', subject='spa')}", "Accept": accept}
    transport = HTTPXAsyncTransport(url=served, headers=headers, timeout=30, event_hooks={"response": [keep_status]})
    async with Client(transport=transport) as session:
        page = await session.execute(document(PAGE), variable_values={"after": None})
        assert len(page["serviceOrders"]["edges"]) == 2
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(document(PAGE), variable_values={"after": "not-a-cursor"})
    errors = refused.value.errors
    assert errors is not None
    assert [e["extensions"]["code"] for e in errors] == ["BAD_CURSOR"]
    assert "cursor" in errors[0]["message"].lower()
    assert statuses == [200, 200]
    assert transport.response_headers is not None
    assert transport.response_headers["content-type"] == accept.split(",", maxsplit=1)[0]
