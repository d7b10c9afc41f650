"""Least privilege in the database: every role's privileges, table by table, are the
declared matrix (nexes/db/grants.py); no application role can write what a privileged
command runs or trusts; nexes_monitor probes and does nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexes.db import grants
from nexes.db.connect.conninfo import for_role
from nexes.db.migrate import MigrationError, migrate
from nexes.resolvers.ids import global_id
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.databases import superuser_url

README = Path(__file__).resolve().parent.parent / "README.md"
APP_ROLES = ("nexes_api", "nexes_worker", "nexes_analyst")

# Every relation of the schema a role could be granted: tables, partitioned tables, views.
RELATIONS = """
SELECT c.oid, c.relname::text, c.relispartition, pg_partition_root(c.oid)::regclass::text
FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY c.relname
"""


def _table_privileges(conn: psycopg.Connection, oid: int, role: str) -> set[str]:
    names = list(grants.LETTERS.values())
    query = "SELECT " + ", ".join(f"has_table_privilege(%(role)s, %(oid)s::oid, '{p}')" for p in names)
    row = conn.execute(query, {"role": role, "oid": oid}).fetchone()
    assert row is not None
    return {name for name, held in zip(names, row, strict=True) if held}


def _direct(settings: Settings, role: str) -> str:
    """The primary itself (not PgBouncer), as `role`. The admin URL may name every server
    with `target_session_attrs=read-write`, which a role whose sessions default to read-only
    (nexes_monitor, nexes_analyst) never satisfies: `primary` finds the same server."""
    params = conninfo_to_dict(for_role(settings.admin_url, settings, role))
    if "target_session_attrs" in params:
        params["target_session_attrs"] = "primary"
    return make_conninfo("", **params)


def test_every_table_grants_each_role_exactly_the_declared_privileges(settings: Settings) -> None:
    undeclared, wrong = [], []
    with psycopg.connect(settings.admin_url) as conn:
        for oid, name, is_partition, _ in conn.execute(RELATIONS).fetchall():
            if is_partition:
                continue  # the next test
            if name not in grants.TABLES:
                undeclared.append(name)
                continue
            for role in grants.ROLES:
                held = _table_privileges(conn, oid, role)
                declared = grants.privileges(grants.TABLES[name].get(role, ""))
                if held != declared:
                    wrong.append(f"{name} {role}: holds {sorted(held)}, declared {sorted(declared)}")
    assert undeclared == [], f"tables without a row in nexes/db/grants.py TABLES: {undeclared}"
    assert wrong == []


def test_every_declared_table_exists(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url) as conn:
        names = {name for _, name, _, _ in conn.execute(RELATIONS).fetchall()}
    assert set(grants.TABLES) - names == set()


def test_a_partition_grants_no_role_more_than_its_partitioned_table(settings: Settings) -> None:
    wrong, partitions = [], 0
    with psycopg.connect(settings.admin_url) as conn:
        for oid, name, is_partition, root in conn.execute(RELATIONS).fetchall():
            if not is_partition:
                continue
            partitions += 1
            for role in grants.ROLES:
                extra = _table_privileges(conn, oid, role) - grants.privileges(grants.TABLES[root].get(role, ""))
                if extra:
                    wrong.append(f"{name} (of {root}) {role}: {sorted(extra)} beyond its table's")
    assert partitions > 20  # the order quarters, live and ahead, and audit_event's months
    assert wrong == []


def test_sequences_grant_only_the_declared_usage(settings: Settings) -> None:
    wrong = []
    with psycopg.connect(settings.admin_url) as conn:
        rows = conn.execute(
            "SELECT c.oid, c.relname::text FROM pg_class AS c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S' ORDER BY 2"
        ).fetchall()
        for oid, name in rows:
            for role in grants.ROLES:
                held = {
                    p
                    for p in ("USAGE", "SELECT", "UPDATE")
                    if conn.execute("SELECT has_sequence_privilege(%s, %s::oid, %s)", [role, oid, p]).fetchone()
                    == (True,)
                }
                declared = set(grants.SEQUENCES.get(name, {}).get(role, "").split())
                if held != declared:
                    wrong.append(f"{name} {role}: holds {sorted(held)}, declared {sorted(declared)}")
    assert {name for _, name in rows} >= set(grants.SEQUENCES)
    assert wrong == []


def test_security_definer_functions_are_declared_and_callable_only_by_their_roles(settings: Settings) -> None:
    wrong = []
    with psycopg.connect(settings.admin_url) as conn:
        rows = conn.execute(
            "SELECT p.oid, p.oid::regprocedure::text FROM pg_proc AS p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef ORDER BY 2"
        ).fetchall()
        for oid, signature in rows:
            if signature not in grants.DEFINER_FUNCTIONS:
                wrong.append(f"{signature}: SECURITY DEFINER, not declared")
                continue
            callers = {
                role
                for role in grants.ROLES
                if conn.execute("SELECT has_function_privilege(%s, %s::oid, 'EXECUTE')", [role, oid]).fetchone()
                == (True,)
            }
            if callers != set(grants.DEFINER_FUNCTIONS[signature]):
                wrong.append(f"{signature}: callable by {sorted(callers)}")
    assert {s for _, s in rows} == set(grants.DEFINER_FUNCTIONS)
    assert wrong == []


def test_new_tables_grant_the_application_roles_nothing_by_default(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url) as conn:
        defaults = conn.execute(
            "SELECT d.defaclobjtype::text, a.grantee::regrole::text, a.privilege_type "
            "FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a WHERE a.grantee <> 0"
        ).fetchall()
    assert [d for d in defaults if d[1] in grants.ROLES] == []


@pytest.mark.parametrize("role", [*APP_ROLES, "nexes_monitor"])
@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO deferred_index (name, definition) VALUES ('x', 'CREATE INDEX x ON public.customer (name)')",
        "UPDATE deferred_index SET definition = 'SELECT 1'",
        "INSERT INTO schema_migration (version, name, checksum) VALUES (9999, 'x', 'x')",
        "DELETE FROM schema_migration",
        "INSERT INTO maintenance_flag (name) VALUES ('search_reindex_needed')",
        "DELETE FROM maintenance_flag",
        "TRUNCATE service_order_key",
    ],
)
def test_no_role_writes_what_privileged_commands_run_or_trust(settings: Settings, role: str, statement: str) -> None:
    with (
        psycopg.connect(_direct(settings, role), autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("SET default_transaction_read_only = off")  # the privilege is what is tested
        conn.execute("BEGIN READ WRITE")
        conn.execute(statement)


def test_the_workers_raise_and_clear_the_reindex_flag_through_its_functions_only(settings: Settings) -> None:
    flag = "SELECT count(*) FROM maintenance_flag WHERE name = 'search_reindex_needed'"
    with psycopg.connect(settings.admin_url, autocommit=True) as owner:
        before = owner.execute(flag).fetchone()  # the session's seed raised it: leave it as found
        owner.execute("SELECT search_reindex_done()")
        try:
            with psycopg.connect(_direct(settings, "nexes_worker"), autocommit=True) as worker:
                worker.execute("SELECT search_reindex_ask()")
                assert owner.execute(flag).fetchone() == (1,)
                worker.execute("SELECT search_reindex_done()")
                assert owner.execute(flag).fetchone() == (0,)
        finally:
            if before == (1,):
                owner.execute("SELECT search_reindex_ask()")
        for role in ("nexes_api", "nexes_analyst", "nexes_monitor"):
            with (
                psycopg.connect(_direct(settings, role), autocommit=True) as conn,
                pytest.raises(errors.InsufficientPrivilege),
            ):
                conn.execute("SELECT search_reindex_ask()")


def test_the_monitor_role_is_a_login_with_five_connections_and_only_pg_monitor(settings: Settings) -> None:
    with psycopg.connect(superuser_url(settings.admin_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolconnlimit, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = 'nexes_monitor'"
        ).fetchone()
        memberships = conn.execute(
            "SELECT r.rolname::text FROM pg_auth_members AS m JOIN pg_roles AS r ON r.oid = m.roleid "
            "WHERE m.member = 'nexes_monitor'::regrole"
        ).fetchall()
        owned = conn.execute("SELECT count(*) FROM pg_class WHERE relowner = 'nexes_monitor'::regrole").fetchone()
    assert row == (True, 5, False, False, False, False, False)
    assert memberships == [("pg_monitor",)]
    assert owned == (0,)


def test_the_monitor_probes_the_primary_and_the_replica_and_reads_no_data(settings: Settings) -> None:
    assert settings.monitor_url and settings.monitor_replica_urls
    with psycopg.connect(settings.monitor_url, autocommit=True) as conn:
        (user,) = conn.execute("SELECT current_user").fetchone() or ("",)
        assert user == "nexes_monitor"
        # pg_monitor: other roles' activity and the replication state in full.
        senders = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sent_lsn IS NOT NULL").fetchone()
        assert senders is not None and senders[0] >= 1
        conn.execute("SELECT coalesce(max(version), 0) FROM schema_migration")  # health's version check
        for query in ("SELECT 1 FROM service_order LIMIT 1", "SELECT 1 FROM customer LIMIT 1"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(query)
    for url in settings.monitor_replica_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_user, pg_is_in_recovery(), pg_last_wal_replay_lsn() IS NOT NULL"
            ).fetchone()
            assert row == ("nexes_monitor", True, True)


def test_an_injected_deferred_index_row_is_refused_and_never_run(fresh_db: Settings) -> None:
    # Only the owner can write the table now (test above); the refusal is the second wall.
    evil = "CREATE INDEX evil ON public.service_order USING btree (id); DROP TABLE stat_drift"
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        conn.execute("INSERT INTO deferred_index (name, definition) VALUES ('evil', %s)", [evil])
        with pytest.raises(MigrationError, match=r"deferred_index row 'evil' is not an index definition"):
            migrate(fresh_db)
        assert conn.execute("SELECT to_regclass('stat_drift') IS NOT NULL, to_regclass('evil')").fetchone() == (
            True,
            None,
        )
        assert conn.execute("SELECT count(*) FROM deferred_index").fetchone() == (1,)  # left for a person to look at


@pytest.mark.parametrize(
    "definition",
    [
        "CREATE INDEX evil ON public.service_order USING btree ((pg_sleep(1)))",  # an expression runs code
        "CREATE INDEX evil ON public.customer USING btree (name)",  # not a table the seed defers
        "CREATE INDEX other ON public.service_order USING btree (id)",  # not the row's own name
        "CREATE INDEX evil ON public.service_order USING btree (id) WHERE (pg_sleep(1) IS NOT NULL)",
    ],
)
def test_deferred_index_rows_of_any_other_shape_are_refused(fresh_db: Settings, definition: str) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        conn.execute("INSERT INTO deferred_index (name, definition) VALUES ('evil', %s)", [definition])
    with pytest.raises(MigrationError, match="nothing was run"):
        migrate(fresh_db)


def test_the_readme_shows_the_declared_matrix() -> None:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Database roles and grants$(.*?)(?=^## )", text, re.S | re.M)
    assert section is not None, "README.md has no 'Database roles and grants' section"
    assert grants.render() in section[1]


async def test_an_analyst_asking_for_an_import_job_by_node_gets_null_not_an_error(settings: Settings) -> None:
    # Analyst-only reads run as nexes_analyst, which may not read import_job at all.
    query = "query($id: ID!) { node(id: $id) { id } }"
    async with client_for(settings, roles=("analyst",), subject="an-analyst") as client:
        answer = await client.post("/graphql", json={"query": query, "variables": {"id": global_id("ImportJob", 1)}})
    assert answer.status_code == 200
    body = answer.json()
    assert body["data"] == {"node": None} and "errors" not in body
