"""The ``histimport`` CLI, driven in-process against SQLite and PostgreSQL.

Each test points the CLI at a fresh, migrated database and a datasets folder of its own, and
asserts what a user sees: the summary, the exit code, the JSON, the CSV, the table contents.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
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
NOTES_SPEC = """\
name: notes
target_table: notes
files: "notes_*.csv"
strategy: upsert
key: [id]
max_error_ratio: 0.6
columns:
  id: {type: integer, required: true}
  qty: {type: integer}
  price: {type: decimal, scale: 2}
  bonus: {type: integer}
  formula: {type: string}
  handle: {type: string}
  flag: {type: string}
  email: {type: email, required: true}
"""
DAILY_SPEC = """\
name: daily
target_table: daily
files: "daily_*.csv"
partitioning: daily
strategy: replace_date
columns:
  n: {type: integer}
"""
LOGS_SPEC = """\
name: logs
target_table: logs
files: "logs_*.csv"
strategy: append
columns:
  n: {type: integer}
  text: {type: string}
"""
BAD = "ID,email,amount\n1,nope,1\n2,nope,2\n3,c@example.com,3\n"

Run = Callable[..., Result]


def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """The environment of a test's CLI: its database, home and datasets folder."""
    datasets = tmp_path / "datasets"
    if not datasets.is_dir():
        datasets.mkdir()
        (datasets / "signups.yaml").write_text(SIGNUPS_SPEC)
        (datasets / "trades.yml").write_text(TRADES_SPEC)
        (datasets / "notes.yaml").write_text(NOTES_SPEC)
        (datasets / "daily.yaml").write_text(DAILY_SPEC)
        (datasets / "logs.yaml").write_text(LOGS_SPEC)
    return {
        "HISTIMPORT_HOME": str(tmp_path / "home"),
        "HISTIMPORT_DATABASE_URL": db_url,
        "HISTIMPORT_DATASETS": str(datasets),
        "HISTIMPORT_INBOX": str(tmp_path / "inbox"),
        # No COLUMNS: output to a pipe must be wide enough to read without any help.
        "NO_COLOR": "1",
    }


def histimport(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The real ``histimport`` command in a process of its own."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.Popen(
        [sys.executable, "-c", "from histimport_pipeline.cli import main; main()", *args],
        env={**environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_runner(tmp_path: Path, db_url: str, **extra: str) -> Run:
    """The CLI in-process with a test's environment (``cli_env`` plus ``extra``): call it with
    the arguments; it checks the exit code and that no exception escaped."""
    env: dict[str, str | None] = {**cli_env(tmp_path, db_url), **extra, "COLUMNS": None}
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Result:
        result = runner.invoke(app, list(args), env=env)
        detail = f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        if result.exception and not isinstance(result.exception, SystemExit):
            raise AssertionError(detail) from result.exception
        assert result.exit_code == code, detail
        return result

    return invoke


@pytest.fixture
def run(db: Database, db_url: str, tmp_path: Path) -> Run:
    """Invoke the CLI with this test's environment and check the exit code."""
    return cli_runner(tmp_path, db_url)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def listed(result: Result) -> list[dict[str, Any]]:
    """The imports of one page of ``history --json``."""
    page = as_json(result)
    assert set(page) == {"imports", "total_count", "limit", "offset"}
    imports: list[dict[str, Any]] = page["imports"]
    return imports


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

    imports = listed(run("history", "--json"))
    assert [(r["import_id"], r["status"]) for r in imports] == [(2, "duplicate"), (1, "success")]
    newest_first = imports[1]
    assert newest_first["rows_created"] == 3 and newest_first["rows_in_file"] == 3
    assert newest_first["triggered_by"] == getpass.getuser()
    assert (newest_first["source"], newest_first["import_type"]) == ("cli", "MANUAL")
    assert newest_first["file_name"] == "signups_1.csv"

    assert [r["import_id"] for r in listed(run("history", "--status", "success", "--json"))] == [1]
    assert listed(run("history", "--dataset", "trades", "--json")) == []
    assert len(listed(run("history", "--since", "1d", "--json"))) == 2
    assert listed(run("history", "--since", "2999-01-01", "--json")) == []
    assert [
        r["import_id"] for r in listed(run("history", "--limit", "1", "--offset", "1", "--json"))
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
    trail = detail["audit_trail"]
    assert [(e["action"], e["severity"]) for e in trail] == [
        ("file_received", "info"),
        ("started", "info"),
        ("parsed", "info"),
        ("validation_started", "info"),
        ("validated", "warning"),  # rows failed
        ("confirmed", "info"),
        ("loaded", "info"),
        ("completed", "warning"),  # partly
        ("error_file_written", "info"),
    ]
    assert {e["actor"] for e in trail} == {getpass.getuser()}
    assert trail[4]["summary"] == "validated 5 rows: 3 valid, 2 failed, 0 duplicate"
    pf = detail["processed_file"]
    assert (pf["status"], pf["file_type"], pf["records_count"]) == ("partial", "csv", 5)
    assert pf["process_date"] == detail["finished_at"][:10]

    text = run("show", "1").stdout
    for expected in (
        "partial",
        "signups_1.csv",
        "audit trail",
        "severity",
        "completed: partial",
        "validated 5 rows: 3 valid, 2 failed, 0 duplicate",
        f"partial, csv, 5 records, processed {pf['process_date']}",
        "top errors",
        "histimport errors 1",
    ):
        assert expected in text
    assert "no import with id 99" in run("show", "99", code=2).stderr


def test_rejected_import_exits_1_and_loads_nothing(run: Run, db: Database, tmp_path: Path) -> None:
    result = run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)
    assert "import 1: rejected" in result.stdout
    assert "2 of 3 rows failed" in result.stdout
    assert "error file" in result.stdout and "import_1_errors.csv" in result.stdout
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
    assert listed(run("history", "--json")) == []
    # And the real import afterwards is not taken for a duplicate of the dry run.
    assert "success" in run("import", str(tmp_path / "signups_1.csv")).stdout


COUNTS = (
    "rows_processed",
    "rows_created",
    "rows_updated",
    "rows_unchanged",
    "rows_failed",
    "rows_duplicate",
    "rows_review",
    "rows_deleted",
)


def test_refused_and_duplicate_imports_record_zero_counts(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    run("import", str(tmp_path / "signups_1.csv"))  # 2: duplicate
    run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)  # 3: rejected
    run("import", str(write(tmp_path, "signups_odd.csv", "who,what\n1,2\n")), code=1)  # 4: failed

    statuses = {r["import_id"]: r["status"] for r in listed(run("history", "--json"))}
    assert statuses == {1: "success", 2: "duplicate", 3: "rejected", 4: "failed"}
    for import_id in (2, 3, 4):
        detail = as_json(run("show", str(import_id), "--json"))
        known = {name: detail[name] for name in COUNTS}
        assert None not in known.values(), (import_id, known)
        assert (known["rows_created"], known["rows_updated"], known["rows_deleted"]) == (0, 0, 0)
    assert as_json(run("show", "3", "--json"))["rows_failed"] == 2


def test_rows_a_replace_date_import_deleted_are_shown(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "daily_2024-01-01.csv", "n\n1\n2\n3\n")))
    redo = run("import", str(write(tmp_path, "daily_2024-01-01_v2.csv", "n\n4\n")))
    assert "created 1 |" in redo.stdout and "deleted 3" in redo.stdout

    assert listed(run("history", "--json"))[0]["rows_deleted"] == 3
    assert as_json(run("show", "2", "--json"))["rows_deleted"] == 3
    assert "deleted 3" in run("show", "2").stdout
    assert as_json(run("show", "1", "--json"))["rows_deleted"] == 0


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
    assert rows[2][:3] == ["104", "f@example.com", "-3"]  # a plain number stays a number
    assert rows[2][4:6] == ["amount", "range"] and "-3" in rows[2][6]

    default = run("errors", "1")
    assert "import_1_errors.csv" in default.stdout
    assert (tmp_path / "home" / "errors" / "import_1_errors.csv").is_file()
    assert "no import with id 7" in run("errors", "7", "-o", str(out), code=2).stderr


def test_errors_csv_round_trip_keeps_numbers_and_restores_neutralised_text(
    run: Run, db: Database, tmp_path: Path
) -> None:
    original = (
        "id,qty,price,bonus,formula,handle,flag,email\n"
        "1,-5,-3.00,+1,=SUM(A1),@x,-cmd,nope\n"
        "2,7,1.00,2,plain,text,here,a@example.com\n"
    )
    run("import", str(write(tmp_path, "notes_1.csv", original)))
    out = tmp_path / "errors.csv"
    run("errors", "1", "-o", str(out))
    with out.open(encoding="utf-8-sig", newline="") as fh:
        header, failed = list(csv.reader(fh))
    assert failed[:8] == ["1", "-5", "-3.00", "+1", "'=SUM(A1)", "'@x", "'-cmd", "nope"]

    # The user drops the _error_* columns, fixes the e-mail and imports the file again.
    keep = [i for i, name in enumerate(header) if not name.startswith("_error_")]
    fixed = [failed[i] for i in keep]
    fixed[header.index("email")] = "b@example.com"
    again = tmp_path / "notes_2.csv"
    with again.open("w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows([[header[i] for i in keep], fixed])
    assert "import 2: success" in run("import", str(again)).stdout

    row = next(r for r in table_rows(db, "notes") if r["id"] == 1)
    assert (row["qty"], row["price"], row["bonus"]) == (-5, Decimal("-3.00"), 1)
    assert (row["formula"], row["handle"], row["flag"]) == ("=SUM(A1)", "@x", "-cmd")
    assert row["email"] == "b@example.com"


def test_stats_per_dataset(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)
    run("import", str(write(tmp_path, "trades_1.csv", "account,trade_no,qty\nA,1,5\n")))

    by_dataset = {r["dataset"]: r for r in as_json(run("stats", "--json"))["datasets"]}
    signups = by_dataset["signups"]
    assert signups["imports"] == 2
    assert signups["by_status"] == {"rejected": 1, "success": 1}
    assert (signups["rows_loaded"], signups["rows_failed"]) == (3, 2)
    assert signups["total_seconds"] > 0 and signups["mean_seconds"] > 0
    assert by_dataset["trades"]["rows_loaded"] == 1

    only = as_json(run("stats", "--days", "7", "--dataset", "trades", "--json"))
    assert [r["dataset"] for r in only["datasets"]] == ["trades"]
    text = run("stats").stdout
    assert "signups" in text and "rejected 1" in text and "last 30 days" in text


def test_who_imported_is_recorded_filtered_and_counted(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(
        "import",
        "--user",
        "alice",
        "--email",
        "alice@example.com",
        str(write(tmp_path, "signups_1.csv", GOOD)),
    )
    monkeypatch.setenv("HISTIMPORT_USER", "bob")
    monkeypatch.setenv("HISTIMPORT_USER_EMAIL", "bob@example.com")
    run("import", str(write(tmp_path, "signups_bad.csv", BAD)), code=1)
    # --user names someone else: bob's address from the environment is not theirs.
    run(
        "import", "--user", "carol", str(write(tmp_path, "trades_1.csv", "account,trade_no\nA,1\n"))
    )
    monkeypatch.delenv("HISTIMPORT_USER")
    monkeypatch.delenv("HISTIMPORT_USER_EMAIL")
    run("import", str(write(tmp_path, "signups_2.csv", PARTIAL)))

    imports = listed(run("history", "--json"))
    assert [(r["user_id"], r["user_email"]) for r in imports] == [
        (getpass.getuser(), None),  # neither --user nor HISTIMPORT_USER: the OS user
        ("carol", None),
        ("bob", "bob@example.com"),
        ("alice", "alice@example.com"),
    ]
    assert [r["import_id"] for r in listed(run("history", "--user", "alice", "--json"))] == [1]
    by_email = listed(run("history", "--user", "bob@example.com", "--json"))
    assert [r["import_id"] for r in by_email] == [2]
    assert "no imports match" in run("history", "--user", "nobody").stdout
    assert "alice" in run("history").stdout

    figures = as_json(run("stats", "--json"))
    by_dataset = {r["dataset"]: r for r in figures["datasets"]}
    assert by_dataset["signups"]["by_user"] == {"alice": 1, "bob": 1, getpass.getuser(): 1}
    assert by_dataset["trades"]["by_user"] == {"carol": 1}
    assert figures["totals"]["distinct_users"] == 4
    assert "alice 1" in run("stats").stdout

    # The rollback's entries carry who rolled back.
    run("rollback", "1", "--user", "dave")
    trail = as_json(run("show", "1", "--json"))["audit_trail"]
    assert [(e["action"], e["actor"]) for e in trail[-2:]] == [
        ("rollback_started", "dave"),
        ("rolled_back", "dave"),
    ]
    assert {e["actor"] for e in trail[:-2]} == {"alice"}
    text = run("show", "1").stdout
    assert "alice@example.com" in text and "rollback started by dave" in text
    assert "triggered_by" not in text  # the older name of user_id, the same value


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

    contributed = as_json(run("lineage", "signups", "--json"))["imports"]
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
    assert [r["status"] for r in listed(run("history", "--json"))] == ["rolled_back"] * 2
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


def test_errors_csv_keeps_the_extra_values_of_ragged_rows(run: Run, tmp_path: Path) -> None:
    text = (
        "ID,email,amount\n"
        "1,a@example.com,1\n"
        "2,b@example.com,2,surplus,more surplus,=last\n"
        "3,c@example.com,3\n"
        "4,d@example.com\n"
        "5,e@example.com,5\n"
    )
    run("import", str(write(tmp_path, "signups_1.csv", text)))
    out = tmp_path / "errors.csv"
    run("errors", "1", "-o", str(out))
    with out.open(encoding="utf-8-sig", newline="") as fh:
        got = list(csv.reader(fh))
    assert got[0][:6] == ["ID", "email", "amount", "_extra_1", "_extra_2", "_extra_3"]
    assert got[1][:6] == ["2", "b@example.com", "2", "surplus", "more surplus", "'=last"]
    assert got[1][-1] == "row has 6 fields, header has 3"
    assert got[2][:6] == ["4", "d@example.com", "", "", "", ""]
    assert got[2][-1] == "row has 2 fields, header has 3"
    shown = run("show", "1").stdout
    assert "row has 6 fields, header has 3" in shown and "row has 2 fields" in shown


ONE_LINE = ". Run again with --debug for the traceback."


def error_message(db: Database, import_id: int) -> str | None:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        query = sa.select(t.c.status, t.c.error_message).where(t.c.import_id == import_id)
        status, message = conn.execute(query).one()
    assert status == "failed"
    return message  # type: ignore[no-any-return]


def test_an_unexpected_error_is_one_line_recorded_on_the_import(
    run: Run, db: Database, db_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, db_url)
    path = write(tmp_path, "signups_1.csv", GOOD)
    env |= {"HISTIMPORT_FAILPOINT": "write", "HISTIMPORT_FAILPOINT_RAISE": "disk on fire"}

    child = histimport(env, "import", str(path))
    _, err = child.communicate(timeout=300)

    assert child.returncode == 2
    assert "Traceback" not in err, err
    cause = "RuntimeError: disk on fire"
    assert err.splitlines() == [f"histimport: unexpected error in import 1: {cause}{ONE_LINE}"]
    assert error_message(db, 1) == cause
    assert table_rows(db, "signups") == []  # the load rolled back
    # --debug is for a developer: the traceback, then the same line.
    result = histimport(env, "--debug", "import", "--force", str(path))
    _, debug_err = result.communicate(timeout=300)
    assert result.returncode == 2
    assert "Traceback" in debug_err and "checkpoint" in debug_err
    assert debug_err.splitlines()[-1] == f"histimport: unexpected error in import 2: {cause}"


def test_a_statement_the_database_refuses_records_the_cause_not_the_sql(
    run: Run, db: Database, tmp_path: Path
) -> None:
    run("import", str(write(tmp_path, "trades_1.csv", "account,trade_no,qty\nA,1,5\n")))
    with db.engine.begin() as conn:  # a constraint added by hand, which the spec knows nothing of
        conn.execute(sa.text("CREATE UNIQUE INDEX ux_trades_qty ON trades (qty)"))
    clash = write(tmp_path, "trades_2.csv", "account,trade_no,qty\nB,1,5\n")

    result = run("import", str(clash), code=2)

    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("histimport: unexpected error in import 2: ") and line.endswith(ONE_LINE)
    message = error_message(db, 2) or ""
    assert "unique" in message.lower() and "qty" in message, message
    assert "\n" not in message and "INSERT" not in message and "[SQL" not in message, message
    assert message in line


@pytest.mark.postgres
def test_a_connection_lost_during_a_copy_prints_no_stray_driver_line(
    pg_db: Database, pg_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, pg_url)
    path = tmp_path / "logs_1.csv"
    with path.open("w") as fh:  # a few COPY blocks: the loss is seen while the COPY is open
        fh.write("n,text\n" + "".join(f"{i},line {i}\n" for i in range(400_000)))
    frozen, resume = tmp_path / "frozen", tmp_path / "resume"
    env |= {
        "HISTIMPORT_FAILPOINT": "copy",
        "HISTIMPORT_FAILPOINT_FILE": str(frozen),
        "HISTIMPORT_FAILPOINT_RESUME": str(resume),
    }
    child = histimport(env, "import", str(path))
    while not frozen.exists():
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    with pg_db.engine.connect() as conn:
        cut = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'COPY %' AND pid <> pg_backend_pid()"
            )
        ).all()
    assert cut
    resume.touch()
    _, err = child.communicate(timeout=300)

    assert child.returncode == 2
    assert "error ignored" not in err and "Traceback" not in err, err
    assert "connection is lost" in err
    assert error_message(pg_db, 1) == "the connection is lost"


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


def test_retry_failed_skips_rejected_imports_and_says_what_to_do(
    run: Run, db: Database, tmp_path: Path
) -> None:
    """A rejected file is rejected again by a plain retry: `retry-failed` leaves it out
    unless asked, and says how to get it loaded; failed imports are retried, and a failure
    that a corrected file superseded is not listed at all."""
    from histimport_pipeline.engine.pipeline import ImportOptions, run_import
    from histimport_pipeline.engine.spec import load_specs

    spec = load_specs(tmp_path / "datasets")["signups"]
    inbox = tmp_path / "drop"
    inbox.mkdir()
    strict = ImportOptions(partition_key="signups_a-aaaaaaaaaaaa", max_error_ratio=0.1)
    rejected = run_import(db, spec, write(inbox, "signups_a.csv", BAD), strict)
    assert rejected.status.value == "rejected"
    broken = write(inbox, "signups_b.csv", "email\nx@example.com\n")  # no ID column
    failed = run_import(db, spec, broken, ImportOptions(partition_key="signups_b-bbbbbbbbbbbb"))
    assert failed.status.value == "failed"
    listed = run("retry-failed", "--dry-run").stdout
    assert "skipped 1 rejected import(s)" in listed
    assert "drop it into the inbox again" in listed and "max_error_ratio" in listed
    assert "would retry signups partition signups_b-bbbbbbbbbbbb" in listed
    assert "signups_a-aaaaaaaaaaaa" not in listed
    everything = run("retry-failed", "--dry-run", "--include-rejected").stdout
    assert "skipped" not in everything
    assert "signups_a-aaaaaaaaaaaa" in everything and "signups_b-bbbbbbbbbbbb" in everything
    # the fixed file, dropped under the same name, corrects the failure once it loads
    fixed = write(inbox, "signups_b.csv", "ID,email\n1,x@example.com\n")
    result = run_import(db, spec, fixed, ImportOptions(partition_key="signups_b-cccccccccccc"))
    assert result.status.value == "success"
    assert "signups_b" not in run("retry-failed", "--dry-run").stdout
    shown = as_json(run("show", str(result.import_id), "--json"))
    assert shown["corrects_import_id"] == failed.import_id
