"""What the monitor asks each server, what it keeps of the answer, and how a failure is told.

A probe's failure leaves the process as a code and a short reason of our own words
(`ProbeError`), never the driver's text: that names hosts, ports and roles.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

PRIMARY = "SELECT pg_current_wal_lsn()::text, pg_is_in_recovery()"
# The newest migration applied, which health compares with the code's; its own statement,
# so a role without SELECT on the table still probes the server (the version is then unknown).
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migration"
# Lag per docs/design.md §5: 0 once replay reached the primary's position, otherwise the
# time since the last replayed transaction.
REPLICA = """
SELECT pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_replay_lsn() >= %(primary_lsn)s::pg_lsn THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8,
       pg_is_wal_replay_paused()
"""


@dataclass(frozen=True)
class ProbeError:
    """A failed probe, as health shows it: a stable code and a reason without addresses."""

    code: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}


TIMEOUT = ProbeError("TIMEOUT", "no answer within the probe's timeout")
CONNECTION_REFUSED = ProbeError("CONNECTION_REFUSED", "connection refused")
CONNECTION_FAILED = ProbeError("CONNECTION_FAILED", "could not connect")
CONNECTION_LOST = ProbeError("CONNECTION_LOST", "the server closed the connection")
HOST_UNKNOWN = ProbeError("HOST_UNKNOWN", "the host name does not resolve")
AUTH_FAILED = ProbeError("AUTH_FAILED", "the server refused the probing role's login")
PERMISSION_DENIED = ProbeError("PERMISSION_DENIED", "the probing role lacks a privilege the probe needs")
TOO_MANY_CONNECTIONS = ProbeError("TOO_MANY_CONNECTIONS", "the server or the role has no connection slot left")
NOT_READY = ProbeError("NOT_READY", "the server is starting up, shutting down or in recovery")
NOT_PRIMARY = ProbeError("NOT_PRIMARY", "the primary's URL points at a standby")
QUERY_FAILED = ProbeError("QUERY_FAILED", "the probe's query failed")
STALE = ProbeError("STALE", "the monitor has not probed it lately")
UNEXPECTED = ProbeError("UNEXPECTED", "the probe failed unexpectedly")

DATABASE_MISSING = ProbeError("DATABASE_MISSING", "the database the URL names does not exist")

# libpq's messages for failures at connect time, which carry no SQLSTATE (the only place
# driver text is read; none of it is passed on).
_LIBPQ_TEXT = (
    ("fatal:  role", AUTH_FAILED),  # role "x" does not exist
    ("password authentication failed", AUTH_FAILED),
    ("no pg_hba.conf entry", AUTH_FAILED),
    ("fatal:  database", DATABASE_MISSING),
    ("too many connections", TOO_MANY_CONNECTIONS),
    ("remaining connection slots", TOO_MANY_CONNECTIONS),
    ("refused", CONNECTION_REFUSED),
    ("timeout expired", TIMEOUT),
    ("could not translate host name", HOST_UNKNOWN),
    ("name or service not known", HOST_UNKNOWN),
    ("server closed the connection", CONNECTION_LOST),
    ("consuming input failed", CONNECTION_LOST),
    ("the database system is", NOT_READY),
)


# Checked in order: the first class the exception is an instance of gives the code.
_DATABASE = (
    (TimeoutError, TIMEOUT),
    (errors.InsufficientPrivilege, PERMISSION_DENIED),
    (errors.InvalidAuthorizationSpecification, AUTH_FAILED),
    (errors.InvalidPassword, AUTH_FAILED),
    (errors.TooManyConnections, TOO_MANY_CONNECTIONS),
    (errors.OperatorIntervention, NOT_READY),  # 57000; psycopg's 57P0x classes are not subclasses
    (errors.AdminShutdown, NOT_READY),
    (errors.CrashShutdown, NOT_READY),
    (errors.CannotConnectNow, NOT_READY),
)
_SOCKET = (
    (TimeoutError, TIMEOUT),
    (ConnectionRefusedError, CONNECTION_REFUSED),
    (socket.gaierror, HOST_UNKNOWN),
    (ConnectionError, CONNECTION_LOST),
    (OSError, CONNECTION_FAILED),
)


def classify(exc: BaseException) -> ProbeError:
    """The code and reason for a failed database probe (psycopg, socket or timeout)."""
    known = next((error for cls, error in _DATABASE if isinstance(exc, cls)), None)
    if known is not None:
        return known
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        return next((error for needle, error in _LIBPQ_TEXT if needle in text), CONNECTION_FAILED)
    if isinstance(exc, psycopg.Error):
        return QUERY_FAILED
    return classify_socket(exc)


def classify_socket(exc: BaseException) -> ProbeError:
    """The code for an OS-level failure (any client: PostgreSQL, Redis, HTTP)."""
    return next((error for cls, error in _SOCKET if isinstance(exc, cls)), UNEXPECTED)


def classify_wrapped(exc: BaseException) -> ProbeError | None:
    """The code of the innermost OS error a client's exception wraps (redis-py and httpx
    wrap the socket's; their own text names the host and port), or None without one."""
    inner, found = exc, None
    for _ in range(8):  # a chain of causes, never a cycle in practice
        if isinstance(inner, OSError):
            found = inner
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    return classify_socket(found) if found is not None else None


@dataclass
class ServerState:
    """One server's last probe, as the monitor keeps it."""

    name: str
    reachable: bool = False
    lsn: str | None = None
    schema_version: int | None = None  # the primary's newest migration; None: unknown
    schema_error: ProbeError | None = None
    error: ProbeError | None = None
    probe_ms: float | None = None
    checked_at: float = 0.0  # time.monotonic() of the last probe; 0: never

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "reachable": self.reachable}
        if self.lsn is not None:
            out["lsn"] = self.lsn
        if self.schema_version is not None:
            out["schema_version"] = self.schema_version
        if self.schema_error is not None:
            out["schema_error"] = self.schema_error.as_dict()
        if self.error is not None:
            out["error"] = self.error.as_dict()
        if self.probe_ms is not None:
            out["probe_ms"] = self.probe_ms
        return out


def ping(conn: psycopg.Connection[Any]) -> None:
    """One round trip: behind PgBouncer, the server connection is made only now."""
    conn.execute("SELECT 1")
