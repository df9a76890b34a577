"""The run-failure sensor, invoked as the Dagster daemon invokes it: besides the failed
run's own imports, it fails imports whose worker died, whichever run or process they had."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import sqlalchemy as sa

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.sensors import run_failure_sensor


@dg.op
def _boom() -> None:
    raise RuntimeError("the run process was killed")


@dg.job
def _failing_job() -> None:
    _boom()


def _gone_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_import(db: Database, *, run_id: str | None, worker: str | None) -> int:
    with db.engine.begin() as conn:
        return tracking.create_import(
            conn,
            db,
            dataset="signups",
            target_table="signups",
            import_type="DROP",
            source="inbox",
            status="running",
            dagster_run_id=run_id,
            worker=worker,
            heartbeat_at=tracking.utcnow(),
            started_at=tracking.utcnow(),
        )


def _status(db: Database, import_id: int) -> tuple[str, str | None]:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(t.c.status, t.c.error_message).where(t.c.import_id == import_id)
        ).one()
    return row.status, row.error_message


def test_the_run_failure_sensor_fails_the_runs_imports_and_those_of_dead_workers(
    db: Database, db_url: str
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = _failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    host = tracking.worker_id().rpartition(":")[0]
    of_the_run = _running_import(db, run_id=result.run_id, worker=tracking.worker_id())
    dead = _running_import(db, run_id="another-run", worker=f"{host}:{_gone_pid()}")
    alive = _running_import(db, run_id="a-live-run", worker=tracking.worker_id())

    with dg.build_run_status_sensor_context(
        sensor_name="histimport_run_failure_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"database": DatabaseResource(url=db_url)},
    ) as context:
        run_failure_sensor(context.for_run_failure())

    status, message = _status(db, of_the_run)
    assert status == "failed" and message and result.run_id in message
    status, message = _status(db, dead)
    assert status == "failed"
    assert message and "died" in message and "run-failure sensor" in message
    assert _status(db, alive)[0] == "running"  # a live worker is left alone
