"""Distinct values of a field, coded once: every distinct normalized text of a field of a rule
(over its parts' inputs and master rows) gets an integer code and is prepared for the field's
scorer once, so candidate pairs are compared as pairs of codes and scored in bulk.

Scores are the ones :func:`~.rules.pair_scores` gives for the same texts: the same rapidfuzz
scorer on the same prepared strings (``cdist`` and ``cpdist`` give the same float32 values).

For the scorers built on the Indel distance (``ratio``, ``token_sort_ratio``) a pair is not
scored at all when it cannot reach ``similar_at``: ``ratio`` is ``200 * LCS / (len1 + len2)``
and the longest common subsequence is at most the characters the two texts have in common,
which the lengths and two 64-bit masks per text bound from above (which character buckets
occur once or more, and twice or more). Most candidate pairs differ in a field, so this
leaves a tenth of them or less to score on names, streets and id numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz import process

from histimport_pipeline.engine.reconciliation.rules import (
    SCORERS,
    BoolArray,
    FloatArray,
    IntArray,
    ObjArray,
    UIntArray,
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
#: Scorers whose result is ``200 * LCS / (len1 + len2)`` (the Indel similarity).
INDEL_SCORERS = frozenset({Scorer.RATIO, Scorer.TOKEN_SORT_RATIO})
#: How far below ``similar_at`` the bound must be for a pair to be left unscored: far more
#: than the rounding of a score (rapidfuzz's float64 arithmetic, then float32).
_BOUND_SLACK = 1e-4
#: Texts up to this length get their character masks with numpy, longer ones one by one.
_MASKED_WIDTH = 64


@dataclass
class FieldCodes:
    """The texts of one field's parts as codes: -1 where a value is missing."""

    #: The prepared text of each code.
    prepared: ObjArray
    #: Per part (in the order given): the code of each input.
    inputs: list[IntArray]
    #: Per part: the code of each master row.
    master: list[IntArray]
    #: For an Indel scorer, per code: the length of its prepared text, and the character
    #: buckets (code point mod 64) occurring in it once or more and twice or more.
    lengths: IntArray | None = None
    once: UIntArray | None = None
    twice: UIntArray | None = None


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
    # Each new text takes the running number of the value it first appears as (map() and
    # setdefault() run in C); the numbers are then made dense, in order of first appearance.
    index: dict[str | None, int] = {None: -1}
    counter = itertools.count()
    raw_inputs = [_encoded(index, values, counter) for values in inputs]
    raw_master = [_encoded(index, values, counter) for values in master]
    seen = next(counter)
    dense = np.full(seen + 1, -1, dtype=np.int64)  # dense[-1] stays -1: a missing value
    distinct = list(index)[1:]
    dense[np.fromiter(index.values(), dtype=np.int64, count=len(index))[1:]] = np.arange(
        len(distinct)
    )
    coded_inputs = [dense[c] for c in raw_inputs]
    coded_master = [dense[c] for c in raw_master]
    texts = np.empty(len(distinct), dtype=object)
    texts[:] = distinct if scorer is None else prepared(distinct, scorer)
    codes = FieldCodes(texts, coded_inputs, coded_master)
    if scorer in INDEL_SCORERS:
        codes.lengths, codes.once, codes.twice = char_buckets(texts)
    return codes


def _encoded(
    index: dict[str | None, int], values: Sequence[str | None], counter: Iterator[int]
) -> IntArray:
    return np.fromiter(map(index.setdefault, values, counter), dtype=np.int64, count=len(values))


def char_buckets(texts: ObjArray) -> tuple[IntArray, UIntArray, UIntArray]:
    """Per text: its length, and the masks of character buckets (code point mod 64) that
    occur in it at least once and at least twice."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    once = np.zeros(len(texts), dtype=np.uint64)
    twice = np.zeros(len(texts), dtype=np.uint64)
    short = np.flatnonzero(lengths <= _MASKED_WIDTH)
    if len(short):
        width = max(int(lengths[short].max()), 1)
        chars = np.array(texts[short].tolist(), dtype=f"<U{width}").view(np.uint32)
        chars = chars.reshape(len(short), width)
        inside = np.arange(width)[None, :] < lengths[short][:, None]
        one = np.uint64(1)
        bits = np.where(inside, np.left_shift(one, (chars & 63).astype(np.uint64)), 0)
        bits = bits.astype(np.uint64)
        seen = np.bitwise_or.accumulate(bits, axis=1)
        once[short] = seen[:, -1]
        twice[short] = np.bitwise_or.reduce(bits[:, 1:] & seen[:, :-1], axis=1)
    for i in np.flatnonzero(lengths > _MASKED_WIDTH).tolist():
        a = b = 0
        for ch in texts[i]:
            bit = 1 << (ord(ch) & 63)
            b |= a & bit
            a |= bit
        once[i], twice[i] = a, b
    return lengths, once, twice


def _popcount(x: UIntArray) -> npt.NDArray[Any]:
    """Bits set in each 64-bit word (a small unsigned integer type)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def may_reach(codes: FieldCodes, left: IntArray, right: IntArray, at: float) -> BoolArray:
    """Whether the Indel similarity of each code pair can be ``at`` or more.

    Characters of one text absent from the other are not in their common subsequence: a
    bucket in one text and not the other stands for at least one such character, a bucket
    twice in one and at most once in the other for at least one more.
    """
    assert codes.lengths is not None and codes.once is not None and codes.twice is not None
    once, twice = codes.once, codes.twice
    length_a, length_b = codes.lengths[left], codes.lengths[right]
    once_a, once_b, twice_a, twice_b = once[left], once[right], twice[left], twice[right]
    only_a = _popcount(once_a & ~once_b) + _popcount(twice_a & ~twice_b)
    only_b = _popcount(once_b & ~once_a) + _popcount(twice_b & ~twice_a)
    common = np.minimum(length_a - only_a, length_b - only_b)
    # 200 * common / (length_a + length_b) >= at - slack, without the division
    return 200.0 * common >= (at - _BOUND_SLACK) * (length_a + length_b)


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
    codes: FieldCodes,
    left: IntArray,
    right: IntArray,
    scorer: Scorer,
    similar_at: float,
    workers: int,
) -> BoolArray:
    """Whether each code pair scores at least ``similar_at``; equal codes are not scored (they
    are equal, not similar) and come out False, like pairs with a missing side."""
    asked = np.flatnonzero((left >= 0) & (right >= 0) & (left != right))
    if codes.lengths is not None and len(asked):
        asked = asked[may_reach(codes, left[asked], right[asked], similar_at)]
    result = np.zeros(len(left), dtype=bool)
    if len(asked):
        scores = code_scores(codes.prepared, left[asked], right[asked], scorer, workers)
        result[asked] = scores >= similar_at
    return result
