"""Sensors: one inbox sensor per dataset, and a run-failure sensor for runs that died."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from histimport_pipeline.engine import files, tracking, uploads
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning
from histimport_pipeline.orchestration.assets import (
    DATASET_TAG,
    FILE_TAG,
    TRIGGER_TAG,
    parse_run_config,
)
from histimport_pipeline.orchestration.partitions import file_partitions_name
from histimport_pipeline.orchestration.resources import DatabaseResource

#: Seconds a sensor tick may spend listing and hashing (Dagster's tick timeout is 60 s).
SCAN_BUDGET_S = 20.0
#: Seconds between two looks at an inbox. A file no write has touched for that long is
#: ready at its first look (the same evidence as two looks, a tick sooner).
INBOX_INTERVAL_S = 5
#: The sensor's minimum interval. The daemon looks at its sensors every 5 s (its loop); a
#: minimum of 5 s made a tick that came a little early wait for the next loop, 10 s apart.
INBOX_TICK_S = 2
#: File partitions removed per tick at most, so one tick never runs long.
MAX_PARTITION_DELETES = 500


def build_inbox_sensor(spec: DatasetSpec, job: Any) -> dg.SensorDefinition:
    """Watch the inbox for ``spec``'s files and request one run per new, stable file."""

    @dg.sensor(
        name=f"{spec.name}_inbox_sensor",
        job=job,
        minimum_interval_seconds=INBOX_TICK_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Imports files dropped into the inbox for {spec.name}.",
    )
    def inbox_sensor(
        context: dg.SensorEvaluationContext, database: DatabaseResource
    ) -> dg.SensorResult:
        settings = Settings.from_env()
        previous = json.loads(context.cursor) if context.cursor else {}
        result = files.scan(
            settings.inbox,
            spec,
            previous.get("files", {}),
            budget_s=SCAN_BUDGET_S,
            settled_after_s=INBOX_INTERVAL_S,
            known_complete=uploads.is_upload,
        )
        for refused in result.refused:
            moved = files.move_aside(
                refused.path,
                settings.quarantine,
                spec.name,
                None,
                {"status": "refused", "reason": refused.reason},
            )
            context.log.warning(f"refused {refused.path}: {refused.reason}; moved to {moved}")
        requests: list[dg.RunRequest] = []
        new_keys: list[str] = []
        for ready in result.ready:
            if spec.partitioning is Partitioning.DAILY:
                day = spec.business_date(ready.path.name)
                if day is None:
                    moved = files.move_aside(
                        ready.path,
                        settings.quarantine,
                        spec.name,
                        None,
                        {"status": "refused", "reason": "no business date in the file name"},
                    )
                    context.log.warning(f"{ready.path.name} has no date; moved to {moved}")
                    continue
                key = day.isoformat()
            else:
                key = files.partition_key_for(ready.path, ready.sha256)
                new_keys.append(key)
            tags = {DATASET_TAG: spec.name, TRIGGER_TAG: "sensor", FILE_TAG: ready.path.name[:200]}
            # A file uploaded through the web service is imported as its uploader.
            uploader = uploads.uploader_of(ready.path)
            if uploader:
                tags["user"] = uploader
                uploads.forget_uploader(ready.path)
            requests.append(
                dg.RunRequest(
                    run_key=f"{spec.name}:{ready.sha256}:{ready.mtime_ns}",
                    partition_key=key,
                    run_config=parse_run_config(spec, ready.path),
                    tags=tags,
                )
            )
        partition_requests: list[
            dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest
        ] = []
        if new_keys:
            partition_requests.append(
                dg.AddDynamicPartitionsRequest(file_partitions_name(spec), new_keys)
            )
        if spec.partitioning is Partitioning.FILE:
            expired = _expired_partitions(context, spec, database, settings)
            if expired:
                partition_requests.append(
                    dg.DeleteDynamicPartitionsRequest(file_partitions_name(spec), expired)
                )
        with database.database.engine.begin() as conn:
            tracking.touch_process(
                conn,
                database.database,
                f"sensor:{spec.name}",
                process_type="sensor",
                dataset=spec.name,
                state="watching",
                last_run_at=tracking.utcnow(),
                configuration={"inbox": str(settings.inbox), "files": spec.files},
            )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=partition_requests,
            cursor=json.dumps({"files": result.state}),
            skip_reason=None
            if requests
            else f"no new stable files ({result.waiting} still being written or seen once)",
        )

    return inbox_sensor


def _expired_partitions(
    context: dg.SensorEvaluationContext,
    spec: DatasetSpec,
    database: DatabaseResource,
    settings: Settings,
) -> list[str]:
    keys = context.instance.get_dynamic_partitions(file_partitions_name(spec))
    if not keys:
        return []
    cutoff = datetime.now(UTC) - timedelta(days=settings.partition_retention_days)
    with database.database.reader() as conn:
        expired = tracking.expired_partition_keys(conn, database.database, spec.name, keys, cutoff)
    return expired[:MAX_PARTITION_DELETES]


@dg.run_failure_sensor(
    name="histimport_run_failure_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks imports failed when their run died without recording it.",
)
def run_failure_sensor(context: dg.RunFailureSensorContext, database: DatabaseResource) -> None:
    """Mark imports of a failed run that are still 'running', and any import whose worker died,
    as failed."""
    run = context.dagster_run
    reason = f"Dagster run {run.run_id} failed: {context.failure_event.message or 'no message'}"
    marked = tracking.fail_unfinished_imports_of_run(database.database, run.run_id, reason[:2000])
    marked += tracking.fail_dead_imports(database.database, found_by="the run-failure sensor")
    if marked:
        context.log.info(f"marked imports {marked} failed")
