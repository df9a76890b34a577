"""Freshness: how recent a dataset's data must be before it counts as stale."""

from __future__ import annotations

from pydantic import Field, field_validator

from histimport_pipeline.engine.spec.base import StrictModel


class FreshnessSpec(StrictModel):
    """When a dataset is stale.

    ``max_lag_hours`` applies to any dataset: stale once its last successful import is older.
    ``deadline_hour`` applies to daily datasets: stale once yesterday's business date is not
    loaded by that hour (UTC) today; unset means one hour after the daily schedule. A daily
    dataset is checked by its deadline even without a ``freshness`` entry; ``freshness:
    null`` turns both off.
    """

    max_lag_hours: float | None = Field(default=None, gt=0)
    deadline_hour: int | None = Field(default=None, ge=0, le=23)

    @field_validator("max_lag_hours")
    @classmethod
    def _at_least_a_minute(cls, value: float | None) -> float | None:
        # Dagster evaluates freshness windows no finer than a minute.
        if value is not None and value * 60 < 1:
            raise ValueError("max_lag_hours must be at least one minute (0.0167 hours)")
        return value
