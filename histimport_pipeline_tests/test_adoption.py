"""Adopting an existing table: the plan, --apply, --undo, imports of every strategy into it
with exact rollback, lineage of the rows that predate histimport (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import adoption
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import AdoptionError, AdoptionRefusedError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import lineage
from histimport_pipeline_tests.helpers import SIGNUPS, table_checksum, write
from histimport_pipeline_tests.test_cli import cli_runner

ROWS = 10_000
TABLE = "daily_summary"


def summary_raw(**overrides: Any) -> dict[str, Any]:
    """The spec of the table that predates histimport (as YAML would give it)."""
    columns = {**SIGNUPS["columns"]}
    columns["signup_id"] = {**columns["signup_id"], "max_length": 20}
    columns["note"] = {"type": "string"}
    raw = {**SIGNUPS, "name": "summary", "target_table": TABLE, "files": "summary_*.csv"}
    return {**raw, "columns": columns, **overrides}


def summary_spec(**overrides: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(summary_raw(**overrides))


def create_production_table(db: Database, extra: str = "", rows: int = ROWS) -> None:
    """A table that predates histimport: its own columns beyond the spec's (``region`` NOT
    NULL with a default, ``score`` a float), ``rows`` rows."""
    real = "DOUBLE PRECISION" if db.dialect == "postgresql" else "REAL"
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {TABLE} (signup_id VARCHAR(20) NOT NULL, email TEXT NOT NULL, "
            "signed_up DATE, amount NUMERIC(12, 2), note TEXT, "
            f"region TEXT NOT NULL DEFAULT 'eu', score {real}{extra})"
        )
        table = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
        conn.execute(
            sa.insert(table),
            [
                {
                    "signup_id": f"{i:06d}",
                    "email": f"user{i}@example.com",
                    "signed_up": dt.date(2020, 1, 1) + dt.timedelta(days=i % 1000),
                    "amount": Decimal(i) / 100,
                    "note": None if i % 7 else f"note {i}",
                    "region": "us" if i % 3 else "eu",
                    "score": i / 3,
                }
                for i in range(rows)
            ],
        )


def catalog(db: Database, table: str = TABLE) -> dict[str, Any]:
    """The table's definition as the database's catalog holds it: columns, indexes,
    constraints, triggers and histimport's trigger functions."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            queries = {
                "columns": "SELECT column_name, data_type, is_nullable, column_default, "
                "character_maximum_length, numeric_precision, numeric_scale, ordinal_position "
                "FROM information_schema.columns WHERE table_name = :t ORDER BY ordinal_position",
                "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t "
                "ORDER BY indexname",
                "constraints": "SELECT conname, contype, pg_get_constraintdef(oid) FROM "
                "pg_constraint WHERE conrelid = CAST(:t AS regclass) ORDER BY conname",
                "triggers": "SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
                "AND NOT tgisinternal ORDER BY tgname",
                "functions": "SELECT proname FROM pg_proc WHERE proname LIKE 'histimport%'",
            }
        else:
            queries = {
                "master": "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = :t "
                "ORDER BY type, name",
                "columns": "SELECT * FROM pragma_table_xinfo(:t)",
                "indexes": "SELECT * FROM pragma_index_list(:t) ORDER BY name",
            }
        return {
            k: [tuple(r) for r in conn.execute(sa.text(q), {"t": table})]
            for k, q in queries.items()
        }


def summary_file(tmp_path: Path, name: str, lines: list[str]) -> Path:
    return write(tmp_path / name, "ID,email,signed_up,amount,note\n" + "".join(lines))


def row_of(db: Database, key: str) -> dict[str, Any]:
    t = sa.Table(TABLE, sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.signup_id == key)).mappings().one())


def adopt(db: Database, spec: DatasetSpec) -> adoption.AdoptionRecord:
    plan = adoption.plan_adoption(db, spec)
    assert plan.ready, plan.problems
    return adoption.apply_adoption(db, spec, plan, actor="tester")


def test_plan_prints_the_ddl_and_changes_nothing(db: Database) -> None:
    create_production_table(db)
    before = catalog(db)
    plan = adoption.plan_adoption(db, summary_spec())
    assert plan.ready and plan.rows == ROWS and not plan.problems
    ddl = "\n".join(plan.statements)
    for column in ("_import_id", "_source_row", "_loaded_at", "last_updated"):
        assert f"ADD COLUMN {column} " in ddl
    assert "CREATE UNIQUE INDEX" in ddl and "(signup_id)" in ddl
    assert "(_import_id)" in ddl
    trigger = "BEFORE UPDATE" if db.dialect == "postgresql" else "AFTER UPDATE"
    assert trigger in ddl
    assert plan.statements[0].startswith("CREATE UNIQUE INDEX")  # before any ACCESS EXCLUSIVE
    # One undo per statement; PostgreSQL's _loaded_at default and trigger function go with
    # their column and trigger.
    assert len(plan.undo) == len(plan.statements) - (1 if db.dialect == "postgresql" else 0)
    assert catalog(db) == before  # planning is read-only


def test_apply_records_and_undo_restores_the_definition(db: Database) -> None:
    create_production_table(db)
    before, checksum = catalog(db), table_checksum(db, TABLE)
    spec = summary_spec()
    record = adopt(db, spec)
    assert (record.adopted_by, record.rows_before, record.status.value) == (
        "tester",
        ROWS,
        "applied",
    )
    assert record.ddl and record.undo_ddl
    after = catalog(db)
    assert after != before
    loaded = row_of(db, "000001")
    assert loaded["_import_id"] is None and loaded["_source_row"] is None
    assert loaded["region"] == "us"
    assert adoption.plan_adoption(db, spec).adoption_id == record.adoption_id
    with pytest.raises(AdoptionError, match="adopted already"):
        adoption.apply_adoption(db, spec, adoption.plan_adoption(db, spec))

    undone = adoption.undo_adoption(db, spec, actor="undoer")
    assert (undone.status.value, undone.undone_by) == ("undone", "undoer")
    assert catalog(db) == before
    assert table_checksum(db, TABLE) == checksum
    with pytest.raises(AdoptionError, match="not adopted"):
        adoption.undo_adoption(db, spec)
    # It can be adopted again after an undo.
    assert adoption.plan_adoption(db, spec).ready


def test_repeated_keys_are_refused_with_their_values(db: Database) -> None:
    create_production_table(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} (signup_id, email) VALUES ('000042', 'again@example.com'), "
            "('000042', 'third@example.com'), ('000077', 'x@example.com')"
        )
    before = catalog(db)
    plan = adoption.plan_adoption(db, summary_spec())
    assert not plan.ready
    [problem] = plan.problems
    assert "repeats in 2 value(s)" in problem
    assert "signup_id=000042 (3 rows)" in problem and "signup_id=000077 (2 rows)" in problem
    with pytest.raises(AdoptionRefusedError, match="000042"):
        adoption.apply_adoption(db, summary_spec(), plan)
    assert catalog(db) == before


def test_unfilled_not_null_column_and_type_mismatches_are_reported(db: Database) -> None:
    create_production_table(db, extra=", batch TEXT NOT NULL DEFAULT 'b'", rows=10)
    # A second table whose extra column has no default, and whose types differ from the spec.
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE legacy (signup_id TEXT NOT NULL, email TEXT NOT NULL, "
            "signed_up INTEGER, amount TEXT, note TEXT NOT NULL, batch TEXT NOT NULL, "
            "_loaded_at TEXT)"
        )
    spec = summary_spec(target_table="legacy")
    problems = adoption.plan_adoption(db, spec).problems
    text = "\n".join(problems)
    assert "column 'batch' is NOT NULL without a default and the spec does not fill it" in text
    assert "column 'signed_up' is INTEGER in the table" in text and "`integer`" in text
    assert "column 'amount' is TEXT in the table" in text and "`string`" in text
    assert "column 'note' is NOT NULL in the table but optional in the spec" in text
    assert "column '_loaded_at' of its own, a name histimport writes: rename it" in text
    assert len(problems) == 5
    # The 10-row table's NOT NULL column has a default: imports leave it to the default.
    assert adoption.plan_adoption(db, summary_spec()).ready


def test_append_into_adopted_table_skips_existing_keys_and_rolls_back(
    db: Database, tmp_path: Path
) -> None:
    create_production_table(db)
    spec = summary_spec(strategy="append")
    adopt(db, spec)
    before = table_checksum(db, TABLE)
    path = summary_file(
        tmp_path,
        "summary_1.csv",
        ["000005,changed@example.com,,1,x\n", "900001,new@example.com,2024-05-01,2.50,n\n"],
    )
    result = run_import(db, spec, path, ImportOptions(user_id="tester"))
    # A skipped duplicate makes the import partial, as for tables histimport made.
    assert result.status is ImportStatus.PARTIAL, result.error_message
    assert (result.rows_created, result.rows_duplicate) == (1, 1)
    assert row_of(db, "000005")["email"] == "user5@example.com"  # skipped, not changed
    with db.engine.connect() as conn:
        failed = db.tables.import_failed_rows
        [(category, message)] = conn.execute(
            sa.select(failed.c.category, failed.c.message).where(
                failed.c.import_id == result.import_id
            )
        ).all()
    assert category == "duplicate"
    assert message == (
        "key signup_id=000005 is already in daily_summary (a row that predates histimport); "
        "the row was skipped"
    )
    new = row_of(db, "900001")
    assert (new["region"], new["score"], new["_import_id"]) == ("eu", None, result.import_id)
    found = lineage.lineage(db, TABLE)
    assert found["rows_without_import"] == ROWS and found["total_rows"] == 1
    assert lineage.lineage_of_key(db, spec, {"signup_id": "000005"})["import_id"] is None

    rollback_import(db, result.import_id)
    assert table_checksum(db, TABLE) == before


def test_upsert_updates_pre_existing_rows_and_rollback_restores_them(
    db: Database, tmp_path: Path
) -> None:
    # An identity column of its own (PostgreSQL) comes back with its value on rollback.
    own = "BIGINT GENERATED ALWAYS AS IDENTITY" if db.dialect == "postgresql" else "INTEGER"
    create_production_table(db, extra=f", row_no {own}")
    original = catalog(db)
    spec = summary_spec(strategy="upsert")
    adopt(db, spec)
    before = table_checksum(db, TABLE)
    old = row_of(db, "000010")
    path = summary_file(
        tmp_path,
        "summary_2.csv",
        [
            "000010,moved@example.com,2024-02-02,99.99,updated\n",
            # As it is already: unchanged.
            f"000011,user11@example.com,{old['signed_up'] + dt.timedelta(days=1)},0.11,\n",
            "900002,new@example.com,,1,\n",
        ],
    )
    result = run_import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert (result.rows_created, result.rows_updated, result.rows_unchanged) == (1, 1, 1)
    changed = row_of(db, "000010")
    assert changed["email"] == "moved@example.com" and changed["amount"] == Decimal("99.99")
    # Columns the spec does not name keep their values; the trigger stamps last_updated.
    assert (changed["region"], changed["score"]) == (old["region"], old["score"])
    assert old["last_updated"] is None and changed["last_updated"] is not None
    assert row_of(db, "000011")["last_updated"] is None  # unchanged: not updated at all
    assert changed["_import_id"] == result.import_id
    assert lineage.lineage(db, TABLE)["rows_without_import"] == ROWS - 1

    rollback_import(db, result.import_id)
    assert table_checksum(db, TABLE) == before
    assert row_of(db, "000010") == old
    adoption.undo_adoption(db, spec)
    assert catalog(db) == original


def test_replace_date_into_adopted_table_and_rollback(db: Database, tmp_path: Path) -> None:
    create_production_table(db)
    original = catalog(db)
    spec = summary_spec(strategy="replace_date", partitioning="daily")
    adopt(db, spec)
    checksums = [table_checksum(db, TABLE)]
    day = "summary_2024-03-01.csv"
    first = run_import(
        db,
        spec,
        summary_file(tmp_path, day, ["900010,a@example.com,,1,\n", "900011,b@x.org,,2,\n"]),
    )
    assert first.rows_created == 2, first.error_message
    checksums.append(table_checksum(db, TABLE))
    again = tmp_path / "again"
    again.mkdir()
    second = run_import(db, spec, summary_file(again, day, ["900012,c@example.com,,3,\n"]))
    assert second.status is ImportStatus.SUCCESS, second.error_message
    t = sa.Table(TABLE, sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        imported = conn.execute(
            sa.select(t.c.signup_id).where(t.c._import_id.is_not(None))
        ).scalars()
        assert sorted(imported) == ["900012"]  # the day replaced; rows that predate it stay
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == ROWS + 1

    rollback_import(db, second.import_id)
    assert table_checksum(db, TABLE) == checksums[1]
    rollback_import(db, first.import_id)
    assert table_checksum(db, TABLE) == checksums[0]
    adoption.undo_adoption(db, spec)
    assert catalog(db) == original


def test_undo_is_refused_while_imported_rows_remain(db: Database, tmp_path: Path) -> None:
    create_production_table(db, rows=20)
    spec = summary_spec()
    adopt(db, spec)
    result = run_import(db, spec, summary_file(tmp_path, "summary_3.csv", ["000003,z@x.org,,1,\n"]))
    assert result.rows_updated == 1
    with pytest.raises(AdoptionError, match=f"holds rows of import\\(s\\) {result.import_id}"):
        adoption.undo_adoption(db, spec)
    assert adoption.adoption_of(db, TABLE) is not None


def test_an_unadopted_table_is_refused_by_imports_with_the_way_out(
    db: Database, tmp_path: Path
) -> None:
    create_production_table(db, rows=3)
    result = run_import(
        db, summary_spec(), summary_file(tmp_path, "summary_4.csv", ["1,a@b.org,,1,\n"])
    )
    assert result.status is ImportStatus.FAILED
    assert "histimport adopt summary" in (result.error_message or "")


def test_cli_prints_the_plan_applies_and_undoes_it(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    create_production_table(db, rows=50)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "summary.yaml").write_text(yaml.safe_dump(summary_raw()))
    run = cli_runner(tmp_path, db_url)
    before = catalog(db)
    shown = run("adopt", "summary").stdout
    assert "adopting table daily_summary (50 rows) for dataset summary" in shown
    assert "ALTER TABLE daily_summary ADD COLUMN _import_id BIGINT;" in shown
    assert "CREATE UNIQUE INDEX ux_daily_summary_key ON daily_summary (signup_id);" in shown
    assert "histimport adopt summary --apply" in shown
    assert catalog(db) == before

    applied = run("adopt", "summary", "--apply", "--user", "ops").stdout
    assert "adopted table daily_summary (adoption 1)" in applied and "ops" in applied
    assert "is adopted (adoption 1)" in run("adopt", "summary").stdout
    assert "50 row(s) predate histimport" in run("lineage", TABLE).stdout
    key = run("lineage", TABLE, "--key", "000001").stdout
    assert "the row predates histimport" in key and "user1@example.com" in key
    record = yaml.safe_load(run("adopt", "summary", "--undo", "--json").stdout)
    assert (record["status"], record["undone_by"] is not None) == ("undone", True)
    assert catalog(db) == before

    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO {TABLE} (signup_id, email) VALUES ('000003', 'x@y.z')")
    refused = run("adopt", "summary", "--apply", code=1)
    assert "signup_id=000003 (2 rows)" in refused.stderr
    assert catalog(db) == before
    failed = run("adopt", "nosuch", code=2)
    assert "no dataset for dataset 'nosuch'" in failed.stderr and "Traceback" not in failed.stderr


def test_keyless_append_into_adopted_table(db: Database, tmp_path: Path) -> None:
    """Without a key, PostgreSQL COPYs the file straight into the table (no staging)."""
    create_production_table(db, rows=100)
    spec = summary_spec(strategy="append", key=[])
    record = adopt(db, spec)
    assert not any("UNIQUE" in s for s in record.ddl)
    before = table_checksum(db, TABLE)
    lines = ["000001,a@example.com,,1,\n", "000001,b@example.com,2024-01-01,2,\n"]
    result = run_import(db, spec, summary_file(tmp_path, "summary_5.csv", lines))
    assert (result.status, result.rows_created) == (ImportStatus.SUCCESS, 2), result.error_message
    assert lineage.lineage(db, TABLE)["rows_without_import"] == 100
    t = sa.Table(TABLE, sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        stamped = conn.execute(
            sa.select(t.c._import_id.is_(None), t.c._loaded_at.is_(None)).distinct()
        ).all()
    assert sorted(stamped) == [(False, False), (True, True)]  # loaded rows carry _loaded_at
    rollback_import(db, result.import_id)
    assert table_checksum(db, TABLE) == before


def test_a_primary_key_on_the_key_is_used_and_the_trigger_finds_the_row(
    db: Database, tmp_path: Path
) -> None:
    """A table keyed already gets no second unique index; on SQLite it is WITHOUT ROWID, so
    the trigger names the row by its primary key."""
    without_rowid = " WITHOUT ROWID" if db.dialect == "sqlite" else ""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE keyed (signup_id TEXT PRIMARY KEY, email TEXT NOT NULL, "
            f"signed_up DATE, amount NUMERIC(12, 2), note TEXT){without_rowid}"
        )
        conn.exec_driver_sql("INSERT INTO keyed VALUES ('1', 'a@x.org', NULL, 1, NULL)")
        conn.exec_driver_sql("INSERT INTO keyed VALUES ('2', 'b@x.org', NULL, 2, NULL)")
    spec = summary_spec(target_table="keyed")
    plan = adoption.plan_adoption(db, spec)
    assert plan.notes == ("key (signup_id) is unique in the table already",)
    assert not any("UNIQUE" in s for s in plan.statements)
    adoption.apply_adoption(db, spec, plan)
    before = table_checksum(db, "keyed")
    result = run_import(db, spec, summary_file(tmp_path, "summary_6.csv", ["1,new@x.org,,1,\n"]))
    assert result.rows_updated == 1, result.error_message
    t = sa.Table("keyed", sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        stamps = dict(conn.execute(sa.select(t.c.signup_id, t.c.last_updated)).all())
    assert stamps["1"] is not None and stamps["2"] is None
    rollback_import(db, result.import_id)
    assert table_checksum(db, "keyed") == before
