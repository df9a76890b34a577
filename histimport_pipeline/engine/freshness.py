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
from histimport_pipeline.engine.spec import DatasetSpec

LOADED = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)


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
