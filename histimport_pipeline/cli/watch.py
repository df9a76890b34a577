"""``histimport show ID --watch``: follow a running import's live progress until it ends.

On a terminal, a progress bar (rich) on stderr; to a pipe or file, one line on stderr each time
the progress moves. The values are the ones the import writes on ``import_history`` (see
``engine.tracking.progress``); the HTTP API reads the same ones.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from histimport_pipeline.cli.common import err

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.dbapi import Reader
    from histimport_pipeline.engine.settings import Settings

#: ``ACTIVE``, spelled out: the engine loads only when a command runs.
ACTIVE = ("running", "pending")

#: Seconds between two looks at the import.
POLL_S = 0.5
#: Seconds between two checks that its worker is still alive (a dead one would be followed
#: forever: it is marked failed, as the next import of its dataset would).
LIVENESS_EVERY_S = 10.0


def progress_text(row: Mapping[str, Any]) -> str:
    """``VALIDATE 1,200 of ~5,000 rows (24.0%)``: a running import's phase and progress;
    the phase alone while nothing was counted yet."""
    phase = row.get("phase") or ""
    done, expected = row.get("rows_done"), row.get("rows_expected")
    if done is None:
        return phase
    of = f" of {expected:,}" if expected is not None else ""
    pct = row.get("progress_percent")
    share = f" ({pct:.1f}%)" if pct is not None else ""
    return f"{phase} {done:,}{of} rows{share}".strip()


def follow(settings: Settings, db: Database | Reader, import_id: int) -> dict[str, Any]:
    """Poll the import until it is no longer running or pending, showing its progress.

    Returns:
        Its last progress row (``history.import_progress``), once it ended.

    Raises:
        ImportNotFoundError: no import with that id.
    """
    from histimport_pipeline.engine.tracking import history

    row = history.import_progress(db, import_id)
    if row["status"] not in ACTIVE:
        return row
    if sys.stderr.isatty():
        return _follow_with_bar(settings, db, row)
    return _follow_with_lines(settings, db, row)


def _next(
    settings: Settings, db: Database | Reader, row: dict[str, Any], checked: list[float]
) -> Any:
    """The import's row after one poll, having failed it if its worker died."""
    time.sleep(POLL_S)
    if time.monotonic() - checked[0] >= LIVENESS_EVERY_S:
        checked[0] = time.monotonic()
        from histimport_pipeline.engine import tracking
        from histimport_pipeline.engine.dbapi import Reader

        # Failing a dead import writes: through SQLAlchemy, opened now if not yet.
        tracking.fail_dead_imports(
            db.database if isinstance(db, Reader) else db,
            row["dataset"],
            stale_after=timedelta(seconds=settings.stale_after_seconds),
            found_by="histimport show --watch",
        )
    from histimport_pipeline.engine.tracking import history

    return history.import_progress(db, row["import_id"])


def _follow_with_lines(
    settings: Settings, db: Database | Reader, row: dict[str, Any]
) -> dict[str, Any]:
    shown = None
    checked = [time.monotonic()]
    while row["status"] in ACTIVE:
        text = f"import {row['import_id']}: {progress_text(row)}"
        if text != shown:
            err.print(text, highlight=False, soft_wrap=True)
            shown = text
        row = _next(settings, db, row, checked)
    return row


def _follow_with_bar(
    settings: Settings, db: Database | Reader, row: dict[str, Any]
) -> dict[str, Any]:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    checked = [time.monotonic()]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None, counts="")
        while row["status"] in ACTIVE:
            done, expected = row.get("rows_done"), row.get("rows_expected")
            counts = f"{done:,} of {expected:,} rows" if done is not None and expected else ""
            bar.update(
                task,
                description=escape(f"{row['file_name'] or row['import_id']} {row['phase'] or ''}"),
                total=expected or None,
                completed=done or 0,
                counts=counts,
            )
            row = _next(settings, db, row, checked)
    return row
