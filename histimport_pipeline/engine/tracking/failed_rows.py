"""Failed rows read back: streaming an import's failed-row records, the errors CSV (the
file's original columns plus the error, safe to open in a spreadsheet, fixable and importable
again), and the error file every import with failed rows gets in the error folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import cells
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import ImportNotFoundError
from histimport_pipeline.engine.models import AuditAction, ErrorCategory
from histimport_pipeline.engine.tracking.records import (
    EXTRA_VALUE_PREFIX,
    record_audit,
    update_import,
)

_EXTRA_KEY = re.compile(re.escape(EXTRA_VALUE_PREFIX) + r"[1-9][0-9]*")

#: Columns the failed-rows CSV adds after the file's own columns.
ERROR_COLUMNS = ("_error_row", "_error_column", "_error_category", "_error_message")


def _require_import(conn: sa.Connection, db: Database, import_id: int) -> dict[str, Any]:
    h = db.tables.import_history
    row = (
        conn.execute(sa.select(h.c.import_id, h.c.file_metadata).where(h.c.import_id == import_id))
        .mappings()
        .first()
    )
    if row is None:
        raise ImportNotFoundError(import_id)
    return dict(row)


def iter_failed_rows(
    db: Database, import_id: int, batch_size: int = 1_000, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the failed-row records of an import, ordered by source row.

    The rows are fetched ``batch_size`` at a time (a server-side cursor on PostgreSQL), so
    memory does not grow with the number of failed rows. The connection stays open until the
    iterator is exhausted or closed. ``limit`` stops after that many rows (``None``: all).

    Yields:
        ``source_row``, ``column_name``, ``category``, ``message``, ``raw_value`` and
        ``raw_values`` (original header -> original text) of each failed row.

    Raises:
        ImportNotFoundError: no import with that id.
    """
    t = db.tables.import_failed_rows
    query = (
        sa.select(
            t.c.source_row,
            t.c.column_name,
            t.c.category,
            t.c.message,
            t.c.raw_value,
            t.c.raw_values,
        )
        .where(t.c.import_id == import_id)
        .order_by(t.c.source_row, t.c.failed_row_id)
    )
    if limit is not None:
        query = query.limit(limit)
    with db.reader() as conn:
        _require_import(conn, db, import_id)
        result = conn.execution_options(yield_per=batch_size).execute(query).mappings()
        for row in result:
            yield dict(row)


def neutralise_cell(value: object) -> str:
    """A cell's text, made safe to open in a spreadsheet.

    Text starting with ``= + - @``, a tab or a carriage return would be run as a formula
    (CSV injection), so it gets a leading single quote -- unless it is a plain number such as
    ``-5`` or ``-3.00``, which a spreadsheet reads as that number. Text columns read the quote
    back off (:func:`cells.restore`), so the fixed file imports the original values. ``None``
    becomes the empty string.
    """
    if value is None:
        return ""
    return cells.neutralise(value if isinstance(value, str) else str(value))


def _export_headers(db: Database, import_id: int, metadata: Any) -> list[str]:
    """The original columns: the file's headers when recorded, else the keys seen in the rows
    in order of first appearance (one extra streaming pass, holding only the key names).
    Values past the header of ragged rows (``_extra_1``...) follow the headers."""
    headers = metadata.get("headers") if isinstance(metadata, Mapping) else None
    if headers:
        known = [str(h) for h in headers]
        extras = _extra_keys(db, import_id, set(known))
        return known + sorted(extras, key=lambda k: int(k.removeprefix(EXTRA_VALUE_PREFIX)))
    seen: dict[str, None] = {}
    for row in iter_failed_rows(db, import_id):
        for key in row["raw_values"] or {}:
            seen.setdefault(str(key), None)
    return list(seen)


def _extra_keys(db: Database, import_id: int, headers: set[str]) -> set[str]:
    """The ``_extra_N`` keys of the import's failed rows (only parse errors can have them)."""
    t = db.tables.import_failed_rows
    query = sa.select(t.c.raw_values).where(
        t.c.import_id == import_id, t.c.category == ErrorCategory.PARSE.value
    )
    found: set[str] = set()
    with db.reader() as conn:
        for (values,) in conn.execution_options(yield_per=1_000).execute(query):
            for key in values or {}:
                if key not in headers and _EXTRA_KEY.fullmatch(key):
                    found.add(key)
    return found


def failed_rows_csv(db: Database, import_id: int, chunk_chars: int = 64 * 1024) -> Iterator[str]:
    """An import's failed rows as the text of the errors CSV, in pieces, as they stream.

    The CSV a person can fix and import again: the file's original columns in header order,
    then ``_error_row`` (the source row), ``_error_column``, ``_error_category`` and
    ``_error_message``. It starts with a byte order mark (so spreadsheet programs detect
    UTF-8 once it is encoded), and every formula-looking cell is neutralised
    (:func:`neutralise_cell`). Memory stays flat whatever the number of rows.

    The import is looked up before this returns, so a caller can answer "not found" before
    sending anything.

    Args:
        chunk_chars: about how much text each piece holds.

    Raises:
        ImportNotFoundError: no import with that id.
    """
    with db.reader() as conn:
        found = _require_import(conn, db, import_id)
    headers = _export_headers(db, import_id, found["file_metadata"])
    return _csv_pieces(db, import_id, headers, chunk_chars, [0])


def _csv_pieces(
    db: Database, import_id: int, headers: list[str], chunk_chars: int, counted: list[int]
) -> Iterator[str]:
    """The CSV text in pieces; ``counted[0]`` holds the rows written so far."""
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer)
    writer.writerow([neutralise_cell(h) for h in (*headers, *ERROR_COLUMNS)])
    for row in iter_failed_rows(db, import_id):
        raw = row["raw_values"] or {}
        values = [raw.get(h) for h in headers]
        values += [row["source_row"], row["column_name"], row["category"], row["message"]]
        writer.writerow([neutralise_cell(c) for c in values])
        counted[0] += 1
        if buffer.tell() >= chunk_chars:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def export_failed_rows(db: Database, import_id: int, out_path: Path) -> int:
    """Write an import's failed rows as a CSV a person can fix and import again: the text of
    :func:`failed_rows_csv`, encoded as UTF-8. The file appears complete or not at all
    (written aside, then renamed).

    Args:
        db: the target database.
        import_id: the import.
        out_path: where to write; its folder is created if needed.

    Returns:
        The number of failed rows written.

    Raises:
        ImportNotFoundError: no import with that id.
    """
    with db.reader() as conn:
        found = _require_import(conn, db, import_id)
    headers = _export_headers(db, import_id, found["file_metadata"])
    counted = [0]
    pieces = _csv_pieces(db, import_id, headers, 64 * 1024, counted)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.part")
    try:
        with partial.open("w", encoding="utf-8", newline="") as fh:
            for piece in pieces:
                fh.write(piece)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return counted[0]


def error_file_name(import_id: int) -> str:
    """The name of an import's error file: ``import_<id>_errors.csv``."""
    return f"import_{import_id}_errors.csv"


def write_error_file(db: Database, import_id: int, error_dir: Path) -> Path | None:
    """Write the error file of an import that ended with failed rows, and record its path.

    The file is ``error_dir/import_<id>_errors.csv`` in the format of
    :func:`export_failed_rows` (what ``histimport errors`` writes). Its path is stored in
    ``import_history.error_file_path`` and the audit trail records ``error_file_written``;
    ``histimport cleanup`` deletes the file after the retention period and clears the path.
    Writing it again (a re-run of the step) replaces the file.

    Args:
        db: the target database.
        import_id: an import that has ended (its failed rows are committed).
        error_dir: the error folder (``HISTIMPORT_ERROR_DIR``); created if needed.

    Returns:
        The file's path, or ``None`` when the import has no failed-row records (then nothing
        is written or recorded).

    Raises:
        ImportNotFoundError: no import with that id.
    """
    t = db.tables.import_failed_rows
    with db.reader() as conn:
        _require_import(conn, db, import_id)
        any_failed = conn.execute(
            sa.select(t.c.failed_row_id).where(t.c.import_id == import_id).limit(1)
        ).first()
    if any_failed is None:
        return None
    path = Path(error_dir) / error_file_name(import_id)
    written = export_failed_rows(db, import_id, path)
    with db.engine.begin() as conn:
        update_import(conn, db, import_id, error_file_path=str(path))
        record_audit(
            conn,
            db,
            import_id,
            AuditAction.ERROR_FILE_WRITTEN,
            None,
            {"path": str(path), "rows": written},
        )
    return path
