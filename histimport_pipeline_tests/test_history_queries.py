"""The queries the designs list, through the CLI on SQLite and PostgreSQL: history filters,
sorting and paging, statistics with totals, lineage totals and the rows of one import, the
schema and spec shown by ``show``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.spec import load_specs
from histimport_pipeline_tests.test_cli import GOOD, cli_runner, write

Run = Any

PAGE = {"imports", "total_count", "limit", "offset"}


@pytest.fixture
def run(db: Database, db_url: str, tmp_path: Path) -> Run:
    """Invoke the CLI with this test's environment and check the exit code."""
    return cli_runner(tmp_path, db_url)


def page(run: Run, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(run("history", *args, "--json").stdout)
    assert set(found) == PAGE
    return found


def ids(run: Run, *args: str) -> list[int]:
    return [r["import_id"] for r in page(run, *args)["imports"]]


def _imports(db: Database, tmp_path: Path) -> None:
    """Five imports by two users into two tables, import 1 dated 2024-01-15.

    1 signups_jan.csv (alice, 3 created)  2 Signups_FEB.csv (bob, 1 created, 1 repeated key)
    3 trades_1.csv (alice, into trades)    4 signups_100%.csv (bob, rejected)
    5 signups_jan.csv again (alice, duplicate)
    """
    specs = load_specs(tmp_path / "datasets")
    signups, trades = specs["signups"], specs["trades"]
    feb = "ID,email,amount\n010,x@example.com,1\n010,y@example.com,2\n"
    plan = [
        (signups, "signups_jan.csv", GOOD, "alice"),
        (signups, "Signups_FEB.csv", feb, "bob"),
        (trades, "trades_1.csv", "account,trade_no,qty\nA,1,5\nA,2,6\n", "alice"),
        (signups, "signups_100%.csv", "ID,email,amount\n1,no,1\n2,no,2\n", "bob"),
        (signups, "signups_jan.csv", GOOD, "alice"),
    ]
    for spec, name, text, user in plan:
        path = write(tmp_path, name, text)
        run_import(db, spec, path, ImportOptions(triggered_by=user))
    t = db.tables.import_history
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(t)
            .where(t.c.import_id == 1)
            .values(created_at=dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC))
        )


def test_history_filters_sorts_and_pages(run: Run, db: Database, tmp_path: Path) -> None:
    _imports(db, tmp_path)

    everything = page(run)
    assert everything["total_count"] == 5 and (everything["limit"], everything["offset"]) == (20, 0)
    assert [r["import_id"] for r in everything["imports"]] == [5, 4, 3, 2, 1]
    one = page(run, "--limit", "2", "--offset", "1")
    assert [r["import_id"] for r in one["imports"]] == [4, 3]
    assert (one["total_count"], one["limit"], one["offset"]) == (5, 2, 1)
    assert (
        page(run, "--offset", "9")["imports"] == []
        and page(run, "--offset", "9")["total_count"] == 5
    )

    assert ids(run, "--file", "feb") == [2]  # any case
    assert ids(run, "--file", "JAN") == [5, 1]
    assert ids(run, "--file", "%") == [4]  # LIKE wildcards match themselves
    assert ids(run, "--file", "0_") == []  # _ too: unescaped it would match "00"
    assert ids(run, "--table", "trades") == [3]
    assert ids(run, "--user", "bob") == [4, 2]
    assert ids(run, "--user", "bob", "--status", "rejected") == [4]
    assert ids(run, "--until", "2024-01-15") == [1]  # the whole day
    assert ids(run, "--until", "2024-01-14") == []
    assert ids(run, "--until", "2024-01-15T12:00") == []  # before that instant
    assert ids(run, "--since", "2024-01-16") == [5, 4, 3, 2]
    assert ids(run, "--since", "2024-01-01", "--until", "2024-02-01") == [1]
    assert page(run, "--user", "alice", "--limit", "1")["total_count"] == 3

    assert ids(run, "--sort", "import_id") == [1, 2, 3, 4, 5]
    by_created = page(run, "--sort", "-rows_created")["imports"]
    assert [r["rows_created"] for r in by_created] == [3, 2, 1, 0, 0]
    assert [r["import_id"] for r in by_created] == [1, 3, 2, 5, 4]  # ties: newest first
    assert ids(run, "--sort", "+target_table") == [5, 4, 2, 1, 3]
    assert ids(run, "--sort", "-target_table") == [3, 5, 4, 2, 1]
    assert ids(run, "--sort", "started_at", "--limit", "2", "--offset", "1") == [2, 3]
    # Empty values sort last both ways: a duplicate never ran the stats of a load.
    assert ids(run, "--sort", "total_seconds")[-1] == 5
    assert ids(run, "--sort", "-total_seconds")[-1] == 5

    bad = run("history", "--sort", "import_id; DROP TABLE import_history", code=2)
    assert "not a column of the history" in bad.stderr and "-started_at" in bad.stderr
    assert "not a column" in run("history", "--sort", "-spec_used", code=2).stderr
    assert "--until 'soon'" in run("history", "--until", "soon", code=2).stderr
    assert page(run)["total_count"] == 5  # the table is still there

    text = run("history", "--limit", "2").stdout
    assert "imports 1-2 of 5 (next: --offset 2)" in text
    assert "signups_100%.csv" in text and "bob" in text
    assert "no imports match" in run("history", "--file", "nothing-like-it").stdout


def test_stats_totals_and_filters(run: Run, db: Database, tmp_path: Path) -> None:
    _imports(db, tmp_path)

    # Import 1 is dated 2024: out of the last 30 days.
    figures = json.loads(run("stats", "--json").stdout)
    totals = figures["totals"]
    assert totals["imports"] == 4
    assert totals["by_status"] == {"duplicate": 1, "partial": 1, "rejected": 1, "success": 1}
    assert (totals["rows_loaded"], totals["rows_failed"], totals["rows_duplicate"]) == (3, 2, 1)
    assert totals["duplicate_imports"] == 1
    assert (totals["tables_affected"], totals["tables"]) == (2, ["signups", "trades"])
    assert (totals["distinct_users"], totals["users"]) == (2, ["alice", "bob"])
    assert totals["total_seconds"] > 0
    by_dataset = {d["dataset"]: d for d in figures["datasets"]}
    assert by_dataset["signups"]["imports"] == 3 and by_dataset["trades"]["imports"] == 1
    assert by_dataset["signups"]["rows_duplicate"] == 1

    everything = json.loads(run("stats", "--days", "10000", "--json").stdout)["totals"]
    assert everything["imports"] == 5 and everything["rows_loaded"] == 6

    trades = json.loads(run("stats", "--table", "trades", "--json").stdout)
    assert [d["dataset"] for d in trades["datasets"]] == ["trades"]
    assert (trades["totals"]["imports"], trades["totals"]["tables"]) == (1, ["trades"])
    bob = json.loads(run("stats", "--user", "bob", "--json").stdout)["totals"]
    assert (bob["imports"], bob["users"], bob["rows_loaded"]) == (2, ["bob"], 1)
    assert json.loads(run("stats", "--user", "carol", "--json").stdout)["totals"]["imports"] == 0

    text = run("stats").stdout
    assert "all" in text and "rows duplicate" in text
    assert "2: signups, trades" in text and "2: alice, bob" in text
    assert "1 file(s) already imported" in text


def test_lineage_totals_and_the_rows_of_one_import(run: Run, db: Database, tmp_path: Path) -> None:
    _imports(db, tmp_path)

    signups = json.loads(run("lineage", "signups", "--json").stdout)
    assert [(r["import_id"], r["rows"]) for r in signups["imports"]] == [(1, 3), (2, 1)]
    assert (signups["total_imports"], signups["total_rows"]) == (2, 4)
    assert signups["rows_without_import"] == 0
    assert "4 row(s) from 2 import(s)" in run("lineage", "signups").stdout

    rows = json.loads(run("lineage", "--import", "1", "--json").stdout)
    assert (rows["table"], rows["total_count"], rows["limit"], rows["offset"]) == (
        "signups",
        3,
        50,
        0,
    )
    assert [(r["_source_row"], r["signup_id"]) for r in rows["rows"]] == [
        (2, "007"),
        (3, "008"),
        (4, "009"),
    ]
    paged = json.loads(
        run("lineage", "--import", "1", "--limit", "1", "--offset", "1", "--json").stdout
    )
    assert [r["signup_id"] for r in paged["rows"]] == ["008"] and paged["total_count"] == 3
    same = json.loads(run("lineage", "signups", "--import", "1", "--json").stdout)
    assert same["total_count"] == 3
    assert json.loads(run("lineage", "--import", "4", "--json").stdout)["rows"] == []  # rejected

    text = run("lineage", "--import", "1", "--limit", "2").stdout
    assert "007" in text and "a@example.com" in text and "rows 1-2 of 3 (next: --offset 2)" in text
    assert "no import with id 99" in run("lineage", "--import", "99", code=2).stderr
    wrong = run("lineage", "trades", "--import", "1", code=2).stderr
    assert "wrote table 'signups', not 'trades'" in wrong
    assert "name a table" in run("lineage", code=2).stderr
    assert "not both" in run("lineage", "signups", "--import", "1", "--key", "007", code=2).stderr


def test_show_names_the_schema_its_drift_and_the_spec(run: Run, tmp_path: Path) -> None:
    run("import", str(write(tmp_path, "signups_1.csv", GOOD)))
    drifted = "Signup_ID,email,extra\n011,k@example.com,x\n"
    second = run("import", str(write(tmp_path, "signups_2.csv", drifted)))
    assert "differ from those of import 1" in second.stdout

    detail = json.loads(run("show", "2", "--json").stdout)
    assert detail["spec_used"]["key"] == ["signup_id"]
    assert detail["spec_used"]["columns"]["amount"] == {"type": "decimal", "min": 0, "scale": 2}
    assert detail["header_present"] is True and len(detail["schema_fingerprint"]) == 16
    drift = detail["schema_drift"]
    assert (drift["added"], drift["removed"]) == (["extra"], ["amount"])
    assert drift["renamed"] == [{"column": "signup_id", "from": "ID", "to": "Signup_ID"}]

    text = run("show", "2").stdout
    assert detail["schema_fingerprint"] in text
    assert "schema drift" in text and "added 'extra'" in text and "removed 'amount'" in text
    assert "renamed signup_id ('ID' -> 'Signup_ID')" in text
    assert text.count("added 'extra'") == 1  # not repeated among the warnings
    assert "3 columns, 0 references, strategy upsert, key signup_id" in text
    listing = run("history").stdout
    assert "drift +1 -1 ~1" in listing
    assert listing.count("drift") == 1
