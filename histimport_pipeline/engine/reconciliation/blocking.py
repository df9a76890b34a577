"""Blocking: the texts a rule compares (one part per source/field pair) and the candidate
master rows of each input, by a sorted neighbourhood over several keys at once, so a typo in
the first letter still finds its row through the other keys and cost grows with ``n log n``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import IntArray, normalize, prepared
from histimport_pipeline.engine.spec import MatchField, MatchRule, ReferenceSpec, Scorer


def _neighbours(
    master_keys: Sequence[str | None], input_keys: Sequence[str | None], window: int
) -> IntArray:
    """Sorted neighbourhood: for each input, the master rows around it in key order.

    Returns:
        An ``(inputs, 2 * window)`` array of master row numbers; -1 where there is none or
        the input's key is missing.
    """
    present = np.array([k is not None for k in master_keys], dtype=bool)
    rows = np.flatnonzero(present)
    out = np.full((len(input_keys), 2 * window), -1, dtype=np.int64)
    if len(rows) == 0 or len(input_keys) == 0:
        return out
    keys = np.array([master_keys[int(i)] for i in rows])
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_rows = keys[order], rows[order]
    asked = np.array([k or "" for k in input_keys])
    at = np.searchsorted(sorted_keys, asked)
    offsets = at[:, None] + np.arange(-window, window)[None, :]
    valid = (offsets >= 0) & (offsets < len(sorted_rows))
    out[valid] = sorted_rows[offsets[valid]]
    missing = np.array([k is None for k in input_keys], dtype=bool)
    out[missing] = -1
    return out


def _dedupe_rows(candidates: IntArray) -> tuple[IntArray, IntArray]:
    """(input index, master row) pairs from a candidate matrix, each pair once."""
    ordered = np.sort(candidates, axis=1)
    keep = ordered >= 0
    keep[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    inputs = np.nonzero(keep)[0].astype(np.int64)
    return inputs, ordered[keep].astype(np.int64)


def _reverse(value: str | None) -> str | None:
    return None if value is None else value[::-1]


def _same(value: str) -> str:
    return value


def _backwards(value: str) -> str:
    return value[::-1]


def joined(parts: Sequence[str | None]) -> str | None:
    present = [p for p in parts if p]
    return " ".join(present) if present else None


@dataclass
class Part:
    """One source/field pair of a rule with its normalized texts."""

    field_index: int
    spec: MatchField
    source_index: int
    master_name: str
    inputs: list[str | None]
    master: list[str | None]


class InputColumns:
    """The values of the distinct inputs, one column per source, normalized once."""

    def __init__(self, inputs: Sequence[Sequence[str | None]]) -> None:
        self.inputs = inputs
        self._columns: dict[tuple[int, bool, bool], list[str | None]] = {}

    def column(self, source_index: int, strip_accents: bool, normalized: bool) -> list[str | None]:
        """One source's values over every input, normalized once."""
        key = (source_index, strip_accents, normalized)
        if key not in self._columns:
            values = [v[source_index] for v in self.inputs]
            if normalized:
                values = [normalize(v, strip_accents) for v in values]
            self._columns[key] = values
        return self._columns[key]


def rule_parts(
    ref: ReferenceSpec,
    master: MasterData,
    columns: InputColumns,
    rule: MatchRule,
    rows: Sequence[int],
) -> list[Part]:
    """The parts of a rule over the inputs ``rows``, each with its normalized texts."""
    position = {s: i for i, s in enumerate(ref.sources)}
    parts = []
    for fi, f in enumerate(rule.fields):
        for source, name in zip(f.source, f.field, strict=True):
            si = position[source]
            column = columns.column(si, f.strip_accents, normalized=True)
            parts.append(
                Part(
                    field_index=fi,
                    spec=f,
                    source_index=si,
                    master_name=name,
                    inputs=[column[i] for i in rows],
                    master=master.normalized(name, f.strip_accents),
                )
            )
    return parts


def blocking_keys(
    rule: MatchRule, parts: list[Part]
) -> list[tuple[list[str | None], list[str | None]]]:
    """(master keys, input keys) of every blocking key of a rule."""
    keys: list[tuple[list[str | None], list[str | None]]] = []
    if len(rule.fields) == 1:
        master = [joined(p) for p in zip(*(x.master for x in parts), strict=True)]
        asked = [joined(p) for p in zip(*(x.inputs for x in parts), strict=True)]
        keys.append((master, asked))
        keys.append(([_reverse(v) for v in master], [_reverse(v) for v in asked]))
        if any(v and " " in v for v in asked):
            keys.append(
                (
                    prepared(master, Scorer.TOKEN_SORT_RATIO),
                    prepared(asked, Scorer.TOKEN_SORT_RATIO),
                )
            )
        return keys
    # Each part's key is its value, then every other part's value (missing ones as "").
    filled = [([v or "" for v in p.master], [v or "" for v in p.inputs]) for p in parts]
    for k, part in enumerate(parts):
        others = filled[:k] + filled[k + 1 :]
        master_rest = ["\x1f".join(row) for row in zip(*(o[0] for o in others), strict=True)]
        input_rest = ["\x1f".join(row) for row in zip(*(o[1] for o in others), strict=True)]
        for transform in (_same, _backwards):
            keys.append(
                (
                    [
                        None if v is None else transform(v) + "\x1e" + r
                        for v, r in zip(part.master, master_rest, strict=True)
                    ],
                    [
                        None if v is None else transform(v) + "\x1e" + r
                        for v, r in zip(part.inputs, input_rest, strict=True)
                    ],
                )
            )
    for fi, f in enumerate(rule.fields):
        if len(f.source) > 1:
            mine = [p for p in parts if p.field_index == fi]
            master = prepared(
                [joined(p) for p in zip(*(x.master for x in mine), strict=True)],
                Scorer.TOKEN_SORT_RATIO,
            )
            asked = prepared(
                [joined(p) for p in zip(*(x.inputs for x in mine), strict=True)],
                Scorer.TOKEN_SORT_RATIO,
            )
            keys.append((master, asked))
    return keys


def candidate_pairs(
    rule: MatchRule, parts: list[Part], n_inputs: int, window: int
) -> tuple[IntArray, IntArray]:
    """(input index, master row) of every candidate pair of a rule, each pair once."""
    blocks = [_neighbours(master, asked, window) for master, asked in blocking_keys(rule, parts)]
    matrix = np.concatenate(blocks, axis=1) if blocks else np.full((n_inputs, 0), -1)
    return _dedupe_rows(matrix)
