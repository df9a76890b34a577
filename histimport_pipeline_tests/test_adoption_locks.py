"""Adoption and the table's readers on PostgreSQL: a real second connection reads during
``--apply``; it is never blocked longer than the adoption transaction, not at all while the
unique index is built, and adoption gives up rather than queue readers behind a long
transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import adoption
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import AdoptionBusyError
from histimport_pipeline_tests.test_adoption import (
    ROWS,
    TABLE,
    catalog,
    create_production_table,
    summary_spec,
)

#: How long the test waits for the reader to show up as waiting on its lock, at most.
STUCK_S = 60.0
COUNT = f"SELECT count(*) FROM {TABLE}"


@pytest.fixture
def reader_engine(pg_db: Database) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_db.engine.url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _waiting_pids(monitor: sa.Connection) -> set[int]:
    rows = monitor.exec_driver_sql("SELECT pid FROM pg_locks WHERE NOT granted").scalars()
    return set(rows)


def test_a_reader_waits_no_longer_than_the_adoption_transaction(
    pg_db: Database, reader_engine: sa.Engine
) -> None:
    create_production_table(pg_db)
    spec = summary_spec()
    plan = adoption.plan_adoption(pg_db, spec)
    seen: dict[str, Any] = {}
    reader = reader_engine.connect()
    reader_pid = reader.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    monitor = reader_engine.connect()

    def read() -> None:
        started = time.monotonic()
        seen["count"] = reader.exec_driver_sql(COUNT).scalar_one()
        seen["read"] = (started, time.monotonic())

    thread = threading.Thread(target=read)

    def during(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("CREATE UNIQUE INDEX"):
            # Building the index holds SHARE: readers are not held up at all.
            with reader_engine.connect() as other:
                other.exec_driver_sql("SET lock_timeout = '50ms'")
                seen["during_index"] = other.exec_driver_sql(COUNT).scalar_one()
        elif statement.startswith("ALTER TABLE") and not thread.is_alive() and "read" not in seen:
            # The table is ACCESS EXCLUSIVE now: a reader arriving waits for the commit.
            thread.start()
            waited_since = time.monotonic()
            while reader_pid not in _waiting_pids(monitor):
                assert thread.is_alive(), "the reader was not blocked by the ALTER TABLE"
                assert time.monotonic() - waited_since < STUCK_S, "the reader never queued"
                time.sleep(0.01)

    sa.event.listen(pg_db.engine, "after_cursor_execute", during)
    try:
        begun = time.monotonic()
        adoption.apply_adoption(pg_db, spec, plan)
        committed = time.monotonic()
    finally:
        sa.event.remove(pg_db.engine, "after_cursor_execute", during)
    thread.join()
    reader.close()
    monitor.close()
    assert seen["during_index"] == ROWS and seen["count"] == ROWS
    read_started, read_ended = seen["read"]
    # The reader was blocked (it queued, see above), but for less than the transaction lasted.
    assert begun <= read_started and read_ended - read_started <= committed - begun
    assert adoption.adoption_of(pg_db, TABLE) is not None


def test_adoption_gives_up_behind_a_long_transaction(
    pg_db: Database, reader_engine: sa.Engine
) -> None:
    create_production_table(pg_db, rows=100)
    spec = summary_spec()
    before = catalog(pg_db)
    plan = adoption.plan_adoption(pg_db, spec)
    with pg_db.engine.connect() as long_reader:
        tx = long_reader.begin()
        long_reader.exec_driver_sql(COUNT)  # holds ACCESS SHARE until it ends
        with pytest.raises(AdoptionBusyError, match="in use by another transaction"):
            adoption.apply_adoption(pg_db, spec, plan, lock_timeout_s=0.2)
        # Meanwhile other readers read on; nothing was changed.
        with reader_engine.connect() as other:
            assert other.exec_driver_sql(COUNT).scalar_one() == 100
        tx.rollback()
    assert catalog(pg_db) == before
    assert adoption.adoption_of(pg_db, TABLE) is None
    assert adoption.apply_adoption(pg_db, spec, plan).rows_before == 100
