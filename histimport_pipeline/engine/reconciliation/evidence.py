"""Evidence of a rule of several fields, the Fellegi-Sunter way: an agreeing field adds
evidence in proportion to how rare its value is in the master table, a similar one (a typo) a
fixed amount learned by sampling master pairs, a different one subtracts a little."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from histimport_pipeline.engine.reconciliation.blocking import Part
from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import (
    BoolArray,
    FloatArray,
    IntArray,
    ReconcileSettings,
    pair_scores,
    prepared,
)
from histimport_pipeline.engine.reconciliation.values import FieldCodes, field_codes, similar_codes
from histimport_pipeline.engine.spec import MatchField, MatchMethod, MatchRule, Scorer

#: Candidate pairs are weighed in chunks of this many: arrays of a few MiB are reused by the
#: allocator, where arrays over the whole candidate set (tens of millions of pairs) would be
#: mapped and zeroed afresh for every step. Every step is elementwise, so the chunk size
#: changes no value.
PAIR_CHUNK = 1 << 18


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
        fields = [
            (f, [p for p in parts if p.field_index == fi]) for fi, f in enumerate(rule.fields)
        ]
        coded = [
            field_codes(
                [p.inputs for p in mine],
                [p.master for p in mine],
                f.scorer if f.method is MatchMethod.FUZZY else None,
            )
            for f, mine in fields
        ]
        total = np.zeros(len(qi))
        for start in range(0, len(qi), PAIR_CHUNK):
            stop = start + PAIR_CHUNK
            q, m, chunk = qi[start:stop], mi[start:stop], total[start:stop]
            for (f, mine), codes in zip(fields, coded, strict=True):
                best, best_ok = self._field(f, mine, codes, q, m)
                chunk += f.weight * best
                chunk[~best_ok] = -np.inf
        return total

    def _field(
        self, f: MatchField, mine: list[Part], codes: FieldCodes, qi: IntArray, mi: IntArray
    ) -> tuple[FloatArray, BoolArray]:
        """The evidence of one field for each pair, and whether a required field agrees.

        A field of several parts is also read crosswise (given name against surname and the
        other way round, for names written in the other order); the better reading counts.
        """
        # (input codes of a part, master codes and master part it is compared with)
        alignments = [[(codes.inputs[k], codes.master[k], p) for k, p in enumerate(mine)]]
        if len(mine) > 1:
            last = len(mine) - 1
            alignments.append(
                [
                    (codes.inputs[k], codes.master[last - k], mine[last - k])
                    for k in range(len(mine))
                ]
            )
        best: FloatArray | None = None
        best_ok: BoolArray | None = None
        for alignment in alignments:
            field_total = np.zeros(len(qi))
            ok = np.ones(len(qi), dtype=bool)
            for input_codes, master_codes, part in alignment:
                bits, agrees, asked_missing, have_missing = self._part_bits(
                    f, part, codes, input_codes[qi], master_codes[mi], mi
                )
                field_total += bits
                if f.required:
                    ok &= agrees | asked_missing
                    ok &= ~have_missing
            if best is None or best_ok is None:
                best, best_ok = field_total, ok
            else:
                better = field_total > best
                best = np.where(better, field_total, best)
                best_ok = np.where(better, ok, best_ok)
        assert best is not None and best_ok is not None
        return best, best_ok

    def _part_bits(
        self,
        f: MatchField,
        part: Part,
        codes: FieldCodes,
        asked: IntArray,
        have: IntArray,
        mi: IntArray,
    ) -> tuple[FloatArray, BoolArray, BoolArray, BoolArray]:
        """Per pair: the bits of one part (input codes ``asked`` against master codes
        ``have``, ``part`` the master side; 0 where a side is missing), whether it agrees,
        whether the input is missing, whether the master value is missing."""
        s = self.settings
        size = max(self.master.size, 1)
        asked_missing, have_missing = asked < 0, have < 0
        present = ~(asked_missing | have_missing)
        equal = present & (asked == have)
        if f.method is MatchMethod.FUZZY:
            similar = similar_codes(codes, asked, have, f.scorer, f.similar_at, s.workers)
            u_similar = self.u_similar(part)
            similar_bits = math.log2(s.m_similar / u_similar)
            different_bits = math.log2(s.m_different / max(1.0 - u_similar, 0.5))
        else:
            similar = np.zeros(len(asked), dtype=bool)
            similar_bits = 0.0
            different_bits = math.log2(1.0 - s.m_equal)
        contribution = np.where(similar, similar_bits, different_bits)
        if equal.any():
            u_equal = self.u_equal_of(part)[mi[equal]]
            contribution[equal] = np.log2(s.m_equal / np.maximum(u_equal, 1.0 / size))
        contribution[~present] = 0.0
        return contribution, equal | similar, asked_missing, have_missing
