"""Dagster wiring: definitions, materializing partitions, sensors, schedule, checks."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import files, migrations, pipeline, tracking, uploads
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.settings import dagster_instance_url
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import history as hist
from histimport_pipeline.engine.tracking import lineage
from histimport_pipeline.orchestration.assets import build_dataset_asset
from histimport_pipeline.orchestration.checks import build_checks
from histimport_pipeline.orchestration.definitions import build_definitions
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.schedules import build_daily_schedule
from histimport_pipeline.orchestration.sensors import INBOX_INTERVAL_S, build_inbox_sensor
from histimport_pipeline_tests.helpers import SIGNUPS, history, rows

GOOD = "ID,email,amount\n007,a@example.com,1.50\n008,b@example.com,2\n009,bad-email,3\n"
DAILY: dict[str, Any] = {
    **SIGNUPS,
    "name": "sessions",
    "target_table": "sessions",
    "files": "sessions_*.csv",
    "partitioning": "daily",
    "strategy": "replace_date",
    "key": [],
    "start_date": "2024-01-01",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    """HISTIMPORT_* pointing into tmp_path, with the signups and sessions specs."""
    return _make_home(tmp_path, monkeypatch, db_url)


def _make_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    for sub in ("inbox", "datasets", "archive", "quarantine"):
        (tmp_path / sub).mkdir()
    (tmp_path / "datasets" / "signups.yaml").write_text(yaml.safe_dump(SIGNUPS))
    (tmp_path / "datasets" / "sessions.yaml").write_text(yaml.safe_dump(DAILY))
    monkeypatch.setenv("HISTIMPORT_HOME", str(tmp_path))
    monkeypatch.setenv("HISTIMPORT_DATABASE_URL", db_url)
    for name in ("INBOX", "DATASETS", "ARCHIVE", "QUARANTINE"):
        monkeypatch.setenv(f"HISTIMPORT_{name}", str(tmp_path / name.lower()))
    db = Database.connect(db_url)
    migrations.upgrade(db)  # `histimport db upgrade`, as the run command does
    db.dispose()
    return tmp_path


def _spec(raw: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate(raw)


def test_definitions_load_from_the_datasets_folder(home: Path, db_url: str) -> None:
    from histimport_pipeline.orchestration.definitions import defs

    loaded = defs()
    graph = loaded.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"signups", "sessions", "inbox/signups", "inbox/sessions"} <= keys
    assert loaded.resolve_job_def("signups_import_job") is not None
    assert loaded.resolve_sensor_def("signups_inbox_sensor") is not None
    assert loaded.resolve_schedule_def("sessions_daily_schedule") is not None
    node_names = {n.name for n in loaded.resolve_job_def("signups_import_job").all_node_defs}
    ops = ("parse", "validate", "reconcile", "confirm", "load")
    assert {f"signups_{op}" for op in ops} <= node_names
    # the runs a sensor or schedule requests name the dataset's job, and say so in a tag
    job_tags = loaded.resolve_job_def("signups_import_job").tags
    assert job_tags["histimport/job"] == "signups_import_job"
    # backfill runs (of the implicit asset job) too run in one process, not one per step
    jobs = loaded.get_repository_def().get_all_jobs()
    assert {j.name: j.executor_def.name for j in jobs}["__ASSET_JOB"] == "in_process"


def test_materialize_a_file_partition(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTIMPORT_WEB_URL", "http://history.test/")
    spec = _spec(SIGNUPS)
    path = home / "inbox" / "signups_1.csv"
    path.write_text(GOOD)
    key = files.partition_key_for(path, files.sha256_of(path))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", [key])
    asset = build_dataset_asset(spec)
    result = dg.materialize(
        [asset, *build_checks(spec)],
        partition_key=key,
        instance=instance,
        resources={"database": DatabaseResource(url=db_url)},
        selection=dg.AssetSelection.assets(asset) | dg.AssetSelection.checks_for_assets(asset),
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["rows_created"] == 2 and meta["rows_failed"] == 1
    assert meta["dagster/row_count"] == 2 and meta["status"] == "partial"
    # with the web service configured, the import and its failed rows link to its page
    page = f"http://history.test/imports/{meta['import_id']}"
    assert (meta["import_page"], meta["failed_rows"]) == (page, f"{page}#failed-rows")
    assert Path(str(meta["failed_rows_csv"])).read_text(encoding="utf-8-sig").count("bad-email")
    db = Database.connect(db_url)
    assert [r["signup_id"] for r in rows(db, "signups")] == ["007", "008"]
    h = history(db, int(meta["import_id"]))
    assert h["partition_key"] == key and h["dagster_run_id"] == result.run_id
    assert h["import_type"] == "MANUAL" and h["source"] == "inbox"
    assert h["error_file_path"] == str(meta["failed_rows_csv"])  # the engine wrote it
    assert h["error_file_path"] == str(home / "errors" / f"import_{h['import_id']}_errors.csv")
    # a partial import is never all green: its failed row is a WARN on the gate check, and
    # every evaluation names the partition it checked
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "failed_share_within_gate": False,
        "no_duplicate_keys": True,
        "references_resolved": True,
        "rows_accounted_for": True,
    }
    gate = evaluations["failed_share_within_gate"]
    assert gate.severity == dg.AssetCheckSeverity.WARN
    assert "1 of 3 rows failed (33.3%), within the gate" in str(gate.description)
    assert {e.partition for e in evaluations.values()} == {key}
    [stored] = _check_history(instance, "failed_share_within_gate")
    assert stored.partition == key and stored.status.value == "FAILED"
    # the imported file left the inbox for the archive, named with its import id
    assert not path.exists()
    archived = list((home / "archive" / "signups").glob(f"{meta['import_id']}__signups_1.csv"))
    assert archived and archived[0].with_name(archived[0].name + ".json").exists()
    db.dispose()


def test_a_bad_file_fails_the_run_and_goes_to_quarantine(home: Path, db_url: str) -> None:
    spec = _spec(SIGNUPS)
    path = home / "inbox" / "signups_bad.csv"
    path.write_text("email\nx@y.org\n")  # no ID column
    key = files.partition_key_for(path, files.sha256_of(path))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", [key])
    result = dg.materialize(
        [build_dataset_asset(spec)],
        partition_key=key,
        instance=instance,
        resources={"database": DatabaseResource(url=db_url)},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "signup_id" in str(failure.event_specific_data)
    assert list((home / "quarantine" / "signups").glob("*__signups_bad.csv"))
    db = Database.connect(db_url)
    with db.engine.connect() as conn:
        status = conn.execute(sa.select(db.tables.import_history.c.status)).scalar_one()
    assert status == "failed"
    db.dispose()


def test_daily_partition_finds_its_file_by_date(home: Path, db_url: str) -> None:
    spec = _spec(DAILY)
    (home / "inbox" / "sessions_2024-01-05.csv").write_text(GOOD.replace("bad-email", "c@x.org"))
    result = dg.materialize(
        [build_dataset_asset(spec)],
        partition_key="2024-01-05",
        instance=dg.DagsterInstance.ephemeral(),
        resources={"database": DatabaseResource(url=db_url)},
    )
    assert result.success
    db = Database.connect(db_url)
    loaded = rows(db, "sessions")
    assert len(loaded) == 3 and {r["_business_date"] for r in loaded} == {dt.date(2024, 1, 5)}
    with db.engine.connect() as conn:
        t = db.tables.import_history
        assert conn.execute(sa.select(t.c.import_type)).scalar_one() == "DAILY"
    db.dispose()


def _tick(
    sensor: dg.SensorDefinition, db_url: str, cursor: str | None, instance: dg.DagsterInstance
) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"database": DatabaseResource(url=db_url)}
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_sensor_waits_for_stable_files_and_refuses_links(home: Path, db_url: str) -> None:
    spec = _spec(SIGNUPS)
    from histimport_pipeline.orchestration.definitions import build_definitions

    job = build_definitions({"signups": spec}).resolve_job_def("signups_import_job")
    sensor = build_inbox_sensor(spec, dg.define_asset_job("signups_import_job"))
    instance = dg.DagsterInstance.ephemeral()
    inbox = home / "inbox"
    (inbox / "signups_a.csv").write_text(GOOD)
    (inbox / "signups_b.csv.part").write_text(GOOD)  # still being written
    (inbox / ".signups_hidden.csv").write_text(GOOD)
    outside = home / "secret.csv"
    outside.write_text("x")
    (inbox / "signups_link.csv").symlink_to(outside)
    os.mkfifo(inbox / "signups_fifo.csv")

    first = _tick(sensor, db_url, None, instance)
    assert first.run_requests == []  # seen once: maybe still being written
    assert not (inbox / "signups_link.csv").is_symlink()  # refused and moved
    quarantined = {p.name for p in (home / "quarantine" / "signups").iterdir()}
    assert {"signups_link.csv", "signups_fifo.csv"} <= quarantined
    assert outside.read_text() == "x"  # the link's target was not touched

    (inbox / "signups_c.csv").write_text(GOOD + "010,d@x.org,1\n")
    second = _tick(sensor, db_url, first.cursor, instance)
    [request] = second.run_requests
    sha = files.sha256_of(inbox / "signups_a.csv")
    assert request.partition_key == f"signups_a-{sha[:12]}"
    assert request.run_key and sha in request.run_key
    parse_config = request.run_config["ops"]["signups"]["ops"]["signups_parse"]["config"]
    assert parse_config["path"].endswith("signups_a.csv")
    dg.validate_run_config(job, request.run_config)  # the real job accepts it
    [added] = second.dynamic_partitions_requests
    assert isinstance(added, dg.AddDynamicPartitionsRequest)
    assert list(added.partition_keys) == [request.partition_key]
    assert json.loads(second.cursor or "{}")["files"]  # c.csv is remembered, not yet ready

    third = _tick(sensor, db_url, second.cursor, instance)
    assert [r.partition_key.split("-")[0] for r in third.run_requests] == ["signups_c"]
    fourth = _tick(sensor, db_url, third.cursor, instance)
    assert fourth.run_requests == []  # nothing requested twice


def test_a_file_untouched_for_a_tick_is_ready_at_the_first_look(home: Path, db_url: str) -> None:
    """A file whose last write is a sensor interval old or more, or an upload the web service
    linked into place whole, is requested at the first look; one written just now waits for
    the second look."""
    spec = _spec(SIGNUPS)
    sensor = build_inbox_sensor(spec, dg.define_asset_job("signups_import_job"))
    instance = dg.DagsterInstance.ephemeral()
    inbox = home / "inbox"
    settled = inbox / "signups_old.csv"
    settled.write_text(GOOD)
    past = time.time() - INBOX_INTERVAL_S - 1
    os.utime(settled, (past, past))
    (inbox / "signups_new.csv").write_text(GOOD + "010,d@x.org,1\n")
    (inbox / "signups").mkdir()
    uploaded = inbox / "signups" / "signups_up.csv"
    uploaded.write_text(GOOD + "011,e@x.org,1\n")
    uploads.sidecar_of(uploaded).write_text(json.dumps({"user": "olga"}))
    first = _tick(sensor, db_url, None, instance)
    requested = {r.tags["histimport/file"]: r for r in first.run_requests}
    assert sorted(requested) == ["signups_old.csv", "signups_up.csv"]
    assert requested["signups_up.csv"].tags["user"] == "olga"
    assert "user" not in requested["signups_old.csv"].tags
    second = _tick(sensor, db_url, first.cursor, instance)
    assert [r.tags["histimport/file"] for r in second.run_requests] == ["signups_new.csv"]


def test_sensor_handles_ten_thousand_files_within_its_budget(home: Path, db_url: str) -> None:
    spec = _spec(SIGNUPS)
    sensor = build_inbox_sensor(spec, dg.define_asset_job("signups_import_job"))
    instance = dg.DagsterInstance.ephemeral()
    for i in range(10_000):
        (home / "inbox" / f"signups_{i:05d}.csv").write_text(f"ID,email\n{i},u{i}@x.org\n")
    first = _tick(sensor, db_url, None, instance)
    second = _tick(sensor, db_url, first.cursor, instance)
    # every file requested once over the two ticks (files written more than a sensor interval
    # before the first look are requested by it), each tick stopping at the scan budget
    requested = [*first.run_requests, *second.run_requests]
    assert len(requested) == 10_000
    assert len({r.partition_key for r in requested}) == 10_000
    cursor = json.loads(second.cursor or "{}")
    assert len(cursor["files"]) == 10_000  # bounded by what is in the inbox


def test_schedule_requests_yesterday_and_the_gaps(home: Path, db_url: str) -> None:
    spec = _spec(DAILY)
    db = Database.connect(db_url)
    today = dt.date(2024, 3, 10)
    with db.engine.begin() as conn:
        for day, status in [(3, "success"), (5, "failed"), (6, "success"), (8, "partial")]:
            tracking.create_import(
                conn,
                db,
                dataset="sessions",
                target_table="sessions",
                import_type="DAILY",
                source="schedule",
                status=status,
                business_date=dt.date(2024, 3, day),
            )
    schedule = build_daily_schedule(spec, dg.define_asset_job("sessions_import_job"))
    with dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 10, 2, tzinfo=dt.UTC),
        resources={"database": DatabaseResource(url=db_url)},
    ) as context:
        requests = list(schedule(context))
    days = sorted(r.partition_key for r in requests)
    # window: the 7 days before today; 3, 6 and 8 are done; 5 failed and is retried
    assert days == ["2024-03-04", "2024-03-05", "2024-03-07", "2024-03-09"]
    assert all(r.tags["histimport/trigger"] == "schedule" for r in requests)
    with db.engine.connect() as conn:
        ps = (
            conn.execute(
                sa.select(db.tables.processing_status).where(
                    db.tables.processing_status.c.process_name == "schedule:sessions"
                )
            )
            .mappings()
            .one()
        )
    assert ps["last_run_date"] == today and ps["next_scheduled_run"] is not None
    db.dispose()


def test_run_failure_marks_unfinished_imports_failed(home: Path, db_url: str) -> None:
    db = Database.connect(db_url)
    with db.engine.begin() as conn:
        import_id = tracking.create_import(
            conn,
            db,
            dataset="signups",
            target_table="signups",
            import_type="DROP",
            source="inbox",
            status="running",
            dagster_run_id="run-123",
        )
    marked = tracking.fail_unfinished_imports_of_run(db, "run-123", "run died")
    assert marked == [import_id]
    assert history(db, import_id)["status"] == "failed"
    assert tracking.fail_unfinished_imports_of_run(db, "run-123", "again") == []
    db.dispose()


def test_an_import_through_a_postgres_backed_instance(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _make_home(tmp_path, monkeypatch, pg_url)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # the shipped production instance file, with its URL from the environment
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"
    (dagster_home / "dagster.yaml").write_text(shipped.read_text())
    monkeypatch.setenv("HISTIMPORT_DAGSTER_PG_URL", dagster_instance_url(pg_url))
    spec = _spec(SIGNUPS)
    path = home / "inbox" / "signups_pg.csv"
    path.write_text(GOOD)
    key = files.partition_key_for(path, files.sha256_of(path))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("signups_files", [key])
        result = dg.materialize(
            [build_dataset_asset(spec)],
            partition_key=key,
            instance=instance,
            resources={"database": DatabaseResource(url=pg_url)},
        )
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.is_success
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "DatasetQueuedRunCoordinator"
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT count(*) FROM runs").scalar_one()
    engine.dispose()
    assert runs == 1  # the run lives in PostgreSQL


def test_definitions_build_with_explicit_resources(db_url: str) -> None:
    defs = build_definitions(
        {"signups": _spec(SIGNUPS)}, resources={"database": DatabaseResource(url=db_url)}
    )
    assert defs.resolve_job_def("signups_import_job") is not None


def test_sensor_removes_file_partitions_past_retention(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTIMPORT_PARTITION_RETENTION_DAYS", "30")
    spec = _spec(SIGNUPS)
    sensor = build_inbox_sensor(spec, dg.define_asset_job("signups_import_job"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", ["old-aaaaaaaaaaaa", "new-bbbbbbbbbbbb"])
    db = Database.connect(db_url)
    long_ago = tracking.utcnow() - dt.timedelta(days=45)
    with db.engine.begin() as conn:
        for key, finished in (("old-aaaaaaaaaaaa", long_ago), ("new-bbbbbbbbbbbb", None)):
            tracking.create_import(
                conn,
                db,
                dataset="signups",
                target_table="signups",
                import_type="DROP",
                source="inbox",
                status="success",
                partition_key=key,
                created_at=finished or tracking.utcnow(),
                finished_at=finished,
            )
    result = _tick(sensor, db_url, None, instance)
    deletes = [
        r
        for r in result.dynamic_partitions_requests or []
        if isinstance(r, dg.DeleteDynamicPartitionsRequest)
    ]
    assert [list(d.partition_keys) for d in deletes] == [["old-aaaaaaaaaaaa"]]
    with db.engine.connect() as conn:  # history stays
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(db.tables.import_history)
            ).scalar_one()
            == 2
        )
    db.dispose()


def test_rerunning_a_partition_finds_its_archived_file(home: Path, db_url: str) -> None:
    """Materializing a file partition again from the UI (no run config) finds the file in the
    archive, and the engine records the re-import as a duplicate of the first."""
    spec = _spec(SIGNUPS)
    path = home / "inbox" / "signups_again.csv"
    path.write_text(GOOD)
    key = files.partition_key_for(path, files.sha256_of(path))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", [key])
    resources = {"database": DatabaseResource(url=db_url)}
    asset = build_dataset_asset(spec)
    first = dg.materialize([asset], partition_key=key, instance=instance, resources=resources)
    assert first.success and not path.exists()
    again = dg.materialize(
        [asset, *build_checks(spec)], partition_key=key, instance=instance, resources=resources
    )
    assert again.success
    [event] = again.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    # nothing loaded: the table still holds the first import's two rows
    assert meta["status"] == "duplicate" and meta["rows_loaded"] == 0
    assert meta["dagster/row_count"] == 2
    [gate] = [
        e for e in again.get_asset_check_evaluations() if e.check_name == "failed_share_within_gate"
    ]
    assert gate.passed and "duplicate" in str(gate.description)
    db = Database.connect(db_url)
    t = db.tables.import_history
    with db.engine.connect() as conn:
        recorded = conn.execute(sa.select(t).order_by(t.c.import_id)).mappings().all()
    # the dropped name, twice; the second time read from the archive, and recorded so
    assert [r["file_name"] for r in recorded] == ["signups_again.csv", "signups_again.csv"]
    assert [r["source"] for r in recorded] == ["inbox", "archive"]
    assert Path(recorded[1]["file_path"]).parent == (home / "archive" / "signups").resolve()
    # a run built from the asset selection carries the tags a sensor's run has
    tags = instance.get_run_by_id(again.run_id).tags  # type: ignore[union-attr]
    assert tags["histimport/dataset"] == "signups"
    assert tags["histimport/trigger"] == "manual"
    assert tags["histimport/file"] == "signups_again.csv"
    db.dispose()


def test_show_and_lineage_name_where_a_moved_file_is_now(home: Path, db_url: str) -> None:
    spec = _spec(SIGNUPS)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"database": DatabaseResource(url=db_url)}
    asset = build_dataset_asset(spec)
    good = home / "inbox" / "signups_moved.csv"
    good.write_text(GOOD)
    bad = home / "inbox" / "signups_nokey.csv"
    bad.write_text("email\nx@y.org\n")  # no ID column: quarantined
    for path in (good, bad):
        key = files.partition_key_for(path, files.sha256_of(path))
        instance.add_dynamic_partitions("signups_files", [key])
        dg.materialize(
            [asset],
            partition_key=key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    db = Database.connect(db_url)
    [archived] = (home / "archive" / "signups").glob("*__signups_moved.csv")
    [quarantined] = (home / "quarantine" / "signups").glob("*__signups_nokey.csv")
    assert history(db, 1)["file_path"] == str(archived.resolve())
    assert history(db, 2)["file_path"] == str(quarantined.resolve())
    assert hist.get_import_detail(db, 1)["file_path"] == str(archived.resolve())
    found = lineage.lineage_of_key(db, spec, {"signup_id": "007"})
    assert found is not None and found["import"]["file_path"] == str(archived.resolve())
    moved = [e for e in hist.get_import_detail(db, 2)["audit_trail"] if e["action"] == "moved"]
    assert moved[0]["details"]["from"] == str(bad.resolve())
    assert moved[0]["details"]["reason"] == "quarantined"
    db.dispose()


def test_a_step_reexecuted_later_adds_its_own_time_not_the_wait(
    tmp_path: Path, db: Database
) -> None:
    """The import's steps as the Dagster ops run them; the load fails (the database went
    away), and the step is re-executed from the UI 800 s later. The recorded total is the
    time spent in the steps, not the span from the first start to the end."""
    spec = _spec(SIGNUPS)
    path = tmp_path / "signups_slow.csv"
    path.write_text(GOOD)
    handle = pipeline.start_import(db, spec, path, pipeline.ImportOptions())
    pipeline.inspect_file(db, spec, handle)
    pipeline.stage_file(db, spec, handle)
    pipeline.reconcile_import(db, spec, handle)
    pipeline.fail_import(
        db, spec, handle, RuntimeError("server closed the connection"), keep_staging=True
    )
    # The wait before the re-execution: every stamp of the first attempt moves 800 s back.
    back = dt.timedelta(seconds=800)
    h, a = db.tables.import_history, db.tables.import_audit_trail
    stamps = ("started_at", "heartbeat_at", "finished_at")
    with db.engine.begin() as conn:
        first = conn.execute(sa.select(h).where(h.c.import_id == handle.import_id)).one()
        conn.execute(
            sa.update(h)
            .where(h.c.import_id == handle.import_id)
            .values({c: getattr(first, c) - back for c in stamps})
        )
        for audit_id, created in conn.execute(
            sa.select(a.c.audit_id, a.c.created_at).where(a.c.import_id == handle.import_id)
        ).all():
            conn.execute(
                sa.update(a).where(a.c.audit_id == audit_id).values(created_at=created - back)
            )
    result = pipeline.load_import(db, spec, handle)
    assert result.status.value == "partial"
    recorded = history(db, handle.import_id)
    phases = sum(recorded["phase_seconds"].values())
    assert set(recorded["phase_seconds"]) >= {"parse", "validate", "load"}
    # the steps' own time, plus the bookkeeping around them; never the 800 s wait
    assert phases <= recorded["total_seconds"] < phases + 5, recorded


def _check_history(instance: dg.DagsterInstance, name: str, dataset: str = "signups") -> list[Any]:
    """The stored executions of one check, newest first, as the UI's checks tab lists them."""
    key = dg.AssetCheckKey(dg.AssetKey(dataset), name)
    return list(instance.event_log_storage.get_asset_check_execution_history(key, limit=20))


def _observations(instance: dg.DagsterInstance, dataset: str = "signups") -> list[Any]:
    records = instance.fetch_observations(dg.AssetKey(dataset), limit=20).records
    return [r.asset_observation for r in records]


def _steps(result: dg.ExecuteInProcessResult, event_type: str) -> list[str]:
    """The op names of the run's steps that had ``event_type``, in order."""
    keys = [e.step_key for e in result.all_events if e.event_type_value == event_type]
    return [str(k).rsplit(".", 1)[-1] for k in keys]


def _materialize_signups(
    home: Path,
    db_url: str,
    text: str,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[dg.ExecuteInProcessResult, Path, dg.DagsterInstance]:
    path = home / "inbox" / "signups_gate.csv"
    path.write_text(text)
    key = files.partition_key_for(path, files.sha256_of(path))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", [key])
    spec = _spec(SIGNUPS)
    result = dg.materialize(
        [build_dataset_asset(spec), *build_checks(spec)],
        partition_key=key,
        instance=instance,
        resources={"database": DatabaseResource(url=db_url)},
        run_config=run_config,
        raise_on_error=False,
        tags=tags,
    )
    return result, path, instance


@pytest.mark.parametrize(
    ("tags", "user_id", "user_email"),
    [
        ({}, f"dagster:{getpass.getuser()}", None),
        ({"user": "ann"}, "ann", None),
        ({"dagster/user": "ann@example.com"}, "ann@example.com", "ann@example.com"),
    ],
    ids=["nobody", "user-tag", "dagster-user-tag"],
)
def test_the_user_who_launched_the_run_is_the_imports_user(
    home: Path, db_url: str, tags: dict[str, str], user_id: str, user_email: str | None
) -> None:
    result, _, _ = _materialize_signups(home, db_url, GOOD, tags=tags)
    assert result.success
    db = Database.connect(db_url)
    (listed,) = hist.list_imports(db)["imports"]
    assert (listed["user_id"], listed["user_email"]) == (user_id, user_email)
    trail = hist.get_import_detail(db, listed["import_id"])["audit_trail"]
    # Every step's entry carries them, whichever op (and process) wrote it.
    assert {e["actor"] for e in trail} == {user_id}
    assert {"parsed", "validated", "confirmed", "loaded", "moved"} <= {e["action"] for e in trail}
    db.dispose()


def test_a_good_import_runs_five_steps_in_order(home: Path, db_url: str) -> None:
    result, _, instance = _materialize_signups(home, db_url, GOOD)
    assert result.success
    order = ["signups_parse", "signups_validate", "signups_reconcile", "signups_confirm"]
    assert _steps(result, "STEP_SUCCESS")[:5] == [*order, "signups_load"]
    # a run built from the asset selection names its dataset's job in a tag
    tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
    assert tags["histimport/job"] == "signups_import_job"


@pytest.mark.parametrize("how", ["spec", "run config"])
def test_a_rejected_import_fails_the_confirm_step_and_never_starts_the_load(
    home: Path, db_url: str, how: str
) -> None:
    """Over the gate the confirm step fails with the engine's sentence, the load step never
    starts, nothing is loaded and the file goes to quarantine."""
    run_config = None
    if how == "spec":
        (home / "datasets" / "signups.yaml").write_text(
            yaml.safe_dump({**SIGNUPS, "max_error_ratio": 0.1})
        )
    else:
        options = {"max_error_ratio": 0.1}
        run_config = {"ops": {"signups": {"ops": {"signups_parse": {"config": options}}}}}
    result, path, instance = _materialize_signups(home, db_url, GOOD, run_config)
    assert not result.success
    assert _steps(result, "STEP_FAILURE") == ["signups_confirm"]
    assert "signups_load" not in _steps(result, "STEP_START")
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    user_failure = failure.step_failure_data.user_failure_data
    message = str(user_failure.description if user_failure else "")
    assert "1 of 3 rows failed (33.3%), above the dataset's limit of 10.0%" in message
    # what to do: a retry of the same file is rejected again; a fixed file or a higher gate
    assert "A retry of the same file is rejected again" in message
    assert '"max_error_ratio": 0.34' in message
    # the failure is the engine's sentence, not chained to the engine's traceback
    error = failure.step_failure_data.error
    assert error is not None and error.cause is None and error.context is None
    # the gate check records a failed ERROR evaluation for the partition, with the figures
    partition = key_of(instance)
    [gate] = _check_history(instance, "failed_share_within_gate")
    assert gate.partition == partition and gate.status.value == "FAILED"
    evaluation = gate.event.dagster_event.event_specific_data
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    figures = {k: v.value for k, v in evaluation.metadata.items()}
    assert figures["failed_share"] == 0.3333 and figures["max_error_ratio"] == "0.1"
    assert "bad-email" in str(figures["top_errors"])
    # the partition says why it did not materialize
    [observed] = _observations(instance)
    assert observed.partition == partition
    why = {k: v.value for k, v in observed.metadata.items()}
    assert why["status"] == "rejected" and why["rows_failed"] == 1
    assert "above the dataset's limit" in str(why["message"])
    assert "histimport errors" in str(why["failed_rows"]) or str(why["failed_rows"]).endswith(
        ".csv"
    )
    assert "drop the fixed file into the inbox" in str(why["what_to_do"])
    db = Database.connect(db_url)
    t = db.tables.import_history
    with db.engine.connect() as conn:
        [recorded] = conn.execute(sa.select(t)).mappings().all()
    assert recorded["status"] == "rejected" and recorded["phase"] == "CONFIRM"
    assert not sa.inspect(db.engine).has_table("signups") or rows(db, "signups") == []
    assert not path.exists()
    assert list((home / "quarantine" / "signups").glob("*__signups_gate.csv"))
    db.dispose()


def key_of(instance: dg.DagsterInstance) -> str:
    """The one signups file partition of a test's instance."""
    [key] = instance.get_dynamic_partitions("signups_files")
    return key


def _signups_job() -> dg.JobDefinition:
    """The signups import job as the code location builds it (reconstructable: a
    re-execution rebuilds it by this name)."""
    from histimport_pipeline.engine.settings import Settings
    from histimport_pipeline.engine.spec import load_specs

    specs = load_specs(Settings.from_env().datasets)
    database = DatabaseResource(url=os.environ["HISTIMPORT_DATABASE_URL"])
    defs = build_definitions(specs, resources={"database": database})
    return defs.resolve_job_def("signups_import_job")


def test_reexecution_from_failure_resumes_at_the_load_after_a_lost_database(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away while the load step runs (after confirm let the import
    through); re-executing the run from failure runs only the load step, which loads."""
    from histimport_pipeline.engine.errors import DatabaseUnavailableError
    from histimport_pipeline.orchestration import assets

    monkeypatch.setattr(assets, "RETRY", dg.RetryPolicy(max_retries=0))
    real_load = pipeline.load_import
    lost = []

    def load_once_lost(*args: Any, **kwargs: Any) -> Any:
        if not lost:
            lost.append(True)
            raise DatabaseUnavailableError("db", "server closed the connection")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_import", load_once_lost)
    path = home / "inbox" / "signups_lost.csv"
    path.write_text(GOOD)
    key = files.partition_key_for(path, files.sha256_of(path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("signups_files", [key])
        job = dg.reconstructable(_signups_job)
        # Dagster caches the rebuilt job per process: this test's home and database, not an
        # earlier test's.
        type(job).get_definition.cache_clear()  # type: ignore[attr-defined]
        type(job).get_repository_definition.cache_clear()  # type: ignore[attr-defined]
        tags = {"dagster/partition": key}
        with dg.execute_job(job, instance, tags=tags, raise_on_error=False) as first:
            assert not first.success
            failed = [
                str(e.step_key).rsplit(".", 1)[-1]
                for e in first.all_events
                if e.event_type_value == "STEP_FAILURE"
            ]
            assert failed == ["signups_load"]
            parent = first.run_id
        options = dg.ReexecutionOptions.from_failure(parent, instance)
        # the UI and the daemon's automatic retries carry the parent's tags (its partition)
        # over to the re-execution; execute_job only does when told
        with dg.execute_job(job, instance, reexecution_options=options, tags=tags) as again:
            assert again.success
            started = [
                str(e.step_key).rsplit(".", 1)[-1]
                for e in again.all_events
                if e.event_type_value == "STEP_START"
            ]
            # the load, then the asset checks; none of the steps that had succeeded
            assert started[0] == "signups_load", started
            assert not {"signups_parse", "signups_confirm"} & set(started), started
    db = Database.connect(db_url)
    assert [r["signup_id"] for r in rows(db, "signups")] == ["007", "008"]
    t = db.tables.import_history
    with db.engine.connect() as conn:
        [recorded] = conn.execute(sa.select(t)).mappings().all()
    assert recorded["status"] == "partial"
    db.dispose()
