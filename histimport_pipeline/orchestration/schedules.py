"""The schedules: per daily dataset, yesterday's partition plus every missing or failed day in
a window; and once a day the retention cleanup (``retention_job``)."""

import datetime as dt
from typing import Any

import dagster as dg

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.freshness import DAILY_SCHEDULE_HOUR
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import cleanup as retention
from histimport_pipeline.orchestration.assets import DATASET_TAG, TRIGGER_TAG
from histimport_pipeline.orchestration.partitions import DEFAULT_START
from histimport_pipeline.orchestration.resources import DatabaseResource

CRON = f"0 {DAILY_SCHEDULE_HOUR} * * *"
#: After the daily imports: the cleanup never competes with them for the database.
RETENTION_CRON = "30 3 * * *"


def dates_to_request(
    database: DatabaseResource, spec: DatasetSpec, today: dt.date, lookback_days: int
) -> list[dt.date]:
    """Yesterday and the days of the look-back window with no successful import."""
    start = max(today - dt.timedelta(days=lookback_days), spec.start_date or DEFAULT_START)
    window = [start + dt.timedelta(days=i) for i in range((today - start).days)]
    with database.database.reader() as conn:
        return tracking.dates_needing_import(conn, database.database, spec.name, window)


def build_daily_schedule(spec: DatasetSpec, job: Any) -> dg.ScheduleDefinition:
    """Request yesterday's partition of ``spec`` and fill the gaps in the look-back window."""

    @dg.schedule(
        name=f"{spec.name}_daily_schedule",
        cron_schedule=CRON,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Imports yesterday's {spec.name} file and any missing or failed day.",
    )
    def daily_schedule(
        context: dg.ScheduleEvaluationContext, database: DatabaseResource
    ) -> list[dg.RunRequest]:
        settings = Settings.from_env()
        scheduled = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        today = scheduled.date()
        dates = dates_to_request(database, spec, today, settings.lookback_days)
        with database.database.engine.begin() as conn:
            tracking.touch_process(
                conn,
                database.database,
                f"schedule:{spec.name}",
                process_type="schedule",
                dataset=spec.name,
                state="scheduled",
                last_run_at=tracking.utcnow(),
                last_run_date=today,
                next_scheduled_run=dt.datetime.combine(
                    today + dt.timedelta(days=1), dt.time(2), tzinfo=dt.UTC
                ),
                configuration={
                    "cron": CRON,
                    "lookback_days": settings.lookback_days,
                    "requested": [d.isoformat() for d in dates],
                },
            )
        return [
            dg.RunRequest(
                run_key=f"{spec.name}:{day.isoformat()}:{today.isoformat()}",
                partition_key=day.isoformat(),
                tags={DATASET_TAG: spec.name, TRIGGER_TAG: "schedule"},
            )
            for day in dates
        ]

    return daily_schedule


@dg.op(
    name="retention_cleanup",
    tags={"histimport/step": "cleanup"},
    description="Remove failed rows and error files past HISTIMPORT_RETENTION_DAYS, archive "
    "imports past HISTIMPORT_ARCHIVE_AFTER_DAYS, fail imports of dead workers, drop leftover "
    "staging tables (as `histimport cleanup`).",
)
def retention_cleanup(context: dg.OpExecutionContext, database: DatabaseResource) -> None:
    """The engine's retention cleanup with the periods from the settings."""
    settings = Settings.from_env()
    counts = retention.cleanup(
        database.database,
        settings.retention_days,
        error_dir=settings.error_dir,
        actor=f"dagster:{context.run.tags.get('dagster/schedule_name') or 'retention_job'}",
        stale_after=dt.timedelta(seconds=settings.stale_after_seconds),
        archive_after_days=settings.archive_after_days,
    )
    context.log.info(
        f"archived {counts['imports_archived']} import(s); removed "
        f"{counts['failed_rows_deleted']} failed-row record(s), "
        f"{counts['error_files_deleted']} error file(s); dropped "
        f"{counts['staging_tables_dropped']} staging table(s)"
    )
    context.add_output_metadata(
        {
            **{k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)},
            "retention_days": settings.retention_days,
            "archive_after_days": settings.archive_after_days,
            "cutoff": counts["cutoff"],
        }
    )


@dg.job(
    name="retention_job",
    description="Apply the retention periods to the tracking tables and the error files.",
)
def retention_job() -> None:
    retention_cleanup()


retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule",
    cron_schedule=RETENTION_CRON,
    job=retention_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs the retention cleanup once a day.",
)
