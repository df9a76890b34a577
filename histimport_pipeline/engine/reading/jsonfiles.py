"""JSON arrays and NDJSON, decoded one record at a time with numbers kept as written.

Named ``jsonfiles`` so that it never shadows the standard ``json`` module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from histimport_pipeline.engine.errors import FileError, HeaderError
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.reading.encoding import CHUNK_BYTES, _TextSource
from histimport_pipeline.engine.reading.layout import _header_matcher, _Layout
from histimport_pipeline.engine.spec import DatasetSpec

#: A single JSON array element larger than this is refused (it would have to sit in memory).
MAX_JSON_RECORD_CHARS = 64 * 1024 * 1024
_JSON_WS = re.compile(r"[ \t\r\n]*")


class _JsonNumber(str):
    """A JSON number kept as its exact source text (``1.10`` stays ``1.10``)."""


_JSON = json.JSONDecoder(parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_JsonNumber)


def _open_json(
    path: Path, spec: DatasetSpec, text: _TextSource, fmt: str, max_field_bytes: int
) -> tuple[FileInfo, Iterator[RawRow]]:
    items = _JsonArray(path, text.chunks()).items() if fmt == "json" else _ndjson_items(text)
    first = next(items, None)
    if first is None:
        raise HeaderError(
            path, "the file holds no records, so it has no header", hint="Check the export"
        )
    number, value = first
    if not isinstance(value, dict):
        raise FileError(
            path,
            f"the first record is {_json_kind(value)}, not an object; the keys of the first "
            "object are the headers",
            row=number,
            hint="Export an array of objects, or one object per line (NDJSON)",
        )
    layout = _Layout.build(path, spec, tuple(value), header_row=None)
    match = _header_matcher(spec)
    info = FileInfo(
        path=str(path),
        format=fmt,
        encoding=text.name,
        encoding_decided_by=text.decided_by,
        delimiter=None,
        quotechar=None,
        header_row=None,
        sheet=None,
        headers=layout.headers,
        mapping=layout.mapping,
        extra_headers=layout.extra_headers,
        warnings=(*text.warnings, *layout.warnings, *_header_flag_note(spec)),
    )
    known = set(layout.headers)

    def row(number: int, value: object) -> RawRow:
        if isinstance(value, _LineError):
            return layout.error_row(number, (value.line,), value.message)
        if not isinstance(value, dict):
            return layout.error_row(
                number, (_json_text(value),), f"record is {_json_kind(value)}, not an object"
            )
        cells = tuple(_json_text(value[h]) if h in value else None for h in layout.headers)
        late = [k for k in value if k not in known and match(k) is not None]
        if late:
            return layout.error_row(
                number,
                cells,
                f"key(s) {', '.join(map(repr, late))} name dataset columns but are not keys "
                "of the first record, which set the headers",
            )
        return layout.field_error(number, cells, max_field_bytes) or layout.row(
            number, cells, pad=None
        )

    def rows() -> Iterator[RawRow]:
        yield row(number, value)
        for n, item in items:
            yield row(n, item)

    return info, rows()


@dataclass(frozen=True)
class _LineError:
    """An NDJSON line that is not valid JSON."""

    line: str
    message: str


def _ndjson_items(text: _TextSource) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(text.lines(), start=1):
        stripped = line.strip(" \t\r\n")
        if not stripped:
            continue
        try:
            value, end = _JSON.raw_decode(stripped)
            if end != len(stripped):
                raise json.JSONDecodeError("extra data after the JSON value", stripped, end)
        except json.JSONDecodeError as exc:
            yield number, _LineError(stripped, f"line is not valid JSON: {exc}")
            continue
        yield number, value


class _JsonArray:
    """Elements of a top-level JSON array, decoded one at a time from streamed text."""

    def __init__(self, path: Path, chunks: Iterator[str]) -> None:
        self._path = path
        self._chunks = chunks
        self._buf = ""
        self._pos = 0
        self._base = 0  # characters dropped from the front of the buffer
        self._eof = False

    def items(self) -> Iterator[tuple[int, object]]:
        """``(1-based position, decoded value)`` for each element.

        Raises:
            FileError: the text is not one array of values (with the record and character).
        """
        if self._peek() != "[":
            found = self._peek()
            raise FileError(
                self._path,
                "expected a JSON array of objects ('[' first), found "
                + (repr(found) if found else "nothing"),
                hint="Export an array of objects, or one object per line (NDJSON)",
            )
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
        else:
            index = 0
            while True:
                index += 1
                yield index, self._value(index)
                char = self._peek()
                if char == ",":
                    self._pos += 1
                elif char == "]":
                    self._pos += 1
                    break
                elif char is None:
                    raise self._error(index, "the array is not closed (the file may be cut off)")
                else:
                    raise self._error(index, f"expected ',' or ']' after it, found {char!r}")
        if self._peek() is not None:
            raise self._error(None, "unexpected data after the closing ']'")

    def _value(self, index: int) -> object:
        self._peek()
        while True:
            try:
                value, end = _JSON.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._grow():
                    continue
                problem = f"invalid JSON: {exc.msg}"
                if exc.pos >= len(self._buf):
                    problem += " where the file ends (it may be cut off)"
                raise self._error(index, problem, self._base + exc.pos) from None
            # A value reaching the end of the buffer (a number) may continue in the next chunk.
            if end == len(self._buf) and self._grow():
                continue
            self._pos = end
            return value

    def _peek(self) -> str | None:
        while True:
            self._pos = _JSON_WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._read():
                return None

    def _read(self) -> bool:
        if self._eof:
            return False
        text = next(self._chunks, None)
        if text is None:
            self._eof = True
            return False
        if self._pos > CHUNK_BYTES:
            self._base += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += text
        return True

    def _grow(self) -> bool:
        """Read until the unparsed part of the buffer has doubled; False at the end."""
        pending = len(self._buf) - self._pos
        if pending > MAX_JSON_RECORD_CHARS:
            raise self._error(
                None, f"a record is over {MAX_JSON_RECORD_CHARS} characters or not valid JSON"
            )
        target = pending * 2 + 1
        grew = False
        while len(self._buf) - self._pos < target and self._read():
            grew = True
        return grew

    def _error(self, index: int | None, problem: str, char: int | None = None) -> FileError:
        where = f" at character {char}" if char is not None else ""
        return FileError(
            self._path,
            f"{problem}{where}" + (f" (record {index} of the array)" if index else ""),
            row=index,
            hint="Fix the JSON (a validator such as `python -m json.tool` shows the spot)",
        )


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str(value)
    return _json_dump(value)


def _json_dump(value: object) -> str:
    """Nested values as compact JSON text, numbers exactly as written in the file."""
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, _JsonNumber):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "an object"


def _header_flag_note(spec: DatasetSpec) -> tuple[str, ...]:
    if spec.header:
        return ()
    return (
        "`header: false` applies to delimited text and sheets: JSON records name their "
        "fields, which were mapped as headers",
    )
