"""Validate: turn parsed text into typed values, check each column's rules and duplicate keys.

Every input row lands in exactly one place: ``valid`` (typed values for every spec column),
``failed`` (a parse problem or the first failing column, category and message) or
``duplicates`` (its natural key repeats an earlier valid row of the same file).

Choices a person may want to know about:

* Missing means no cell, or a text (after stripping, when ``strip`` is on) equal to one of the
  column's ``null_values`` -- only ``""`` by default, so ``NA`` / ``null`` / ``None`` stay text.
* ``integer`` accepts ``12``, ``+12``, ``-3`` and Excel's ``12.0`` / ``12.00``; it refuses
  thousands separators, fractions and values outside the 64-bit range of the target column.
* ``decimal`` accepts plain notation (``1.50``, ``-0.5``, ``.5``); it refuses scientific
  notation (``1.5E+06`` is usually a spreadsheet's rounded display, i.e. lost digits),
  thousands separators, NaN and infinities, more fraction digits than ``scale`` (nothing is
  rounded silently; trailing zeros do not count) and more than ``38 - scale`` integer digits.
* ``date`` tries ``formats`` in order (default ISO ``%Y-%m-%d`` only, because ``03/04/2024`` is
  ambiguous); a date followed by exactly midnight (``2024-01-31 00:00:00``), as spreadsheets
  export date cells, is accepted too.
* ``timestamp`` defaults to ISO 8601 (``datetime.fromisoformat``, so a bare date is midnight)
  and ``%Y-%m-%d %H:%M:%S``; values with an offset are converted to UTC and stored naive.
* ``min``/``max`` compare numbers numerically and dates/timestamps against their ISO bound;
  they are ignored for text-like columns. ``regex`` must match the whole (stripped) text;
  ``allowed`` compares the (stripped) text exactly; ``max_length`` counts characters.
* Categories: TYPE for text that is not a number/boolean, FORMAT for dates, timestamps,
  e-mail addresses and ``regex``, RANGE for ``min``/``max``, ``allowed`` and ``max_length``,
  REQUIRED for a missing required or key value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from itertools import repeat
from operator import itemgetter

from histimport_pipeline.engine.cells import QUOTE, restore
from histimport_pipeline.engine.models import (
    ErrorCategory,
    RawRow,
    RowError,
    ValidatedBatch,
    ValidRow,
    Value,
)
from histimport_pipeline.engine.spec import ColumnSpec, ColumnType, DatasetSpec

#: Range of the target's BIGINT (and SQLite's INTEGER).
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
#: Total digits of the target's NUMERIC(38, scale).
DECIMAL_PRECISION = 38

_ISO_DATE = "%Y-%m-%d"
_DEFAULT_TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S",)
_MIDNIGHT_SUFFIXES = (" 00:00:00", "T00:00:00", " 00:00", "T00:00")
_SHOW_LIMIT = 60
_ALLOWED_SHOWN = 10

# Pragmatic, not RFC 5322: dot-atom local part, dotted host names, an alphabetic or punycode
# top-level domain, no spaces. Letters outside ASCII are accepted (``\w``) for people's names.
_EMAIL = re.compile(
    r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
    r"@(?:[^\W_](?:[\w-]*[^\W_])?\.)+(?:[^\W\d_]{2,}|xn--[a-z0-9-]+)",
    re.IGNORECASE,
)

_FORMAT_WORDS = {
    "%Y": "YYYY",
    "%y": "YY",
    "%m": "MM",
    "%d": "DD",
    "%H": "hh",
    "%I": "hh",
    "%M": "mm",
    "%S": "ss",
    "%f": "ffffff",
    "%z": "+hhmm",
    "%Z": "TZ",
    "%p": "AM/PM",
    "%b": "Mon",
    "%B": "Month",
    "%a": "Ddd",
    "%A": "Day",
    "%j": "DDD",
    "%%": "%",
}

Coercer = Callable[[str | None], Value]
Converter = Callable[[str], Value]
Check = Callable[[str, Value], None]


class CoercionError(Exception):
    """One value failed its column: why (``category``) and a readable ``message``.

    The message names the column and the value, e.g. ``"amount: '-5' is below the minimum 0"``.
    """

    def __init__(self, category: ErrorCategory, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


def coerce_value(column: str, spec: ColumnSpec, text: str | None) -> Value:
    """Turn one cell's text into the typed value of ``column``, checking the column's rules.

    Args:
        column: the spec column name (used in messages).
        spec: the column's spec; ``spec.required`` decides whether missing is an error (the
            ``Validator`` also treats key columns as required).
        text: the cell text exactly as in the file, or ``None`` when the file had no cell.

    Returns:
        The typed value (``str``, ``int``, ``Decimal``, ``bool``, ``date`` or ``datetime``), or
        ``None`` for a missing optional value. See the module docstring for the rules.

    Raises:
        CoercionError: the value is missing but required, or fails its type or a rule.
    """
    return _cached_coercer(column, spec, spec.required)(text)


@lru_cache(maxsize=512)
def _cached_coercer(column: str, spec: ColumnSpec, required: bool) -> Coercer:
    return build_coercer(column, spec, required=required)


def build_coercer(column: str, spec: ColumnSpec, *, required: bool) -> Coercer:
    """Precompute the function that coerces and checks one column's text.

    Args:
        column: the spec column name (used in messages).
        spec: the column's spec.
        required: whether a missing value is a REQUIRED error rather than ``None``.

    Returns:
        A function from cell text (or ``None``) to the typed value.
        It raises ``CoercionError`` as ``coerce_value`` does.
    """
    strip = spec.strip
    nulls = frozenset(spec.null_values)
    convert = _converter(column, spec)
    checks = tuple(_checks(column, spec))
    # Text columns read back the quote the failed-rows CSV puts before formula-looking text.
    unquote = spec.type is ColumnType.STRING

    def missing() -> Value:
        if required:
            raise CoercionError(ErrorCategory.REQUIRED, f"{column} is required but empty")
        return None

    if checks:

        def coerce(text: str | None) -> Value:
            if text is None:
                return missing()
            if strip:
                text = text.strip()
            if text in nulls:
                return missing()
            if unquote and text.startswith(QUOTE):
                text = restore(text)
            value = convert(text)
            for check in checks:
                check(text, value)
            return value

    else:

        def coerce(text: str | None) -> Value:
            if text is None:
                return missing()
            if strip:
                text = text.strip()
            if text in nulls:
                return missing()
            if unquote and text.startswith(QUOTE):
                text = restore(text)
            return convert(text)

    return coerce


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


def _clean(text: str | None, *, strip: bool) -> str:
    if text is None:
        return ""
    return text.strip() if strip else text


def _show(text: str) -> str:
    """The value quoted for a message, shortened when long."""
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 3] + "..."
    return repr(text)


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _describe_format(fmt: str) -> str:
    return re.sub(r"%.", lambda m: _FORMAT_WORDS.get(m.group(0), m.group(0)), fmt)


def _or_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _converter(column: str, spec: ColumnSpec) -> Converter:
    """The type conversion of one column; raises ``CoercionError`` with TYPE or FORMAT."""
    kind = spec.type
    if kind is ColumnType.INTEGER:
        return _integer_converter(column)
    if kind is ColumnType.DECIMAL:
        return _decimal_converter(column, spec.scale)
    if kind is ColumnType.BOOLEAN:
        return _boolean_converter(column, spec.true_values, spec.false_values)
    if kind is ColumnType.DATE:
        return _date_converter(column, spec.formats or (_ISO_DATE,))
    if kind is ColumnType.TIMESTAMP:
        return _timestamp_converter(column, spec.formats)
    if kind is ColumnType.EMAIL:
        return _email_converter(column)
    if kind is ColumnType.ENUM:
        return _enum_converter(column, spec.allowed or ())
    return _text


def _text(text: str) -> Value:
    return text


def _integer_converter(column: str) -> Converter:
    def convert(text: str) -> Value:
        body = text[1:] if text[:1] in ("+", "-") else text
        if not _is_digits(body):
            whole, dot, frac = body.partition(".")
            if not (dot and _is_digits(whole) and _is_digits(frac) and not frac.strip("0")):
                raise _integer_problem(column, text)
            body = whole
        # Length first: int() of a huge digit string is slow (and limited in Python >= 3.11).
        if len(body.lstrip("0")) > 19:
            raise _out_of_int_range(column, text)
        value = int(body)
        if text[:1] == "-":
            value = -value
        if not INT_MIN <= value <= INT_MAX:
            raise _out_of_int_range(column, text)
        return value

    return convert


def _integer_problem(column: str, text: str) -> CoercionError:
    message = f"{column}: {_show(text)} is not a whole number"
    if "," in text and _is_digits(text.replace(",", "").lstrip("+-")):
        message += " (remove the thousands separators)"
    return CoercionError(ErrorCategory.TYPE, message)


def _out_of_int_range(column: str, text: str) -> CoercionError:
    return CoercionError(
        ErrorCategory.RANGE, f"{column}: {_show(text)} is outside the 64-bit integer range"
    )


def _decimal_converter(column: str, scale: int) -> Converter:
    max_whole = DECIMAL_PRECISION - scale

    def convert(text: str) -> Value:
        body = text[1:] if text[:1] in ("+", "-") else text
        whole, _dot, frac = body.partition(".")
        if not (
            (whole or frac) and (not whole or _is_digits(whole)) and (not frac or _is_digits(frac))
        ):
            raise _decimal_problem(column, text)
        if len(frac) > scale and len(frac.rstrip("0")) > scale:
            raise CoercionError(
                ErrorCategory.TYPE,
                f"{column}: {_show(text)} has {len(frac.rstrip('0'))} digits after the decimal "
                f"point; at most {scale} allowed (nothing is rounded)",
            )
        if len(whole.lstrip("0")) > max_whole:
            raise CoercionError(
                ErrorCategory.RANGE,
                f"{column}: {_show(text)} has more than {max_whole} digits before the decimal "
                "point",
            )
        return Decimal(text)

    return convert


def _decimal_problem(column: str, text: str) -> CoercionError:
    message = f"{column}: {_show(text)} is not a decimal number"
    body = text.lstrip("+-")
    if "," in body:
        message += " (use '.' for the decimal point and no thousands separators)"
    elif "e" in body.lower() and body.lower() not in ("inf", "infinity"):
        mantissa, _e, exponent = body.lower().partition("e")
        if mantissa.replace(".", "", 1).isdigit() and exponent.lstrip("+-").isdigit():
            message += " (scientific notation; write it out as a plain number)"
    return CoercionError(ErrorCategory.TYPE, message)


def _boolean_converter(
    column: str, true_values: Sequence[str], false_values: Sequence[str]
) -> Converter:
    lookup = {t.casefold(): False for t in false_values}
    lookup.update({t.casefold(): True for t in true_values})
    hint = f"true: {', '.join(true_values)}; false: {', '.join(false_values)}"

    def convert(text: str) -> Value:
        value = lookup.get(text.casefold())
        if value is None:
            raise CoercionError(
                ErrorCategory.TYPE, f"{column}: {_show(text)} is not a boolean ({hint})"
            )
        return value

    return convert


def _date_converter(column: str, formats: Sequence[str]) -> Converter:
    described = _or_list([_describe_format(f) for f in formats])

    def parse(text: str) -> date | None:
        for fmt in formats:
            if fmt == _ISO_DATE and len(text) == 10 and text[4] == "-" and text[7] == "-":
                # fromisoformat is ~10x faster than strptime; both refuse 2024-02-30. The shape
                # test keeps out ISO forms strptime would refuse, such as week dates.
                try:
                    return date.fromisoformat(text)
                except ValueError:
                    continue
            try:
                return datetime.strptime(text, fmt).date()
            except ValueError:
                continue
        return None

    def convert(text: str) -> Value:
        value = parse(text)
        if value is None:
            for suffix in _MIDNIGHT_SUFFIXES:
                if text.endswith(suffix):
                    value = parse(text[: -len(suffix)])
                    break
        if value is None:
            raise CoercionError(
                ErrorCategory.FORMAT, f"{column}: {_show(text)} is not a date in format {described}"
            )
        return value

    return convert


def _to_naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _timestamp_converter(column: str, formats: Sequence[str] | None) -> Converter:
    iso = formats is None
    strptime_formats = _DEFAULT_TIMESTAMP_FORMATS if formats is None else tuple(formats)
    names = [_describe_format(f) for f in strptime_formats]
    described = _or_list(["ISO 8601", *names] if iso else names)

    def convert(text: str) -> Value:
        if iso:
            try:
                return _to_naive_utc(datetime.fromisoformat(text))
            except ValueError:
                pass
        for fmt in strptime_formats:
            try:
                return _to_naive_utc(datetime.strptime(text, fmt))
            except ValueError:
                continue
        raise CoercionError(
            ErrorCategory.FORMAT,
            f"{column}: {_show(text)} is not a timestamp in format {described}",
        )

    return convert


def _email_converter(column: str) -> Converter:
    fullmatch = _EMAIL.fullmatch

    def convert(text: str) -> Value:
        if fullmatch(text) is None:
            raise CoercionError(
                ErrorCategory.FORMAT, f"{column}: {_show(text)} is not a valid e-mail address"
            )
        return text

    return convert


def _allowed_problem(column: str, text: str, allowed: Sequence[str]) -> CoercionError:
    shown = ", ".join(allowed[:_ALLOWED_SHOWN])
    if len(allowed) > _ALLOWED_SHOWN:
        shown += f", ... ({len(allowed)} in all)"
    return CoercionError(
        ErrorCategory.RANGE, f"{column}: {_show(text)} is not one of the allowed values: {shown}"
    )


def _enum_converter(column: str, allowed: Sequence[str]) -> Converter:
    members = frozenset(allowed)

    def convert(text: str) -> Value:
        if text not in members:
            raise _allowed_problem(column, text, allowed)
        return text

    return convert


def _checks(column: str, spec: ColumnSpec) -> list[Check]:
    """The rule checks after conversion, in the order their errors are reported."""
    checks: list[Check] = []
    if spec.max_length is not None:
        checks.append(_max_length_check(column, spec.max_length))
    if spec.regex is not None:
        checks.append(_regex_check(column, spec.regex))
    if spec.allowed is not None and spec.type is not ColumnType.ENUM:
        checks.append(_allowed_check(column, spec.allowed))
    bounds = _bounds(spec)
    if bounds is not None:
        checks.append(_bounds_check(column, spec, *bounds))
    return checks


def _max_length_check(column: str, limit: int) -> Check:
    def check(text: str, value: Value) -> None:
        if len(text) > limit:
            raise CoercionError(
                ErrorCategory.RANGE,
                f"{column}: {_show(text)} is {len(text)} characters long; at most {limit} allowed",
            )

    return check


def _regex_check(column: str, pattern: str) -> Check:
    fullmatch = re.compile(pattern).fullmatch

    def check(text: str, value: Value) -> None:
        if fullmatch(text) is None:
            raise CoercionError(
                ErrorCategory.FORMAT,
                f"{column}: {_show(text)} does not match the pattern {pattern}",
            )

    return check


def _allowed_check(column: str, allowed: Sequence[str]) -> Check:
    members = frozenset(allowed)

    def check(text: str, value: Value) -> None:
        if text not in members:
            raise _allowed_problem(column, text, allowed)

    return check


Bound = Decimal | date | datetime


def _bound_value(spec: ColumnSpec, bound: float | str | None) -> Bound | None:
    if bound is None:
        return None
    if spec.type in (ColumnType.INTEGER, ColumnType.DECIMAL):
        # Through str so that 0.1 means the decimal 0.1, not the nearest binary float.
        return Decimal(str(bound))
    if spec.type is ColumnType.DATE:
        return datetime.fromisoformat(str(bound)).date()
    if spec.type is ColumnType.TIMESTAMP:
        return _to_naive_utc(datetime.fromisoformat(str(bound)))
    return None


def _bounds(spec: ColumnSpec) -> tuple[Bound | None, Bound | None] | None:
    low, high = _bound_value(spec, spec.min), _bound_value(spec, spec.max)
    if low is None and high is None:
        return None
    return low, high


def _show_bound(bound: float | str | None) -> str:
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return str(bound)


def _bounds_check(column: str, spec: ColumnSpec, low: Bound | None, high: Bound | None) -> Check:
    numeric = spec.type in (ColumnType.INTEGER, ColumnType.DECIMAL)
    below = "below the minimum" if numeric else "earlier than the minimum"
    above = "above the maximum" if numeric else "later than the maximum"
    low_text, high_text = _show_bound(spec.min), _show_bound(spec.max)

    def check(text: str, value: Value) -> None:
        # The converter of a column with bounds yields the bound's type (Decimal compares
        # with int; date with date; datetime with datetime).
        if low is not None and value < low:  # type: ignore[operator]
            raise CoercionError(
                ErrorCategory.RANGE, f"{column}: {_show(text)} is {below} {low_text}"
            )
        if high is not None and value > high:  # type: ignore[operator]
            raise CoercionError(
                ErrorCategory.RANGE, f"{column}: {_show(text)} is {above} {high_text}"
            )

    return check
