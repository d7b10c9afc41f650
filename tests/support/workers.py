"""Import jobs for real Dramatiq worker processes: their environment, a fresh seeded
database, a file stored as a QUEUED job, the job's state.

The workers, the scheduler and the test use a Redis database of their own (db 7), so no
other worker on the machine can take these messages; recovery is made fast (2 s lease,
1 s sweep, 25 orders per chunk: many small checkpoints, so a kill lands mid-job).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from nexes import settings as settings_module
from nexes.db.seed import seed
from nexes.settings import Settings
from tests.support.databases import TEMPLATE_DB, environ_for, recreate_database

REDIS_DB = 7


def environ(dbname: str) -> dict[str, str]:
    env = environ_for(dbname)
    url = urlsplit(env["NEXES_REDIS_URL"])
    env.update(
        NEXES_REDIS_URL=url._replace(path=f"/{REDIS_DB}").geturl(),
        NEXES_IMPORT_LEASE_SECONDS="2",
        NEXES_IMPORT_SWEEP_SECONDS="1",
        NEXES_IMPORT_CHUNK_ORDERS="25",
        NEXES_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


# Only the ddl worker gets these (nexes.cli.OWNER_VARIABLES); every other worker runs without.
OWNER_VARIABLES = ("NEXES_ADMIN_URL", "NEXES_REPLICA_ADMIN_URLS")


def app_worker_environ(dbname: str) -> dict[str, str]:
    """`environ` without the owner's URLs: an ordinary worker's (nexes_worker only)."""
    return {k: v for k, v in environ(dbname).items() if k not in OWNER_VARIABLES}


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`nexes worker ARGS` (dramatiq nexes.jobs) in a session of its own, logging to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "worker", "--processes", "1", "--threads", "2", *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group (dramatiq's children too), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def fresh(template_settings: Settings, name: str) -> Settings:
    """Database `name` re-created from the template and seeded small (100 orders)."""
    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    settings = settings_module.load(environ(name))
    seed(settings.admin_url, 100, defer=False)
    return settings


def store(settings: Settings, path: Path, request_id: str) -> int:
    """The upload as `nexes import` stores it: chunks, then QUEUED."""
    data = path.read_bytes()
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO import_job (status, filename, size_bytes, request_id) VALUES ('UPLOADING', %s, %s, %s) "
            "RETURNING id",
            [path.name, len(data), request_id],
        ).fetchone()
        assert row
        job_id = int(row[0])
        for seq, start in enumerate(range(0, len(data), 1 << 20)):
            conn.execute(
                "INSERT INTO import_upload_chunk (job_id, seq, data) VALUES (%s, %s, %s)",
                [job_id, seq, data[start : start + (1 << 20)]],
            )
        conn.execute("UPDATE import_job SET status = 'QUEUED' WHERE id = %s", [job_id])
    return job_id


def job_state(settings: Settings, job_id: int) -> tuple[str, int, int, int]:
    """(status, attempts, staged_rows, processed_rows)."""
    with psycopg.connect(settings.admin_url) as conn:
        row = conn.execute(
            "SELECT status::text, attempts, staged_rows, processed_rows FROM import_job WHERE id = %s", [job_id]
        ).fetchone()
    assert row
    return row[0], int(row[1]), int(row[2]), int(row[3])
