"""Observed sources and freshness: what the Dagster UI shows about the inboxes, the master
tables and how recent each dataset is.

* The inboxes (``inbox/<dataset>``) and master tables (``masters/<entity>``) are observable
  source assets. ``histimport_observation_sensor`` looks at them every minute and records an
  observation (files waiting and the oldest one's age; row count and last change) when
  something changed, and at least every ``REFRESH_S`` seconds otherwise, without a run.
  "Observe" on their page does the same look in a run.
* Each dataset with a ``freshness`` spec gets a Dagster freshness policy (the UI's Freshness
  status, kept by the daemon) and an asset check that asks the import history: ``max_lag``
  (last successful import within ``max_lag_hours``) and, for daily datasets,
  ``daily_deadline`` (yesterday's business date loaded by the deadline hour). The sensor
  runs a check when its verdict changes or its "fresh until" time has passed; the import
  runs evaluate the checks too.
"""

import datetime as dt
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from histimport_pipeline.engine import freshness, sources
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.freshness import DAILY_CHECK, LAG_CHECK, FreshnessVerdict
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning
from histimport_pipeline.orchestration.assets import external_assets, inbox_key, master_key
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.run_coordinator import TRIGGER_TAG

OBSERVATION_SENSOR = "histimport_observation_sensor"
#: Seconds after which an unchanged source is observed again (its age, "latest observation").
REFRESH_S = 15 * 60
#: Seconds the inbox listings of one tick may take together.
LISTING_BUDGET_S = 10.0


def freshness_policy(spec: DatasetSpec) -> dg.FreshnessPolicy | None:
    """The Dagster freshness policy of a dataset asset, from its spec.

    ``max_lag_hours``: a materialization within that window. Otherwise, for a daily dataset:
    a materialization since the previous day's deadline, due at the deadline hour (UTC).
    """
    spec_freshness = spec.freshness
    if spec_freshness is None:
        return None
    if spec_freshness.max_lag_hours is not None:
        return dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(hours=spec_freshness.max_lag_hours)
        )
    if spec.partitioning is Partitioning.DAILY:
        return dg.FreshnessPolicy.cron(
            deadline_cron=f"0 {freshness.deadline_hour(spec)} * * *",
            lower_bound_delta=dt.timedelta(hours=24),
        )
    return None


def with_freshness(asset: dg.AssetsDefinition, spec: DatasetSpec) -> dg.AssetsDefinition:
    """``asset`` with the freshness policy of ``spec`` attached (unchanged without one)."""
    policy = freshness_policy(spec)
    if policy is None:
        return asset
    return asset.map_asset_specs(lambda s: dg.apply_freshness_policy(s, policy))


def _check_names(spec: DatasetSpec) -> list[str]:
    if spec.freshness is None:
        return []
    names = [LAG_CHECK] if spec.freshness.max_lag_hours is not None else []
    return names + ([DAILY_CHECK] if spec.partitioning is Partitioning.DAILY else [])


def _check_result(verdict: FreshnessVerdict) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {}
    for name, value in verdict.facts.items():
        if isinstance(value, dt.datetime):
            metadata[name] = dg.MetadataValue.timestamp(value)
        elif value is not None:
            metadata[name] = value
    if verdict.fresh_until is not None:
        metadata["fresh_until"] = dg.MetadataValue.timestamp(verdict.fresh_until)
    return dg.AssetCheckResult(
        passed=verdict.fresh, description=verdict.description, metadata=metadata
    )


def build_freshness_checks(spec: DatasetSpec) -> list[dg.AssetChecksDefinition]:
    """The freshness checks of one dataset (none without a ``freshness`` spec)."""
    lag = spec.freshness.max_lag_hours if spec.freshness else None
    hour = freshness.deadline_hour(spec)
    descriptions = {
        LAG_CHECK: f"The last successful import finished within {lag or 0:g} h.",
        DAILY_CHECK: f"Yesterday's business date is loaded by {hour:02d}:00 UTC.",
    }

    def build(name: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=dg.AssetKey(spec.name), name=name, description=descriptions[name])
        def freshness_check(database: DatabaseResource) -> dg.AssetCheckResult:
            now = dt.datetime.now(dt.UTC)
            verdict = freshness.freshness_verdicts(spec, database.database, now, only=name)[name]
            return _check_result(verdict)

        return freshness_check

    return [build(name) for name in _check_names(spec)]


def _entities(specs: dict[str, DatasetSpec]) -> dict[str, str]:
    """Master entity -> the id column its references name (the first one, by dataset)."""
    out: dict[str, str] = {}
    for spec in sorted(specs.values(), key=lambda s: s.name):
        for ref in spec.references.values():
            out.setdefault(ref.entity, ref.id_column)
    return out


def inbox_metadata(stats: sources.InboxStats, now: float) -> dict[str, Any]:
    """What an inbox observation shows."""
    age = stats.oldest_age_seconds(now)
    meta: dict[str, Any] = {
        "files_waiting": stats.files_waiting,
        "bytes_waiting": stats.bytes_waiting,
        "oldest_age_minutes": round(age / 60, 1) if age is not None else 0.0,
    }
    if stats.oldest_name is not None and stats.oldest_mtime is not None:
        meta["oldest_file"] = stats.oldest_name
        meta["oldest_waiting_since"] = dg.MetadataValue.timestamp(stats.oldest_mtime)
    if stats.refused:
        meta["refused_waiting"] = stats.refused
    if not stats.complete:
        meta["listing_incomplete"] = True
    return meta


def master_metadata(stats: sources.TableStats) -> dict[str, Any]:
    """What a master table observation shows."""
    if not stats.exists:
        return {"exists": False}
    meta: dict[str, Any] = {"exists": True, "dagster/row_count": stats.row_count or 0}
    if stats.last_changed is not None and stats.change_column is not None:
        meta["last_changed"] = dg.MetadataValue.timestamp(stats.last_changed)
        meta["change_column"] = stats.change_column
        meta["dagster/last_updated_timestamp"] = dg.MetadataValue.timestamp(stats.last_changed)
    if stats.max_id is not None:
        meta["max_id"] = stats.max_id
    return meta


def _looks(
    specs: dict[str, DatasetSpec], settings: Settings, db: Database, now: float
) -> Iterator[tuple[dg.AssetKey, str, dict[str, Any], str | None]]:
    """(key, fingerprint, metadata, description) of every source, one cheap look each."""
    budget = LISTING_BUDGET_S / max(len(specs), 1)
    for spec in sorted(specs.values(), key=lambda s: s.name):
        inbox = sources.inbox_stats(settings.inbox, spec, budget_s=budget)
        yield inbox_key(spec), inbox.fingerprint, inbox_metadata(inbox, now), None
    for entity, id_column in sorted(_entities(specs).items()):
        table = sources.master_table_stats(db, entity, id_column)
        missing = None if table.exists else f"table {entity} is missing in the target database"
        yield master_key(entity), table.fingerprint, master_metadata(table), missing


def build_source_assets(specs: dict[str, DatasetSpec]) -> dg.AssetsDefinition | None:
    """The inboxes and master tables as observable source assets (None when there are none)."""
    source_specs = external_assets(specs)
    if not source_specs:
        return None

    def observe_sources(
        context: dg.AssetExecutionContext, database: DatabaseResource
    ) -> Iterator[dg.ObserveResult]:
        wanted = set(context.selected_asset_keys)
        for key, _, metadata, _ in _looks(
            specs, Settings.from_env(), database.database, time.time()
        ):
            if key in wanted:
                yield dg.ObserveResult(asset_key=key, metadata=metadata)

    # The decorator is marked beta; its documented form is all this uses.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.multi_observable_source_asset(
            specs=source_specs,
            name="histimport_sources",
            description="Look at the inboxes (files waiting) and master tables (rows, last "
            "change).",
            can_subset=True,
        )(observe_sources)


def _due_checks(
    specs: dict[str, DatasetSpec],
    db: Database,
    previous: dict[str, list[Any]],
    now: dt.datetime,
) -> tuple[list[dg.AssetCheckKey], dict[str, list[Any]]]:
    """Checks whose verdict changed, was never seen, or whose "fresh until" has passed."""
    due: list[dg.AssetCheckKey] = []
    state: dict[str, list[Any]] = {}
    for spec in sorted(specs.values(), key=lambda s: s.name):
        for name, verdict in freshness.freshness_verdicts(spec, db, now).items():
            key = dg.AssetCheckKey(dg.AssetKey(spec.name), name)
            until = verdict.fresh_until.timestamp() if verdict.fresh_until else None
            fresh, seen_until = (previous.get(key.to_user_string()) or [None, None])[:2]
            expired = fresh and seen_until is not None and now.timestamp() >= seen_until
            if fresh is None or fresh != verdict.fresh or expired:
                due.append(key)
                state[key.to_user_string()] = [verdict.fresh, until]
            else:
                state[key.to_user_string()] = [fresh, seen_until]
    return due, state


def build_observation_sensor(
    specs: dict[str, DatasetSpec], freshness_checks: Sequence[dg.AssetChecksDefinition]
) -> dg.SensorDefinition:
    """Observe the sources every minute and run the freshness checks whose verdict moved."""

    @dg.sensor(
        name=OBSERVATION_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.checks(*freshness_checks) if freshness_checks else None,
        description="Records what waits in each inbox and the size and last change of each "
        "master table; runs a dataset's freshness check when its verdict changes.",
    )
    def observation_sensor(
        context: dg.SensorEvaluationContext, database: DatabaseResource
    ) -> dg.SensorResult:
        previous = json.loads(context.cursor) if context.cursor else {}
        seen: dict[str, list[Any]] = previous.get("sources", {})
        now = time.time()
        db = database.database
        events: list[dg.AssetObservation] = []
        kept: dict[str, list[Any]] = {}
        for key, fingerprint, metadata, description in _looks(specs, Settings.from_env(), db, now):
            name = key.to_user_string()
            last = seen.get(name)
            if last is None or last[0] != fingerprint or now - float(last[1]) >= REFRESH_S:
                events.append(
                    dg.AssetObservation(asset_key=key, metadata=metadata, description=description)
                )
                kept[name] = [fingerprint, now]
            else:
                kept[name] = last
        due, checks = _due_checks(specs, db, previous.get("checks", {}), dt.datetime.now(dt.UTC))
        runs = (
            [dg.RunRequest(asset_check_keys=due, tags={TRIGGER_TAG: "freshness"})]
            if due and freshness_checks
            else []
        )
        skip = None if events or runs else "no source changed and no freshness verdict moved"
        return dg.SensorResult(
            run_requests=runs,
            asset_events=events,
            cursor=json.dumps({"sources": kept, "checks": checks}),
            skip_reason=skip,
        )

    return observation_sensor
