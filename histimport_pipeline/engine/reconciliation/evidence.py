"""Evidence of a rule of several fields, the Fellegi-Sunter way: an agreeing field adds
evidence in proportion to how rare its value is in the master table, a similar one (a typo) a
fixed amount learned by sampling master pairs, a different one subtracts a little."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import numpy.typing as npt

from histimport_pipeline.engine.reconciliation.blocking import Part
from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import (
    FloatArray,
    IntArray,
    ReconcileSettings,
    pair_scores,
    prepared,
)
from histimport_pipeline.engine.spec import MatchMethod, MatchRule, Scorer


class Evidence:
    """The evidence of candidate pairs under a rule of several fields, with the chance rates it
    rests on (learned from the master table once per matcher)."""

    def __init__(self, master: MasterData, settings: ReconcileSettings) -> None:
        self.master = master
        self.settings = settings
        self._u_equal: dict[tuple[str, bool], FloatArray] = {}
        self._u_similar_cache: dict[tuple[str, bool, Scorer, float], float] = {}

    def u_equal_of(self, part: Part) -> FloatArray:
        """Per master row: the share of master rows with the same value (chance agreement)."""
        key = (part.master_name, part.spec.strip_accents)
        if key not in self._u_equal:
            s = self.settings
            size = self.master.size + s.prior_rows
            counts = Counter(v for v in part.master if v is not None)
            self._u_equal[key] = np.array(
                [
                    (counts[v] + s.prior_rows * s.u_equal_prior) / size if v is not None else 1.0
                    for v in part.master
                ]
            )
        return self._u_equal[key]

    def u_similar(self, part: Part) -> float:
        """How often two different master values of a part score as similar by chance."""
        key = (part.master_name, part.spec.strip_accents, part.spec.scorer, part.spec.similar_at)
        if key not in self._u_similar_cache:
            self._u_similar_cache[key] = self._estimate_u_similar(part)
        return self._u_similar_cache[key]

    def _estimate_u_similar(self, part: Part) -> float:
        s = self.settings
        values = [v for v in part.master if v is not None]
        hits, seen = 0.0, 0.0
        if len(values) >= 2:
            rng = np.random.default_rng(s.seed)
            arr = np.array(values, dtype=object)
            left = arr[rng.integers(0, len(arr), s.u_sample)]
            right = arr[rng.integers(0, len(arr), s.u_sample)]
            differ = left != right
            if differ.any():
                scorer = part.spec.scorer
                a = np.array(prepared(left[differ], scorer), dtype=object)
                b = np.array(prepared(right[differ], scorer), dtype=object)
                similar = pair_scores(a, b, scorer, s.workers) >= part.spec.similar_at
                # Drawn with replacement: a small table has fewer distinct pairs than draws.
                seen = float(min(len(a), len(values) * (len(values) - 1) // 2))
                hits = float(similar.mean()) * seen
        return (hits + s.prior_rows * s.u_similar_prior) / (seen + s.prior_rows)

    def evidence(
        self, rule: MatchRule, parts: list[Part], qi: IntArray, mi: IntArray
    ) -> FloatArray:
        """Log2 evidence of each candidate pair: the sum over fields, -inf if a required
        field disagrees."""
        s = self.settings
        size = max(self.master.size, 1)
        total = np.zeros(len(qi))
        for fi, f in enumerate(rule.fields):
            mine = [p for p in parts if p.field_index == fi]
            alignments = [mine]
            if len(mine) > 1:
                alignments.append(
                    [
                        Part(
                            p.field_index, p.spec, p.source_index, q.master_name, p.inputs, q.master
                        )
                        for p, q in zip(mine, reversed(mine), strict=True)
                    ]
                )
            best: FloatArray | None = None
            best_ok: npt.NDArray[np.bool_] | None = None
            for alignment in alignments:
                field_total = np.zeros(len(qi))
                ok = np.ones(len(qi), dtype=bool)
                for part in alignment:
                    u_equal = self.u_equal_of(part)
                    asked = np.array(part.inputs, dtype=object)[qi]
                    have = np.array(part.master, dtype=object)[mi]
                    present = (asked != None) & (have != None)  # noqa: E711
                    equal = present & (asked == have)
                    if f.method is MatchMethod.FUZZY:
                        scorer = f.scorer
                        a = np.array(prepared(asked, scorer), dtype=object)
                        b = np.array(prepared(have, scorer), dtype=object)
                        similar = (
                            present
                            & ~equal
                            & (pair_scores(a, b, scorer, s.workers) >= f.similar_at)
                        )
                        u_similar = self.u_similar(part)
                        m_different = s.m_different
                        similar_bits = math.log2(s.m_similar / u_similar)
                        different_bits = math.log2(m_different / max(1.0 - u_similar, 0.5))
                    else:
                        similar = np.zeros(len(qi), dtype=bool)
                        similar_bits = 0.0
                        different_bits = math.log2(1.0 - s.m_equal)
                    bits = np.where(
                        equal,
                        np.log2(s.m_equal / np.maximum(u_equal[mi], 1.0 / size)),
                        np.where(similar, similar_bits, different_bits),
                    )
                    field_total += np.where(present, bits, 0.0)
                    if f.required:
                        agrees = equal | similar
                        ok &= agrees | (asked == None)  # noqa: E711
                        ok &= have != None  # noqa: E711
                if best is None or best_ok is None:
                    best, best_ok = field_total, ok
                else:
                    better = field_total > best
                    best = np.where(better, field_total, best)
                    best_ok = np.where(better, ok, best_ok)
            assert best is not None and best_ok is not None
            total += f.weight * best
            total[~best_ok] = -np.inf
        return total
