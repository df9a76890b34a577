"""Engine errors. Each keeps its facts as attributes and says them, plus what to do next.

``terminal`` errors will fail again on retry until a person changes the file, the spec or the
data; ``transient`` ones (the database went away) may pass on a retry.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

#: Longest cause kept for an unexpected error (a driver may quote a whole row or statement).
CAUSE_LIMIT = 500
#: Modules whose exceptions are the database driver's own (their first line is the cause).
_DRIVERS = ("psycopg", "sqlite3")


class HistimportError(Exception):
    """Base of every engine error."""

    terminal: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def facts(self) -> dict[str, object]:
        """The error's attributes (path, row, column, import id...) for metadata and logs."""
        return {k: v for k, v in vars(self).items() if k != "message" and v is not None}


class TransientError(HistimportError):
    """Worth retrying unchanged: e.g. the database was unreachable."""

    terminal = False


class DatabaseUnavailableError(TransientError):
    """The target database could not be reached."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the database {url}: {reason}. Check that the server is up and "
            "HISTIMPORT_DATABASE_URL is right; the import can be retried unchanged."
        )
        self.url = url
        self.reason = reason


class SpecError(HistimportError):
    """A dataset spec is invalid."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


class FileError(HistimportError):
    """A file cannot be imported as a whole (format, encoding, headers)."""

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        row: int | None = None,
        column: str | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        if offset is not None:
            where += f", byte offset {offset}"
        text = f"{where}: {problem}"
        if hint:
            text += f". {hint}"
        super().__init__(text)
        self.path = str(path)
        self.problem = problem
        self.row = row
        self.column = column
        self.offset = offset
        self.hint = hint


class UnsupportedFormatError(FileError):
    """The file is of a kind histimport does not read (``.xls``, encrypted, macro...)."""


class EncodingError(FileError):
    """The file's bytes are not valid in any accepted encoding."""


class HeaderError(FileError):
    """The header row does not fit the dataset's columns (missing, duplicate, empty)."""


class DatasetNotFoundError(HistimportError):
    """No dataset spec matches a name or a file."""

    def __init__(self, what: str, known: list[str]) -> None:
        names = ", ".join(sorted(known)) or "none (is HISTIMPORT_DATASETS set?)"
        super().__init__(f"no dataset for {what}; known datasets: {names}")
        self.what = what
        self.known = known


class SchemaChangeError(HistimportError):
    """The target table is incompatible with the spec."""

    def __init__(self, table: str, problem: str) -> None:
        super().__init__(
            f"table {table!r}: {problem}. Change the spec back, or migrate the table by hand "
            "(histimport never drops or retypes a column of your data)."
        )
        self.table = table
        self.problem = problem


class ImportNotFoundError(HistimportError):
    """No import with that id."""

    def __init__(self, import_id: int) -> None:
        super().__init__(f"no import with id {import_id}; see `histimport history`")
        self.import_id = import_id


class RollbackConflictError(HistimportError):
    """Later imports changed rows that a rollback would restore."""

    def __init__(self, import_id: int, later_imports: list[int]) -> None:
        ids = ", ".join(str(i) for i in later_imports)
        super().__init__(
            f"cannot roll back import {import_id}: later imports {ids} changed its rows. "
            f"Roll those back first, or use --cascade to roll back {ids} and then {import_id}."
        )
        self.import_id = import_id
        self.later_imports = later_imports


class ImportArchivedError(HistimportError):
    """A rollback needs detail rows that archiving removed (its own, or a later import's)."""

    def __init__(self, import_id: int, archived_import_id: int, archived_at: object) -> None:
        day = archived_at.date().isoformat() if isinstance(archived_at, datetime) else archived_at
        if archived_import_id == import_id:
            why = (
                f"it was archived on {day} by the retention cleanup, which removed the "
                "before-images a rollback restores"
            )
        else:
            why = (
                f"the later import {archived_import_id} was archived on {day} and its "
                "rollback records are gone, so a rollback could undo its changes unseen"
            )
        super().__init__(
            f"cannot roll back import {import_id}: {why}. Its rows stay as they are; "
            "delete or correct them by hand if they must go "
            "(HISTIMPORT_ARCHIVE_AFTER_DAYS sets when imports are archived)."
        )
        self.import_id = import_id
        self.archived_import_id = archived_import_id
        self.archived_at = archived_at


class StagingLostError(HistimportError):
    """The staged rows of an import are not all there any more."""

    def __init__(self, import_id: int, expected: int, found: int) -> None:
        super().__init__(
            f"import {import_id} staged {expected:,} row(s) but its staging table now holds "
            f"{found:,} (on PostgreSQL staging tables are UNLOGGED, so a server restart empties "
            "them); nothing was loaded. Import the file again from the start "
            "(Dagster: re-execute the whole run, not from the failed step)."
        )
        self.import_id = import_id
        self.expected = expected
        self.found = found


class FileChangedError(FileError):
    """The file read by the load step is not the one the validate step checked."""

    def __init__(self, path: Path | str, import_id: int, problem: str) -> None:
        super().__init__(
            path,
            f"{problem} since import {import_id} validated it; nothing was loaded",
            hint="Import the file again from the start (Dagster: re-execute the whole run)",
        )
        self.import_id = import_id


class UnexpectedImportError(HistimportError):
    """An import stopped on an error the engine does not expect (a bug, or the database
    refusing a statement); it was recorded as failed and nothing was loaded.

    The original exception is the ``__cause__``; ``cause`` is its one-line description.
    """

    def __init__(self, import_id: int, cause: str) -> None:
        super().__init__(f"unexpected error in import {import_id}: {cause}")
        self.import_id = import_id
        self.cause = cause


def describe_cause(error: BaseException) -> str:
    """What went wrong, in one short line, as recorded on a failed import.

    An engine error says it in its message. A database error says it in the driver's own
    message, of which only the first line is kept: SQLAlchemy's text appends the whole SQL
    statement and its parameters, and PostgreSQL's adds DETAIL lines quoting the row. Any other
    exception is its type and first line (``KeyError: 'x'``). At most :data:`CAUSE_LIMIT`
    characters.
    """
    if isinstance(error, HistimportError):
        return str(error)
    source: BaseException = getattr(error, "orig", None) or error  # SQLAlchemy's DBAPIError
    lines = str(source).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if type(source).__module__.split(".")[0] not in _DRIVERS or not first:
        first = f"{type(source).__name__}: {first}" if first else type(source).__name__
    return first if len(first) <= CAUSE_LIMIT else first[: CAUSE_LIMIT - 1] + "\u2026"


class ContentBusyError(TransientError):
    """The same content is being imported right now by another import that is alive."""

    def __init__(self, import_id: int, holder_import_id: int, waited_s: float) -> None:
        waited = f" (waited {waited_s:.0f} s)" if waited_s >= 1 else ""
        super().__init__(
            f"this content is being imported by import {holder_import_id} (running){waited}; "
            f"nothing loaded by import {import_id}. See `histimport show {holder_import_id}`; "
            "if it ends failed, import the file again (or wait longer with --wait SECONDS)"
        )
        self.import_id = import_id
        self.holder_import_id = holder_import_id


class AdoptionError(HistimportError):
    """An existing table cannot be adopted (or its adoption undone) as asked."""

    def __init__(self, table: str, problem: str) -> None:
        super().__init__(f"table {table!r}: {problem}")
        self.table = table
        self.problem = problem


class AdoptionRefusedError(AdoptionError):
    """The table does not fit the spec yet: each problem says what to change."""

    def __init__(self, table: str, dataset: str, problems: list[str]) -> None:
        listed = "; ".join(problems)
        super().__init__(
            table,
            f"cannot be adopted yet, nothing was changed: {listed}. Fix these and review the "
            f"plan again with `histimport adopt {dataset}`",
        )
        self.dataset = dataset
        self.problems = problems


class AdoptionBusyError(TransientError):
    """Another transaction held the table longer than adoption waits for its lock."""

    def __init__(self, table: str, waited_s: float) -> None:
        super().__init__(
            f"table {table!r} is in use by another transaction (waited {waited_s:g} s for its "
            "lock, so its readers are not queued behind adoption); nothing was changed. Run "
            "the command again when the long-running transaction has ended"
        )
        self.table = table
        self.waited_s = waited_s
