"""The indexes of migration 0010: the history's since/until, dataset + status and file-name
listings read them (benchmarks/web_service.py measures how much that matters)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import dbapi, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.tracking import history

INDEXES = {
    "ix_import_history_created_at",
    "ix_import_history_dataset_status",
    "ix_import_history_file_name",
}
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _indexes(db: Database) -> set[str]:
    found = sa.inspect(db.engine).get_indexes("import_history", schema=db.schema)
    return {str(i["name"]) for i in found}


def _fill(db: Database, count: int) -> None:
    """``count`` imports, one every two hours from START, over four datasets and statuses."""
    rows = [
        {
            "dataset": ("payments", "signups", "flights", "orders")[n % 4],
            "target_table": "t",
            "import_type": "DROP",
            "source": "inbox",
            "status": ("success", "failed", "partial", "success")[n // 4 % 4],
            "file_name": f"file_{n:05d}.csv",
            "created_at": START + dt.timedelta(hours=2 * n),
        }
        for n in range(count)
    ]
    with db.engine.begin() as conn:
        conn.execute(sa.insert(db.tables.import_history), rows)
    with db.engine.connect() as conn:
        statement = "VACUUM ANALYZE" if db.dialect == "postgresql" else "ANALYZE"
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(statement)


def _plan_of(db: Database, sql: str, params: list[object]) -> str:
    """The plan of a query as the history runs it (DB-API, ``?`` placeholders)."""
    prefix = "EXPLAIN QUERY PLAN " if db.dialect == "sqlite" else "EXPLAIN "
    with db.raw_reader() as s:
        return "\n".join(str(r[-1]) for r in s.rows(prefix + sql, params))


def test_migration_0010_adds_and_removes_the_listing_indexes(db: Database) -> None:
    _fill(db, 10)
    assert _indexes(db) >= INDEXES
    migrations.downgrade(db, "0008")
    assert _indexes(db) & INDEXES == set()
    migrations.upgrade(db)
    assert _indexes(db) >= INDEXES
    page = history.list_imports(db, history.HistoryFilter(file="file_0000"), sort="file_name")
    assert [r["file_name"] for r in page["imports"]] == [f"file_{n:05d}.csv" for n in range(10)]


def test_since_until_and_dataset_status_counts_read_their_indexes(db: Database) -> None:
    _fill(db, 4000)
    week = history.HistoryFilter(
        since=START + dt.timedelta(days=100), until=START + dt.timedelta(days=107)
    )
    both = history.HistoryFilter(dataset="payments", status="failed")
    for filters, index, expected in (
        (week, "ix_import_history_created_at", 84),
        (both, "ix_import_history_dataset_status", 250),
    ):
        where, params = filters.where(db.dialect)
        with db.raw_reader() as s:
            table = s.table("import_history")
        assert index in _plan_of(db, f"SELECT count(*) FROM {table}{where}", params)
        assert history.list_imports(db, filters, limit=1)["total_count"] == expected


def test_the_newest_first_listing_reads_the_primary_key_in_order(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing's own query, newest first: no NULLS LAST on a NOT NULL column, so
    PostgreSQL reads the page off the primary key instead of sorting every row."""
    _fill(db, 4000)
    ran: list[tuple[str, list[object]]] = []
    records = dbapi.ReadSession.records

    def spy(self: dbapi.ReadSession, sql: str, params: Any = (), *rest: Any) -> Any:
        ran.append((sql, list(params)))
        return records(self, sql, params, *rest)

    monkeypatch.setattr(dbapi.ReadSession, "records", spy)
    page = history.list_imports(db, limit=2)
    assert [r["import_id"] for r in page["imports"]] == [4000, 3999]
    ((sql, params),) = ran
    plan = _plan_of(db, sql, params)
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_sorting_by_file_name_reads_its_index(db: Database) -> None:
    _fill(db, 4000)
    with db.raw_reader() as s:
        table = s.table("import_history")
    # the listing's own order: file_name may be NULL, so NULLS LAST
    query = (
        f'SELECT "import_id" FROM {table} '
        'ORDER BY "file_name" ASC NULLS LAST, "import_id" DESC LIMIT 50'
    )
    assert "ix_import_history_file_name" in _plan_of(db, query, [])
    page = history.list_imports(db, sort="file_name", limit=3)
    assert [r["file_name"] for r in page["imports"]] == [
        "file_00000.csv",
        "file_00001.csv",
        "file_00002.csv",
    ]
