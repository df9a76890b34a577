"""Distinct values of a field, coded once: every distinct normalized text of a field of a rule
(over its parts' inputs and master rows) gets an integer code and is prepared for the field's
scorer once, so candidate pairs are compared as pairs of codes and scored in bulk.

Scores are the ones :func:`~.rules.pair_scores` gives for the same texts: the same rapidfuzz
scorer on the same prepared strings (``cdist`` and ``cpdist`` give the same float32 values).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process

from histimport_pipeline.engine.reconciliation.rules import (
    SCORERS,
    BoolArray,
    FloatArray,
    IntArray,
    ObjArray,
    prepared,
)
from histimport_pipeline.engine.spec import Scorer

#: The distinct values of a block of pairs are scored all against all (``cdist``, each value
#: converted once and each query's pattern built once) when the table has at most this many
#: cells per pair asked for; otherwise pair by pair (``cpdist``). ``cdist`` costs about a
#: twentieth of ``cpdist`` per comparison, so 8 leaves room for a table that is mostly unused.
DENSE_CELLS_PER_PAIR = 8
#: ...and at most this many cells (float32: 4 bytes each).
DENSE_MAX_CELLS = 16_000_000


@dataclass
class FieldCodes:
    """The texts of one field's parts as codes: -1 where a value is missing."""

    #: The prepared text of each code.
    prepared: ObjArray
    #: Per part (in the order given): the code of each input.
    inputs: list[IntArray]
    #: Per part: the code of each master row.
    master: list[IntArray]


def field_codes(
    inputs: Sequence[Sequence[str | None]],
    master: Sequence[Sequence[str | None]],
    scorer: Scorer | None,
) -> FieldCodes:
    """Code the texts of a field's parts (inputs and master rows of each part) in one code
    space, so equal texts get equal codes whatever side or part they come from.

    Args:
        inputs: per part, the normalized text of each input.
        master: per part, the normalized text of each master row.
        scorer: the field's scorer (what the distinct texts are prepared for); ``None``
            for a field compared by equality only.
    """
    index: dict[str, int] = {}

    def encode(values: Sequence[str | None]) -> IntArray:
        codes: Iterable[int] = (
            -1 if v is None else index.setdefault(v, len(index)) for v in values
        )
        return np.fromiter(codes, dtype=np.int64, count=len(values))

    coded_inputs = [encode(values) for values in inputs]
    coded_master = [encode(values) for values in master]
    texts = np.empty(len(index), dtype=object)
    texts[:] = list(index) if scorer is None else prepared(index, scorer)
    return FieldCodes(texts, coded_inputs, coded_master)


def _dense_index(codes: IntArray, size: int) -> tuple[IntArray, IntArray]:
    """(the distinct codes in ``codes``, ascending; the position of each code among them)."""
    seen = np.zeros(size, dtype=bool)
    seen[codes] = True
    distinct = np.flatnonzero(seen)
    position = np.full(size, -1, dtype=np.int64)
    position[distinct] = np.arange(len(distinct))
    return distinct, position


def code_scores(
    texts: ObjArray, left: IntArray, right: IntArray, scorer: Scorer, workers: int
) -> FloatArray:
    """Similarity (0-100) of the texts of the code pairs ``(left[i], right[i])``, all present.

    The distinct codes on each side are scored all against all when that table is small next
    to the pairs asked for (a field of few distinct values: postcodes, states), else pair by
    pair.
    """
    function, scale = SCORERS[scorer]
    if len(left) == 0:
        return np.zeros(0)
    rows, row_at = _dense_index(left, len(texts))
    cols, col_at = _dense_index(right, len(texts))
    cells = len(rows) * len(cols)
    if cells <= min(DENSE_MAX_CELLS, DENSE_CELLS_PER_PAIR * len(left)):
        table = process.cdist(texts[rows], texts[cols], scorer=function, workers=workers)
        scores = table[row_at[left], col_at[right]]
    else:
        scores = process.cpdist(texts[left], texts[right], scorer=function, workers=workers)
    return scores.astype(np.float64) * scale


def similar_codes(
    texts: ObjArray,
    left: IntArray,
    right: IntArray,
    scorer: Scorer,
    similar_at: float,
    workers: int,
) -> BoolArray:
    """Whether each code pair scores at least ``similar_at``; equal codes are not scored (they
    are equal, not similar) and come out False, like pairs with a missing side."""
    asked = (left >= 0) & (right >= 0) & (left != right)
    result = np.zeros(len(left), dtype=bool)
    if asked.any():
        result[asked] = code_scores(texts, left[asked], right[asked], scorer, workers) >= similar_at
    return result
