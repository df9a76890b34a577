"""The fuzzy stage: score blocked candidates (one field by its similarity, several by their
evidence as a probability), then decide by the rule's threshold, review band and margin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histimport_pipeline.engine.models import MatchType
from histimport_pipeline.engine.reconciliation.blocking import (
    InputColumns,
    candidate_pairs,
    joined,
    rule_parts,
)
from histimport_pipeline.engine.reconciliation.evidence import Evidence
from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import (
    TOP_CANDIDATES,
    FloatArray,
    IntArray,
    ReconcileSettings,
    Resolution,
    pair_scores,
    prepared,
)
from histimport_pipeline.engine.spec import MatchRule, ReferenceSpec


@dataclass
class _Candidates:
    """Scored candidate pairs of one rule, grouped by input (sorted by score within)."""

    inputs: IntArray
    rows: IntArray
    score: FloatArray
    own: FloatArray


class FuzzyStage:
    """The fuzzy stage of a matcher: scores the blocked candidates of the inputs that no
    equality matched, then accepts the best one, holds the value for review or leaves it."""

    def __init__(self, ref: ReferenceSpec, master: MasterData, settings: ReconcileSettings) -> None:
        self.ref = ref
        self.master = master
        self.settings = settings
        #: Fuzzy candidate pairs scored so far.
        self.comparisons = 0
        self.master_ids = np.array(master.ids, dtype=object)
        self._evidence = Evidence(master, settings)

    def _scores(self, rule: MatchRule, columns: InputColumns, rows: Sequence[int]) -> _Candidates:
        """Score every blocked candidate of the inputs ``rows`` under one rule."""
        parts = rule_parts(self.ref, self.master, columns, rule, rows)
        n_inputs = len(rows)
        qi, mi = candidate_pairs(rule, parts, n_inputs, self.settings.window)
        self.comparisons += len(qi)
        if len(rule.fields) == 1:
            f = rule.fields[0]
            master = np.array(
                prepared(
                    [joined(p) for p in zip(*(x.master for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            asked = np.array(
                prepared(
                    [joined(p) for p in zip(*(x.inputs for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            score = pair_scores(asked[qi], master[mi], f.scorer, self.settings.workers)
            if f.required:
                score[score < f.similar_at] = -1.0
            return self._ranked(qi, mi, score, score)
        weight = self._evidence.evidence(rule, parts, qi, mi)
        bayes = np.exp2(np.clip(weight, -200.0, 200.0))
        prior = float(max(self.master.size, 1))
        total = np.bincount(qi, weights=bayes, minlength=n_inputs)
        shared = 100.0 * bayes / (prior + total[qi])
        own = 100.0 * bayes / (prior + bayes)
        dropped = np.isneginf(weight)
        shared[dropped] = -1.0
        own[dropped] = -1.0
        return self._ranked(qi, mi, shared, own)

    def _ranked(
        self, qi: IntArray, mi: IntArray, score: FloatArray, own: FloatArray
    ) -> _Candidates:
        # One float sort key: input number, then score descending (scores are -1..100).
        order = np.argsort(qi * 1_000.0 + (100.0 - score), kind="stable")
        return _Candidates(qi[order], mi[order], score[order], own[order])

    def run(
        self,
        rule: MatchRule,
        inputs: Sequence[Sequence[str | None]],
        todo: list[int],
        out: list[Resolution | None],
        pending: list[Resolution | None],
        columns: InputColumns,
    ) -> list[int]:
        """Resolve what a rule can of the inputs ``todo``; returns those still unresolved."""
        # Long on purpose: one pass from scored pairs to decisions over numpy arrays.
        position = {s: i for i, s in enumerate(self.ref.sources)}
        # A rule applies to an input when a scored field is present (and every required one).
        applies = []
        for i in todo:
            values = inputs[i]
            present = [any(values[position[s]] is not None for s in f.source) for f in rule.fields]
            required_ok = all(
                p or not f.required for p, f in zip(present, rule.fields, strict=True)
            )
            if any(present) and required_ok:
                applies.append(i)
        if not applies:
            return todo
        scored = self._scores(rule, columns, applies)
        kept = scored.score >= 0
        q, rows = scored.inputs[kept], scored.rows[kept]
        score, own = scored.score[kept], scored.own[kept]
        # Rank of each candidate within its input (pairs are sorted by input, best first).
        starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, int)
        rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)]))
        top = rank < TOP_CANDIDATES
        q, rows, score, own, rank = q[top], rows[top], score[top], own[top], rank[top]
        n = len(applies)
        s1 = np.full(n, -1.0)
        s2 = np.full(n, -1.0)
        o2 = np.full(n, -1.0)
        s1[q[rank == 0]] = score[rank == 0]
        s2[q[rank == 1]] = score[rank == 1]
        o2[q[rank == 1]] = own[rank == 1]
        close = (s2 >= 0) & (s1 - s2 <= rule.margin)
        if len(rule.fields) == 1:
            ambiguous = close & (s2 >= rule.review_at)
        else:
            # The candidates share one probability, so a second one that fits on its own
            # (own score in the review band) holds back a best one below the threshold;
            # `margin` also holds back a best one above it whose lead is that thin.
            plausible = o2 >= rule.review_at
            ambiguous = plausible & ((s1 < rule.threshold) | close)
        accepted = (s1 >= rule.threshold) & ~ambiguous
        candidates: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        ids = self.master_ids[rows].tolist()
        for local, master_id, value in zip(
            q.tolist(), ids, np.round(score, 2).tolist(), strict=True
        ):
            candidates[local].append((str(master_id), value))
        applied = set(applies)
        left = [i for i in todo if i not in applied]
        for local, i in enumerate(applies):
            found_candidates = candidates[local]
            if not found_candidates:
                left.append(i)
                continue
            best = round(float(s1[local]), 2)
            best_id = found_candidates[0][0]
            if accepted[local]:
                out[i] = Resolution(MatchType.FUZZY, best_id, best, found_candidates, accepted=True)
                continue
            left.append(i)
            if ambiguous[local]:
                (a, sa_), (b, sb) = found_candidates[0], found_candidates[1]
                reason = (
                    f"candidates {a} and {b} score {sa_} and {sb}, within {rule.margin}"
                    if close[local]
                    else f"candidates {a} and {b} share the match probability ({sa_} and "
                    f"{sb}); {b} alone would score {round(float(o2[local]), 2)}"
                )
                found = Resolution(MatchType.AMBIGUOUS, None, best, found_candidates, reason=reason)
            elif best >= rule.review_at:
                found = Resolution(
                    MatchType.FUZZY,
                    best_id,
                    best,
                    found_candidates,
                    reason=f"best candidate {best_id} scores {best}, below the threshold "
                    f"{rule.threshold}",
                )
            else:
                found = Resolution(
                    MatchType.UNMATCHED,
                    None,
                    best,
                    found_candidates,
                    reason=f"best candidate {best_id} scores {best}, below the review "
                    f"threshold {rule.review_at}",
                )
            current = pending[i]
            if current is None or _outranks(found, current):
                pending[i] = found
        return left


def _outranks(new: Resolution, old: Resolution) -> bool:
    """Whether ``new`` is a better reason to hold a value than ``old``."""
    rank = {MatchType.AMBIGUOUS: 2, MatchType.FUZZY: 2, MatchType.UNMATCHED: 0}
    a, b = rank.get(new.match_type, 1), rank.get(old.match_type, 1)
    if a != b:
        return a > b
    return (new.score or 0.0) > (old.score or 0.0)
