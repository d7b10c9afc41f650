"""What each database role may do, table by table: the declared matrix.

Migrations grant it (0030 for the tables before it, each later one for its own);
tests/test_grants.py compares it with the database's effective privileges, so a new
table without a row here, or a grant nobody declared, fails the test; `render()` is
the README's table ("Database roles and grants").

Letters: S SELECT, I INSERT, U UPDATE, D DELETE (T TRUNCATE, R REFERENCES and X TRIGGER
are granted to no application role). A role not named for a table may do nothing with
it. The owner (nexes_owner, migrations and DDL) owns everything and is not listed.
"""

from __future__ import annotations

from collections.abc import Mapping

API, WORKER, ANALYST, MONITOR = "nexes_api", "nexes_worker", "nexes_analyst", "nexes_monitor"
ROLES = (API, WORKER, ANALYST, MONITOR)

LETTERS = {
    "S": "SELECT",
    "I": "INSERT",
    "U": "UPDATE",
    "D": "DELETE",
    "T": "TRUNCATE",
    "R": "REFERENCES",
    "X": "TRIGGER",
}

# Partitions are reached through their partitioned table, whose row this is: a partition
# may grant no more than its root (audit_event's months repeat its grants; the order
# quarters grant nothing).
TABLES: Mapping[str, Mapping[str, str]] = {
    # Master data: the API creates customers and stock items and receives stock; the write
    # path (API and workers) moves on-hand and appends to the ledger.
    "customer": {API: "SI", WORKER: "S", ANALYST: "S"},
    "stock_item": {API: "SIU", WORKER: "SU", ANALYST: "S"},
    "stock_movement": {API: "SI", WORKER: "SI", ANALYST: "S"},
    # Orders: the write path (mutations as the API, imports as workers). Orders are never
    # deleted; a rejected new order's key is (order_write.py). Archived quarters are read-only.
    "service_order_key": {API: "SIUD", WORKER: "SIUD", ANALYST: "S"},
    "service_order": {API: "SIU", WORKER: "SIU", ANALYST: "S"},
    "service_order_line": {API: "SIUD", WORKER: "SIUD", ANALYST: "S"},
    "service_order_archive": {API: "S", WORKER: "S", ANALYST: "S"},
    "service_order_line_archive": {API: "S", WORKER: "S", ANALYST: "S"},
    # Kept by the write path and its triggers, corrected by reconciliation (workers).
    "dashboard_stat": {API: "SIU", WORKER: "SIU", ANALYST: "S"},
    "dashboard_stat_month": {API: "SIU", WORKER: "SIU", ANALYST: "S"},
    "customer_stat_month": {API: "SIU", WORKER: "SIU", ANALYST: "S"},
    "customer_stat_cum": {API: "SIU", WORKER: "SIU", ANALYST: "S"},
    "customer_stat_cum_horizon": {API: "SU", WORKER: "SU", ANALYST: "S"},
    "customer_stat_cum_expected": {},  # a view for the invariant checks and the seed (owner)
    "stat_drift": {WORKER: "SI"},
    "reconcile_line_check": {WORKER: "SIU"},
    # Search: the outbox trigger inserts as whoever writes orders; the sync claims and
    # deletes; search health and metrics read the lag and the latest reindex.
    "search_outbox": {API: "SI", WORKER: "SIUD"},
    "search_reindex": {API: "S", WORKER: "SIU"},
    "search_reindex_change": {WORKER: "SID"},
    # Imports: the API stores uploads, lists, cancels and reads jobs and their errors; the
    # workers (and `nexes import`) store, stage, apply, sweep and purge.
    "import_job": {API: "SIUD", WORKER: "SIUD"},
    "import_upload_chunk": {API: "I", WORKER: "SI"},
    "import_row": {WORKER: "SID"},
    "import_error": {API: "S", WORKER: "SI"},
    # The audit trail (0031): appended by mutations and jobs, never changed.
    "audit_event": {API: "SI", WORKER: "SI"},
    # Trusted documents (0032): registered by `nexes documents add` as the owner; the API
    # reads them for the allow-list and persisted queries.
    "trusted_document": {API: "S"},
    # Run or trusted by privileged commands: no application role writes them.
    "deferred_index": {},  # its rows are run as the owner by `nexes migrate` and `nexes seed`
    "schema_migration": {WORKER: "S", MONITOR: "S"},  # the import runner's and health's version check
    "maintenance_flag": {WORKER: "S"},  # raised and cleared by the two functions below only
}

SEQUENCES: Mapping[str, Mapping[str, str]] = {
    # Identity columns need no sequence privilege; these are DEFAULT nextval(...).
    "service_order_id_seq": {API: "USAGE", WORKER: "USAGE"},
    "audit_event_id_seq": {API: "USAGE", WORKER: "USAGE"},
}

# SECURITY DEFINER functions run as the owner: each one, and who may call it.
DEFINER_FUNCTIONS: Mapping[str, tuple[str, ...]] = {
    "search_reindex_ask()": (WORKER,),  # the drift check asks for a reindex
    "search_reindex_done()": (WORKER,),  # a swapped reindex clears the request
}

# Each role's purpose, for the README.
PURPOSE: Mapping[str, str] = {
    API: "the API process: reads (replicas and primary), mutations and uploads through the write path",
    WORKER: "Dramatiq workers other than `ddl`, and `nexes import`: imports, search sync, sweeps, reconciliation",
    ANALYST: "reports and exports, and every read of an analyst-only token; read-only (default_transaction_read_only)",
    MONITOR: "health probes only, direct to each server: pg_monitor, CONNECT, CONNECTION LIMIT 5",
}


def privileges(letters: str) -> set[str]:
    return {LETTERS[letter] for letter in letters}


def render() -> str:
    """The README's table: every table, and what each role may do with it."""
    lines = ["| table | " + " | ".join(f"`{r}`" for r in ROLES) + " |", "|---" * (len(ROLES) + 1) + "|"]
    for table, grants in sorted(TABLES.items()):
        lines.append(f"| `{table}` | " + " | ".join(grants.get(r, "") for r in ROLES) + " |")
    for sequence, grants in sorted(SEQUENCES.items()):
        lines.append(f"| `{sequence}` (sequence) | " + " | ".join(grants.get(r, "") for r in ROLES) + " |")
    for function, roles in sorted(DEFINER_FUNCTIONS.items()):
        lines.append(
            f"| `{function}` (function) | " + " | ".join("EXECUTE" if r in roles else "" for r in ROLES) + " |"
        )
    return "\n".join(lines)
