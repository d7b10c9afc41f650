"""Retention: finished imports past their days go, with their upload and error rows;
jobs still running or queued stay, whatever their dates."""

from __future__ import annotations

import psycopg

from nexes.db import imports_apply as import_apply
from nexes.settings import Settings


def make_job(conn: psycopg.Connection, status: str, expires: str) -> int:
    row = conn.execute(
        "INSERT INTO import_job (status, expires_at) VALUES (%s, now() + %s::interval) RETURNING id", [status, expires]
    ).fetchone()
    assert row
    job_id = int(row[0])
    conn.execute("INSERT INTO import_upload_chunk (job_id, seq, data) VALUES (%s, 0, 'x')", [job_id])
    conn.execute(
        "INSERT INTO import_error (job_id, row_no, code, message, raw) VALUES (%s, 2, 'BAD_ROW', 'bad', 'raw')",
        [job_id],
    )
    conn.execute("INSERT INTO import_row (job_id, row_no, raw) VALUES (%s, 2, 'raw')", [job_id])
    return job_id


def test_purge_deletes_expired_finished_jobs_with_their_uploads_and_errors(fresh_db: Settings) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        expired = [make_job(conn, status, "-1 day") for status in ("SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED")]
        abandoned_upload = make_job(conn, "UPLOADING", "-1 hour")
        kept = [
            make_job(conn, "SUCCEEDED", "+1 day"),
            make_job(conn, "RUNNING", "-1 day"),
            make_job(conn, "QUEUED", "-1 day"),
        ]
        row = conn.execute(import_apply.PURGE, {"limit": 100}).fetchone()
        assert row == (len(expired) + 1,)
        left = {r[0] for r in conn.execute("SELECT id FROM import_job")}
        assert left == set(kept)
        gone = [*expired, abandoned_upload]
        for table in ("import_upload_chunk", "import_error", "import_row"):
            found = conn.execute(f"SELECT count(*) FROM {table} WHERE job_id = ANY(%s)", [gone]).fetchone()
            assert found == (0,), table
            found = conn.execute(f"SELECT count(*) FROM {table} WHERE job_id = ANY(%s)", [kept]).fetchone()
            assert found == (len(kept),), table
        assert conn.execute(import_apply.PURGE, {"limit": 100}).fetchone() == (0,)


def test_sweep_resends_a_dead_workers_job_once_per_lease_and_cancels_what_was_asked(fresh_db: Settings) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        dead = conn.execute(
            "INSERT INTO import_job (status, lease_owner, lease_until, created_at) "
            "VALUES ('RUNNING', 'gone', now() - interval '1 second', now() - interval '1 minute') RETURNING id"
        ).fetchone()
        alive = conn.execute(
            "INSERT INTO import_job (status, lease_owner, lease_until) "
            "VALUES ('RUNNING', 'w', now() + interval '1 minute') RETURNING id"
        ).fetchone()
        cancel = conn.execute(
            "INSERT INTO import_job (status, lease_owner, lease_until, cancel_requested) "
            "VALUES ('RUNNING', 'gone', now() - interval '1 second', true) RETURNING id"
        ).fetchone()
        stuck = conn.execute(
            "INSERT INTO import_job (status, created_at) VALUES ('QUEUED', now() - interval '10 minutes') RETURNING id"
        ).fetchone()
        assert dead and alive and cancel and stuck
        cancelled = conn.execute(import_apply.SWEEP_CANCEL, {"retention": 30, "actor": "system:scheduler"}).fetchall()
        assert cancelled == [cancel]
        resent = conn.execute(import_apply.SWEEP, {"lease": 20}).fetchall()
        assert sorted(resent) == sorted([dead, stuck])
        assert conn.execute(import_apply.SWEEP, {"lease": 20}).fetchall() == []  # not again within a lease
        status = conn.execute("SELECT status::text FROM import_job WHERE id = %s", cancel).fetchone()
        assert status == ("CANCELLED",)
