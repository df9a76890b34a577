"""Shared records and status vocabularies of the engine.

Each vocabulary is defined once here and used by the schema, the engine, the CLI and the
Dagster layer alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Generic, TypeVar


def utcnow() -> datetime:
    """The current time in UTC (stored as such on both databases)."""
    return datetime.now(UTC)


class ImportStatus(StrEnum):
    """Where an import attempt stands (``import_history.status``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    ROLLED_BACK = "rolled_back"


class ImportPhase(StrEnum):
    """The step an import is in or ended in (``import_history.phase``)."""

    PARSE = "PARSE"
    VALIDATE = "VALIDATE"
    RECONCILE = "RECONCILE"
    CONFIRM = "CONFIRM"
    LOAD = "LOAD"
    COMPLETE = "COMPLETE"


class ImportType(StrEnum):
    """Why an import happened (``import_history.import_type``)."""

    DROP = "DROP"
    DAILY = "DAILY"
    BACKFILL = "BACKFILL"
    MANUAL = "MANUAL"
    RETRY = "RETRY"


class ImportSource(StrEnum):
    """How the file reached histimport (``import_history.source``)."""

    INBOX = "inbox"
    CLI = "cli"
    SCHEDULE = "schedule"
    #: Read again from where an earlier import moved it (a re-run or backfill of a partition).
    ARCHIVE = "archive"
    QUARANTINE = "quarantine"
    #: Uploaded through the web service, which imported it itself (its ``direct`` mode).
    UPLOAD = "upload"


class ErrorCategory(StrEnum):
    """Why a row failed (``import_failed_rows.category``)."""

    PARSE = "parse"
    TYPE = "type"
    REQUIRED = "required"
    FORMAT = "format"
    RANGE = "range"
    DUPLICATE = "duplicate"
    RECONCILIATION = "reconciliation"
    DATABASE = "database"


class MatchType(StrEnum):
    """How a reference value was resolved (``import_reconciliation_matches.match_type``)."""

    EXACT = "exact"
    NORMALIZED = "normalized"
    ALIAS = "alias"
    FUZZY = "fuzzy"
    CREATED = "created"
    AMBIGUOUS = "ambiguous"
    UNMATCHED = "unmatched"


class MatchDecision(StrEnum):
    """What became of a reconciliation match (``import_reconciliation_matches.decision``)."""

    AUTO_ACCEPTED = "auto_accepted"
    NEEDS_REVIEW = "needs_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CREATED = "created"


class ImageOperation(StrEnum):
    """What an import did to a row whose before-image it kept (``import_row_images``)."""

    UPDATE = "update"
    DELETE = "delete"


class AdoptionStatus(StrEnum):
    """Whether an adoption of an existing table stands (``table_adoptions.status``)."""

    APPLIED = "applied"
    UNDONE = "undone"


class FileStatus(StrEnum):
    """The state of one distinct file content for a dataset (``processed_files.status``)."""

    PROCESSING = "processing"
    IMPORTED = "imported"
    PARTIAL = "partial"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class AuditAction(StrEnum):
    """What an ``import_audit_trail`` entry records (``import_audit_trail.action``)."""

    #: The file was found and hashed; the import about to be recorded.
    FILE_RECEIVED = "file_received"
    STARTED = "started"
    PARSED = "parsed"
    VALIDATION_STARTED = "validation_started"
    VALIDATED = "validated"
    RECONCILIATION_STARTED = "reconciliation_started"
    RECONCILED = "reconciled"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    LOADED = "loaded"
    COMPLETED = "completed"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    #: A failed import was taken up again (a retried or re-executed step).
    RESUMED = "resumed"
    #: The file was archived or quarantined.
    MOVED = "moved"
    REVIEW_ACCEPTED = "review_accepted"
    REVIEW_REJECTED = "review_rejected"
    #: A reviewer accepted another entity than the one reconciliation suggested.
    USER_OVERRIDE = "user_override"
    REVIEW_APPLIED = "review_applied"
    ROLLBACK_STARTED = "rollback_started"
    ROLLED_BACK = "rolled_back"
    #: The failed rows were written as the import's error file.
    ERROR_FILE_WRITTEN = "error_file_written"
    #: The retention cleanup archived the import (its detail rows removed).
    ARCHIVED = "archived"
    #: A later import of a corrected file loaded: this failure is no longer open.
    SUPERSEDED = "superseded"
    #: The retention cleanup (an entry of no import).
    CLEANUP = "cleanup"
    #: A file was uploaded through the web service into the inbox (an entry of no import).
    UPLOADED = "uploaded"
    #: The web service refused a request: no token, a wrong one, or too small a role.
    ACCESS_REFUSED = "access_refused"


class AuditSeverity(StrEnum):
    """How much an audit entry asks for attention (``import_audit_trail.severity``)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


#: A value after validation.
Value = str | int | Decimal | bool | date | datetime | None
V = TypeVar("V")


class _NamedCells(Generic[V]):
    """Values held as two aligned tuples, ``names`` and ``cells``, or as a dict.

    ``values`` is the dict, built from the tuples the first time it is asked for: the hot
    path (parse → validate → stage) works on the tuples and never builds it.
    """

    __slots__ = ("_values", "cells", "names")

    _values: dict[str, V] | None
    names: tuple[str, ...] | None
    cells: Sequence[V] | None

    @property
    def values(self) -> dict[str, V]:
        if self._values is None:
            assert self.names is not None and self.cells is not None
            self._values = dict(zip(self.names, self.cells, strict=True))
        return self._values


class RawRow(_NamedCells[str | None]):
    """One record as parsed: text values keyed by spec column, before any coercion.

    Attributes:
        source_row: the record's number as a person finds it in the file: for CSV/TSV and
            XLSX the header is row 1 and the first data record row 2 (a quoted value spanning
            lines is still one record); for JSON the 1-based position in the array; for
            NDJSON the line number.
        values: spec column -> text exactly as in the file (``None`` when the file has no
            cell for it, as in a short ragged row). Never stripped, never turned into null.
        raw: the record's original cells in the order of ``FileInfo.headers`` (extra columns
            included), for the failed-rows CSV.
        error: a row-level parse problem (e.g. wrong number of fields), else ``None``.
        error_column: the spec column the parse problem is in, when it is in one field (a
            NUL byte, a field over the size limit); ``None`` for whole-record problems.
        names, cells: the same values as two aligned tuples, when the parser made them so
            (one ``names`` tuple shared by every record of the file). ``values`` is then built
            only when asked for: the validator reads whole columns from ``cells``, which
            spares a dict per record on the hot path.
    """

    __slots__ = ("error", "error_column", "raw", "source_row")

    def __init__(
        self,
        source_row: int,
        values: dict[str, str | None] | None = None,
        raw: tuple[str | None, ...] = (),
        error: str | None = None,
        *,
        names: tuple[str, ...] | None = None,
        cells: Sequence[str | None] | None = None,
        error_column: str | None = None,
    ) -> None:
        if values is None and (names is None or cells is None):
            raise ValueError("RawRow needs values, or names and cells")
        self.source_row = source_row
        self._values = values
        self.raw = raw
        self.error = error
        self.error_column = error_column
        self.names = names
        self.cells = cells

    def __repr__(self) -> str:
        return f"RawRow({self.source_row!r}, {self.values!r}, {self.raw!r}, {self.error!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawRow):
            return NotImplemented
        return (self.source_row, self.values, self.raw, self.error) == (
            other.source_row,
            other.values,
            other.raw,
            other.error,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class FileInfo:
    """What parsing detected about a file; recorded on the import."""

    path: str
    format: str  # "csv" (any delimited text), "xlsx", "json" or "ndjson"
    encoding: str | None
    delimiter: str | None
    quotechar: str | None
    header_row: int | None
    sheet: str | None
    headers: tuple[str, ...]
    mapping: dict[str, str]  # original header -> spec column
    extra_headers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: How ``encoding`` was chosen: "declared in the dataset spec", "byte order mark",
    #: "valid UTF-8", or the rule that picked a single-byte code page.
    encoding_decided_by: str | None = None
    #: Whether the file had a header row; without one (``header: false`` in the spec) the
    #: ``headers`` are the spec's column names, by position.
    header_present: bool = True

    @property
    def file_type(self) -> str:
        """The file's type as recorded on the import and the processed file: ``csv``,
        ``tsv`` (delimited text split on tabs), ``xlsx``, ``json`` or ``ndjson``."""
        if self.format == "csv" and self.delimiter == "\t":
            return "tsv"
        return self.format

    def as_metadata(self) -> dict[str, object]:
        """JSON-ready dict for ``import_history.file_metadata``."""
        return {
            "format": self.format,
            "encoding": self.encoding,
            "encoding_decided_by": self.encoding_decided_by,
            "delimiter": self.delimiter,
            "quotechar": self.quotechar,
            "header_row": self.header_row,
            "header_present": self.header_present,
            "sheet": self.sheet,
            "headers": list(self.headers),
            "extra_headers": list(self.extra_headers),
        }


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one row failed: the first failing column, category and a readable message."""

    source_row: int
    column: str | None
    category: ErrorCategory
    message: str
    raw_value: str | None = None


class ValidRow(_NamedCells[Value]):
    """A row that passed validation: typed values keyed by spec column.

    Built by the validator from ``names`` and ``cells`` (aligned tuples, ``names`` shared by
    the whole batch); ``values`` is made from them only when asked for, and
    ``cells_for(names)`` gives the cells in another order without a dict on the hot path.
    """

    __slots__ = ("source_row",)

    def __init__(
        self,
        source_row: int,
        values: dict[str, Value] | None = None,
        *,
        names: tuple[str, ...] | None = None,
        cells: Sequence[Value] | None = None,
    ) -> None:
        if values is None and (names is None or cells is None):
            raise ValueError("ValidRow needs values, or names and cells")
        self.source_row = source_row
        self._values = values
        self.names = names
        self.cells = cells

    def cells_for(self, names: tuple[str, ...]) -> tuple[Value, ...]:
        """The values of ``names`` in that order (``None`` for a name the row lacks)."""
        if self.cells is not None and (self.names is names or self.names == names):
            return tuple(self.cells)
        values = self.values
        return tuple(values.get(n) for n in names)

    def __repr__(self) -> str:
        return f"ValidRow({self.source_row!r}, {self.values!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValidRow):
            return NotImplemented
        return (self.source_row, self.values) == (other.source_row, other.values)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class ValidatedBatch:
    """The outcome of validating one batch of rows."""

    valid: list[ValidRow] = field(default_factory=list)
    failed: list[tuple[RawRow, RowError]] = field(default_factory=list)
    duplicates: list[tuple[RawRow, RowError]] = field(default_factory=list)
