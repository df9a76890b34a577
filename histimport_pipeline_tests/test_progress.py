"""Live progress of a running import (``rows_done``, ``rows_expected``, ``progress_percent``,
``progress_updated_at``): written while it runs, read by ``history``, ``show --watch`` and
liveness; on SQLite and PostgreSQL."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from histimport_pipeline.cli import app
from histimport_pipeline.engine import migrations, pipeline, tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.tracking import history
from histimport_pipeline_tests.helpers import make_spec
from histimport_pipeline_tests.test_cli import cli_env, histimport

PROGRESS = ("rows_done", "rows_expected", "progress_percent", "progress_updated_at")
#: Seconds a wait may see nothing move before the test fails (never a budget for the whole).
IDLE_S = 120.0


def signups_file(path: Path, n: int) -> Path:
    """A signups file (the CLI test datasets' layout) of ``n`` valid rows."""
    with path.open("w") as fh:
        fh.write("ID,email,amount\n")
        fh.writelines(f"{i:07d},user{i}@example.com,{i % 500}.25\n" for i in range(n))
    return path


def progress_of(db: Database, import_id: int) -> dict[str, Any]:
    return history.import_progress(db, import_id)


def wait_for(what: str, check: Callable[[], Any], alive: Callable[[], bool]) -> Any:
    """Poll ``check`` until it returns something truthy; fail when ``alive`` says the other
    side stopped, or nothing came for ``IDLE_S`` seconds."""
    idle_since = time.monotonic()
    while True:
        found = check()
        if found:
            return found
        assert alive(), f"stopped before {what}"
        assert time.monotonic() - idle_since < IDLE_S, f"nothing moved for {IDLE_S} s: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_rows_done_grows_while_the_file_is_read_and_ends_at_100(
    db: Database, tmp_path: Path, every_s: float
) -> None:
    n = 20_000
    path = signups_file(tmp_path / "signups_1.csv", n)
    seen: list[dict[str, Any]] = []

    def after_batch(_rows_read: int) -> None:
        [row] = history.list_imports(db, limit=1)["imports"]
        seen.append(progress_of(db, row["import_id"]))

    # The Python reader in batches of 1,000: twenty batches, each a chance to write progress.
    options = ImportOptions(progress_every_s=every_s, batch_size=1_000, columnar=False)
    result = run_import(db, make_spec(), path, options, after_batch)

    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert len(seen) == n // 1_000
    assert {s["phase"] for s in seen} == {"VALIDATE"}
    done = [s["rows_done"] for s in seen]
    if every_s == 0:
        assert done == [1_000 * (i + 1) for i in range(len(seen))]
        # Estimated from the bytes read: about the file's rows, exact at its end.
        assert all(0.5 * n <= s["rows_expected"] <= 2 * n for s in seen)
        assert seen[-1]["rows_expected"] == n and seen[-1]["progress_percent"] == 100.0
        assert 0 < seen[0]["progress_percent"] < 50
        stamps = [s["progress_updated_at"] for s in seen]
        assert stamps == sorted(stamps)
    else:  # throttled: only the phase's start was written
        assert set(done) == {0}
    final = progress_of(db, result.import_id)
    assert final["status"] == "success" and final["phase"] == "COMPLETE"
    assert (final["rows_done"], final["rows_expected"], final["progress_percent"]) == (n, n, 100)
    assert final["progress_updated_at"] is not None


def test_the_load_phase_is_written_before_the_load_and_kept_alive_during_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen inside the load transaction (after the target write, before the commit): the
    row says LOAD, 0 of the rows to load; on PostgreSQL its progress stamp keeps moving
    meanwhile (a keep-alive); on SQLite nothing writes while the import holds the lock, and
    the import ends without a "database is locked"."""
    n = 3_000
    path = signups_file(tmp_path / "signups_1.csv", n)
    frozen, resume = tmp_path / "frozen", tmp_path / "resume"
    monkeypatch.setenv("HISTIMPORT_FAILPOINT", "write")
    monkeypatch.setenv("HISTIMPORT_FAILPOINT_FILE", str(frozen))
    monkeypatch.setenv("HISTIMPORT_FAILPOINT_RESUME", str(resume))
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(
            run_import(db, make_spec(), path, ImportOptions(progress_every_s=0))
        )
    )
    worker.start()
    try:
        wait_for("the load's failpoint", frozen.exists, worker.is_alive)
        during = progress_of(db, 1)
        assert (during["status"], during["phase"]) == ("running", "LOAD")
        assert (during["rows_done"], during["rows_expected"]) == (0, n)
        assert during["progress_percent"] == 0
        if db.dialect == "postgresql":

            def stamped_again() -> bool:
                later = progress_of(db, 1)["progress_updated_at"]
                return bool(later > during["progress_updated_at"])

            wait_for("a keep-alive stamp", stamped_again, worker.is_alive)
    finally:
        resume.touch()
        worker.join()
    [result] = results
    assert result.status is ImportStatus.SUCCESS, result.error_message
    final = progress_of(db, 1)
    assert (final["phase"], final["rows_done"], final["progress_percent"]) == ("COMPLETE", n, 100)


@pytest.mark.postgres
def test_a_direct_load_counts_the_rows_written_block_by_block(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load step of an append without key (Dagster's step by step) COPYs the file into
    the target in blocks: frozen after the first block, the row says LOAD and how many rows
    that block wrote, while the load transaction is still open."""
    n = 200_000  # about 7 MB: a few 2 MiB blocks
    path = signups_file(tmp_path / "signups_1.csv", n)
    spec = make_spec(strategy="append", key=[])
    options = ImportOptions(progress_every_s=0)
    handle = pipeline.start_import(pg_db, spec, path, options)
    pipeline.stage_file(pg_db, spec, handle, options)
    pipeline.reconcile_import(pg_db, spec, handle)
    assert pipeline.confirm_import(pg_db, spec, handle, options) is None
    frozen, resume = tmp_path / "frozen", tmp_path / "resume"
    monkeypatch.setenv("HISTIMPORT_FAILPOINT", "copy")
    monkeypatch.setenv("HISTIMPORT_FAILPOINT_FILE", str(frozen))
    monkeypatch.setenv("HISTIMPORT_FAILPOINT_RESUME", str(resume))
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(pipeline.load_import(pg_db, spec, handle, options))
    )
    worker.start()
    try:
        wait_for("the first block COPYed", frozen.exists, worker.is_alive)
        during = progress_of(pg_db, handle.import_id)
        assert (during["status"], during["phase"], during["rows_expected"]) == (
            "running",
            "LOAD",
            n,
        )
        assert 0 < during["rows_done"] < n
        assert during["progress_percent"] == round(100 * during["rows_done"] / n, 1)
    finally:
        resume.touch()
        worker.join()
    [result] = results
    assert result.status is ImportStatus.SUCCESS and result.rows_created == n
    final = progress_of(pg_db, handle.import_id)
    assert (final["rows_done"], final["progress_percent"]) == (n, 100)


def test_a_failed_import_keeps_where_it_stopped(db: Database, tmp_path: Path) -> None:
    # 60% of the rows fail, over the gate: rejected, never loaded.
    path = tmp_path / "signups_1.csv"
    path.write_text("ID,email\n1,a@example.com\n2,bad\n3,bad\n4,bad\n5,b@example.com\n")
    result = run_import(db, make_spec(), path, ImportOptions(progress_every_s=0))
    assert result.status is ImportStatus.REJECTED
    final = progress_of(db, result.import_id)
    # The checked rows were on their way to the load: none of the 2 valid rows went.
    assert final["phase"] == "CONFIRM"
    assert (final["rows_done"], final["rows_expected"], final["progress_percent"]) == (0, 2, 0)


def test_a_sqlite_progress_write_is_skipped_while_another_holds_the_lock(
    sqlite_url: str,
) -> None:
    """Another import's long load holds SQLite's write lock: a progress write neither waits
    for it (the busy timeout is minutes) nor fails with "database is locked"; once the lock
    is free the next one is written."""
    db = Database.connect(sqlite_url)
    migrations.upgrade(db)
    t = db.tables.import_history
    with db.engine.begin() as conn:
        import_id = int(
            conn.execute(
                sa.insert(t)
                .values(
                    dataset="signups",
                    target_table="signups",
                    import_type="MANUAL",
                    source="cli",
                    status="running",
                )
                .returning(t.c.import_id)
            ).scalar_one()
        )
    writer = tracking.ProgressWriter(db, import_id, 0.0)
    with db.engine.begin() as holder:  # BEGIN IMMEDIATE: the write lock, until the block ends
        holder.execute(sa.update(t).values(triggered_by="the other import"))
        t0 = time.monotonic()
        writer.rows(10, 100)
        waited = time.monotonic() - t0
    assert waited < 30  # not the 300 s busy timeout
    assert progress_of(db, import_id)["rows_done"] is None  # skipped
    writer.rows(20, 100)
    row = progress_of(db, import_id)
    assert (row["rows_done"], row["rows_expected"], row["progress_percent"]) == (20, 100, 20)
    db.dispose()


def test_liveness_reads_the_progress_stamp(db: Database) -> None:
    """A worker on another host that sends progress (a PostgreSQL load) but no heartbeat is
    alive; one that sends neither is dead."""
    t = db.tables.import_history
    old = tracking.utcnow() - timedelta(hours=1)
    with db.engine.begin() as conn:
        ids = [
            int(
                conn.execute(
                    sa.insert(t)
                    .values(
                        dataset="signups",
                        target_table="signups",
                        import_type="MANUAL",
                        source="cli",
                        status="running",
                        phase="LOAD",
                        worker="another-host:1",
                        heartbeat_at=old,
                        progress_updated_at=stamp,
                    )
                    .returning(t.c.import_id)
                ).scalar_one()
            )
            for stamp in (tracking.utcnow(), old)
        ]
    dead = tracking.fail_dead_imports(db, "signups", stale_after=timedelta(minutes=10))
    assert dead == [ids[1]]
    assert progress_of(db, ids[0])["status"] == "running"


def test_migration_0005_adds_and_removes_the_progress_columns(empty_db: Database) -> None:
    def columns() -> set[str]:
        schema = empty_db.schema
        return {
            c["name"] for c in sa.inspect(empty_db.engine).get_columns("import_history", schema)
        }

    migrations.upgrade(empty_db)
    assert columns() >= set(PROGRESS)
    assert migrations.downgrade(empty_db, "0004")[-1] == "0005"  # and any later ones
    assert columns() & set(PROGRESS) == set()
    assert "rows_deleted" in columns()
    migrations.upgrade(empty_db)
    assert columns() >= set(PROGRESS)


def _frozen_import(tmp_path: Path, db_url: str, n: int) -> tuple[dict[str, str], Any, Path, Path]:
    """``histimport import`` of an ``n``-row file in a process of its own, frozen after its
    first staged batch until the returned resume file exists."""
    env = cli_env(tmp_path, db_url)
    path = signups_file(tmp_path / "signups_1.csv", n)
    frozen, resume = tmp_path / "frozen", tmp_path / "resume"
    child = histimport(
        env
        | {
            "HISTIMPORT_PROGRESS_EVERY_S": "0",
            "HISTIMPORT_FAILPOINT": "staging",
            "HISTIMPORT_FAILPOINT_FILE": str(frozen),
            "HISTIMPORT_FAILPOINT_RESUME": str(resume),
        },
        "import",
        str(path),
    )
    wait_for("the import's first batch", frozen.exists, lambda: child.poll() is None)
    return env, child, resume, path


RUNNING_PROGRESS = re.compile(r"VALIDATE [\d,]+ of [\d,]+ rows \(\d+\.\d%\)")


def test_history_shows_a_running_imports_percent(db: Database, db_url: str, tmp_path: Path) -> None:
    env, child, resume, _ = _frozen_import(tmp_path, db_url, 30_000)
    try:
        runner = CliRunner()
        listed = runner.invoke(app, ["history"], env=env)
        assert listed.exit_code == 0, listed.output
        [line] = [x for x in listed.stdout.splitlines() if "signups_1.csv" in x]
        assert "running" in line and RUNNING_PROGRESS.search(line), listed.stdout
        shown = runner.invoke(app, ["show", "1"], env=env)
        assert RUNNING_PROGRESS.search(shown.stdout), shown.stdout
    finally:
        resume.touch()
        _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err
    ended = CliRunner().invoke(app, ["history"], env=env)
    [line] = [x for x in ended.stdout.splitlines() if "signups_1.csv" in x]
    assert "success" in line and "%" not in line, ended.stdout
    [row] = history.list_imports(db)["imports"]
    assert (row["rows_done"], row["progress_percent"]) == (30_000, 100)


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The lines of ``stream`` as they come (``None`` at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for text in stream:
            lines.put(text.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_show_watch_follows_a_running_import_to_its_end(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    env, child, resume, _ = _frozen_import(tmp_path, db_url, 60_000)
    watch = histimport(env, "show", "1", "--watch")
    try:
        assert watch.stderr is not None
        progress = _lines(watch.stderr)
        first = progress.get(timeout=IDLE_S)  # the watcher's first look: the frozen import
        assert first is not None and first.startswith("import 1: VALIDATE"), first
        assert RUNNING_PROGRESS.search(first), first
    finally:
        resume.touch()
        _, import_err = child.communicate(timeout=600)
    assert child.returncode == 0, import_err
    out, _ = watch.communicate(timeout=600)
    rest: list[str] = []
    while (text := progress.get(timeout=IDLE_S)) is not None:
        rest.append(text)
    assert watch.returncode == 0, rest
    assert out.startswith("import 1: success"), out
    assert "progress" in out and "COMPLETE 60,000 of 60,000 rows (100.0%)" in out, out
    # Each line a move: forward within a phase, the phases in pipeline order.
    moves = [re.match(r"import 1: (\w+) ([\d,]+)", text) for text in [first, *rest]]
    seen = [(m.group(1), int(m.group(2).replace(",", ""))) for m in moves if m]
    order = ["VALIDATE", "RECONCILE", "CONFIRM", "LOAD"]
    assert seen == sorted(seen, key=lambda move: (order.index(move[0]), move[1])), seen
    assert len(set(seen)) == len(seen), seen


def test_show_watch_of_an_ended_import_exits_as_the_import_did(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, db_url)
    bad = tmp_path / "signups_1.csv"
    bad.write_text("ID,email,amount\n1,bad,1\n2,bad,2\n3,c@example.com,3\n")
    good = signups_file(tmp_path / "signups_2.csv", 10)
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(bad)], env=env).exit_code == 1  # rejected
    assert runner.invoke(app, ["import", str(good)], env=env).exit_code == 0
    rejected = runner.invoke(app, ["show", "1", "--watch"], env=env)
    assert rejected.exit_code == 1 and "rejected" in rejected.stdout
    loaded = runner.invoke(app, ["show", "2", "--watch"], env=env)
    assert loaded.exit_code == 0 and "success" in loaded.stdout
    assert runner.invoke(app, ["show", "1"], env=env).exit_code == 0  # without --watch: 0


def test_show_watch_fails_an_import_whose_worker_died(
    db: Database, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher reads without SQLAlchemy, but failing a dead import writes: it opens the
    database for that when its liveness check comes round."""
    import socket
    import subprocess
    import sys

    from histimport_pipeline.cli import watch

    env = cli_env(tmp_path, db_url)
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["import", str(signups_file(tmp_path / "signups_1.csv", 5))], env=env
        ).exit_code
        == 0
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    h = db.tables.import_history
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(h)
            .where(h.c.import_id == 1)
            .values(status="running", worker=f"{socket.gethostname()}:{gone.stdout.strip()}")
        )
    monkeypatch.setattr(watch, "POLL_S", 0.01)
    monkeypatch.setattr(watch, "LIVENESS_EVERY_S", 0.0)
    result = runner.invoke(app, ["show", "1", "--watch"], env=env)
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "died" in result.stdout
    assert progress_of(db, 1)["status"] == "failed"


def test_the_throttle_comes_from_the_environment(tmp_path: Path) -> None:
    from histimport_pipeline.engine.settings import Settings, SettingsError

    assert Settings.from_env({}, cwd=tmp_path).progress_every_s == 2.0
    env = {"HISTIMPORT_PROGRESS_EVERY_S": "0.5"}
    assert Settings.from_env(env, cwd=tmp_path).progress_every_s == 0.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(SettingsError, match="HISTIMPORT_PROGRESS_EVERY_S"):
            Settings.from_env({"HISTIMPORT_PROGRESS_EVERY_S": bad}, cwd=tmp_path)
