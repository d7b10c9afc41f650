"""Trusted documents in PostgreSQL (migration 0032): registered by `nexes documents add`
as the owner, listed by `nexes documents list`, read by the API (SELECT only) into its
per-process copy (nexes.execution.documents)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import class_row

from nexes.db.sql import load

_Q = load("documents")

# The most registered hashes an API process holds (64 hex digits each, about 10 MB at
# most): a SPA has hundreds. Past it the newest are kept, and the list command says so.
MAX_TRUSTED = 100_000


@dataclass(frozen=True, slots=True)
class TrustedDocumentRow:
    sha256: str
    operation_names: list[str]
    added_at: datetime
    added_by: str


def add(conn: Connection[Any], sha256: str, document: str, operation_names: list[str], added_by: str) -> bool:
    """Register one document (as the owner); False when it was registered already."""
    params = {"sha256": sha256, "document": document, "operation_names": operation_names, "added_by": added_by}
    return conn.execute(_Q["add"], params).fetchone() is not None


def list_all(conn: Connection[Any]) -> list[TrustedDocumentRow]:
    with conn.cursor(row_factory=class_row(TrustedDocumentRow)) as cur:
        return cur.execute(_Q["list"]).fetchall()


async def hashes(conn: AsyncConnection[Any]) -> frozenset[str]:
    """The registered hashes, the newest MAX_TRUSTED of them."""
    cur = await conn.execute(_Q["hashes"], {"limit": MAX_TRUSTED})
    return frozenset(row[0] for row in await cur.fetchall())


async def document(conn: AsyncConnection[Any], sha256: str) -> str | None:
    cur = await conn.execute(_Q["document"], {"sha256": sha256})
    row = await cur.fetchone()
    return None if row is None else str(row[0])
