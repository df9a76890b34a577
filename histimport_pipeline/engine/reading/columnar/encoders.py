"""Column codecs: a block's column validated as the Validator would, then encoded.

Values go into PostgreSQL's binary COPY fields, with one encoder per column type.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from histimport_pipeline.engine.reading.columnar.arrays import (
    _NULL,
    _NULL_STRING,
    BoolArray,
    _binary_array,
    _bool_array,
    _bools,
    _Column,
    _data_of,
    _index_array,
    _ints,
    _null_mask,
    _repeated,
    _string_array,
    _text_elements,
)
from histimport_pipeline.engine.spec import ColumnSpec, ColumnType
from histimport_pipeline.engine.validation import ColumnCoercer, column_coercer

#: Every character ``str.strip()`` removes: the Python path strips exactly these.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_PG_EPOCH = date(2000, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
#: Bytes that start a character in PY_WHITESPACE in UTF-8 (a text without any is stripped).
_MAYBE_WHITESPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f \xc2\xe1\xe2\xe3]")


class _ColumnCodec:
    """Validates (and encodes) one spec column of a block, as the Validator would."""

    def __init__(self, name: str, spec: ColumnSpec, required: bool) -> None:
        self.name = name
        self.spec = spec
        self.required = required
        self.coerce_column: ColumnCoercer = column_coercer(name, spec, required=required)
        self.nulls = _string_array(list(spec.null_values))
        self.plain_text = spec.type is ColumnType.STRING and not (
            spec.max_length or spec.regex or spec.allowed
        )
        self.encode_values = _value_encoder(spec)

    def process(
        self, texts: pa.Array | None, n: int, *, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        """The column in binary COPY form (when encoding) and the failing rows' mask."""
        if texts is None:
            # Not in the file: missing in every row (a required column would have failed the
            # header check), which the coercer turns into NULL.
            return (_Column.variable(_repeated(_NULL, n)) if encode else None), None
        if self.plain_text and not (encode or self.required):
            return None, None  # a rule-less optional text cannot fail
        data = _data_of(texts).tobytes()
        if self.plain_text and b"'" not in data:  # a quote may mark a neutralised formula
            return self._plain_text(texts, data, encode)
        if self.spec.type is ColumnType.INTEGER:
            fast = self._canonical_integers(texts, data, encode)
            if fast is not None:
                return fast, None
        return self._by_distinct(texts, encode)

    def _plain_text(
        self, texts: pa.Array, data: bytes, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        # The coercer of a rule-less string column: strip (if asked), null values are NULL.
        value = texts
        if self.spec.strip and _MAYBE_WHITESPACE.search(data):
            value = pc.utf8_trim(texts, PY_WHITESPACE)
            data = _data_of(value).tobytes()
        null = self._null_values(value, data)
        null_np = None if null is None else _bools(null)
        bad = null_np if self.required and null_np is not None and null_np.any() else None
        if not encode:
            return None, bad
        return _Column.variable(_text_elements(value, null, null_np)), bad

    def _null_values(self, texts: pa.Array, data: bytes) -> pa.Array | None:
        """Where the texts (whose bytes are ``data``) are null values; ``None`` when none can
        be (a cheap byte test first)."""
        nulls = self.spec.null_values
        empty = "" in nulls and bool((_ints(pc.binary_length(texts)) == 0).any())
        if not empty and not any(v and v.encode() in data for v in nulls):
            return None
        return pc.is_in(texts, value_set=self.nulls)

    def _canonical_integers(self, texts: pa.Array, data: bytes, encode: bool) -> _Column | None:
        """Integers pyarrow's cast reads exactly as the coercer does; ``None`` to decline.

        pyarrow's string-to-int64 cast takes an optional minus sign and ASCII digits (for
        which the coercer returns ``int(text)``) and hexadecimal ``0x..`` (which the coercer
        refuses). So a block without any ``x`` or ``X`` that casts cleanly is read alike;
        anything else (a plus sign, spaces, ``12.0``, an overflow) is left to the coercer.
        When not encoding, the returned column is an empty placeholder.
        """
        if b"x" in data or b"X" in data:
            return None
        null = self._null_values(texts, data)
        if null is not None and self.required:
            return None
        candidates = texts if null is None else pc.if_else(null, _NULL_STRING, texts)
        try:
            values = pc.cast(candidates, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if not encode:
            return _Column.fixed(np.zeros(0, dtype=">i8"), None)
        numbers = _ints(values).astype(">i8")
        return _Column.fixed(numbers, None if null is None else _bools(null))

    def _by_distinct(
        self, texts: pa.Array, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        encoded = pc.dictionary_encode(texts)
        distinct = encoded.dictionary.to_pylist()
        values, failing = self.coerce_column(distinct)
        indices = _ints(encoded.indices)
        bad = None
        if failing:
            bad_distinct = np.zeros(len(distinct), dtype=np.bool_)
            bad_distinct[failing] = True
            bad = bad_distinct[indices]
        if not encode:
            return None, bad
        return self.encode_values(values, indices), bad


_Encoder = Callable[[list[Any], npt.NDArray[Any]], _Column]


def _value_encoder(spec: ColumnSpec) -> _Encoder:
    """Distinct typed values (``None`` = NULL) and each row's index into them → the column."""
    kind = spec.type
    if kind is ColumnType.INTEGER:
        return _int8_column
    if kind is ColumnType.DATE:
        return _date_column
    if kind is ColumnType.TIMESTAMP:
        return _timestamp_column
    if kind is ColumnType.BOOLEAN:
        return _bool_column
    if kind is ColumnType.DECIMAL:
        return _numeric_column
    return _str_column


def _fixed_column(values: npt.NDArray[Any], distinct: list[Any], rows: Any) -> _Column:
    null = _null_mask(distinct)
    return _Column.fixed(values[rows], None if null is None else null[rows])


def _int8_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    numbers = np.array([0 if v is None else v for v in values], dtype=">i8")
    return _fixed_column(numbers, values, rows)


def _date_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    epoch = _PG_EPOCH.toordinal()
    days = np.fromiter(
        (0 if v is None else v.toordinal() - epoch for v in values), dtype=">i4", count=len(values)
    )
    return _fixed_column(days, values, rows)


def _timestamp_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    epoch = datetime.combine(_PG_EPOCH, time())
    micros = np.fromiter(
        (0 if v is None else (v - epoch) // _MICROSECOND for v in values),
        dtype=">i8",
        count=len(values),
    )
    return _fixed_column(micros, values, rows)


def _bool_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    flags = np.array([bool(v) for v in values], dtype=np.uint8)
    return _fixed_column(flags, values, rows)


_NUMERIC_DUMPER: Any = None


def _numeric_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    # psycopg's own binary dumper: the bytes the Python path's COPY sends for a Decimal.
    global _NUMERIC_DUMPER
    if _NUMERIC_DUMPER is None:
        # Here, not at the top: an import into SQLite never needs psycopg (0.1 s to import).
        import psycopg
        from psycopg.pq import Format

        oid = psycopg.adapters.types["numeric"].oid
        _NUMERIC_DUMPER = psycopg.adapters.get_dumper_by_oid(oid, Format.BINARY)(Decimal)
    dump = _NUMERIC_DUMPER.dump
    fields = []
    for value in values:
        if value is None:
            fields.append(_NULL)
        else:
            data = bytes(dump(value))
            fields.append(struct.pack(">i", len(data)) + data)
    return _Column.variable(_binary_array(fields).take(_index_array(rows)))


def _str_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    texts = _string_array(values)
    null_np = _null_mask(values)
    null = None if null_np is None else _bool_array(null_np)
    fields = _text_elements(texts, null, null_np)
    return _Column.variable(fields.take(_index_array(rows)))
