"""Validation stage: parsed text to typed values, each column's rules, duplicate keys.

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

from histimport_pipeline.engine.validation.coerce import (
    CoercionError,
    build_coercer,
    coerce_value,
)
from histimport_pipeline.engine.validation.validator import (
    ColumnCoercer,
    Validator,
    column_coercer,
)

__all__ = [
    "CoercionError",
    "ColumnCoercer",
    "Validator",
    "build_coercer",
    "coerce_value",
    "column_coercer",
]
