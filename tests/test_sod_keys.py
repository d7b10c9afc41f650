"""SOD uniqueness held by the database (migration 0030): every service_order row has its
service_order_key row (same id, SOD number and created_at), a key is never deleted or
truncated while its order exists, and neither side's identity changes. The write paths
(mutations, imports, archive, seed) keep working: their own tests, and the last ones here."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors

from nexes.db.connect.conninfo import for_role
from nexes.settings import Settings
from tests.support.waits import wait_for, wait_for_lock_wait

ORDER = (
    "INSERT INTO service_order (id, created_at, sod_number, customer_id, status, currency, total_amount, updated_at) "
    "VALUES (%(id)s, %(at)s, %(sod)s, %(customer)s, 'OPEN', 'EUR', 0, %(at)s)"
)
KEY = "INSERT INTO service_order_key (sod_number, created_at) VALUES (%s, %s) RETURNING id"


@pytest.fixture
def tx(settings: Settings) -> Iterator[psycopg.Connection]:
    """An owner connection in a transaction that is rolled back: the owner is held too."""
    with psycopg.connect(settings.admin_url) as conn:
        yield conn
        conn.rollback()


def _sod() -> str:
    return f"SODK-{uuid.uuid4().hex[:10]}"


def _customer(conn: psycopg.Connection) -> int:
    code = f"K{uuid.uuid4().hex[:8]}"
    row = conn.execute("INSERT INTO customer (code, name) VALUES (%s, 'Key test') RETURNING id", [code]).fetchone()
    assert row is not None
    return int(row[0])


def _key(conn: psycopg.Connection, sod: str, at: datetime) -> int:
    row = conn.execute(KEY, [sod, at]).fetchone()
    assert row is not None
    return int(row[0])


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_an_order_without_its_key_is_refused(tx: psycopg.Connection) -> None:
    customer, sod = _customer(tx), _sod()
    with pytest.raises(errors.ForeignKeyViolation, match=f"service order {sod} .* has no service_order_key row"):
        tx.execute(ORDER, {"id": 10**15, "at": _now(), "sod": sod, "customer": customer})


@pytest.mark.parametrize("differs", ["created_at", "sod_number", "id"])
def test_an_order_whose_key_differs_in_id_sod_or_created_at_is_refused(tx: psycopg.Connection, differs: str) -> None:
    customer, sod, at = _customer(tx), _sod(), _now()
    key_id = _key(tx, sod, at)
    order = {"id": key_id, "at": at, "sod": sod, "customer": customer}
    if differs == "created_at":
        order["at"] = at - timedelta(seconds=1)
    elif differs == "sod_number":
        _key(tx, order["sod"] + "X", at)  # another key exists under the other number, with another id
        order["sod"] = sod + "X"
    else:
        order["id"] = key_id + 10**12
    with pytest.raises(errors.ForeignKeyViolation):
        tx.execute(ORDER, order)


def test_one_order_without_its_key_fails_the_whole_statement(tx: psycopg.Connection) -> None:
    customer, at = _customer(tx), _now()
    sods = [_sod() for _ in range(3)]
    ids = [_key(tx, sod, at) for sod in sods[:2]]
    rows = [(i, sod) for i, sod in zip([*ids, 10**15], sods, strict=True)]
    with pytest.raises(errors.ForeignKeyViolation, match=sods[2]):
        tx.execute(
            "INSERT INTO service_order (id, created_at, sod_number, customer_id, status, currency, total_amount, "
            "updated_at) SELECT i, %(at)s, s, %(customer)s, 'OPEN', 'EUR', 0, %(at)s "
            "FROM unnest(%(ids)s::bigint[], %(sods)s::text[]) AS r(i, s)",
            {"at": at, "customer": customer, "ids": [r[0] for r in rows], "sods": [r[1] for r in rows]},
        )


def test_orders_with_their_keys_are_inserted_many_in_one_statement(tx: psycopg.Connection) -> None:
    customer, at = _customer(tx), _now()
    sods = [_sod() for _ in range(50)]
    ids = [_key(tx, sod, at) for sod in sods]
    tx.execute(
        "INSERT INTO service_order (id, created_at, sod_number, customer_id, status, currency, total_amount, "
        "updated_at) SELECT i, %(at)s, s, %(customer)s, 'OPEN', 'EUR', 0, %(at)s "
        "FROM unnest(%(ids)s::bigint[], %(sods)s::text[]) AS r(i, s)",
        {"at": at, "customer": customer, "ids": ids, "sods": sods},
    )
    assert tx.execute("SELECT count(*) FROM service_order WHERE sod_number = ANY(%s)", [sods]).fetchone() == (50,)


def test_a_key_cannot_be_deleted_or_truncated_while_its_order_exists(tx: psycopg.Connection) -> None:
    customer, sod, at = _customer(tx), _sod(), _now()
    key_id = _key(tx, sod, at)
    tx.execute(ORDER, {"id": key_id, "at": at, "sod": sod, "customer": customer})
    tx.execute("SAVEPOINT s")
    with pytest.raises(errors.RestrictViolation, match=f"the key of service order {sod} .* cannot be deleted"):
        tx.execute("DELETE FROM service_order_key WHERE sod_number = %s", [sod])
    tx.execute("ROLLBACK TO SAVEPOINT s")
    with pytest.raises(errors.RestrictViolation, match="cannot be truncated while orders exist"):
        tx.execute("TRUNCATE service_order_key CASCADE")


def test_a_key_without_an_order_may_be_deleted(tx: psycopg.Connection) -> None:
    # The write path does it: a rejected new order does not keep the key it just made.
    sod = _sod()
    _key(tx, sod, _now())
    assert tx.execute("DELETE FROM service_order_key WHERE sod_number = %s", [sod]).rowcount == 1


def test_the_key_of_an_archived_order_cannot_be_deleted(tx: psycopg.Connection) -> None:
    customer, sod, at = _customer(tx), _sod(), datetime(2001, 2, 3, tzinfo=UTC)
    # A quarter of the archive of this transaction's own (rolled back with it).
    tx.execute(
        "CREATE TABLE service_order_2001q1_keytest PARTITION OF service_order_archive "
        "FOR VALUES FROM ('2001-01-01 00:00+00') TO ('2001-04-01 00:00+00')"
    )
    key_id = _key(tx, sod, at)
    tx.execute(
        ORDER.replace("INTO service_order ", "INTO service_order_archive "),
        {"id": key_id, "at": at, "sod": sod, "customer": customer},
    )
    with pytest.raises(errors.RestrictViolation, match=sod):
        tx.execute("DELETE FROM service_order_key WHERE id = %s", [key_id])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE service_order SET sod_number = sod_number || 'X' WHERE id = %(id)s",
        "UPDATE service_order SET created_at = created_at - interval '1 second' WHERE id = %(id)s",
        "UPDATE service_order_key SET sod_number = sod_number || 'X' WHERE id = %(id)s",
        "UPDATE service_order_key SET created_at = created_at - interval '1 second' WHERE id = %(id)s",
        "UPDATE service_order_key SET id = id + 1000000000000 WHERE id = %(id)s",
    ],
)
def test_the_identity_of_an_order_and_its_key_never_changes(tx: psycopg.Connection, statement: str) -> None:
    customer, sod, at = _customer(tx), _sod(), _now()
    key_id = _key(tx, sod, at)
    tx.execute(ORDER, {"id": key_id, "at": at, "sod": sod, "customer": customer})
    with pytest.raises(errors.RestrictViolation, match="never change"):
        tx.execute(statement, {"id": key_id})


def test_the_write_paths_updates_of_keys_and_orders_still_pass(tx: psycopg.Connection) -> None:
    customer, sod, at = _customer(tx), _sod(), _now()
    key_id = _key(tx, sod, at)
    tx.execute(ORDER, {"id": key_id, "at": at, "sod": sod, "customer": customer})
    # What order_write.py does to an existing order: bump the key's revision, change the order.
    tx.execute(
        "INSERT INTO service_order_key AS k (sod_number, created_at) VALUES (%s, %s) "
        "ON CONFLICT (sod_number) DO UPDATE SET revision = k.revision + 1",
        [sod, at],
    )
    tx.execute("UPDATE service_order SET status = 'IN_PROGRESS', updated_at = now() WHERE id = %s", [key_id])
    # A SET of the identity to the same value is no change.
    tx.execute("UPDATE service_order_key SET created_at = created_at WHERE id = %s", [key_id])
    row = tx.execute(
        "SELECT k.revision, o.status::text FROM service_order_key AS k JOIN service_order AS o USING (id) "
        "WHERE k.sod_number = %s",
        [sod],
    ).fetchone()
    assert row == (1, "IN_PROGRESS")


def test_a_key_delete_waiting_on_an_order_writer_sees_its_order_and_is_refused(fresh_db: Settings) -> None:
    # The writer locks the key as the write path does (upsert), then inserts the order; a
    # delete of that key waits for the writer's commit, then finds the order and fails.
    # (A database of its own: this test commits.)
    settings = fresh_db
    sod, at = _sod(), _now()
    worker = for_role(settings.admin_url, settings, "nexes_worker")
    with psycopg.connect(settings.admin_url, autocommit=True) as owner:
        customer = _customer(owner)
        key_id = _key(owner, sod, at)  # a committed key without an order yet
        outcome: list[BaseException | None] = []
        pids: list[int] = []

        def delete_key() -> None:
            try:
                with psycopg.connect(worker, autocommit=True) as conn:
                    pids.append(conn.info.backend_pid)
                    conn.execute("DELETE FROM service_order_key WHERE sod_number = %s", [sod])
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

        with psycopg.connect(worker) as writer:
            writer.execute(
                "INSERT INTO service_order_key AS k (sod_number, created_at) VALUES (%s, %s) "
                "ON CONFLICT (sod_number) DO UPDATE SET revision = k.revision + 1",
                [sod, at],
            )
            writer.execute(ORDER, {"id": key_id, "at": at, "sod": sod, "customer": customer})
            deleter = threading.Thread(target=delete_key)
            deleter.start()
            assert wait_for(lambda: pids, timeout=10)
            wait_for_lock_wait(owner, pids[0], "the key's delete never waited for the order's writer")
            writer.commit()
        deleter.join(timeout=10)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.RestrictViolation)
        assert owner.execute("SELECT count(*) FROM service_order_key WHERE sod_number = %s", [sod]).fetchone() == (1,)
