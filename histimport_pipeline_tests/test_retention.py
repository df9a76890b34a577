"""The error file of an import with failed rows, and retention: cleanup of failed rows and
error files, archiving of old imports (detail pruned, rollback refused), dry runs, and the
daily Dagster retention schedule."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import ImportArchivedError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import cleanup as retention
from histimport_pipeline.orchestration.definitions import build_definitions
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.schedules import RETENTION_CRON
from histimport_pipeline_tests.helpers import SIGNUPS, audit_actions, history, rows, write
from histimport_pipeline_tests.test_cli import BAD, GOOD, PARTIAL, cli_runner
from histimport_pipeline_tests.test_reconcile import csv_of, make_master, signup_spec


def _failed_row_count(db: Database, import_id: int | None = None) -> int:
    t = db.tables.import_failed_rows
    query = sa.select(sa.func.count()).select_from(t)
    if import_id is not None:
        query = query.where(t.c.import_id == import_id)
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _count(db: Database, table: sa.Table, import_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.import_id == import_id)
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _cleanup_entries(db: Database) -> list[dict[str, Any]]:
    audit = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.select(audit.c.actor, audit.c.details)
                .where(audit.c.import_id.is_(None), audit.c.action == "cleanup")
                .order_by(audit.c.audit_id)
            ).mappings()
        ]


def _summary_line(stdout: str, label: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith(label))


def test_an_import_with_failed_rows_gets_its_error_file(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    run = cli_runner(tmp_path, db_url)
    result = run("import", str(write(tmp_path / "signups_1.csv", PARTIAL)))
    expected = tmp_path / "home" / "errors" / "import_1_errors.csv"
    # The summary names the file, and the import records it.
    assert _summary_line(result.stdout, "error file").split()[-1] == str(expected)
    assert "fix the rows in the error file" in result.stdout
    assert history(db, 1)["error_file_path"] == str(expected)
    assert "error_file_written" in audit_actions(db, 1)
    # It is exactly what `histimport errors` writes.
    exported = tmp_path / "exported.csv"
    run("errors", "1", "-o", str(exported))
    assert expected.read_bytes() == exported.read_bytes()
    text = expected.read_text(encoding="utf-8-sig")
    assert text.splitlines()[0] == (
        "ID,email,amount,_error_row,_error_column,_error_category,_error_message"
    )
    assert len(text.splitlines()) == 3  # the two failed rows
    shown = _summary_line(run("show", "1").stdout, "error_file_path")
    assert shown.split()[-1] == str(expected)

    # A clean import gets none; a rejected one does (nothing loaded, the rows to fix).
    clean = run("import", str(write(tmp_path / "signups_2.csv", GOOD)))
    assert "error file" not in clean.stdout and history(db, 2)["error_file_path"] is None
    rejected = run("import", str(write(tmp_path / "signups_3.csv", BAD)), code=1)
    assert "import 3: rejected" in rejected.stdout
    assert Path(_summary_line(rejected.stdout, "error file").split()[-1]).is_file()
    assert sorted(p.name for p in expected.parent.iterdir()) == [
        "import_1_errors.csv",
        "import_3_errors.csv",
    ]


def test_the_error_folder_is_a_setting(db: Database, db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    run = cli_runner(tmp_path, db_url, HISTIMPORT_ERROR_DIR=str(folder))
    run("import", str(write(tmp_path / "signups_1.csv", PARTIAL)))
    assert history(db, 1)["error_file_path"] == str(folder / "import_1_errors.csv")
    assert (folder / "import_1_errors.csv").is_file()
    assert not (tmp_path / "home" / "errors").exists()
    assert str(folder) in run("settings").stdout


def test_cleanup_dry_run_reports_and_cleanup_removes_the_error_file(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    run = cli_runner(tmp_path, db_url)
    run("import", str(write(tmp_path / "signups_1.csv", PARTIAL)))
    tracked = Path(history(db, 1)["error_file_path"])
    # An old export no import names (say, from before error files were recorded).
    stray = write(tmp_path / "home" / "errors" / "old_export.csv", "x\n")
    os.utime(stray, (0, 0))

    dry = run("cleanup", "--older-than", "0", "--dry-run").stdout
    assert "would remove 2 failed-row record(s) and 2 error file(s)" in dry
    assert f"  {stray}" in dry.splitlines() and f"  {tracked}" in dry.splitlines()
    assert "would archive 0 import(s)" in dry
    assert "dry run: nothing was changed" in dry
    assert tracked.is_file() and stray.is_file()
    assert history(db, 1)["error_file_path"] == str(tracked)
    assert _failed_row_count(db, 1) == 2
    assert _cleanup_entries(db) == []

    kept = run("cleanup").stdout  # default retention (30 days): all of it is newer
    assert "removed 0 failed-row record(s) and 1 error file(s)" in kept  # only the stray
    assert tracked.is_file() and not stray.exists()

    done = run("cleanup", "--older-than", "0").stdout
    assert "removed 2 failed-row record(s) and 1 error file(s)" in done
    assert not tracked.exists()
    assert history(db, 1)["error_file_path"] is None
    assert history(db, 1)["status"] == "partial" and history(db, 1)["rows_failed"] == 2
    assert [e["details"]["error_files_deleted"] for e in _cleanup_entries(db)] == [1, 1]


def test_archiving_prunes_old_imports_and_their_rollback_is_refused(
    db: Database, tmp_path: Path
) -> None:
    make_master(db)
    spec = signup_spec("review")
    errors = tmp_path / "errors"
    options = ImportOptions(error_dir=errors)
    # 1: one row matched, one waiting for review, one failed (no id).
    first = run_import(
        db,
        spec,
        write(
            tmp_path / "signups_1.csv",
            csv_of([("s1", "ann.lee@example.com", ""), ("s2", "", "Zed Unknown"), ("", "", "x")]),
        ),
        options,
    )
    # 2: changes the row that 1 wrote (a before-image), and one row fails.
    second = run_import(
        db,
        spec,
        write(
            tmp_path / "signups_2.csv",
            csv_of([("s1", "bob.stone@example.com", ""), ("", "", "y")]),
        ),
        options,
    )
    assert (first.rows_review, first.rows_failed, second.rows_updated) == (1, 1, 1)
    assert second.status is ImportStatus.PARTIAL and second.error_file_path
    t = db.tables
    assert _count(db, t.import_row_images, second.import_id) == 1
    matches_before = _count(db, t.import_reconciliation_matches, second.import_id)
    assert matches_before == 1
    table_before = rows(db, "signups")
    now = tracking.utcnow()

    # After 100 days: failed rows and error files are past retention, nothing is archived.
    later = retention.cleanup(db, 30, now + dt.timedelta(days=100), error_dir=errors)
    assert (later["imports_archived"], later["failed_rows_deleted"]) == (0, 2)
    assert later["error_files_deleted"] == 2 and list(errors.iterdir()) == []
    assert history(db, second.import_id)["archived_at"] is None

    # After a year (a retention longer than that: the archive prunes failed rows itself).
    year = now + dt.timedelta(days=366)
    run_import(db, spec, write(tmp_path / "signups_3.csv", csv_of([("", "", "z")])), options)
    dry = retention.cleanup(db, 1000, year, error_dir=errors, dry_run=True)
    assert dry["dry_run"] is True
    assert _count(db, t.import_row_images, second.import_id) == 1
    assert history(db, second.import_id)["archived_at"] is None
    done = retention.cleanup(db, 1000, year, error_dir=errors, actor="ops")
    counts = ("imports_archived", "reconciliation_matches_deleted", "row_images_deleted")
    assert {k: dry[k] for k in counts} == {k: done[k] for k in counts}
    assert dry["failed_rows_deleted"] == done["failed_rows_deleted"] == 1  # import 3's
    assert dry["error_files"] == done["error_files"] == [str(errors / "import_3_errors.csv")]
    # 2 and 3 are archived; 1 still has a row waiting for review, so it is not.
    assert done["imports_archived"] == 2
    assert done["reconciliation_matches_deleted"] == matches_before
    assert done["row_images_deleted"] == 1
    archived = history(db, second.import_id)
    assert archived["archived_at"] is not None
    assert archived["status"] == "partial" and archived["rows_updated"] == 1  # history kept
    assert history(db, first.import_id)["archived_at"] is None
    assert audit_actions(db, second.import_id)[-1] == "archived"
    for table in (t.import_row_images, t.import_reconciliation_matches, t.import_failed_rows):
        assert _count(db, table, second.import_id) == 0, table.name
    assert _count(db, t.import_reconciliation_matches, first.import_id) > 0

    with pytest.raises(ImportArchivedError, match="it was archived on"):
        rollback_import(db, second.import_id)
    # 1 is not archived, but 2 changed its rows and 2's before-images are gone.
    with pytest.raises(ImportArchivedError, match=f"later import {second.import_id}"):
        rollback_import(db, first.import_id, cascade=True)
    assert rows(db, "signups") == table_before
    assert history(db, second.import_id)["status"] == "partial"
    # Archived once: the next cleanup finds nothing new to archive.
    assert retention.cleanup(db, 1000, year)["imports_archived"] == 0


def test_cli_archive_and_refused_rollback(db: Database, db_url: str, tmp_path: Path) -> None:
    run = cli_runner(tmp_path, db_url)
    run("import", str(write(tmp_path / "signups_1.csv", GOOD)))
    run("import", str(write(tmp_path / "signups_2.csv", "ID,email,amount\n007,z@example.com,9\n")))
    dry = run("cleanup", "--archive-after", "0", "--dry-run").stdout
    assert (
        "would archive 2 import(s) older than 0 day(s), with 0 reconciliation match(es) and "
        "1 before-image(s)"
    ) in " ".join(dry.split())
    assert history(db, 2)["archived_at"] is None

    done = run("cleanup", "--archive-after", "0").stdout
    assert "archived 2 import(s)" in done
    detail = json.loads(run("show", "2", "--json").stdout)
    assert detail["status"] == "success" and detail["archived_at"] is not None
    table_before = rows(db, "signups")

    refused = run("rollback", "2", code=2)
    assert "cannot roll back import 2: it was archived on" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert rows(db, "signups") == table_before
    assert "archived_at" in run("show", "2").stdout


# Dagster -----------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str, db: Database) -> Path:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "signups.yaml").write_text(yaml.safe_dump(SIGNUPS))
    monkeypatch.setenv("HISTIMPORT_HOME", str(tmp_path))
    monkeypatch.setenv("HISTIMPORT_DATABASE_URL", db_url)
    monkeypatch.setenv("HISTIMPORT_DATASETS", str(tmp_path / "datasets"))
    return tmp_path


def test_the_retention_schedule_runs_the_cleanup(
    home: Path, db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DatasetSpec.model_validate(SIGNUPS)
    errors = home / "errors"
    bad = "ID,email,amount\n1,a@example.com,1\n2,nope,2\n"
    result = run_import(
        db, spec, write(home / "signups_1.csv", bad), ImportOptions(error_dir=errors)
    )
    assert result.error_file_path and Path(result.error_file_path).is_file()

    defs = build_definitions({"signups": spec}, {"database": DatabaseResource(url=db_url)})
    schedule = defs.resolve_schedule_def("retention_schedule")
    assert schedule.cron_schedule == RETENTION_CRON
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def("retention_job")
    assert schedule.job_name == job.name
    with dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2030, 1, 2, 3, 30, tzinfo=dt.UTC)
    ) as context:
        [request] = schedule.evaluate_tick(context).run_requests or []

    # The periods come from the settings: 0 days removes and archives everything ended.
    monkeypatch.setenv("HISTIMPORT_RETENTION_DAYS", "0")
    monkeypatch.setenv("HISTIMPORT_ARCHIVE_AFTER_DAYS", "0")
    run = job.execute_in_process(
        run_config=request.run_config,
        tags={**request.tags, "dagster/schedule_name": schedule.name},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert run.success
    after = history(db, result.import_id)
    assert after["archived_at"] is not None and after["error_file_path"] is None
    assert not Path(result.error_file_path).exists()
    assert _failed_row_count(db) == 0
    [entry] = _cleanup_entries(db)
    assert entry["actor"] == "dagster:retention_schedule"
    assert entry["details"]["imports_archived"] == 1
    assert entry["details"]["failed_rows_deleted"] == 1
