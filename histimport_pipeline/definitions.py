"""The one place that assembles histimport's Dagster definitions."""

from __future__ import annotations

import dagster as dg

from histimport_pipeline.resources import DatabaseResource

defs = dg.Definitions(
    resources={
        "database": DatabaseResource(url=dg.EnvVar("HISTIMPORT_DATABASE_URL")),
    },
)
