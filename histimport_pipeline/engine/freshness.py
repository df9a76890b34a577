"""Whether a dataset's data is fresh, by its spec's ``freshness`` and the import history.

A dataset's data is what its successful imports loaded: ``success`` and ``partial``
imports count (whatever started them: the sensor, the schedule, a backfill or the CLI);
failed, rejected, duplicate and rolled-back ones do not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning

LOADED = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)
#: The hour (UTC) of the daily schedule that imports yesterday's files.
DAILY_SCHEDULE_HOUR = 2
#: The names of the two freshness checks.
LAG_CHECK = "max_lag"
DAILY_CHECK = "daily_deadline"


@dataclass(frozen=True)
class FreshnessVerdict:
    """One evaluation: fresh or stale, why, and until when a fresh verdict holds."""

    fresh: bool
    description: str
    #: When a fresh verdict may turn stale with no new import (None: stale, or never).
    fresh_until: dt.datetime | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def last_loaded_at(conn: sa.Connection, db: Database, dataset: str) -> dt.datetime | None:
    """When the newest successful import of ``dataset`` finished (UTC), or None."""
    t = db.tables.import_history
    value = conn.execute(
        sa.select(sa.func.max(sa.func.coalesce(t.c.finished_at, t.c.created_at))).where(
            t.c.dataset == dataset, t.c.status.in_(LOADED)
        )
    ).scalar_one()
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def lag_verdict(
    conn: sa.Connection, db: Database, spec: DatasetSpec, max_lag_hours: float, now: dt.datetime
) -> FreshnessVerdict:
    """Fresh when the last successful import of ``spec`` finished within ``max_lag_hours``."""
    last = last_loaded_at(conn, db, spec.name)
    window = dt.timedelta(hours=max_lag_hours)
    facts: dict[str, Any] = {"max_lag_hours": max_lag_hours, "last_loaded_at": last}
    if last is None:
        return FreshnessVerdict(False, f"{spec.name} has no successful import yet", facts=facts)
    lag = now - last
    facts["lag_hours"] = round(lag.total_seconds() / 3600, 2)
    if lag > window:
        return FreshnessVerdict(
            False,
            f"the last successful import of {spec.name} finished {_hours(lag)} ago, more than "
            f"{max_lag_hours:g} h: drop a new file or look at the failed runs",
            facts=facts,
        )
    return FreshnessVerdict(
        True,
        f"the last successful import of {spec.name} finished {_hours(lag)} ago",
        fresh_until=last + window,
        facts=facts,
    )


def expected_business_date(now: dt.datetime, deadline_hour: int) -> tuple[dt.date, dt.datetime]:
    """The latest business date that must be loaded at ``now`` and the deadline it had.

    Yesterday once today's deadline (``deadline_hour`` UTC) has passed, else the day before.
    """
    now = now.astimezone(dt.UTC)
    deadline = dt.datetime.combine(now.date(), dt.time(deadline_hour), tzinfo=dt.UTC)
    if now < deadline:
        deadline -= dt.timedelta(days=1)
    return deadline.date() - dt.timedelta(days=1), deadline


def daily_verdict(
    conn: sa.Connection, db: Database, spec: DatasetSpec, deadline_hour: int, now: dt.datetime
) -> FreshnessVerdict:
    """Fresh when the business date due by the last deadline has a successful import."""
    day, deadline = expected_business_date(now, deadline_hour)
    facts: dict[str, Any] = {"expected_date": day.isoformat(), "deadline": deadline}
    next_deadline = deadline + dt.timedelta(days=1)
    if spec.start_date is not None and day < spec.start_date:
        return FreshnessVerdict(
            True,
            f"no business date of {spec.name} is due yet (start_date {spec.start_date})",
            fresh_until=next_deadline,
            facts=facts,
        )
    t = db.tables.import_history
    loaded = conn.execute(
        sa.select(sa.func.count()).where(
            t.c.dataset == spec.name, t.c.business_date == day, t.c.status.in_(LOADED)
        )
    ).scalar_one()
    if not loaded:
        return FreshnessVerdict(
            False,
            f"{spec.name} for {day} is not loaded, due by {deadline:%Y-%m-%d %H:%M} UTC: drop "
            f"its file into the inbox or run the partition {day}",
            facts=facts,
        )
    return FreshnessVerdict(
        True, f"{spec.name} for {day} is loaded", fresh_until=next_deadline, facts=facts
    )


def _hours(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} min"


def default_deadline_hour() -> int:
    """One hour after the daily schedule's hour: its run has had that long to load."""
    return (DAILY_SCHEDULE_HOUR + 1) % 24


def deadline_hour(spec: DatasetSpec) -> int:
    """The hour (UTC) by which a daily dataset's yesterday must be loaded."""
    chosen = spec.freshness.deadline_hour if spec.freshness else None
    return default_deadline_hour() if chosen is None else chosen


def freshness_verdicts(
    spec: DatasetSpec, db: Database, now: dt.datetime, only: str | None = None
) -> dict[str, FreshnessVerdict]:
    """The verdict of each freshness check of ``spec`` (by check name) at ``now``.

    Args:
        only: one check name (:data:`LAG_CHECK` or :data:`DAILY_CHECK`), or all of them.

    Returns:
        An empty dict for a dataset whose spec turns freshness off.
    """
    spec_freshness = spec.freshness
    if spec_freshness is None:
        return {}
    out: dict[str, FreshnessVerdict] = {}
    with db.reader() as conn:
        if spec_freshness.max_lag_hours is not None and only in (None, LAG_CHECK):
            out[LAG_CHECK] = lag_verdict(conn, db, spec, spec_freshness.max_lag_hours, now)
        if spec.partitioning is Partitioning.DAILY and only in (None, DAILY_CHECK):
            out[DAILY_CHECK] = daily_verdict(conn, db, spec, deadline_hour(spec), now)
    return out
