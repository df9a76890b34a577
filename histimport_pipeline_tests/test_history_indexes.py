"""The indexes of migration 0010: the history's since/until, dataset + status and file-name
listings read them (benchmarks/web_service.py measures how much that matters)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import dbapi, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.tracking import columns, history

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


# Migration 0011: the file-name search, the start-time sort and deep pages ---------------------

INDEXES_0011 = {
    "postgresql": {"ix_import_history_file_name_trgm", "ix_import_history_started_at_desc"},
    "sqlite": {"ix_import_history_import_id"},
}
DATASETS = ("payments", "signups", "flights", "orders")


def _history(db: Database, count: int) -> list[dict[str, Any]]:
    """``count`` imports over a year from START, the way the web service's history looks: ids
    grow with time, file names carry their dates (``flights_2026-03-14.csv``, ``Flights
    20260314.xlsx``), every tenth
    import has no start time yet (pending), start times tie in pairs, a few have no file name.
    Statistics as autovacuum would leave them (PostgreSQL; histimport never runs ANALYZE on
    SQLite, so neither does this). Returns the rows, import ``n + 1`` at index ``n``."""
    step = dt.timedelta(days=365) / count
    rows = []
    for n in range(count):
        created = START + step * n
        dataset = DATASETS[n % 4]
        name = (
            f"{dataset.title()} {created:%Y%m%d}.xlsx"
            if n % 8 < 4
            else f"{dataset}_{created:%Y-%m-%d}.csv"
        )
        rows.append(
            {
                "dataset": dataset,
                "target_table": f"hist_{dataset}",
                "import_type": "DROP",
                "source": "inbox",
                "status": ("success", "failed", "partial", "success")[n // 4 % 4],
                "file_name": None if n % 97 == 0 else name,
                "created_at": created,
                "started_at": None if n % 10 == 9 else START + step * (n - n % 2),
                "rows_failed": None if n % 7 == 0 else n % 13,
                "user_id": f"user{n % 25:02d}" if n % 3 == 0 else None,
            }
        )
    with db.engine.begin() as conn:
        conn.execute(sa.insert(db.tables.import_history), rows)
    if db.dialect == "postgresql":
        with db.engine.connect() as conn:
            # The table by name: a database-wide VACUUM right after the insert may leave the
            # visibility map unset, and index-only scans priced as heap reads.
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f'VACUUM ANALYZE "{db.schema}"."import_history"'
            )
    return rows


def _matching(rows: list[dict[str, Any]], text: str) -> list[int]:
    """The ids of the imports whose file name holds ``text`` (any case), newest first."""
    return [
        n + 1
        for n, row in reversed(list(enumerate(rows)))
        if row["file_name"] and text.lower() in row["file_name"].lower()
    ]


def _explained_listing(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Make every SELECT the history runs show its plan first, in its own transaction (so
    with whatever that set before it); returns the list (sql, plan) it fills."""
    seen: list[tuple[str, str]] = []
    rows = dbapi.ReadSession.rows
    prefix = "EXPLAIN QUERY PLAN " if db.dialect == "sqlite" else "EXPLAIN "

    def explained(self: dbapi.ReadSession, sql: str, params: Any = ()) -> Any:
        if sql.startswith("SELECT") and "import_history" in sql:
            plan = "\n".join(str(r[-1]) for r in rows(self, prefix + sql, params))
            seen.append((sql, plan))
        return rows(self, sql, params)

    monkeypatch.setattr(dbapi.ReadSession, "rows", explained)
    return seen


def _plans(seen: list[tuple[str, str]]) -> dict[str, str]:
    """The plans of one listing's ids query (``page``) and count (the same query when the
    page counts its matches as it reads them)."""
    ids = ('SELECT "import_id" FROM', 'SELECT "import_id", count(*) OVER ()')
    ((sql, page),) = [(q, p) for q, p in seen if q.startswith(ids)]
    if "count(*) OVER ()" in sql:
        return {"page": page, "count": page}
    (count,) = [p for sql, p in seen if sql.startswith("SELECT count(*)")]
    return {"page": page, "count": count}


def _one_query_page(
    db: Database, filters: history.HistoryFilter, sort: str, limit: int, offset: int
) -> list[dict[str, Any]]:
    """The page as the listing read it before 0011: one query, LIMIT and OFFSET on whole
    rows (the reference the ids-first listing must equal)."""
    name, descending = history.parse_sort(sort)
    nullable = name not in columns.IMPORT_HISTORY_NOT_NULL
    order = f'"{name}" {"DESC" if descending else "ASC"}{" NULLS LAST" if nullable else ""}'
    if name != "import_id":
        order += ', "import_id" DESC'
    listed = ", ".join(f'"{c}"' for c in history.LIST_COLUMNS)
    with db.raw_reader() as s:
        where, params = filters.where(s.dialect)
        return s.records(
            f"SELECT {listed} FROM {s.table('import_history')}{where} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
            columns.kinds(history.LIST_COLUMNS),
        )


def _trigram_index_def(db: Database) -> str | None:
    with db.engine.connect() as conn:
        found: str | None = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE schemaname = :s AND indexname = :i"),
            {"s": db.schema, "i": history.FILE_NAME_TRIGRAM_INDEX},
        ).scalar()
    return found


def _pg_trgm_available(db: Database) -> bool:
    with db.engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
            ).scalar()
        )


def test_migration_0011_adds_and_removes_its_indexes(db: Database) -> None:
    if db.dialect == "postgresql" and not _pg_trgm_available(db):
        pytest.skip("pg_trgm is not available on this PostgreSQL server (contrib missing)")
    rows = _history(db, 1200)
    ours = INDEXES_0011[db.dialect]
    assert _indexes(db) >= ours
    assert migrations.downgrade(db, "0010") == ["0011"]
    assert _indexes(db) & ours == set()
    assert _indexes(db) >= INDEXES
    migrations.upgrade(db)
    assert _indexes(db) >= ours
    if db.dialect == "postgresql":
        definition = _trigram_index_def(db) or ""
        assert "USING gin (file_name " in definition and "gin_trgm_ops" in definition
    page = history.list_imports(db, history.HistoryFilter(file="FLIGHTS_2026-01"), limit=500)
    expected = _matching(rows, "flights_2026-01")
    assert len(expected) > 10
    assert [r["import_id"] for r in page["imports"]] == expected
    assert page["total_count"] == len(expected)


def test_the_file_name_search_reads_the_trigram_index(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search's own count and page, as the listing runs them: both find the matches in
    the trigram index (left to itself the planner reads the whole file-name index for the
    count and the primary key from the newest import for the page, though these files are
    all months old)."""
    if not _pg_trgm_available(pg_db):
        pytest.skip("pg_trgm is not available on this PostgreSQL server (contrib missing)")
    rows = _history(pg_db, 20_000)
    seen = _explained_listing(pg_db, monkeypatch)
    page = history.list_imports(pg_db, history.HistoryFilter(file="Flights_2026-0"))
    plans = _plans(seen)
    for which in ("page", "count"):
        assert history.FILE_NAME_TRIGRAM_INDEX in plans[which], plans[which]
    expected = _matching(rows, "flights_2026-0")
    assert page["total_count"] == len(expected) > 1000
    assert [r["import_id"] for r in page["imports"]] == expected[:50]
    seen.clear()
    none = history.list_imports(pg_db, history.HistoryFilter(file="flights_1999"))
    assert history.FILE_NAME_TRIGRAM_INDEX in _plans(seen)["page"]
    assert none["imports"] == [] and none["total_count"] == 0


@pytest.mark.parametrize("order", ["-started_at", "started_at"])
def test_sorting_by_start_time_reads_an_index_in_order(
    db: Database, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Newest started first (``started_at DESC NULLS LAST, import_id DESC``) reads 0011's
    index on PostgreSQL, SQLite's plain started_at index backwards (its DESC puts NULL
    last already). Oldest first (``ASC NULLS LAST, import_id DESC``) cannot read 0011's
    index backwards (that gives NULLS FIRST and ids ascending); the started_at index serves
    it, ties sorted as they come (PostgreSQL's incremental sort), no full sort."""
    rows = _history(db, 4000)
    seen = _explained_listing(db, monkeypatch)
    page = history.list_imports(db, sort=order, limit=5)
    plan = _plans(seen)["page"]
    if db.dialect == "postgresql":
        index = "_started_at_desc on" if order[0] == "-" else "ix_import_history_started_at on"
        assert index in plan and "Seq Scan" not in plan, plan
        if order[0] == "-":
            assert "Sort" not in plan, plan
    else:
        assert "ix_import_history_started_at" in plan, plan
        assert "SCAN import_history" not in plan.splitlines(), plan
    started = sorted(
        ((row["started_at"], n + 1) for n, row in enumerate(rows) if row["started_at"]),
        key=lambda pair: (pair[0] if order[0] == "-" else -pair[0].timestamp(), pair[1]),
        reverse=True,
    )
    assert [r["import_id"] for r in page["imports"]] == [i for _, i in started[:5]]


def test_a_deep_page_skips_ids_in_an_index_alone(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offset 3,500 of 4,000: the skipped rows are index entries (PostgreSQL: the primary
    key, index-only; SQLite: 0011's import_id index), never whole rows."""
    _history(db, 4000)
    seen = _explained_listing(db, monkeypatch)
    page = history.list_imports(db, offset=3500)
    plan = _plans(seen)["page"]
    if db.dialect == "postgresql":
        assert "Index Only Scan Backward using import_history_pkey" in plan, plan
    else:
        assert "COVERING INDEX ix_import_history_import_id" in plan, plan
    assert [r["import_id"] for r in page["imports"]] == list(range(500, 450, -1))
    assert page["total_count"] == 4000


def test_a_month_on_sqlite_sorts_ids_from_the_created_at_index(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A since/until month, newest first: SQLite finds the month's ids in the created_at
    index and sorts those alone, instead of reading each of its rows in full to sort them.
    (PostgreSQL reads the primary key backwards to the month: cheap, and its choice.)"""
    rows = _history(db, 4000)
    month = history.HistoryFilter(
        since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC), until=dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    )
    seen = _explained_listing(db, monkeypatch)
    page = history.list_imports(db, month)
    plans = _plans(seen)
    if db.dialect == "sqlite":
        for which in ("page", "count"):
            assert "COVERING INDEX ix_import_history_created_at" in plans[which], plans
    expected = [
        n + 1
        for n, row in reversed(list(enumerate(rows)))
        if month.since <= row["created_at"] < month.until  # type: ignore[operator]
    ]
    assert page["total_count"] == len(expected) > 300
    assert [r["import_id"] for r in page["imports"]] == expected[:50]


LISTINGS = [
    (history.HistoryFilter(), "-import_id"),
    (history.HistoryFilter(), "import_id"),
    (history.HistoryFilter(), "-started_at"),
    (history.HistoryFilter(), "started_at"),
    (history.HistoryFilter(), "file_name"),
    (history.HistoryFilter(), "-rows_failed"),
    (history.HistoryFilter(dataset="orders", status="failed"), "-import_id"),
    (history.HistoryFilter(file="2026-0"), "-import_id"),
    (history.HistoryFilter(file="FLIGHTS"), "-file_name"),
    (history.HistoryFilter(user="user07"), "started_at"),
    (
        history.HistoryFilter(
            since=START + dt.timedelta(days=40), until=START + dt.timedelta(days=95)
        ),
        "-started_at",
    ),
]


@pytest.mark.parametrize(("filters", "sort"), LISTINGS)
def test_the_page_equals_one_query_with_limit_and_offset(
    db: Database, filters: history.HistoryFilter, sort: str
) -> None:
    """Ids first, rows after: the same rows in the same order, and the same count, as the
    listing's former single query, at the start, in the middle, at the end and past it;
    ties (start times in pairs) and empty values (NULL start times, file names, counts)
    included."""
    _history(db, 1500)
    with db.raw_reader() as s:
        where, params = filters.where(s.dialect)
        ((total,),) = s.rows(f"SELECT count(*) FROM {s.table('import_history')}{where}", params)
    assert total >= 20
    for limit, offset in ((50, 0), (7, 13), (50, max(0, total - 30)), (50, total), (1200, 0)):
        page = history.list_imports(db, filters, sort=sort, limit=limit, offset=offset)
        assert page["imports"] == _one_query_page(db, filters, sort, limit, offset), (limit, offset)
        assert page["total_count"] == total
        assert (page["limit"], page["offset"]) == (limit, offset)
    assert len(history.list_imports(db, filters, sort=sort, limit=1200)["imports"]) == min(
        total, 1200
    )


@pytest.fixture
def limited_role(pg_admin_url: str, pg_url: str) -> Iterator[str]:
    """The URL of ``pg_url``'s database as a role that owns the schema ``histimport`` there
    (made by an administrator) but may not create anything else in the database: so not
    add an extension either, trusted or not."""
    role = f"r_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    target = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        with target.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA histimport AUTHORIZATION "{role}"')
        yield sa.make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with target.connect() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}" CASCADE')
        target.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_without_the_right_to_add_pg_trgm_the_upgrade_warns_and_goes_on(
    limited_role: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database.connect(limited_role)
    try:
        with caplog.at_level(logging.WARNING, logger="histimport.migrations"):
            migrations.upgrade(db)
        assert migrations.current(db) == migrations.head()
        (warning,) = [r.getMessage() for r in caplog.records if "pg_trgm" in r.getMessage()]
        assert "may not add extensions" in warning and "CREATE EXTENSION pg_trgm" in warning
        assert "still works" in warning
        assert _trigram_index_def(db) is None
        assert "ix_import_history_started_at_desc" in _indexes(db)
        rows = _history(db, 2000)
        seen = _explained_listing(db, monkeypatch)
        page = history.list_imports(db, history.HistoryFilter(file="signups_2026-02"))
        assert history.FILE_NAME_TRIGRAM_INDEX not in _plans(seen)["count"]
        expected = _matching(rows, "signups_2026-02")
        assert [r["import_id"] for r in page["imports"]] == expected[:50]
        assert page["total_count"] == len(expected)
        assert migrations.downgrade(db, "0010") == ["0011"]
        assert "ix_import_history_started_at_desc" not in _indexes(db)
    finally:
        db.dispose()


def test_pg_trgm_in_another_schema_serves_tracking_tables_in_theirs(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_trgm added by an administrator to schema ``ext`` (not on the search path), the
    tracking tables in ``audit``: the index names the operator class with ``ext``."""
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.exec_driver_sql(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
        ).scalar():
            pytest.skip("pg_trgm is not available on this PostgreSQL server (contrib missing)")
        conn.exec_driver_sql("CREATE SCHEMA ext")
        conn.exec_driver_sql("CREATE EXTENSION pg_trgm SCHEMA ext")
    admin.dispose()
    db = Database.connect(pg_url, pg_schema="audit")
    try:
        migrations.upgrade(db)
        definition = _trigram_index_def(db) or ""
        assert "ON audit.import_history USING gin (file_name ext.gin_trgm_ops)" in definition
        rows = _history(db, 20_000)
        seen = _explained_listing(db, monkeypatch)
        page = history.list_imports(db, history.HistoryFilter(file="orders_2026-0"))
        assert history.FILE_NAME_TRIGRAM_INDEX in _plans(seen)["count"]
        assert [r["import_id"] for r in page["imports"]] == _matching(rows, "orders_2026-0")[:50]
        migrations.downgrade(db, "0010")
        assert _trigram_index_def(db) is None
    finally:
        db.dispose()


def test_the_reviewed_sql_adds_0011s_indexes_too(pg_url: str) -> None:
    """``histimport db sql`` (what a DBA reviews and runs): the same two indexes, pg_trgm
    added and looked up by the block itself."""
    import psycopg

    with psycopg.connect(
        sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
        ).fetchone():
            pytest.skip("pg_trgm is not available on this PostgreSQL server (contrib missing)")
        conn.execute(migrations.offline_sql("audit"))
        found = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'audit' "
                "AND tablename = 'import_history'"
            ).fetchall()
        )
    assert "USING gin (file_name gin_trgm_ops)" in found[history.FILE_NAME_TRIGRAM_INDEX]
    assert (
        "(started_at DESC NULLS LAST, import_id DESC)" in found["ix_import_history_started_at_desc"]
    )
