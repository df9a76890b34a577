"""Delimited text (CSV, TSV, ...): dialect detection, records and rows.

Records are split by the ``csv`` module over the decoded lines; a record that cannot be
split becomes a row error, a quote never closed stops the file.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from histimport_pipeline.engine.errors import FileError, HeaderError
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.reading.encoding import SAMPLE_BYTES, _split_lines, _TextSource
from histimport_pipeline.engine.reading.layout import _Layout
from histimport_pipeline.engine.spec import DatasetSpec

#: Records examined to detect the delimiter and quote character.
DIALECT_SAMPLE_RECORDS = 100

DELIMITERS = (",", "\t", ";", "|")
QUOTECHARS = ('"', "'")


def _open_delimited(
    path: Path, spec: DatasetSpec, text: _TextSource, head: bytes, max_field_bytes: int
) -> tuple[FileInfo, Iterator[RawRow]]:
    delimiter, quotechar = _detect_dialect(
        text.sample_text(head), len(head) < SAMPLE_BYTES, spec.delimiter
    )
    records = _records(path, text, delimiter, quotechar, max_field_bytes)
    if spec.header:
        first = next(records, None)
        if first is None:
            raise HeaderError(path, "the file is empty: no header row", hint="Check the export")
        _, header_fields, _ = first
        if isinstance(header_fields, str):
            raise HeaderError(path, f"cannot read the header row: {header_fields}", row=1)
        layout = _Layout.build(path, spec, tuple(header_fields), header_row=1)
    else:
        layout = _Layout.positional(spec)
    info = FileInfo(
        path=str(path),
        format="csv",
        encoding=text.name,
        encoding_decided_by=text.decided_by,
        delimiter=delimiter,
        quotechar=quotechar,
        header_row=1 if layout.header_present else None,
        header_present=layout.header_present,
        sheet=None,
        headers=layout.headers,
        mapping=layout.mapping,
        extra_headers=layout.extra_headers,
        warnings=(*text.warnings, *layout.warnings),
    )

    def rows() -> Iterator[RawRow]:
        # Layout.row inlined for the usual full-width record: this loop runs once per record.
        names, pick, width = layout._names, layout._pick, len(layout.headers)
        for number, fields, suspect in records:
            if isinstance(fields, str):
                yield layout.error_row(number, (), fields)
            elif len(fields) != width:
                yield layout.row(number, fields, pad=None)
            elif suspect and (bad := layout.field_error(number, fields, max_field_bytes)):
                yield bad
            else:
                raw = tuple(fields)
                yield RawRow(number, None, raw, names=names, cells=pick(raw))

    return info, rows()


def _csv_field_ceiling(max_field_bytes: int) -> int:
    """The ``csv`` module's field size limit (characters) used with ``max_field_bytes``.

    A field between the two is read whole and becomes a row error; only a field past the
    ceiling (most likely a quote never closed) stops the file, which bounds the memory an
    unbalanced quote can take.
    """
    return 2 * max_field_bytes + 1024


def _records(
    path: Path, text: _TextSource, delimiter: str, quotechar: str, max_field_bytes: int
) -> Iterator[tuple[int, list[str] | str, bool]]:
    """Number the non-blank records from 1; a record that cannot be split gives its error.

    The flag is set on a record that may hold a NUL byte or a field over ``max_field_bytes``
    (a cheap test on the whole record; ``_Layout.field_error`` looks closer).
    """
    ceiling = _csv_field_ceiling(max_field_bytes)
    # The limit is process-wide: only ever raise it, so concurrent imports never lower it
    # under each other. Each import checks its own ``max_field_bytes`` per field.
    if csv.field_size_limit() < ceiling:
        csv.field_size_limit(ceiling)
    long_record = max_field_bytes // 4  # characters; UTF-8 has at most 4 bytes per character
    reader = csv.reader(
        text.lines(), delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=True
    )
    number = 0
    while True:
        # One ``try`` around the whole loop rather than around each ``next``: after a csv.Error
        # the reader resumes with the next line, so the loop simply starts again.
        try:
            for fields in reader:
                joined = "".join(fields)
                # Blank: every field empty or whitespace, i.e. no non-space character at all.
                if joined.strip():
                    number += 1
                    yield number, fields, len(joined) > long_record or "\x00" in joined
            return
        except csv.Error as exc:
            number += 1
            message = str(exc)
            if "field larger than field limit" in message:
                raise FileError(
                    path,
                    f"a field runs past {ceiling:,} characters near line {reader.line_num}, "
                    f"far over the limit of {max_field_bytes:,} bytes per field",
                    row=number,
                    hint="Most likely a quote is never closed: look for an unbalanced "
                    f"{quotechar} in this row or the ones just before it. If the field is "
                    "genuine, raise HISTIMPORT_MAX_FIELD_BYTES",
                ) from None
            if "unexpected end of data" in message:
                raise FileError(
                    path,
                    f"cannot split the file into records ({message}) near line {reader.line_num}",
                    row=number,
                    hint="A quote is probably never closed: look for an unbalanced "
                    f"{quotechar} in this row or the ones just before it",
                ) from None
            yield number, f"malformed quoting near line {reader.line_num}: {message}", False


def _detect_dialect(sample: str, complete: bool, delimiter: str | None) -> tuple[str, str]:
    """The delimiter and quote character under which the sample's records line up best.

    Each candidate splits the first records (quotes respected); the winner has more than one
    header field, then the largest share of records with the header's field count, then the
    most fields. Ties go to the earlier candidate: ``"`` before ``'``, then ``, TAB ; |``;
    ``'`` is tried only if some field starts with it.
    """
    lines = list(_split_lines(iter([sample])))
    if not complete and len(lines) > 1:
        lines.pop()  # probably cut off mid-record
    candidates = (delimiter,) if delimiter else DELIMITERS
    best: tuple[tuple[bool, float, int], str, str] | None = None
    for quote in QUOTECHARS:
        for delim in candidates:
            # Apostrophes are common in text; only take ' as the quote when a field opens with it.
            opens = re.compile(f"(?:^|{re.escape(delim)}){re.escape(quote)}", re.MULTILINE)
            if quote != QUOTECHARS[0] and not opens.search(sample):
                continue
            counts = _field_counts(lines, delim, quote)
            if not counts:
                continue
            header, data = counts[0], counts[1:]
            share = sum(c == header for c in data) / len(data) if data else 1.0
            score = (header > 1, share, header)
            if best is None or score > best[0]:
                best = (score, delim, quote)
    if best is None:
        return delimiter or ",", '"'
    return best[1], best[2]


def _field_counts(lines: list[str], delimiter: str, quotechar: str) -> list[int]:
    reader = csv.reader(iter(lines), delimiter=delimiter, quotechar=quotechar, strict=True)
    counts: list[int] = []
    while len(counts) < DIALECT_SAMPLE_RECORDS:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            counts.append(-1)  # never equal to the header's count
            continue
        if "".join(fields).strip():
            counts.append(len(fields))
    return counts
