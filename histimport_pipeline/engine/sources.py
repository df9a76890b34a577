"""What feeds the datasets, looked at cheaply: files waiting in an inbox, and master tables.

Plain Python used by the Dagster observation sensor. Each look costs one directory listing
or two small queries, so it can run every minute; a ``fingerprint`` tells whether anything
changed since the last look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from histimport_pipeline.engine import files
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.spec import DatasetSpec

#: Columns taken for a master table's "last changed" time, in this order of preference.
CHANGE_COLUMNS = (
    "updated_at",
    "modified_at",
    "changed_at",
    "last_modified",
    "last_updated",
    "created_at",
)


@dataclass(frozen=True)
class InboxStats:
    """The files waiting in the inbox for one dataset."""

    files_waiting: int
    bytes_waiting: int
    #: Name and modification time (epoch seconds) of the file that has waited longest.
    oldest_name: str | None
    oldest_mtime: float | None
    #: Links, FIFOs and paths outside the inbox, which the inbox sensor moves to quarantine.
    refused: int
    #: False when the listing stopped at its time budget (the counts are then a lower bound).
    complete: bool

    def oldest_age_seconds(self, now: float) -> float | None:
        """How long the oldest waiting file has been there at ``now`` (epoch seconds)."""
        return None if self.oldest_mtime is None else max(0.0, now - self.oldest_mtime)

    @property
    def fingerprint(self) -> str:
        """Changes when a file arrives, leaves or is rewritten."""
        return f"{self.files_waiting}|{self.bytes_waiting}|{self.oldest_mtime}|{self.refused}"


def inbox_stats(inbox: Path, spec: DatasetSpec, *, budget_s: float = 5.0) -> InboxStats:
    """Count the files in ``inbox`` routed to ``spec`` (its glob and its sub-folder).

    Uses the inbox sensor's own listing (:func:`files.dataset_candidates`), so a file counts
    here exactly when the sensor would consider it; partial and dot-files are left out. No
    file is opened.

    Args:
        budget_s: seconds the listing may take; beyond it the counts are a lower bound.

    Returns:
        The counts, total size and the oldest file by modification time.
    """
    deadline = time.monotonic() + budget_s
    count = size = refused = 0
    oldest: files.Entry | None = None
    for entry in files.dataset_candidates(inbox, spec, deadline=deadline):
        if isinstance(entry, files.Refused):
            refused += 1
            continue
        count += 1
        size += entry.size
        if oldest is None or (entry.mtime_ns, entry.path.name) < (
            oldest.mtime_ns,
            oldest.path.name,
        ):
            oldest = entry
    return InboxStats(
        files_waiting=count,
        bytes_waiting=size,
        oldest_name=oldest.path.name if oldest else None,
        oldest_mtime=oldest.mtime_ns / 1e9 if oldest else None,
        refused=refused,
        complete=time.monotonic() <= deadline,
    )


@dataclass(frozen=True)
class TableStats:
    """A master table's size and when it last changed."""

    table: str
    exists: bool
    row_count: int | None = None
    #: The timestamp column ``last_changed`` is read from (None: the table has none).
    change_column: str | None = None
    last_changed: datetime | None = None
    #: Largest id (as text), part of the fingerprint when there is no timestamp column.
    max_id: str | None = None

    @property
    def fingerprint(self) -> str:
        """Changes when rows are added or removed, or a change timestamp moves."""
        changed = self.last_changed.isoformat() if self.last_changed else None
        return f"{self.exists}|{self.row_count}|{changed}|{self.max_id}"


def master_table_stats(db: Database, table: str, id_column: str | None = "id") -> TableStats:
    """Row count and last change of the master table ``table`` (in the default schema).

    The last change is the largest value of the first of :data:`CHANGE_COLUMNS` the table has
    as a timestamp column; a naive timestamp is taken as UTC. Without one, only the row count
    and the largest ``id_column`` value tell a change: an update that touches neither goes
    unnoticed. One catalog look and one aggregate query; identifiers are quoted by
    SQLAlchemy, nothing from the table reaches SQL as text.

    Returns:
        ``exists=False`` when there is no such table.
    """
    with db.reader() as conn:
        inspector = sa.inspect(conn)
        if not inspector.has_table(table):
            return TableStats(table=table, exists=False)
        columns = {c["name"]: c["type"] for c in inspector.get_columns(table)}
        change = next(
            (
                name
                for name in CHANGE_COLUMNS
                if name in columns and isinstance(columns[name], sa.DateTime)
            ),
            None,
        )
        ident = id_column if id_column in columns else None
        names = [n for n in (change, ident) if n is not None]
        target = sa.table(table, *(sa.column(n) for n in names))
        query = sa.select(
            sa.func.count(),
            sa.func.max(target.c[change]) if change else sa.null(),
            sa.func.max(target.c[ident]) if ident else sa.null(),
        ).select_from(target)
        count, last, top = conn.execute(query).one()
    return TableStats(
        table=table,
        exists=True,
        row_count=int(count),
        change_column=change,
        last_changed=_as_utc(last),
        max_id=None if top is None else str(top),
    )


def _as_utc(value: object) -> datetime | None:
    if isinstance(value, str):
        # SQLite returns max() over a column of text timestamps as text.
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
