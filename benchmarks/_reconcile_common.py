"""Shared by the reconciliation benchmarks: run one import as a user would."""

from __future__ import annotations

import time
from pathlib import Path

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline import ImportResult, run_import
from histimport_pipeline.engine.spec import DatasetSpec


def import_file(
    db: Database, spec: DatasetSpec, path: Path
) -> tuple[ImportResult, dict[str, float]]:
    """``run_import`` timed; returns the result and seconds per phase."""
    t0 = time.perf_counter()
    result = run_import(db, spec, path)
    seconds = {k: float(v) for k, v in result.phase_seconds.items()}
    seconds["import_total"] = time.perf_counter() - t0
    return result, seconds
