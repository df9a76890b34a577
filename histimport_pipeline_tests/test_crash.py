"""Atomicity under SIGKILL, and two processes racing for the same content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import run_import
from histimport_pipeline_tests.helpers import SIGNUPS, rows

pytestmark = pytest.mark.slow

ROWS = 3000
BATCH = 500

CHILD = """
import sys, yaml
from pathlib import Path
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.spec import DatasetSpec
spec = DatasetSpec.model_validate(yaml.safe_load(Path(sys.argv[2]).read_text()))
db = Database.connect(sys.argv[1])
result = run_import(db, spec, Path(sys.argv[3]), ImportOptions(batch_size=int(sys.argv[4])))
print(result.status.value, result.import_id, result.rows_created, flush=True)
"""


def _file(tmp_path: Path, name: str = "signups_big.csv") -> Path:
    lines = ["ID,email,signed_up,amount,note"]
    lines += [f"{i:06d},u{i}@example.com,2024-01-01,{i}.25,n{i}" for i in range(ROWS)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _spec_file(tmp_path: Path, **overrides: object) -> Path:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SIGNUPS, "max_error_ratio": 0.0, **overrides}))
    return path


def _spawn(
    db_url: str, spec: Path, data: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(spec), str(data), str(BATCH)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _count(db: Database, table: str) -> int:
    if not sa.inspect(db.engine).has_table(table):
        return 0
    with db.engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), autoload_with=conn)
        return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())


@pytest.mark.parametrize("point", ["staging", "write", "commit"])
def test_sigkill_leaves_all_or_nothing_and_a_rerun_completes(
    db: Database, db_url: str, tmp_path: Path, point: str
) -> None:
    _kill_at_and_rerun(db, db_url, tmp_path, point, _spec_file(tmp_path))


@pytest.mark.postgres
@pytest.mark.parametrize("point", ["copy", "write", "commit"])
def test_sigkill_during_a_direct_load_leaves_all_or_nothing(
    pg_db: Database, pg_url: str, tmp_path: Path, point: str
) -> None:
    """An append without key on PostgreSQL COPYs the file straight into the target."""
    spec_path = _spec_file(tmp_path, strategy="append", key=[])
    _kill_at_and_rerun(pg_db, pg_url, tmp_path, point, spec_path)
    with pg_db.engine.connect() as conn:
        metadata = conn.execute(sa.select(pg_db.tables.import_history.c.file_metadata)).all()
    assert {m[0]["staged"] for m in metadata if m[0] and "staged" in m[0]} == {False}


def _kill_at_and_rerun(
    db: Database, db_url: str, tmp_path: Path, point: str, spec_path: Path
) -> None:
    data = _file(tmp_path)
    marker = tmp_path / "frozen"
    child = _spawn(
        db_url,
        spec_path,
        data,
        {"HISTIMPORT_FAILPOINT": point, "HISTIMPORT_FAILPOINT_FILE": str(marker)},
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "child never reached the failpoint"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)

    # The target holds none of the killed import (all of it would need a commit).
    assert _count(db, "signups") == 0
    with db.engine.connect() as conn:
        status = conn.execute(sa.select(db.tables.import_history.c.status)).scalar_one()
    assert status == "running"  # what a dead process leaves behind

    rerun = _spawn(db_url, spec_path, data)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert out.split()[0] == "success" and int(out.split()[2]) == ROWS
    loaded = rows(db, "signups", order="signup_id")
    assert len(loaded) == ROWS
    assert len({r["signup_id"] for r in loaded}) == ROWS
    with db.engine.connect() as conn:
        statuses = sorted(conn.execute(sa.select(db.tables.import_history.c.status)).scalars())
        leftovers = [
            n
            for n in sa.inspect(conn).get_table_names(schema=db.schema)
            if n.startswith("hi_stage_")
        ]
    assert statuses == ["failed", "success"]
    assert leftovers == []


def test_two_processes_same_content_exactly_one_loads(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    spec_path = _spec_file(tmp_path)
    first = _file(tmp_path, "signups_a.csv")
    second = tmp_path / "signups_b.csv"
    second.write_bytes(first.read_bytes())
    procs = [_spawn(db_url, spec_path, first), _spawn(db_url, spec_path, second)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outcomes.append(out.split()[0])
    assert sorted(outcomes) == ["duplicate", "success"]
    assert _count(db, "signups") == ROWS


def test_a_failed_import_can_be_retried_without_force(db: Database, tmp_path: Path) -> None:
    """A failure is no claim on the content: once the spec is fixed, the same file imports."""
    from histimport_pipeline_tests.helpers import make_spec

    path = tmp_path / "signups_x.csv"
    path.write_text("Customer Ref,email\n1,x@y.org\n")
    assert run_import(db, make_spec(), path).status is ImportStatus.FAILED
    columns = make_spec().model_dump()["columns"]
    columns["signup_id"]["aliases"] = ["Customer Ref"]
    result = run_import(db, make_spec(columns=columns), path)
    assert result.status is ImportStatus.SUCCESS and result.rows_created == 1


def test_load_refuses_when_the_staged_rows_are_gone(db: Database, tmp_path: Path) -> None:
    """A PostgreSQL restart empties UNLOGGED staging tables: resuming at load must not report
    success with nothing (or part) loaded."""
    from histimport_pipeline.engine import loading, pipeline
    from histimport_pipeline.engine.errors import StagingLostError
    from histimport_pipeline_tests.helpers import make_spec

    spec = make_spec()  # keyed: staged on both databases
    handle = pipeline.start_import(db, spec, _file(tmp_path))
    staged = pipeline.stage_file(db, spec, handle)
    pipeline.reconcile_import(db, spec, handle)
    stage = loading.staging_table(db, spec, handle.import_id)
    with db.engine.begin() as conn:  # what the server's crash recovery does to the table
        conn.execute(sa.delete(stage).where(stage.c._source_row > 10))

    with pytest.raises(StagingLostError) as lost:
        pipeline.load_import(db, spec, handle)
    assert (lost.value.expected, lost.value.found) == (staged.rows_staged, 9)
    assert "Import the file again from the start" in str(lost.value)
    assert (
        not sa.inspect(db.engine).has_table(spec.target_table) or rows(db, spec.target_table) == []
    )
