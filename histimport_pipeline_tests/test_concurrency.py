"""Imports running at the same time, and imports whose process died, through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline_tests.helpers import SIGNUPS

pytestmark = pytest.mark.slow

ROWS = 2000
#: A test fails when a child shows no sign of life for this long (not a budget for success).
STALL_S = 180


def _csv(path: Path, start: int, rows: int = ROWS) -> Path:
    lines = ["ID,email,signed_up,amount,note"]
    lines += [
        f"{i:06d},u{i}@example.com,2024-01-01,{i}.25,n{i}" for i in range(start, start + rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _home(tmp_path: Path, db_url: str, **spec: object) -> dict[str, str]:
    """A HISTIMPORT_HOME with the signups dataset; the environment for `histimport`."""
    datasets = tmp_path / "datasets"
    datasets.mkdir(exist_ok=True)
    raw = {**SIGNUPS, "max_error_ratio": 0.0, **spec}
    (datasets / "signups.yaml").write_text(yaml.safe_dump(raw))
    return {
        "HISTIMPORT_HOME": str(tmp_path / "home"),
        "HISTIMPORT_DATABASE_URL": db_url,
        "HISTIMPORT_DATASETS": str(datasets),
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "histimport_pipeline.cli", *args],
        env={**os.environ, **env, "COLUMNS": "250"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=STALL_S)
    return proc.returncode, out + err


def _wait_for(marker: Path, proc: subprocess.Popen[str]) -> None:
    """Until ``proc`` reached its failpoint (it fails if the child ends first)."""
    deadline = time.monotonic() + STALL_S
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"child ended before its failpoint: {_finish(proc)[1]}")
        assert time.monotonic() < deadline, "child never reached its failpoint"
        time.sleep(0.05)


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Children a test leaves frozen at a failpoint are killed at its end."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.communicate()


def _count(db: Database, table: str) -> int:
    with db.engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), autoload_with=conn)
        return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())


def _imports(db: Database) -> list[dict[str, object]]:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.import_id)).mappings()]


def _staging_tables(db: Database) -> list[str]:
    names = sa.inspect(db.engine).get_table_names(schema=db.schema)
    return sorted(n for n in names if n.startswith("hi_stage_"))


def _freeze(env: dict[str, str], marker: Path, data: Path) -> subprocess.Popen[str]:
    """An import of ``data`` that stops for good after its first staged batch."""
    frozen_env = {
        **env,
        "HISTIMPORT_FAILPOINT": "staging",
        "HISTIMPORT_FAILPOINT_FILE": str(marker),
    }
    return _cli(frozen_env, "import", str(data), "--dataset", "signups")


@pytest.mark.parametrize("strategy", ["upsert", "append", "keyed append"])
def test_five_first_imports_at_once_into_a_fresh_database_all_load(
    empty_db: Database, db_url: str, tmp_path: Path, strategy: str
) -> None:
    """Five processes create the missing target table at the same moment (item 6); on
    SQLite they also migrate the fresh database at the same moment. A keyed append's table
    gets its primary key after its rows (PostgreSQL): the others wait for it."""
    if empty_db.dialect == "postgresql":
        migrations.upgrade(empty_db)  # PostgreSQL is migrated by its operator, not by imports
    key = [] if strategy == "append" else ["signup_id"]
    env = _home(tmp_path, db_url, strategy=strategy.split()[-1], key=key)
    files = [_csv(tmp_path / f"signups_{n}.csv", n * ROWS) for n in range(5)]
    procs = [_cli(env, "import", str(f), "--dataset", "signups") for f in files]
    outcomes = [_finish(p) for p in procs]
    for code, text in outcomes:
        assert code == 0, text
        assert "Traceback" not in text
    assert _count(empty_db, "signups") == 5 * ROWS
    assert sorted(str(i["status"]) for i in _imports(empty_db)) == ["success"] * 5
    if key:
        pk = sa.inspect(empty_db.engine).get_pk_constraint("signups")
        assert pk["constrained_columns"] == key


def test_a_killed_import_is_failed_by_the_next_import_of_another_file(
    db: Database, db_url: str, tmp_path: Path, frozen: list[subprocess.Popen[str]]
) -> None:
    """Item 7: the next import of the dataset (another file) fails the dead one and drops its
    staging table."""
    env = _home(tmp_path, db_url, strategy="upsert")
    marker = tmp_path / "frozen"
    child = _freeze(env, marker, _csv(tmp_path / "signups_a.csv", 0))
    frozen.append(child)
    _wait_for(marker, child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert [str(i["status"]) for i in _imports(db)] == ["running"]
    assert _staging_tables(db) == ["hi_stage_1"]

    code, text = _finish(_cli(env, "import", str(_csv(tmp_path / "signups_b.csv", ROWS))))
    assert code == 0, text
    dead, second = _imports(db)
    assert (dead["status"], second["status"]) == ("failed", "success")
    assert "died" in str(dead["error_message"])
    assert _staging_tables(db) == []
    assert _count(db, "signups") == ROWS


def test_cleanup_fails_a_killed_import_and_drops_its_staging(
    db: Database, db_url: str, tmp_path: Path, frozen: list[subprocess.Popen[str]]
) -> None:
    env = _home(tmp_path, db_url, strategy="upsert")
    marker = tmp_path / "frozen"
    child = _freeze(env, marker, _csv(tmp_path / "signups_a.csv", 0))
    frozen.append(child)
    _wait_for(marker, child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    code, text = _finish(_cli(env, "cleanup"))
    assert code == 0, text
    assert "failed 1 import(s) left running by a dead worker" in " ".join(text.split())
    assert "dropped 1 leftover staging table(s)" in text
    (dead,) = _imports(db)
    assert dead["status"] == "failed" and "died" in str(dead["error_message"])
    assert _staging_tables(db) == []


def test_same_content_while_the_holder_runs_is_no_false_duplicate(
    db: Database, db_url: str, tmp_path: Path, frozen: list[subprocess.Popen[str]]
) -> None:
    """Item 8: while import 1 runs, a second import of the same content waits (here: for at
    most a second) and ends non-zero; once the holder is dead, the next attempt loads."""
    env = _home(tmp_path, db_url, strategy="upsert")
    data = _csv(tmp_path / "signups_a.csv", 0)
    copy = tmp_path / "signups_copy.csv"
    copy.write_bytes(data.read_bytes())
    marker = tmp_path / "frozen"
    holder = _freeze(env, marker, data)
    frozen.append(holder)
    _wait_for(marker, holder)

    code, text = _finish(_cli(env, "import", str(copy), "--wait", "1"))
    assert code == 1, text
    assert "being imported by import 1 (running)" in " ".join(text.split())
    code, text = _finish(_cli(env, "import", str(copy), "--no-wait"))
    assert code == 1 and "being imported by import 1 (running)" in " ".join(text.split())

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    code, text = _finish(_cli(env, "import", str(copy)))
    assert code == 0, text
    statuses = [str(i["status"]) for i in _imports(db)]
    assert statuses == ["failed", "failed", "failed", "success"]
    assert _count(db, "signups") == ROWS


def test_a_waiting_import_takes_over_when_the_holder_dies(
    db: Database, db_url: str, tmp_path: Path, frozen: list[subprocess.Popen[str]]
) -> None:
    """The second import waits for the running holder; when the holder dies meanwhile, it
    loads the content itself instead of reporting a duplicate."""
    env = _home(tmp_path, db_url, strategy="upsert")
    data = _csv(tmp_path / "signups_a.csv", 0)
    marker = tmp_path / "frozen"
    holder = _freeze(env, marker, data)
    frozen.append(holder)
    _wait_for(marker, holder)

    waiter = _cli(env, "import", str(data), "--wait", "600")
    frozen.append(waiter)
    assert waiter.stderr is not None
    seen = ""
    while "waiting for import 1" not in seen:
        line = waiter.stderr.readline()
        assert line, f"the waiter ended without waiting: {seen}{_finish(waiter)[1]}"
        seen += line
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    code, text = _finish(waiter)
    assert code == 0, seen + text
    assert [str(i["status"]) for i in _imports(db)] == ["failed", "success"]
    assert _count(db, "signups") == ROWS


def test_liveness_of_a_worker_elsewhere_is_its_heartbeat(db: Database, tmp_path: Path) -> None:
    """A worker on another host is dead once its heartbeat is older than the threshold; an
    import between two steps (no worker, e.g. the next Dagster op is about to start) is alive
    while its heartbeat is recent, and its steps go on to load."""
    from datetime import timedelta

    from histimport_pipeline.engine import pipeline, tracking
    from histimport_pipeline.engine.tracking import cleanup as retention
    from histimport_pipeline_tests.helpers import make_spec

    spec = make_spec()
    silent = pipeline.start_import(db, spec, _csv(tmp_path / "signups_a.csv", 0, 10))
    recent = pipeline.start_import(db, spec, _csv(tmp_path / "signups_b.csv", 10, 10))
    between = pipeline.start_import(db, spec, _csv(tmp_path / "signups_c.csv", 20, 10))
    pipeline.stage_file(db, spec, between)
    now = tracking.utcnow()
    with db.engine.begin() as conn:
        for handle, age in ((silent, timedelta(minutes=11)), (recent, timedelta(seconds=5))):
            tracking.update_import(
                conn,
                db,
                handle.import_id,
                worker="elsewhere.example:4242",
                heartbeat_at=now - age,
            )

    counts = retention.cleanup(db, stale_after=timedelta(minutes=10))
    assert counts["dead_imports_failed"] == 1
    statuses = {i["import_id"]: i["status"] for i in _imports(db)}
    assert statuses == {
        silent.import_id: "failed",
        recent.import_id: "running",
        between.import_id: "running",
    }
    assert f"hi_stage_{silent.import_id}" not in _staging_tables(db)
    assert f"hi_stage_{recent.import_id}" in _staging_tables(db)

    pipeline.reconcile_import(db, spec, between)
    assert pipeline.load_import(db, spec, between).rows_created == 10
    assert retention.cleanup(db, stale_after=timedelta(minutes=1))["dead_imports_failed"] == 0
    assert retention.cleanup(db, stale_after=timedelta(seconds=1))["dead_imports_failed"] == 1
    assert _staging_tables(db) == []
