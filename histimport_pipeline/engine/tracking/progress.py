"""Live progress of a running import: ``rows_done`` of ``rows_expected`` in its current phase,
``progress_percent`` and ``progress_updated_at`` on its ``import_history`` row.

What the values mean: the phase named by ``phase`` goes through ``rows_expected`` rows and has
gone through ``rows_done``. VALIDATE reads the file (``rows_expected`` is estimated from the
bytes read and the file's size until the end of the file, then exact); RECONCILE resolves the
staged rows (its start and its end: it works set-wise); LOAD writes the rows to load (block by
block for a direct COPY load, else its start and its end). An import that ends ``success`` or
``partial`` ends at 100 % with ``rows_done`` = ``rows_processed``; one that fails keeps where it
stopped.

Writes go through a :class:`ProgressWriter`, each in a short transaction of its own on a
connection of its own (never the import's: the load runs in one transaction that others must
not wait for), at most every ``every_s`` seconds (``HISTIMPORT_PROGRESS_EVERY_S``). Phase
changes are written at once.

Why they never block the import:

* PostgreSQL: the load transaction does not update the import's row until its very end (its
  foreign keys only take key-share locks, which a progress update does not conflict with), so
  progress writes go on during the load; a keep-alive thread stamps ``progress_updated_at``
  while one long statement (an ``INSERT ... SELECT``) runs, which is what liveness reads for
  a worker on another host (see ``liveness``).
* SQLite: a writing transaction holds the database's single write lock, and during the load
  the lock holder is this very process, so a second connection would wait for itself. So no
  progress is written while the import's own write transaction is open
  (:meth:`ProgressWriter.holding_lock`): the phase change to LOAD is written just before it
  and the final values inside it. Outside it, a progress write waits only briefly for another
  import's lock, and is skipped (the next one is due soon) rather than failing the import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.dbapi import SQLITE_BUSY_TIMEOUT_S
from histimport_pipeline.engine.models import ImportPhase, ImportStatus
from histimport_pipeline.engine.tracking.records import utcnow

#: Seconds between two progress writes of one import (``HISTIMPORT_PROGRESS_EVERY_S``).
PROGRESS_EVERY_S = 2.0
#: Milliseconds a SQLite progress write waits for another import's write lock before it is
#: skipped.
SQLITE_PROGRESS_WAIT_MS = 200
#: Fewest seconds between two keep-alive stamps during a long load statement.
KEEP_ALIVE_MIN_S = 0.5
_ACTIVE = (ImportStatus.RUNNING.value, ImportStatus.PENDING.value)


def percent(done: int | None, expected: int | None) -> float | None:
    """``done`` of ``expected`` as a percentage (0-100, one decimal); ``None`` when unknown."""
    if done is None or expected is None:
        return None
    if expected <= 0:
        return 100.0
    return round(min(100.0, 100.0 * done / expected), 1)


def estimate_rows(done: int, bytes_read: int | None, file_size: int | None) -> int | None:
    """The rows a file holds, estimated from the ``done`` rows in its first ``bytes_read``
    bytes; ``None`` when the bytes are unknown (a workbook) or nothing was read yet."""
    if not bytes_read or not file_size or done <= 0:
        return None
    if bytes_read >= file_size:
        return done
    return max(done, round(done * file_size / bytes_read))


def final_values(rows_done: Any) -> dict[str, Any]:
    """The progress columns of an import that ended loaded: 100 % with ``rows_done``
    (a value or a column expression) done of as many expected."""
    return {
        "rows_done": rows_done,
        "rows_expected": rows_done,
        "progress_percent": 100.0,
        "progress_updated_at": utcnow(),
    }


class ProgressWriter:
    """Writes one import's progress (see the module docstring for when and why).

    Args:
        db: the target database.
        import_id: the import.
        every_s: fewest seconds between two row-count writes (0: every call writes).
        enabled: ``False`` when the caller's transaction holds everything (a dry run): nothing
            it writes is seen by anyone, so nothing is written.
    """

    def __init__(self, db: Database, import_id: int, every_s: float, *, enabled: bool = True):
        self._db = db
        self._import_id = import_id
        self._every_s = max(0.0, every_s)
        self._enabled = enabled
        self._held = False
        self._last = float("-inf")
        self._lock = threading.Lock()

    def start(self, phase: ImportPhase, expected: int | None, done: int = 0) -> None:
        """A phase begins (or its row count becomes known): written at once."""
        self._write(phase.value, (done, expected))

    def rows(self, done: int, expected: int | None) -> None:
        """``done`` rows of ``expected`` (``None``: not known yet): written when due."""
        if time.monotonic() - self._last < self._every_s:
            return
        self._write(None, (done, expected))

    @contextmanager
    def holding_lock(self) -> Iterator[None]:
        """The import's own write transaction is open: on SQLite it holds the database's write
        lock, so nothing is written until it ends (on PostgreSQL writes go on)."""
        held, self._held = self._held, self._db.dialect == "sqlite"
        try:
            yield
        finally:
            self._held = held

    @contextmanager
    def keeping_alive(self) -> Iterator[None]:
        """While one long statement runs: on PostgreSQL a thread stamps
        ``progress_updated_at`` every ``every_s`` seconds (at least ``KEEP_ALIVE_MIN_S``) so a
        watcher sees the import alive. The thread is stopped before this returns, so the
        caller may then update the row in its transaction."""
        if not self._enabled or self._db.dialect != "postgresql":
            yield
            return
        stop = threading.Event()
        interval = max(self._every_s, KEEP_ALIVE_MIN_S)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self._write(None, None)
                except Exception:  # the load meets the same trouble and reports it
                    return

        thread = threading.Thread(target=beat, name="histimport-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _write(self, phase: str | None, counts: tuple[int, int | None] | None) -> None:
        """One progress write: the phase and the counts when given, the time always."""
        if not self._enabled or self._held:
            return
        t = self._db.tables.import_history
        values: dict[str, Any] = {"progress_updated_at": utcnow()}
        if phase is not None:
            values["phase"] = phase
        if counts is not None:
            done, expected = counts
            values |= {
                "rows_done": done,
                "rows_expected": expected,
                "progress_percent": percent(done, expected),
            }
        query = (
            sa.update(t)
            .where(t.c.import_id == self._import_id, t.c.status.in_(_ACTIVE))
            .values(**values)
        )
        with self._lock:
            self._last = time.monotonic()
            if self._db.dialect == "sqlite":
                _write_sqlite(self._db, query)
            else:
                with self._db.engine.begin() as conn:
                    conn.execute(query)


def _write_sqlite(db: Database, query: sa.Update) -> None:
    """One progress write on SQLite, waiting at most ``SQLITE_PROGRESS_WAIT_MS`` for another
    import's write lock; skipped when it is still held (progress is not worth a failed import
    or a stalled one)."""
    with db.engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        # Set on the driver's connection: through SQLAlchemy it would first BEGIN IMMEDIATE,
        # which is the very wait for the lock this avoids.
        raw.execute(f"PRAGMA busy_timeout = {SQLITE_PROGRESS_WAIT_MS}")
        try:
            with conn.begin():
                conn.execute(query)
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc.orig).lower() and "busy" not in str(exc.orig).lower():
                raise
        finally:
            raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
