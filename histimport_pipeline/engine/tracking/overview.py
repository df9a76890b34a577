"""Per-dataset overview: what the datasets page of the web service shows.

Each dataset's processes (``processing_status``), its last import and last success, its
freshness verdicts and its activity per day (imports by status, rows loaded). Also the lookup
an upload is followed by: the newest import of one file content; and the first failed
rows an import's page shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import freshness
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.freshness import LOADED
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import failed_rows
from histimport_pipeline.engine.tracking.history import plain_row

#: The columns of a dataset's last import in the overview.
_LAST_IMPORT = ("import_id", "status", "file_name", "started_at", "finished_at", "error_message")


def process_statuses(db: Database, dataset: str | None = None) -> list[dict[str, Any]]:
    """The ``processing_status`` rows (one per sensor, schedule and CLI process), by name.

    Args:
        dataset: only the processes of this dataset; ``None`` for all of them.
    """
    t = db.tables.processing_status
    query = sa.select(t).order_by(t.c.process_name)
    if dataset is not None:
        query = query.where(t.c.dataset == dataset)
    with db.reader() as conn:
        return [plain_row(r) for r in conn.execute(query).mappings()]


def dataset_overview(
    db: Database, specs: Mapping[str, DatasetSpec], now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """One entry per dataset spec, by name: what it is and how its imports stand.

    Returns:
        Dicts with ``name``, ``description``, ``target_table``, ``partitioning``,
        ``strategy``, ``files``, ``spec`` (the whole spec, JSON-ready), ``imports`` (how many
        are recorded), ``last_import`` (the
        newest, or ``None``), ``last_success_at``, ``processes`` (its ``processing_status``
        rows) and ``freshness`` (one verdict per freshness check: ``check``, ``fresh``,
        ``description``, ``fresh_until``).
    """
    now = now or dt.datetime.now(dt.UTC)
    h = db.tables.import_history
    with db.reader() as conn:
        counts: dict[str, int] = dict(
            conn.execute(sa.select(h.c.dataset, sa.func.count()).group_by(h.c.dataset)).all()
        )
        newest = dict(
            conn.execute(
                sa.select(h.c.dataset, sa.func.max(h.c.import_id)).group_by(h.c.dataset)
            ).all()
        )
        last_rows = {
            r["dataset"]: plain_row(r)
            for r in conn.execute(
                sa.select(h.c.dataset, *(h.c[c] for c in _LAST_IMPORT)).where(
                    h.c.import_id.in_(list(newest.values()) or [-1])
                )
            ).mappings()
        }
    processes = process_statuses(db)
    out = []
    for name in sorted(specs):
        spec = specs[name]
        with db.reader() as conn:
            last_success = freshness.last_loaded_at(conn, db, name)
        last = last_rows.get(name)
        out.append(
            {
                "name": name,
                "description": spec.description,
                "target_table": spec.target_table,
                "partitioning": spec.partitioning.value,
                "strategy": spec.strategy.value,
                "files": spec.files,
                "spec": spec.model_dump(mode="json", exclude_none=True),
                "imports": int(counts.get(name, 0)),
                "last_import": {c: last[c] for c in _LAST_IMPORT} if last else None,
                "last_success_at": last_success,
                "processes": [p for p in processes if p["dataset"] == name],
                "freshness": [
                    {
                        "check": check,
                        "fresh": verdict.fresh,
                        "description": verdict.description,
                        "fresh_until": verdict.fresh_until,
                    }
                    for check, verdict in freshness.freshness_verdicts(spec, db, now).items()
                ],
            }
        )
    return out


def daily_activity(
    db: Database, dataset: str | None = None, days: int = 30, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Imports per day by status and rows loaded per day, for the last ``days`` days (UTC).

    Every day of the window is present, oldest first, including days without imports. The day
    of an import is the day it was created. Rows loaded are the rows created and updated by
    the day's successful and partial imports.

    Returns:
        Dicts with ``day`` (a date), ``by_status`` (status -> imports) and ``rows_loaded``.
    """
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    first = now.date() - dt.timedelta(days=max(days, 1) - 1)
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    h = db.tables.import_history
    query = sa.select(h.c.created_at, h.c.status, h.c.rows_created, h.c.rows_updated).where(
        h.c.created_at >= start
    )
    if dataset is not None:
        query = query.where(h.c.dataset == dataset)
    window = [first + dt.timedelta(days=i) for i in range((now.date() - first).days + 1)]
    by_day: dict[dt.date, dict[str, Any]] = {
        d: {"day": d, "by_status": {}, "rows_loaded": 0} for d in window
    }
    with db.reader() as conn:
        # One pass over the window's rows: the day is cut in Python, the same on both backends
        # (SQLite keeps timestamps as text, PostgreSQL in the session's time zone).
        for created, status, created_rows, updated_rows in conn.execute(query):
            stamp = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
            entry = by_day.get(stamp.astimezone(dt.UTC).date())
            if entry is None:
                continue
            entry["by_status"][status] = entry["by_status"].get(status, 0) + 1
            if status in LOADED:
                entry["rows_loaded"] += int(created_rows or 0) + int(updated_rows or 0)
    return [by_day[d] for d in window]


def latest_import_of_content(db: Database, dataset: str, sha256: str) -> dict[str, Any] | None:
    """The newest import of the file content ``sha256`` into ``dataset``, or ``None``.

    Returns:
        ``import_id``, ``status``, ``phase`` and ``created_at`` of that import.
    """
    h = db.tables.import_history
    query = (
        sa.select(h.c.import_id, h.c.status, h.c.phase, h.c.created_at)
        .where(h.c.dataset == dataset, h.c.file_sha256 == sha256)
        .order_by(h.c.import_id.desc())
        .limit(1)
    )
    with db.reader() as conn:
        row = conn.execute(query).mappings().first()
    return plain_row(row) if row else None


def first_failed_rows(db: Database, import_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The first ``limit`` failed-row records of an import, by source row (what the import's
    page shows above the link to the whole CSV).

    Returns:
        Dicts with ``source_row``, ``column_name``, ``category``, ``message``, ``raw_value``
        and ``raw_values`` (original header -> original text); an import without failed rows
        (or whose records the retention removed) gives an empty list.

    Raises:
        ImportNotFoundError: no import with that id.
    """
    return list(failed_rows.iter_failed_rows(db, import_id, limit=limit))
