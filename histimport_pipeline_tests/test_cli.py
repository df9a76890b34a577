"""The ``histimport`` CLI, driven in-process against SQLite and PostgreSQL.

Each test points the CLI at a fresh, migrated database and a datasets folder of its own, and
asserts what a user sees: the summary, the exit code, the JSON, the CSV, the table contents.
"""

from __future__ import annotations

import csv
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from histimport_pipeline.cli import app
from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database

SIGNUPS_SPEC = """\
name: signups
target_table: signups
files: "signups_*.csv"
strategy: upsert
key: [signup_id]
max_error_ratio: 0.4
columns:
  signup_id: {type: string, required: true, aliases: ["ID"]}
  email: {type: email, required: true}
  amount: {type: decimal, min: 0, scale: 2}
"""
TRADES_SPEC = """\
name: trades
target_table: trades
files: "trades_*.csv"
strategy: upsert
key: [account, trade_no]
columns:
  account: {type: string, required: true}
  trade_no: {type: integer, required: true}
  qty: {type: integer}
"""
GOOD = "ID,email,amount\n007,a@example.com,1.50\n008,b@example.com,2\n009,c@example.com,3\n"
# Rows 3 and 5 fail (2 of 5 = 40%, at the gate): one formula-looking e-mail, one negative amount.
PARTIAL = (
    "ID,email,amount\n"
    "101,d@example.com,1\n"
    "102,=cmd(),2\n"
    "103,e@example.com,3\n"
    "104,f@example.com,-3\n"
    "105,g@example.com,5\n"
)
BAD = "ID,email,amount\n1,nope,1\n2,nope,2\n3,c@example.com,3\n"

Run = Callable[..., Result]


@pytest.fixture
def run(db: Database, db_url: str, tmp_path: Path) -> Run:
    """Invoke the CLI with this test's environment and check the exit code."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "signups.yaml").write_text(SIGNUPS_SPEC)
    (datasets / "trades.yml").write_text(TRADES_SPEC)
    env = {
        "HISTIMPORT_HOME": str(tmp_path / "home"),
        "HISTIMPORT_DATABASE_URL": db_url,
        "HISTIMPORT_DATASETS": str(datasets),
        "HISTIMPORT_INBOX": str(tmp_path / "inbox"),
        # No COLUMNS: output to a pipe must be wide enough to read without any help.
        "COLUMNS": None,
        "NO_COLOR": "1",
    }
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Result:
        result = runner.invoke(app, list(args), env=env)
        detail = f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        if result.exception and not isinstance(result.exception, SystemExit):
            raise AssertionError(detail) from result.exception
        assert result.exit_code == code, detail
        return result

    return invoke


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def table_rows(db: Database, table: str) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        if not sa.inspect(conn).has_table(table):
            return []
        t = sa.Table(table, sa.MetaData(), autoload_with=conn)
        query = sa.select(t).order_by(*t.primary_key.columns)
        return [dict(r) for r in conn.execute(query).mappings()]


def count(db: Database, table: sa.Table) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_import_prints_a_summary_and_history_records_it(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "signups_1.csv", GOOD)

    first = run("import", str(path))
    assert "import 1: success" in first.stdout
    assert "created 3 | updated 0 | unchanged 0 | failed 0 | duplicates 0" in first.stdout
    assert "seconds" in first.stdout and "load" in first.stdout
    assert "histimport rollback 1" in first.stdout

    again = run("import", str(path))  # same content: a harmless duplicate
    assert "already imported by import 1" in again.stdout

    listed = as_json(run("history", "--json"))
    assert [(r["import_id"], r["status"]) for r in listed] == [(2, "duplicate"), (1, "success")]
    newest_first = listed[1]
    assert newest_first["rows_created"] == 3 and newest_first["rows_in_file"] == 3
    assert newest_first["triggered_by"] == getpass.getuser()
    assert (newest_first["source"], newest_first["import_type"]) == ("cli", "MANUAL")
    assert newest_first["file_name"] == "signups_1.csv"

    assert [r["import_id"] for r in as_json(run("history", "--status", "success", "--json"))] == [1]
    assert as_json(run("history", "--dataset", "trades", "--json")) == []
    assert len(as_json(run("history", "--since", "1d", "--json"))) == 2
    assert as_json(run("history", "--since", "2999-01-01", "--json")) == []
    assert [
        r["import_id"] for r in as_json(run("history", "--limit", "1", "--offset", "1", "--json"))
    ] == [1]
    table = run("history").stdout
    assert "signups_1.csv" in table and "duplicate" in table
    assert "neither a date" in run("history", "--since", "soon", code=2).stderr


def test_show_has_everything_recorded(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", PARTIAL)))

    detail = as_json(run("show", "1", "--json"))
    assert detail["status"] == "partial" and detail["rows_failed"] == 2
    assert detail["file_metadata"]["headers"] == ["ID", "email", "amount"]
    assert detail["column_mapping"]["ID"] == "signup_id"
    assert detail["error_summary"]["by_category"] == {"format": 1, "range": 1}
    assert detail["failed_rows"] == {"total": 2, "by_category": {"format": 1, "range": 1}}
    assert set(detail["phase_seconds"]) >= {"parse", "validate", "load"}
    assert [e["action"] for e in detail["audit_trail"]] == [
        "started",
        "parsed",
        "validated",
        "confirmed",
        "loaded",
        "completed",
    ]
    assert detail["processed_file"]["status"] == "partial"

    text = run("show", "1").stdout
    for expected in (
        "partial",
        "signups_1.csv",
        "audit trail",
        "completed",
        "top errors",
        "histimport errors 1",
    ):
        assert expected in text
    assert "no import with id 99" in run("show", "99", code=2).stderr


def test_rejected_import_exits_1_and_loads_nothing(run: Run, db: Database, tmp_path: Path) -> None:
    result = run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)
    assert "import 1: rejected" in result.stdout
    assert "2 of 3 rows failed" in result.stdout
    assert "histimport errors 1 -o errors.csv" in result.stdout
    assert table_rows(db, "signups") == []


def test_dry_run_prints_would_be_counts_and_keeps_nothing(
    run: Run, db: Database, tmp_path: Path
) -> None:
    result = run("import", "--dry-run", str(write(tmp_path, "signups_1.csv", GOOD)))
    assert "dry run" in result.stdout and "nothing was written" in result.stdout
    assert "would be created 3" in result.stdout
    assert table_rows(db, "signups") == []
    for table in (
        db.tables.import_history,
        db.tables.processed_files,
        db.tables.import_audit_trail,
    ):
        assert count(db, table) == 0, table.name
    assert as_json(run("history", "--json")) == []
    # And the real import afterwards is not taken for a duplicate of the dry run.
    assert "success" in run("import", str(tmp_path / "signups_1.csv")).stdout


def test_errors_csv_is_safe_ordered_and_complete(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", PARTIAL)))
    out = tmp_path / "out" / "errors.csv"

    result = run("errors", "1", "-o", str(out))
    assert "wrote 2 failed row(s)" in result.stdout
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM, for spreadsheet programs
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [
        "ID",
        "email",
        "amount",
        "_error_row",
        "_error_column",
        "_error_category",
        "_error_message",
    ]
    assert [r[3] for r in rows[1:]] == ["3", "5"]  # source rows, in order
    assert rows[1][:3] == ["102", "'=cmd()", "2"]  # formula neutralised
    assert rows[1][4:6] == ["email", "format"]
    assert rows[2][:3] == ["104", "f@example.com", "'-3"]
    assert rows[2][4:6] == ["amount", "range"] and "-3" in rows[2][6]

    default = run("errors", "1")
    assert "import_1_errors.csv" in default.stdout
    assert (tmp_path / "home" / "errors" / "import_1_errors.csv").is_file()
    assert "no import with id 7" in run("errors", "7", "-o", str(out), code=2).stderr


def test_stats_per_dataset(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)
    run("import", str(write(tmp_path, "trades_1.csv", "account,trade_no,qty\nA,1,5\n")))

    by_dataset = {r["dataset"]: r for r in as_json(run("stats", "--json"))}
    signups = by_dataset["signups"]
    assert signups["imports"] == 2
    assert signups["by_status"] == {"rejected": 1, "success": 1}
    assert (signups["rows_loaded"], signups["rows_failed"]) == (3, 2)
    assert signups["total_seconds"] > 0 and signups["mean_seconds"] > 0
    assert by_dataset["trades"]["rows_loaded"] == 1

    only = as_json(run("stats", "--days", "7", "--dataset", "trades", "--json"))
    assert [r["dataset"] for r in only] == ["trades"]
    text = run("stats").stdout
    assert "signups" in text and "rejected 1" in text and "last 30 days" in text


def test_lineage_of_a_table_and_of_one_row(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    # Import 2 updates 008 and adds 010: 007 and 009 still come from import 1.
    run(
        "import",
        str(
            write(
                tmp_path,
                "signups_2.csv",
                "ID,email,amount\n010,x@example.com,1\n008,new@example.com,2\n",
            )
        ),
    )

    contributed = as_json(run("lineage", "signups", "--json"))
    assert [(r["import_id"], r["rows"], r["file_name"], r["status"]) for r in contributed] == [
        (1, 2, "signups_1.csv", "success"),
        (2, 2, "signups_2.csv", "success"),
    ]
    assert "signups_2.csv" in run("lineage", "signups").stdout

    row = as_json(run("lineage", "signups", "--key", "008", "--json"))
    assert (row["import_id"], row["source_row"]) == (2, 3)
    assert row["import"]["file_name"] == "signups_2.csv"
    assert row["row"]["email"] == "new@example.com"
    text = run("lineage", "signups", "--key", "signup_id=007").stdout
    assert "import 1" in text and "signups_1.csv, source row 2" in text
    assert "no row with signup_id=999" in run("lineage", "signups", "--key", "999", code=1).stderr

    run("import", str(write(tmp_path, "trades_1.csv", "account,trade_no,qty\nA,1,5\nA,2,6\n")))
    trade = as_json(run("lineage", "trades", "--key", "account=A", "--key", "trade_no=2", "--json"))
    assert (trade["import_id"], trade["source_row"], trade["row"]["qty"]) == (3, 3, 6)
    assert "NAME=VALUE" in run("lineage", "trades", "--key", "A", "--key", "2", code=2).stderr
    not_a_number = run("lineage", "trades", "--key", "account=A", "--key", "trade_no=x", code=2)
    assert "does not fit its column" in not_a_number.stderr and "trade_no" in not_a_number.stderr
    assert "no dataset spec" in run("lineage", "nowhere", "--key", "1", code=2).stderr
    assert "no table 'nowhere'" in run("lineage", "nowhere", code=2).stderr


def test_rollback_restores_and_is_harmless_twice(run: Run, db: Database, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    after_first = table_rows(db, "signups")
    run(
        "import",
        str(
            write(
                tmp_path,
                "signups_2.csv",
                "ID,email,amount\n008,new@example.com,2\n010,x@example.com,1\n",
            )
        ),
    )

    conflict = run("rollback", "1", code=2)
    assert "later imports 2" in conflict.stderr and "--cascade" in conflict.stderr

    undone = run("rollback", "2")
    assert "rolled back import 2: deleted 2 row(s) from signups, restored 1" in undone.stdout
    assert table_rows(db, "signups") == after_first
    assert "already rolled back" in run("rollback", "2").stdout
    assert table_rows(db, "signups") == after_first

    run("rollback", "1")
    assert table_rows(db, "signups") == []
    assert [r["status"] for r in as_json(run("history", "--json"))] == ["rolled_back"] * 2
    assert "no import with id 9" in run("rollback", "9", code=2).stderr


def test_rollback_cascade_undoes_later_imports_first(
    run: Run, db: Database, tmp_path: Path
) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    run("import", str(write(tmp_path, "signups_2.csv", "ID,email,amount\n007,z@example.com,9\n")))
    result = run("rollback", "1", "--cascade")
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("rolled back")]
    assert [ln.split(":")[0] for ln in lines] == ["rolled back import 2", "rolled back import 1"]
    assert table_rows(db, "signups") == []


def test_cleanup_removes_failed_rows_and_leftovers_but_keeps_history(
    run: Run, db: Database, tmp_path: Path
) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", PARTIAL)))
    run("errors", "1")
    kept = run("cleanup").stdout  # default retention: 30 days; everything is newer
    assert "removed 0 failed-row record(s) and 0 error file(s)" in kept
    assert as_json(run("show", "1", "--json"))["failed_rows"]["total"] == 2

    # A staging table left by a crashed import (id 999 is not running) goes at any age.
    leftover = sa.Table("hi_stage_999", sa.MetaData(schema=db.schema), sa.Column("x", sa.Integer))
    with db.engine.begin() as conn:
        leftover.create(conn)

    result = run("cleanup", "--older-than", "0")
    assert "removed 2 failed-row record(s) and 1 error file(s)" in result.stdout
    assert "dropped 1 leftover staging table(s)" in result.stdout
    detail = as_json(run("show", "1", "--json"))
    assert detail["failed_rows"]["total"] == 0
    assert detail["status"] == "partial" and detail["rows_failed"] == 2  # history kept
    assert detail["error_summary"]["by_category"] == {"format": 1, "range": 1}
    assert not (tmp_path / "home" / "errors" / "import_1_errors.csv").exists()
    with db.engine.connect() as conn:
        assert not sa.inspect(conn).has_table("hi_stage_999", schema=db.schema)
        audit = db.tables.import_audit_trail
        entries = (
            conn.execute(
                sa.select(audit.c.details)
                .where(audit.c.import_id.is_(None), audit.c.action == "cleanup")
                .order_by(audit.c.audit_id)
            )
            .scalars()
            .all()
        )
    assert [e["failed_rows_deleted"] for e in entries] == [0, 2]


def test_routing_and_engine_errors_exit_2(run: Run, tmp_path: Path) -> None:
    unrouted = write(tmp_path, "other.csv", GOOD)
    assert "no dataset for file 'other.csv'" in run("import", str(unrouted), code=2).stderr
    assert (
        "no dataset for dataset 'nope'"
        in run("import", "--dataset", "nope", str(unrouted), code=2).stderr
    )
    assert "success" in run("import", "--dataset", "signups", str(unrouted)).stdout
    run("import", str(tmp_path / "missing.csv"), code=2)  # a usage error, before any work
    assert "HISTIMPORT_HOME" in run("settings").stdout  # the existing commands still work


def test_demo_migrates_a_database_that_is_not_migrated(
    empty_db: Database, db_url: str, tmp_path: Path
) -> None:
    """`histimport demo` on a fresh database (no `db upgrade` yet) migrates it, as run.sh
    does, then writes the demo; on PostgreSQL it used to stop at "run histimport db upgrade"."""
    env = {
        "HISTIMPORT_HOME": str(tmp_path / "home"),
        "HISTIMPORT_DATABASE_URL": db_url,
        "NO_COLOR": "1",
    }
    result = CliRunner().invoke(app, ["demo"], env=env)
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    assert migrations.current(empty_db) == migrations.head()
    assert sorted(p.name for p in (tmp_path / "home" / "datasets").iterdir()) == [
        "sessions.yaml",
        "signups.yaml",
    ]
    assert any((tmp_path / "home" / "inbox").iterdir())
    assert table_rows(empty_db, "ambassadors")
