"""The Validator: rows to valid, failed and duplicate rows, column by column."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal
from itertools import repeat
from operator import itemgetter

from histimport_pipeline.engine.cells import QUOTE
from histimport_pipeline.engine.models import (
    ErrorCategory,
    RawRow,
    RowError,
    ValidatedBatch,
    ValidRow,
    Value,
)
from histimport_pipeline.engine.spec import ColumnSpec, ColumnType, DatasetSpec
from histimport_pipeline.engine.validation.coerce import (
    _ISO_DATE,
    DECIMAL_PRECISION,
    Bound,
    Coercer,
    CoercionError,
    _bounds,
    _clean,
    _show,
    build_coercer,
)


class Validator:
    """Validates the rows of one file, batch by batch.

    It remembers the natural keys of valid rows across batches, so a key repeated anywhere
    later in the same file is reported as a duplicate. Use one ``Validator`` per file.
    """

    def __init__(self, spec: DatasetSpec, *, detect_duplicates: bool = True) -> None:
        """Precompute one coercer per spec column (key columns are required).

        Args:
            spec: the dataset.
            detect_duplicates: sort rows repeating an earlier valid row's natural key into
                ``duplicates``. When ``False`` every row that passes its columns is valid and
                no keys are remembered (the caller finds duplicates another way, e.g. in SQL),
                so memory does not grow with the file.
        """
        self.spec = spec
        required = set(spec.required_columns)
        self._columns: tuple[tuple[str, Coercer], ...] = tuple(
            (name, build_coercer(name, col, required=name in required))
            for name, col in spec.columns.items()
        )
        self._names = tuple(spec.columns)
        self._column_coercers = tuple(
            _column_coercer(name, col, coerce)
            for (name, coerce), col in zip(self._columns, spec.columns.values(), strict=True)
        )
        self._key: tuple[str, ...] = spec.key if detect_duplicates else ()
        positions = [self._names.index(k) for k in self._key]
        self._key_of: Callable[[tuple[Value, ...]], tuple[Value, ...]] = (
            itemgetter(*positions) if len(positions) > 1 else lambda typed: (typed[positions[0]],)
        )
        # Only decimals have equal values of unequal repr (1.5 and 1.50).
        self._digest_key = (
            _key_digest
            if any(spec.columns[k].type is ColumnType.DECIMAL for k in self._key)
            else _digest
        )
        # Key digest -> source row of its first valid occurrence: memory grows with distinct
        # keys only, not with row width.
        self._seen: dict[bytes, int] = {}

    def validate_batch(self, rows: Sequence[RawRow]) -> ValidatedBatch:
        """Coerce and check ``rows``; sort each into valid, failed or duplicates.

        The batch is coerced column by column, each distinct text once (see
        ``_column_coercer``); a row with a failing column is then coerced again on its own,
        so that its error is the one a row-by-row pass gives.

        Args:
            rows: parsed rows, text values keyed by spec column.

        Returns:
            A ``ValidatedBatch`` holding every input row exactly once. A failed row's error
            names its first failing column in spec order, and the message lists the other
            failing columns. A duplicate's error names the row where its key was first seen.
        """
        batch = ValidatedBatch()
        parsed = [row for row in rows if row.error is None]
        failing: set[int] = set()
        columns: list[list[Value]] = []
        for texts, coerce_column in zip(
            self._text_columns(parsed), self._column_coercers, strict=True
        ):
            values, bad = coerce_column(texts)
            columns.append(values)
            failing.update(bad)
        # Lengths below are equal by construction: strict zips would only cost time.
        typed_rows = zip(*columns, strict=False) if columns else repeat((), len(parsed))
        names = self._names
        if len(parsed) == len(rows) and not failing and not self._key:
            batch.valid = [
                ValidRow(row.source_row, names=names, cells=typed)
                for row, typed in zip(rows, typed_rows, strict=False)
            ]
            return batch
        key_of = self._key_of if self._key else None
        digest_of = self._digest_key
        seen = self._seen
        index = -1
        for row in rows:
            if row.error is not None:
                error = RowError(row.source_row, row.error_column, ErrorCategory.PARSE, row.error)
                batch.failed.append((row, error))
                continue
            index += 1
            typed = next(typed_rows)
            if index in failing:
                batch.failed.append((row, self.row_error(row)))
                continue
            if key_of is not None:
                digest = digest_of(key_of(typed))
                first = seen.get(digest)
                if first is not None:
                    batch.duplicates.append((row, self._duplicate_error(row, first)))
                    continue
                seen[digest] = row.source_row
            batch.valid.append(ValidRow(row.source_row, names=names, cells=typed))
        return batch

    def _text_columns(self, parsed: Sequence[RawRow]) -> list[list[str | None]]:
        """The rows' texts column by column, in spec order (``None`` where a row has none).

        When the parser gave every row the same ``names`` tuple, the columns come from
        transposing the rows' ``cells``, with no dict per row.
        """
        if not parsed:
            return [[] for _ in self._names]
        shared = parsed[0].names
        if shared is not None and all(row.names is shared for row in parsed):
            by_name = dict(
                zip(shared, zip(*(row.cells for row in parsed), strict=True), strict=True)
            )
            missing = [None] * len(parsed)
            return [list(by_name.get(name, missing)) for name in self._names]
        dicts = [row.values for row in parsed]
        return [list(map(dict.get, dicts, repeat(name))) for name in self._names]

    def row_error(self, row: RawRow) -> RowError:
        """The error of a row with a failing column, from coercing it column by column.

        This is the message every reader's failed rows carry: its first failing column in
        spec order, the category, and the other failing columns named.

        Raises:
            AssertionError: no column of ``row`` fails.
        """
        values = row.values
        for index, (name, coerce) in enumerate(self._columns):
            try:
                coerce(values.get(name))
            except CoercionError as exc:
                return self._row_error(row, index, exc)
        raise AssertionError(f"row {row.source_row} was found failing but every column passes")

    def _row_error(self, row: RawRow, index: int, exc: CoercionError) -> RowError:
        """The error of the column at ``index``, noting the later columns that fail too."""
        name = self._columns[index][0]
        others: list[str] = []
        for other, coerce in self._columns[index + 1 :]:
            try:
                coerce(row.values.get(other))
            except CoercionError:
                others.append(other)
        message = exc.message
        if others:
            noun = "problem" if len(others) == 1 else "problems"
            message += f" (and {len(others)} more {noun}: {', '.join(others)})"
        return RowError(row.source_row, name, exc.category, message, row.values.get(name))

    def _duplicate_error(self, row: RawRow, first: int) -> RowError:
        strip = {k: self.spec.columns[k].strip for k in self._key}
        shown = ", ".join(
            f"{k}={_show(_clean(row.values.get(k), strip=strip[k]))}" for k in self._key
        )
        head = self._key[0]
        return RowError(
            row.source_row,
            head,
            ErrorCategory.DUPLICATE,
            f"duplicate key {shown} (first seen in row {first})",
            row.values.get(head),
        )


#: A column's texts in one batch -> their values, and the positions whose text fails.
ColumnCoercer = Callable[[list[str | None]], tuple[list[Value], list[int]]]
#: Texts -> their values, or ``None`` when some text needs the one-by-one path.
BulkConverter = Callable[[list[str]], list[Value] | None]


def column_coercer(column: str, spec: ColumnSpec, *, required: bool) -> ColumnCoercer:
    """The function that coerces one column of a batch of texts, as ``Validator`` does.

    Args:
        column: the spec column name (used in messages).
        spec: the column's spec.
        required: whether a missing value fails (key columns are required).

    Returns:
        A function from the column's texts to their typed values (``None`` where a text
        fails) and the positions of the failing texts.
    """
    return _column_coercer(column, spec, build_coercer(column, spec, required=required))


def _column_coercer(column: str, spec: ColumnSpec, coerce: Coercer) -> ColumnCoercer:
    """Coerce one column of a batch as ``coerce`` does each value, doing less work.

    Columns repeat their texts (months, codes, ``NA``), so each distinct text is coerced once
    and the values are looked up. The distinct texts are first tried in bulk by a strict
    converter that accepts only the usual clean forms (plain digits for an integer...), for
    which it gives exactly ``coerce``'s value; when it declines, each distinct text goes
    through ``coerce`` itself. Texts that are missing (``None``) or null values always do.
    """
    bulk = _bulk_converter(spec)
    special = frozenset({None, *spec.null_values})

    def coerce_column(texts: list[str | None]) -> tuple[list[Value], list[int]]:
        distinct = set(texts)
        odd = distinct & special
        plain = [text for text in distinct - odd if text is not None]
        converted = bulk(plain) if bulk is not None and plain else None
        table: dict[str | None, Value] = {}
        if converted is None:
            odd = distinct
        else:
            table = dict(zip(plain, converted, strict=True))
        failed: set[str | None] = set()
        for text in odd:
            try:
                table[text] = coerce(text)
            except CoercionError:
                table[text] = None
                failed.add(text)
        values = list(map(table.__getitem__, texts))
        if not failed:
            return values, []
        return values, [i for i, text in enumerate(texts) if text in failed]

    return coerce_column


def _bulk_converter(spec: ColumnSpec) -> BulkConverter | None:
    """A strict converter of many texts at once, or ``None`` where there is none.

    It returns values only when every text is in a form whose value it knows to equal the
    one ``build_coercer`` gives (no surrounding space, not a null value, within every rule),
    else ``None``. Texts it is given are never ``None`` and never one of the null values.
    """
    kind = spec.type
    convert: BulkConverter
    if kind is ColumnType.INTEGER:
        convert = _bulk_integers
    elif kind is ColumnType.DECIMAL:
        convert = _bulk_decimals(spec.scale)
    elif kind is ColumnType.DATE and (spec.formats or (_ISO_DATE,))[0] == _ISO_DATE:
        convert = _bulk_iso_dates
    elif kind is ColumnType.STRING:
        convert = _bulk_strings(spec.strip, frozenset(spec.null_values))
    else:
        return None
    checks = _bulk_checks(spec)
    if not checks:
        return convert

    def convert_checked(texts: list[str]) -> list[Value] | None:
        values = convert(texts)
        if values is None:
            return None
        # Text columns check the stripped text, which is their value.
        checked = values if kind is ColumnType.STRING else texts
        if all(check(checked, values) for check in checks):  # type: ignore[arg-type]
            return values
        return None

    return convert_checked


def _lines_match(pattern: re.Pattern[str], texts: list[str]) -> bool:
    """Whether every text matches ``pattern`` (one regex pass in C over the joined texts).

    ``pattern`` must match one text and never a line break; the count check keeps a text
    holding line breaks from passing as several texts.
    """
    joined = "\n".join(texts)
    return joined.count("\n") == len(texts) - 1 and pattern.fullmatch(joined) is not None


def _many_lines(line: str) -> re.Pattern[str]:
    return re.compile(f"{line}(?:\n{line})*")


# At most 18 digits: every such number is inside the 64-bit range without checking it.
_PLAIN_INTEGERS = _many_lines("[+-]?[0-9]{1,18}")
_ISO_DATES = _many_lines("[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _bulk_integers(texts: list[str]) -> list[Value] | None:
    if not _lines_match(_PLAIN_INTEGERS, texts):
        return None
    return list(map(int, texts))


def _bulk_decimals(scale: int) -> BulkConverter:
    whole = f"[0-9]{{1,{DECIMAL_PRECISION - scale}}}"
    if scale:
        number = f"(?:{whole}(?:\\.[0-9]{{0,{scale}}})?|\\.[0-9]{{1,{scale}}})"
    else:
        number = f"{whole}\\.?"
    pattern = _many_lines(f"[+-]?{number}")

    def convert(texts: list[str]) -> list[Value] | None:
        if not _lines_match(pattern, texts):
            return None
        return list(map(Decimal, texts))

    return convert


def _bulk_iso_dates(texts: list[str]) -> list[Value] | None:
    if not _lines_match(_ISO_DATES, texts):
        return None
    try:
        return list(map(date.fromisoformat, texts))
    except ValueError:  # 2024-02-30: left to the one-by-one path and its message
        return None


def _bulk_strings(strip: bool, nulls: frozenset[str]) -> BulkConverter:
    def convert(texts: list[str]) -> list[Value] | None:
        if strip:
            texts = list(map(str.strip, texts))
            if not nulls.isdisjoint(texts):
                return None
        if "\n" + QUOTE in "\n" + "\n".join(texts):
            return None  # maybe a neutralised formula: ``coerce`` restores it
        return list(texts)

    return convert


BulkCheck = Callable[[list[str], list[Value]], bool]


def _bulk_checks(spec: ColumnSpec) -> list[BulkCheck]:
    """The rules of ``_checks`` for many (stripped) texts and their values at once."""
    checks: list[BulkCheck] = []
    if spec.max_length is not None:
        limit = spec.max_length
        checks.append(lambda texts, values: max(map(len, texts)) <= limit)
    if spec.regex is not None:
        fullmatch = re.compile(spec.regex).fullmatch
        checks.append(lambda texts, values: all(map(fullmatch, texts)))
    if spec.allowed is not None and spec.type is not ColumnType.ENUM:
        members = frozenset(spec.allowed)
        checks.append(lambda texts, values: members.issuperset(texts))
    bounds = _bounds(spec)
    if bounds is not None:
        checks.append(_bulk_bounds_check(*bounds))
    return checks


def _bulk_bounds_check(low: Bound | None, high: Bound | None) -> BulkCheck:
    def check(texts: list[str], values: list[Value]) -> bool:
        # As in _bounds_check, the values are of the bound's type (and never None here).
        if low is not None and min(values) < low:  # type: ignore[type-var, operator]
            return False
        return high is None or not max(values) > high  # type: ignore[type-var, operator]

    return check


def _key_digest(key: tuple[Value, ...]) -> bytes:
    """A 128-bit digest of a typed key; equal values (``1.5`` and ``1.50``) digest alike."""
    return _digest(tuple(_canonical(v) for v in key))


def _digest(parts: tuple[Value, ...]) -> bytes:
    """A 128-bit digest of a key whose equal values have equal ``repr``."""
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _canonical(value: Value) -> Value:
    if isinstance(value, Decimal):
        return Decimal(0) if value == 0 else value.normalize()
    return value
