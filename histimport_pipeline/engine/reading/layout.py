"""What every format shares: the header mapping (``_Layout``) and the opened file.

``_Layout`` matches a file's headers to the dataset's columns (name, folded name or
alias), or, for a file without a header row (``header: false``), takes the spec's columns by
position; it refuses bad header rows with every problem named at once, and builds the
``RawRow`` records; ``ParsedFile`` streams them in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from types import TracebackType

from histimport_pipeline.engine.errors import HeaderError
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.spec import DatasetSpec, fold_header


class ParsedFile:
    """An opened file: what was detected (``info``) and its records, streamed in batches.

    Use it as a context manager, or call ``close()``; it closes itself once ``batches()`` is
    exhausted.
    """

    def __init__(
        self,
        info: FileInfo,
        rows: Iterator[RawRow],
        closers: Sequence[Callable[[], object]],
        batch_size: int,
        position: Callable[[], int] | None = None,
    ) -> None:
        self.info = info
        self.rows_read = 0
        self._position = position
        self._bytes_read: int | None = None
        self._rows = rows
        self._closers = list(closers)
        self._batch_size = batch_size
        self._started = False

    def batches(self) -> Iterator[list[RawRow]]:
        """Yield the records in lists of at most ``batch_size``, in file order.

        Can be iterated once. ``rows_read`` counts the records yielded so far.

        Raises:
            EncodingError: bytes later in the file are invalid in the detected encoding.
            FileError: the rest of the file cannot be read (e.g. an unbalanced quote).
        """
        if self._started:
            raise RuntimeError("ParsedFile.batches() can be iterated only once")
        self._started = True
        return self._batches()

    @property
    def bytes_read(self) -> int | None:
        """Bytes of the file read so far (a little ahead of the rows yielded: the decoder
        reads in chunks), for a progress estimate; ``None`` for a format read otherwise (a
        workbook)."""
        return self._bytes_read

    def _batches(self) -> Iterator[list[RawRow]]:
        size = self._batch_size
        batch: list[RawRow] = []
        for row in self._rows:
            batch.append(row)
            self.rows_read += 1
            if len(batch) >= size:
                self._note_position()
                yield batch
                batch = []
        self._note_position()
        if batch:
            yield batch
        self.close()

    def _note_position(self) -> None:
        if self._position is not None:
            try:
                self._bytes_read = self._position()
            except (OSError, ValueError):  # the reader closed the file already
                self._position = None

    def close(self) -> None:
        """Release the file handles; safe to call more than once."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()

    def __enter__(self) -> ParsedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class _Layout:
    """The header row and the spec column each position maps to."""

    headers: tuple[str, ...]
    columns: tuple[str | None, ...]
    mapping: dict[str, str]
    extra_headers: tuple[str, ...]
    warnings: tuple[str, ...]
    #: ``False`` when the file has no header row: ``headers`` are the spec's column names.
    header_present: bool = True
    #: The spec columns of the mapped positions, in file order, and the function picking
    #: those positions' cells out of a full-width record.
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _pick: Callable[[tuple[str | None, ...]], Sequence[str | None]] = field(
        init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls, path: Path, spec: DatasetSpec, headers: tuple[str, ...], header_row: int | None
    ) -> _Layout:
        """Match headers to columns: exact name, then folded name or alias.

        Raises:
            HeaderError: every empty header, NUL in a header, duplicate and missing required
                column at once.
        """
        match = _header_matcher(spec)
        columns = tuple(match(h) for h in headers)
        problems: list[str] = []
        nul = [i + 1 for i, h in enumerate(headers) if "\x00" in h]
        if nul:
            # Headers are recorded on the import, and database text cannot hold NUL.
            problems.append(f"NUL byte (0x00) in the header of column(s) {_join(map(str, nul))}")
            headers = tuple(h.replace("\x00", "\u2400") for h in headers)
        empty = [i + 1 for i, h in enumerate(headers) if not h.strip()]
        if empty:
            problems.append(f"empty header in column(s) {_join(map(str, empty))}")
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (header, column) in enumerate(zip(headers, columns, strict=True)):
            if header.strip():
                key = ("column", column) if column else ("text", header)
                groups.setdefault(key, []).append(i)
        duplicates = []
        for (_, name), positions in groups.items():
            if len(positions) < 2:
                continue
            if len({headers[i] for i in positions}) == 1:
                numbers = _join(str(i + 1) for i in positions)
                duplicates.append(f"{headers[positions[0]]!r} (columns {numbers})")
            else:
                named = _join(f"{headers[i]!r} (column {i + 1})" for i in positions)
                duplicates.append(f"{named} all name column {name}")
        if duplicates:
            problems.append("duplicate header(s): " + "; ".join(duplicates))
        present = {c for c in columns if c}
        missing = [c for c in spec.required_columns if c not in present]
        if missing:
            problems.append(f"missing required column(s): {', '.join(missing)}")
        if problems:
            shown = ", ".join(repr(h) for h in headers[:30])
            more = f" and {len(headers) - 30} more" if len(headers) > 30 else ""
            raise HeaderError(
                path,
                "; ".join(problems) + f" (the header row is: {shown}{more})",
                row=header_row,
                hint="A column is found by its name, by its name ignoring case, spaces, _ - "
                "and ., or by one of its `aliases`: rename the header in the file or add it "
                "to the column's aliases in the dataset spec; give every column a header",
            )
        extra = tuple(h for h, c in zip(headers, columns, strict=True) if c is None)
        warnings = []
        if extra:
            warnings.append(
                f"column(s) not in the dataset are ignored: {', '.join(map(repr, extra))}"
            )
        absent = [c for c in spec.columns if c not in present]
        if absent:
            warnings.append(
                f"optional column(s) not in the file are read as missing: {', '.join(absent)}"
            )
        return cls(
            headers=headers,
            columns=columns,
            mapping={h: c for h, c in zip(headers, columns, strict=True) if c},
            extra_headers=extra,
            warnings=tuple(warnings),
        )

    @classmethod
    def positional(cls, spec: DatasetSpec) -> _Layout:
        """The layout of a file without a header row: the spec's columns, by position."""
        names = tuple(spec.columns)
        return cls(
            headers=names,
            columns=names,
            mapping={name: name for name in names},
            extra_headers=(),
            warnings=(),
            header_present=False,
        )

    def width_error(self, found: str) -> str:
        """Why a record does not fit the header (or the spec's columns); ``found`` says what
        the row has (``"6 fields"``)."""
        width = len(self.headers)
        if self.header_present:
            return f"row has {found}, header has {width}"
        return (
            f"row has {found}, the dataset has {width} columns (the file has no header row, "
            "so its columns are read by position in the spec's column order)"
        )

    def __post_init__(self) -> None:
        positions = [i for i, column in enumerate(self.columns) if column is not None]
        # Precomputed once: ``row`` runs for every record of the file.
        object.__setattr__(self, "_names", tuple(self.columns[i] for i in positions))
        object.__setattr__(self, "_pick", _picker(positions, len(self.columns)))

    def row(self, number: int, cells: Sequence[str | None], pad: str | None) -> RawRow:
        """A record; a field count unlike the header's makes it a row error."""
        raw = tuple(cells)
        width = len(self.headers)
        if len(raw) == width:
            return RawRow(number, None, raw, names=self._names, cells=self._pick(raw))
        values = {
            column: (raw[i] if i < len(raw) else pad)
            for i, column in enumerate(self.columns)
            if column is not None
        }
        return RawRow(number, values, raw, self.width_error(f"{len(raw)} fields"))

    def error_row(
        self,
        number: int,
        cells: Sequence[str | None],
        error: str,
        column: str | None = None,
    ) -> RawRow:
        """A record that could not be read (in ``column``, if one); its values are all
        ``None``."""
        values: dict[str, str | None] = {c: None for c in self.columns if c is not None}
        return RawRow(number, values, tuple(cells), error, error_column=column)

    def field_error(
        self, number: int, cells: Sequence[str | None], max_field_bytes: int
    ) -> RawRow | None:
        """The record as a row error if a mapped column's value holds a NUL byte or is over
        ``max_field_bytes`` (UTF-8); ``None`` when every value is fine.

        PostgreSQL text cannot store NUL, and SQLite is held to the same rule so that both
        give one outcome. Columns the dataset does not map are not loaded and not checked.
        """
        for header, column, value in zip(self.headers, self.columns, cells, strict=False):
            if column is None or not value:
                continue
            if "\x00" in value:
                problem = (
                    f"the value of column {column!r} (header {header!r}) holds a NUL byte "
                    "(0x00), which a database text value cannot store; remove it from the file"
                )
                return self.error_row(number, cells, problem, column)
            if len(value) > max_field_bytes // 4:
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > max_field_bytes:
                    problem = (
                        f"the value of column {column!r} (header {header!r}) is {size:,} bytes, "
                        f"over the limit of {max_field_bytes:,} bytes per field (raise "
                        "HISTIMPORT_MAX_FIELD_BYTES to load it)"
                    )
                    return self.error_row(number, cells, problem, column)
        return None


def _header_matcher(spec: DatasetSpec) -> Callable[[str], str | None]:
    folded: dict[str, str] = {}
    for name, column in spec.columns.items():
        for label in (name, *column.aliases):
            folded.setdefault(fold_header(label), name)

    def match(header: str) -> str | None:
        if header in spec.columns:
            return header
        return folded.get(fold_header(header)) if header.strip() else None

    return match


def _picker(
    positions: Sequence[int], width: int
) -> Callable[[tuple[str | None, ...]], Sequence[str | None]]:
    """A function from a record of ``width`` cells to the cells at ``positions``, in order."""
    if list(positions) == list(range(width)):
        return _same
    if len(positions) > 1:
        return itemgetter(*positions)
    # itemgetter of one position returns the bare cell, of none it cannot be built.
    return lambda cells: tuple(cells[i] for i in positions)


def _same(cells: tuple[str | None, ...]) -> tuple[str | None, ...]:
    return cells


def _join(items: Iterator[str] | Sequence[str]) -> str:
    parts = list(items)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _add_warnings(info: FileInfo, warnings: Sequence[str]) -> FileInfo:
    return replace(info, warnings=(*info.warnings, *warnings))
