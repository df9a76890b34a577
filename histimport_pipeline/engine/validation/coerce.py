"""Per-type converters and checks: one text of one column to its typed value."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache

from histimport_pipeline.engine.cells import QUOTE, restore
from histimport_pipeline.engine.models import ErrorCategory, Value
from histimport_pipeline.engine.spec import ColumnSpec, ColumnType

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
