"""The read queries over plain DB-API (``engine.dbapi``) return what SQLAlchemy wrote, with the
types SQLAlchemy's own reading gives, through a ``Database`` and through the light ``Reader``
alike, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import dbapi
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.dbapi import Reader
from histimport_pipeline.engine.pipeline import run_import
from histimport_pipeline.engine.schema import tracking_tables
from histimport_pipeline.engine.tracking import columns, history
from histimport_pipeline_tests.helpers import make_spec, write

#: Two good rows, one bad e-mail (a failed row), one bad date.
CSV = (
    "signup_id,email,signed_up,amount,note\n"
    "1,a@example.com,2024-01-02,1.50,x\n"
    "2,not-an-email,2024-01-03,2.00,y\n"
    "3,c@example.com,31/12/2023,3.25,z\n"
    "4,d@example.com,not-a-date,4.00,\n"
)


def _kind(column: sa.Column[Any]) -> str:
    for sa_type, kind in (
        (sa.DateTime, "datetime"),
        (sa.Date, "date"),
        (sa.JSON, "json"),
        (sa.Boolean, "bool"),
    ):
        if isinstance(column.type, sa_type):
            return kind
    return ""


@pytest.mark.parametrize(
    ("table", "listed"),
    [
        ("import_history", columns.IMPORT_HISTORY),
        ("processed_files", columns.PROCESSED_FILES),
        ("import_audit_trail", columns.AUDIT_TRAIL),
    ],
)
def test_the_column_lists_are_the_schemas(table: str, listed: tuple[str, ...]) -> None:
    defined = getattr(tracking_tables(None), table)
    assert listed == tuple(c.name for c in defined.c)
    assert columns.kinds(listed) == {c.name: _kind(c) for c in defined.c}


def test_the_not_null_columns_are_the_schemas() -> None:
    defined = tracking_tables(None).import_history
    assert {c.name for c in defined.c if not c.nullable} == columns.IMPORT_HISTORY_NOT_NULL


def _typed(value: Any) -> Any:
    """``value`` with the type of every part spelled out (``True == 1`` would pass)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@pytest.fixture
def recorded(db: Database, tmp_path: Path) -> int:
    """An import with failed rows, audit entries, its processed file, schema drift from a
    first import and reconciliation matches; every column of its history row filled."""
    spec = make_spec()
    run_import(db, spec, write(tmp_path / "signups_1.csv", "signup_id,email\n9,z@example.com\n"))
    result = run_import(db, spec, write(tmp_path / "signups_2.csv", CSV))
    h = db.tables.import_history
    matches = db.tables.import_reconciliation_matches
    stamp = dt.datetime(2024, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC)
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(h)
            .where(h.c.import_id == result.import_id)
            .values(
                business_date=dt.date(2024, 1, 31),
                partition_key="2024-01-31",
                dagster_run_id="run-1",
                forced=True,
                header_present=False,
                retry_of=1,
                corrects_import_id=1,
                superseded_by=1,
                triggered_by="sensor",
                user_id="alice",
                user_email="alice@example.com",
                worker="host:1",
                heartbeat_at=stamp,
                archived_at=stamp,
                progress_updated_at=stamp,
                rows_done=4,
                rows_expected=4,
                progress_percent=100.0,
                master_rows_created=0,
                master_rows_linked=2,
                error_file_path="/tmp/errors.csv",
                error_message="2 of 4 rows failed",
                rows_review=0,
                file_metadata={"encoding": "utf-8", "delimiter": ","},
                column_mapping={"signup_id": "signup_id"},
                phase_seconds={"parse": 0.25, "load": 1},
            )
        )
        for decision, name in (("accepted", "a"), ("accepted", "b"), ("pending", "c")):
            conn.execute(
                sa.insert(matches).values(
                    import_id=result.import_id,
                    dataset="signups",
                    reference_column="ambassador_id",
                    entity="ambassadors",
                    input_values={"ambassador_name": name},
                    match_type="fuzzy",
                    matched_id="7",
                    score=91.5,
                    candidates=[{"id": "7", "score": 91.5}],
                    decision=decision,
                )
            )
    return result.import_id


def _sa_read(db: Database, table: sa.Table, *where: sa.ColumnElement[bool]) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        found = conn.execute(sa.select(table).where(*where)).mappings()
        return [history.plain_row(r) for r in found]


def test_detail_is_what_sqlalchemy_reads_through_a_database_and_the_reader(
    db: Database, db_url: str, recorded: int
) -> None:
    tables = db.tables
    h, audit = tables.import_history, tables.import_audit_trail
    (expected,) = _sa_read(db, h, h.c.import_id == recorded)
    assert not [name for name, value in expected.items() if value is None]  # every column set
    trail = _sa_read(db, audit, audit.c.import_id == recorded)
    files = tables.processed_files
    (processed,) = _sa_read(db, files, files.c.sha256 == expected["file_sha256"])
    reader = Reader.from_url(db_url, db.schema or "histimport")
    assert reader is not None and reader.dialect == db.dialect

    for source in (db, reader):
        detail = history.get_import_detail(source, recorded)
        row = {name: detail[name] for name in columns.IMPORT_HISTORY}
        assert list(detail)[: len(row)] == list(columns.IMPORT_HISTORY)
        assert _typed(row) == _typed(expected)
        assert detail["header_present"] is False and detail["forced"] is True
        assert detail["business_date"] == dt.date(2024, 1, 31)
        assert detail["archived_at"] == dt.datetime(2024, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC)
        assert detail["schema_drift"]["previous_import_id"] == 1
        assert detail["failed_rows"]["total"] == 2
        assert detail["failed_rows"]["by_category"] == {
            c: n for c, n in sorted(detail["failed_rows"]["by_category"].items())
        }
        assert detail["reconciliation"] == {"accepted": 2, "pending": 1}
        assert _typed(detail["processed_file"]) == _typed(processed)
        assert len(detail["audit_trail"]) == len(trail) >= 2
        for entry, written in zip(detail["audit_trail"], trail, strict=True):
            assert _typed(entry) == _typed({k: written[k] for k in entry})
    assert _typed(history.get_import_detail(reader, recorded)) == _typed(
        history.get_import_detail(db, recorded)
    )


def test_listing_progress_and_stats_agree_through_a_database_and_the_reader(
    db: Database, db_url: str, recorded: int
) -> None:
    reader = Reader.from_url(db_url, db.schema or "histimport")
    assert reader is not None
    # The file filter's _ is a literal underscore, and any case matches.
    filters = history.HistoryFilter(file="S_2", user="alice")
    by_db = history.list_imports(db, filters, sort="business_date")
    assert [r["import_id"] for r in by_db["imports"]] == [recorded]
    assert by_db["total_count"] == 1
    assert history.list_imports(db, history.HistoryFilter(file="s%2"))["total_count"] == 0
    assert _typed(history.list_imports(reader, filters, sort="business_date")) == _typed(by_db)
    every = history.list_imports(db, sort="-business_date")
    assert [r["import_id"] for r in every["imports"]] == [recorded, 1]  # NULL last
    assert _typed(history.list_imports(reader, sort="-business_date")) == _typed(every)
    created = history.get_import_detail(reader, recorded)["created_at"]
    for source in (db, reader):
        at = history.list_imports(source, history.HistoryFilter(since=created))
        assert recorded in [r["import_id"] for r in at["imports"]]
        after = history.HistoryFilter(since=created + dt.timedelta(microseconds=1))
        assert recorded not in [
            r["import_id"] for r in history.list_imports(source, after)["imports"]
        ]
        before = history.HistoryFilter(until=created)
        assert recorded not in [
            r["import_id"] for r in history.list_imports(source, before)["imports"]
        ]
    progress = history.import_progress(reader, recorded)
    assert progress["progress_percent"] == 100.0 and progress["rows_done"] == 4
    assert _typed(progress) == _typed(history.import_progress(db, recorded))
    now = dt.datetime.now(dt.UTC)
    figures = history.stats(db, table="signups", now=now)
    assert figures["totals"]["imports"] == 2 and figures["totals"]["users"] == ["alice"]
    assert figures["totals"]["by_user"] == {"alice": 1, history.NO_USER: 1}
    assert _typed(history.stats(reader, table="signups", now=now)) == _typed(figures)
    assert history.stats(reader, days=1, now=now + dt.timedelta(days=2))["datasets"] == []
    assert history.stats(reader, days=1, now=now + dt.timedelta(hours=1))["totals"]["imports"] == 2


def test_the_reader_takes_the_urls_the_settings_hold(tmp_path: Path) -> None:
    parts = dbapi.parse_url(
        "postgresql+psycopg://us%40er:p%3Aw@db.example:6543/hist?sslmode=require"
    )
    assert parts is not None
    assert (parts.username, parts.password, parts.host, parts.port, parts.database) == (
        "us@er",
        "p:w",
        "db.example",
        6543,
        "hist",
    )
    assert "p:w" not in repr(parts)
    pg = Reader.from_url("postgresql://u:pw@h/d?sslmode=require", "track")
    assert pg is not None and (pg.dialect, pg.schema) == ("postgresql", "track")
    assert dict(pg.connect_args) == {
        "user": "u",
        "password": "pw",
        "host": "h",
        "dbname": "d",
        "sslmode": "require",
    }
    assert pg.masked_url == "postgresql+psycopg://u:***@h/d?sslmode=require"
    assert "pw" not in repr(pg)
    missing = tmp_path / "none.db"
    assert Reader.from_url(f"sqlite:///{missing}", "x") is None  # to be created and migrated
    missing.write_bytes(b"")
    found = Reader.from_url(f"sqlite:///{missing}", "x")
    assert found is not None and (found.dialect, found.schema) == ("sqlite", None)
    for other in (
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{missing}?timeout=5",
        "postgresql+psycopg2://u@h/d",
        "postgresql://u@/d?host=a&host=b",
        "mysql://u@h/d",
        "postgresql://u@h:port/d",
    ):
        assert Reader.from_url(other, "x") is None, other
