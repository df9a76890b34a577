"""XLSX workbooks, read in openpyxl's read-only mode.

Choosing the sheet, turning cells into text and reporting merged cells live here.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from histimport_pipeline.engine.errors import FileError, HeaderError, UnsupportedFormatError
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.reading.detect import _SAVE_AS_HINT, _open_binary
from histimport_pipeline.engine.reading.encoding import CHUNK_BYTES
from histimport_pipeline.engine.reading.layout import ParsedFile, _Layout
from histimport_pipeline.engine.spec import DatasetSpec

_MERGE_CELL = re.compile(
    rb'<(?:\w+:)?mergeCell\b[^>]*?\bref="([A-Za-z]{1,3}[0-9]+(?::[A-Za-z]{1,3}[0-9]+)?)"'
)


def _open_xlsx(
    path: Path, spec: DatasetSpec, batch_size: int, suffix_note: str | None
) -> ParsedFile:
    import openpyxl
    from openpyxl.utils.cell import range_boundaries

    if not openpyxl.DEFUSEDXML:
        raise FileError(
            path,
            "refusing to open a workbook without defusedxml protection",
            hint="Install defusedxml and unset OPENPYXL_DEFUSEDXML",
        )
    fh = _open_binary(path)
    closers: list[Callable[[], object]] = [fh.close]
    try:
        try:
            wb = openpyxl.load_workbook(fh, read_only=True, data_only=True, keep_links=False)
        except Exception as exc:  # openpyxl raises many kinds; all mean "cannot open"
            raise UnsupportedFormatError(
                path, f"cannot open the workbook: {exc}", hint=_SAVE_AS_HINT
            ) from None
        closers.append(wb.close)
        ws, warnings = _choose_sheet(path, wb, spec.sheet)
        ws.reset_dimensions()  # a stale <dimension> would cut rows short
        cells = _xlsx_rows(path, ws)
        header_row: int | None = None
        if spec.header:
            first = next(cells, None)
            if first is None:
                raise HeaderError(
                    path,
                    f"sheet {ws.title!r} is empty: no header row",
                    hint="Set `sheet:` in the dataset spec if the data is on another sheet",
                )
            header_row, header_cells = first
            layout = _Layout.build(path, spec, tuple(header_cells), header_row=header_row)
        else:
            layout = _Layout.positional(spec)
        width = len(layout.headers)
        merged = []
        for ref in _merged_ranges(path, ws):
            min_col, _, _, max_row = range_boundaries(ref)
            if max_row >= (header_row or 1) and min_col <= width:
                merged.append(ref)
        if merged:
            warnings.append(
                f"sheet {ws.title!r} has merged cells {', '.join(merged[:20])}"
                + (f" and {len(merged) - 20} more" if len(merged) > 20 else "")
                + ": only the top-left cell of each holds the value, the others are read as "
                "empty (unmerge and fill them in Excel if the value should repeat)"
            )
        info = FileInfo(
            path=str(path),
            format="xlsx",
            encoding=None,
            delimiter=None,
            quotechar=None,
            header_row=header_row,
            header_present=layout.header_present,
            sheet=ws.title,
            headers=layout.headers,
            mapping=layout.mapping,
            extra_headers=layout.extra_headers,
            warnings=(*warnings, *layout.warnings, *([suffix_note] if suffix_note else [])),
        )

        def rows() -> Iterator[RawRow]:
            for number, values in cells:
                if len(values) > width:
                    error = layout.width_error(f"values in {len(values)} columns")
                    yield layout.error_row(number, values, error)
                else:
                    # Excel leaves out trailing empty cells: they are empty, not missing.
                    yield layout.row(number, values + [""] * (width - len(values)), pad="")

        return ParsedFile(info, rows(), closers, batch_size)
    except BaseException:
        for close in reversed(closers):
            close()
        raise


def _choose_sheet(path: Path, wb: Any, wanted: str | None) -> tuple[Any, list[str]]:
    """The sheet named by the spec (case-insensitively), else the first visible worksheet."""
    sheets = list(wb.worksheets)
    warnings: list[str] = []
    if wanted is not None:
        chosen = next((s for s in sheets if s.title == wanted), None) or next(
            (s for s in sheets if s.title.casefold() == wanted.casefold()), None
        )
        if chosen is None:
            raise FileError(
                path,
                f"the workbook has no sheet named {wanted!r}; its sheets are "
                + ", ".join(repr(s.title) for s in sheets),
                hint="Fix `sheet:` in the dataset spec, or rename the sheet",
            )
        if chosen.sheet_state != "visible":
            warnings.append(
                f"sheet {chosen.title!r} is hidden in the workbook; it was read because the "
                "dataset names it"
            )
        return chosen, warnings
    visible = [s for s in sheets if s.sheet_state == "visible"]
    if not visible:
        raise FileError(
            path,
            "the workbook has no visible worksheet",
            hint="Unhide the data sheet, or name it in `sheet:` in the dataset spec",
        )
    chosen = visible[0]
    hidden = [s.title for s in sheets[: sheets.index(chosen)]]
    if hidden:
        warnings.append(
            f"hidden sheet(s) {', '.join(map(repr, hidden))} skipped; read the first visible "
            f"sheet {chosen.title!r}"
        )
    if len(sheets) > 1:
        warnings.append(
            f"the workbook has {len(sheets)} sheets; read {chosen.title!r} (set `sheet:` in the "
            "dataset spec to choose another)"
        )
    return chosen, warnings


def _xlsx_rows(path: Path, ws: Any) -> Iterator[tuple[int, list[str]]]:
    """``(sheet row number, cell texts without trailing empties)`` for each non-blank row."""
    number = 0
    try:
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
            cells = [_cell_text(v) for v in values]
            while cells and cells[-1] == "":
                cells.pop()
            if any(c.strip() for c in cells):
                yield number, cells
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, SyntaxError) as exc:
        raise FileError(
            path,
            f"cannot read sheet {ws.title!r} after row {number}: {exc}",
            hint=_SAVE_AS_HINT,
        ) from None


def _cell_text(value: object) -> str:
    """An Excel value as text: 12.0 -> "12", dates ISO, booleans "true"/"false", empty ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        hours, rest = divmod(int(seconds), 3600)
        text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        return text + (f"{seconds % 1:.6f}"[1:].rstrip("0") if seconds % 1 else "")
    return str(value)


def _merged_ranges(path: Path, ws: Any) -> list[str]:
    """The sheet's merged ranges, found by scanning its XML bytes (read-only mode skips them)."""
    member = getattr(ws, "_worksheet_path", None)
    if not member:
        return []
    found: list[str] = []
    with zipfile.ZipFile(path) as zf, zf.open(member) as src:
        tail = b""
        while chunk := src.read(CHUNK_BYTES):
            buf = tail + chunk
            last = 0
            for hit in _MERGE_CELL.finditer(buf):
                found.append(hit.group(1).decode("ascii").upper())
                last = hit.end()
            tail = buf[max(last, len(buf) - 256) :]
    return found
