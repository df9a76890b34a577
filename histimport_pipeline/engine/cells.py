"""Formula-looking cells: how the failed-rows CSV neutralises them and how an import reads
them back.

A spreadsheet runs a cell starting with ``= + - @``, a tab or a carriage return as a formula
(CSV injection), so the failed-rows CSV writes such text with a leading single quote, the
spreadsheet's own "this is text" marker. Plain numbers (``-5``, ``+1``, ``-3.00``) are read as
that same number and are written unchanged. Text columns read the marker back off, so a user
who fixes that CSV and imports it again gets the original values: ``neutralise`` and
``restore`` are exact inverses, also for text that already starts with quotes.
"""

from __future__ import annotations

import re

#: A cell starting with one of these is taken for a formula by spreadsheet programs.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
#: The spreadsheet's text marker.
QUOTE = "'"
#: A signed plain number (``-5``, ``+1``, ``-3.00``, ``-.5``, ``-1e3``).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _formula_like(text: str) -> bool:
    """Whether ``text``, after any leading quotes, would be evaluated by a spreadsheet.

    Counting text behind quotes too keeps ``neutralise`` one-to-one: ``'=x`` (a value that
    really starts with a quote) is written ``''=x`` and read back as ``'=x``.
    """
    core = text.lstrip(QUOTE)
    return core.startswith(FORMULA_PREFIXES) and _PLAIN_NUMBER.fullmatch(core) is None


def neutralise(text: str) -> str:
    """``text`` made safe to open in a spreadsheet: a leading quote when it looks like a
    formula (and is not a plain number), else unchanged."""
    return QUOTE + text if _formula_like(text) else text


def restore(text: str) -> str:
    """The value ``neutralise`` made ``text`` from: without the leading quote when what
    follows looks like a formula (``'=SUM(A1)`` -> ``=SUM(A1)``), else unchanged."""
    if text.startswith(QUOTE) and _formula_like(text[1:]):
        return text[1:]
    return text
