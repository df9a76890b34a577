"""The one place that assembles histimport's Dagster definitions.

Everything per dataset is built by factories from the dataset specs in HISTIMPORT_DATASETS,
read when the code location loads (not at import time).
"""

import dagster as dg

from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning, load_specs
from histimport_pipeline.orchestration.assets import DATASET_TAG, build_dataset_asset
from histimport_pipeline.orchestration.checks import build_checks
from histimport_pipeline.orchestration.observations import (
    build_freshness_checks,
    build_observation_sensor,
    build_source_assets,
    with_freshness,
)
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.run_coordinator import JOB_SUFFIX, JOB_TAG
from histimport_pipeline.orchestration.schedules import (
    build_daily_schedule,
    retention_job,
    retention_schedule,
)
from histimport_pipeline.orchestration.sensors import build_inbox_sensor, run_failure_sensor


def import_job_name(spec: DatasetSpec) -> str:
    """Name of the job that imports one partition of a dataset."""
    return spec.name + JOB_SUFFIX


def build_definitions(
    specs: dict[str, DatasetSpec], resources: dict[str, object] | None = None
) -> dg.Definitions:
    """Assets, checks, jobs, sensors and schedules for ``specs``."""
    sources = build_source_assets(specs)
    assets: list[dg.AssetsDefinition] = [sources] if sources is not None else []
    checks: list[dg.AssetChecksDefinition] = []
    freshness_checks: list[dg.AssetChecksDefinition] = []
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [retention_job]
    sensors: list[dg.SensorDefinition] = [run_failure_sensor]
    schedules: list[dg.ScheduleDefinition] = [retention_schedule]
    for spec in specs.values():
        asset = with_freshness(build_dataset_asset(spec), spec)
        assets.append(asset)
        freshness_checks += build_freshness_checks(spec)
        checks += build_checks(spec)
        job = dg.define_asset_job(
            import_job_name(spec),
            selection=dg.AssetSelection.assets(asset).without_checks()
            | dg.AssetSelection.checks_for_assets(asset),
            tags={DATASET_TAG: spec.name, JOB_TAG: import_job_name(spec)},
            description=f"Import one file (partition) of {spec.name}.",
        )
        jobs.append(job)
        sensors.append(build_inbox_sensor(spec, job))
        if spec.partitioning is Partitioning.DAILY:
            schedules.append(build_daily_schedule(spec, job))
    sensors.append(build_observation_sensor(specs, freshness_checks))
    return dg.Definitions(
        assets=assets,
        asset_checks=checks + freshness_checks,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        # One process per run, not per step, for the dataset jobs and for the runs Dagster
        # builds from an asset selection (a backfill): the steps pass a tiny handle and the
        # rows wait in the database, so separate processes only cost start-up time.
        executor=dg.in_process_executor,
        resources=resources
        or {"database": DatabaseResource(url=dg.EnvVar("HISTIMPORT_DATABASE_URL"))},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Definitions for the datasets in HISTIMPORT_DATASETS."""
    return build_definitions(load_specs(Settings.from_env().datasets))
