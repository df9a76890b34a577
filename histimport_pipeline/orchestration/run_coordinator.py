"""The run queue: Dagster's queued run coordinator, with every run tagged by its dataset.

Runs of a dataset's job carry the job's tags, but runs that Dagster builds from an asset
selection (a partition backfill launched from the UI, "Materialize" on an asset page) are runs
of the implicit ``__ASSET_JOB`` with only Dagster's own tags. Without ``histimport/dataset``
the queue's one-run-per-dataset limit would not hold them, so the coordinator adds the tags
before the run joins the queue. Such a run keeps the name ``__ASSET_JOB``: Dagster stores a
run with its job name before any coordinator sees it and has no way to rename it (an asset
backfill's runs get their job from ``submit_asset_runs.get_job_execution_data_from_run_request``,
which only picks an implicit ``__ASSET_JOB``). So every import run also carries
``histimport/job``, the name of its dataset's job: one filter in the Runs page shows all the
imports of a dataset, whatever launched them. ``deploy/dagster.yaml`` and
``deploy/dagster.local.yaml`` name this class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import dagster as dg

DATASET_TAG = "histimport/dataset"
TRIGGER_TAG = "histimport/trigger"
JOB_TAG = "histimport/job"
BACKFILL_TAG = "dagster/backfill"
JOB_SUFFIX = "_import_job"


def dataset_of(asset_keys: Iterable[dg.AssetKey], job_name: str | None) -> str | None:
    """The dataset a run materialises: its one dataset asset (their keys have one part; the
    inboxes and master tables have two), else the dataset whose import job it runs."""
    datasets = sorted({key.path[0] for key in asset_keys if len(key.path) == 1})
    if len(datasets) == 1:
        return datasets[0]
    if datasets:
        # One run for several datasets (a backfill of all daily datasets for the same dates):
        # the queue can hold it behind only one tag value, so the run names them all.
        return ",".join(datasets)
    if job_name and job_name.endswith(JOB_SUFFIX):
        return job_name[: -len(JOB_SUFFIX)]
    return None


def missing_tags(
    tags: Mapping[str, str], asset_keys: Iterable[dg.AssetKey], job_name: str | None
) -> dict[str, str]:
    """The dataset, job and trigger tags a run lacks (empty when it has them or is no
    import)."""
    added: dict[str, str] = {}
    dataset = tags.get(DATASET_TAG) or dataset_of(asset_keys, job_name)
    if dataset is None:
        return {}
    if DATASET_TAG not in tags:
        added[DATASET_TAG] = dataset
    if JOB_TAG not in tags and "," not in dataset:
        added[JOB_TAG] = dataset + JOB_SUFFIX
    if TRIGGER_TAG not in tags:
        added[TRIGGER_TAG] = "backfill" if BACKFILL_TAG in tags else "manual"
    return added


class DatasetQueuedRunCoordinator(dg.QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags each run with its dataset before queueing it."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        added = missing_tags(run.tags, run.asset_selection or (), run.job_name)
        if added:
            self._instance.add_run_tags(run.run_id, added)
            tagged = self._instance.get_run_by_id(run.run_id)
            if tagged is not None:
                context = context._replace(dagster_run=tagged)
        return super().submit_run(context)
