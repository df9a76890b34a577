"""The small records that the steps of an import pass around and return.

:class:`ImportOptions` (per-import choices), :class:`ImportHandle` (what one step hands the
next), :class:`StageResult` and :class:`ImportResult`; the pipelines step functions live in
``engine.pipeline``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.models import ImportSource, ImportStatus, ImportType
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES

#: Seconds an import waits at most for another live import of the same content to end
#: (then it reports a duplicate, or loads the content if that import failed or died).
HOLDER_WAIT_S = 600.0


@dataclass(frozen=True)
class ImportOptions:
    """Per-import choices. Defaults fit a manual import from the CLI."""

    force: bool = False
    dry_run: bool = False
    import_type: ImportType = ImportType.MANUAL
    source: ImportSource = ImportSource.CLI
    #: Who imported (``import_history.user_id``; the CLI's ``--user``, the user who
    #: launched a Dagster run); every audit entry of the import carries it.
    user_id: str | None = None
    #: Their e-mail address, when known (``import_history.user_email``).
    user_email: str | None = None
    #: The older name of ``user_id``, used when ``user_id`` is not given.
    triggered_by: str | None = None
    partition_key: str | None = None
    business_date: date | None = None
    dagster_run_id: str | None = None
    #: Overrides the dataset's ``max_error_ratio`` for this import.
    max_error_ratio: float | None = None
    batch_size: int = 10_000
    #: Read delimited UTF-8 files on PostgreSQL with the columnar reader when they allow it
    #: (same outcome, several times faster); off: always the Python reader.
    columnar: bool = True
    retry_of: int | None = None
    #: The name the file was dropped under, when it is read from the archive or quarantine.
    file_name: str | None = None
    #: The largest field value loaded (``HISTIMPORT_MAX_FIELD_BYTES``); larger: a row error.
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    #: How long another live import of the same content is waited for; 0: not at all (the
    #: import then ends failed with ``ContentBusyError``'s message).
    wait_for_holder_s: float = HOLDER_WAIT_S
    #: How old a heartbeat may be before its import counts as dead (see
    #: ``tracking.fail_dead_imports``).
    stale_after: timedelta = tracking.STALE_AFTER
    #: Fewest seconds between two writes of the import's live progress
    #: (``HISTIMPORT_PROGRESS_EVERY_S``; see ``tracking.progress``).
    progress_every_s: float = tracking.PROGRESS_EVERY_S

    @property
    def user(self) -> str | None:
        """Who imported: ``user_id``, else ``triggered_by``."""
        return self.user_id or self.triggered_by

    #: The error folder (``HISTIMPORT_ERROR_DIR``): an import that ends with failed rows
    #: writes its error file there (``tracking.failed_rows.write_error_file``); ``None``: no
    #: error file.
    error_dir: Path | None = None


@dataclass(frozen=True)
class ImportHandle:
    """What the steps of one import pass to each other."""

    import_id: int
    dataset: str
    file_path: str
    file_name: str
    sha256: str
    file_size: int
    business_date: date | None
    #: Set when the content was already imported: the import that holds it.
    duplicate_of: int | None = None


@dataclass(frozen=True)
class StageResult:
    """Counts and timings of the parse + validate step."""

    rows_read: int
    rows_staged: int
    rows_failed: int
    rows_duplicate: int
    seconds: dict[str, float]
    warnings: tuple[str, ...] = ()
    #: The valid rows were COPYed into the target, uncommitted (``run_import``'s one pass).
    into_target: bool = False


@dataclass(frozen=True)
class ImportResult:
    """How an import ended; also what the CLI prints and Dagster records as metadata."""

    import_id: int
    dataset: str
    status: ImportStatus
    file_name: str
    sha256: str
    rows_read: int = 0
    rows_created: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_failed: int = 0
    rows_duplicate: int = 0
    rows_deleted: int = 0
    rows_review: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    error_message: str | None = None
    warnings: tuple[str, ...] = ()
    duplicate_of: int | None = None
    dry_run: bool = False
    #: Failed rows per category and the most frequent errors (see tracking.error_summary).
    error_summary: dict[str, Any] = field(default_factory=dict)
    #: The error file written for the import's failed rows (also in
    #: ``import_history.error_file_path``), or ``None``.
    error_file_path: str | None = None
    #: How the file's columns differ from the dataset's previous successful import
    #: (``import_history.schema_drift``); ``None`` when they do not.
    schema_drift: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the import loaded (fully or partly) or was a harmless duplicate."""
        return self.status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL, ImportStatus.DUPLICATE)


Progress = Callable[[int], None]
#: Told the id of the import being waited for, each time the wait starts on a new one.
OnWait = Callable[[int], None]
