"""Matching: resolve the distinct inputs of a reference against its master data (exact,
alias, normalized, then fuzzy over blocked candidates)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from histimport_pipeline.engine.models import MatchType
from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import (
    DEFAULT_SETTINGS,
    TOP_CANDIDATES,
    FloatArray,
    IntArray,
    ReconcileSettings,
    Resolution,
    input_key,
    key_labels,
    normalize,
    pair_scores,
    prepared,
)
from histimport_pipeline.engine.spec import (
    MatchField,
    MatchMethod,
    MatchRule,
    ReferenceSpec,
    Scorer,
)


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


def _joined(parts: Sequence[str | None]) -> str | None:
    present = [p for p in parts if p]
    return " ".join(present) if present else None


@dataclass
class _Part:
    """One source/field pair of a rule with its normalized texts."""

    field_index: int
    spec: MatchField
    source_index: int
    master_name: str
    inputs: list[str | None]
    master: list[str | None]


@dataclass
class _Candidates:
    """Scored candidate pairs of one rule, grouped by input (sorted by score within)."""

    inputs: IntArray
    rows: IntArray
    score: FloatArray
    own: FloatArray


class _Matcher:
    """Resolves the distinct inputs of one reference against its master data."""

    def __init__(
        self,
        ref: ReferenceSpec,
        master: MasterData,
        aliases: Mapping[str, str],
        settings: ReconcileSettings,
    ) -> None:
        self.ref = ref
        self.master = master
        self.aliases = aliases
        self.settings = settings
        self.comparisons = 0
        self.master_ids = np.array(master.ids, dtype=object)
        self._id_set = set(master.ids)
        self._u_equal: dict[tuple[str, bool], FloatArray] = {}
        self._key_labels = key_labels(ref)
        self._inputs: Sequence[Sequence[str | None]] = ()
        self._columns: dict[tuple[int, bool, bool], list[str | None]] = {}
        self._u_similar_cache: dict[tuple[str, bool, Scorer, float], float] = {}

    # -- equality stages ------------------------------------------------------------------

    def _input_column(
        self, source_index: int, strip_accents: bool, normalized: bool
    ) -> list[str | None]:
        """One source's values over every input, normalized once."""
        key = (source_index, strip_accents, normalized)
        if key not in self._columns:
            values = [v[source_index] for v in self._inputs]
            if normalized:
                values = [normalize(v, strip_accents) for v in values]
            self._columns[key] = values
        return self._columns[key]

    def _rule_values(
        self, rule: MatchRule, todo: Sequence[int], normalized: bool
    ) -> tuple[list[tuple[str | None, ...]], list[tuple[str | None, ...]]]:
        position = {s: i for i, s in enumerate(self.ref.sources)}
        have: list[list[str | None]] = []
        asked: list[list[str | None]] = []
        for f in rule.fields:
            for source, name in zip(f.source, f.field, strict=True):
                have.append(
                    self.master.normalized(name, f.strip_accents)
                    if normalized
                    else self.master.raw[name]
                )
                column = self._input_column(position[source], f.strip_accents, normalized)
                asked.append([column[i] for i in todo])
        return list(zip(*asked, strict=True)), list(zip(*have, strict=True))

    def _equal_stage(
        self,
        rules: Sequence[MatchRule],
        inputs: Sequence[Sequence[str | None]],
        todo: list[int],
        out: list[Resolution | None],
        pending: list[Resolution | None],
        normalized: bool,
    ) -> list[int]:
        match_type = MatchType.NORMALIZED if normalized else MatchType.EXACT
        for rule in rules:
            if not todo:
                break
            asked, have = self._rule_values(rule, todo, normalized)
            index: dict[tuple[str | None, ...], list[int]] = {}
            for row, key in enumerate(have):
                if None not in key:
                    index.setdefault(key, []).append(row)
            left = []
            for i, key in zip(todo, asked, strict=True):
                hits = index.get(key) if None not in key else None
                if not hits:
                    left.append(i)
                elif len(hits) == 1:
                    out[i] = Resolution(
                        match_type,
                        self.master.ids[hits[0]],
                        100.0,
                        [(self.master.ids[hits[0]], 100.0)],
                        accepted=True,
                    )
                else:
                    ids = [self.master.ids[h] for h in hits[:TOP_CANDIDATES]]
                    if pending[i] is None:
                        pending[i] = Resolution(
                            MatchType.AMBIGUOUS,
                            None,
                            100.0,
                            [(x, 100.0) for x in ids],
                            reason=f"{len(hits)} master rows are equal to it",
                        )
                    left.append(i)
            todo = left
        return todo

    def _alias_stage(
        self, inputs: Sequence[Sequence[str | None]], todo: list[int], out: list[Resolution | None]
    ) -> list[int]:
        if not self.aliases:
            return todo
        left = []
        for i in todo:
            entity_id = self.aliases.get(input_key(self.ref, inputs[i], self._key_labels))
            if entity_id is not None and entity_id in self._id_set:
                out[i] = Resolution(
                    MatchType.ALIAS, entity_id, 100.0, [(entity_id, 100.0)], accepted=True
                )
            else:
                left.append(i)
        return left

    # -- fuzzy stage ----------------------------------------------------------------------

    def _parts(self, rule: MatchRule, rows: Sequence[int]) -> list[_Part]:
        position = {s: i for i, s in enumerate(self.ref.sources)}
        parts = []
        for fi, f in enumerate(rule.fields):
            for source, name in zip(f.source, f.field, strict=True):
                si = position[source]
                column = self._input_column(si, f.strip_accents, normalized=True)
                parts.append(
                    _Part(
                        field_index=fi,
                        spec=f,
                        source_index=si,
                        master_name=name,
                        inputs=[column[i] for i in rows],
                        master=self.master.normalized(name, f.strip_accents),
                    )
                )
        return parts

    def _blocking_keys(
        self, rule: MatchRule, parts: list[_Part]
    ) -> list[tuple[list[str | None], list[str | None]]]:
        """(master keys, input keys) of every blocking key of a rule."""
        keys: list[tuple[list[str | None], list[str | None]]] = []
        if len(rule.fields) == 1:
            master = [_joined(p) for p in zip(*(x.master for x in parts), strict=True)]
            asked = [_joined(p) for p in zip(*(x.inputs for x in parts), strict=True)]
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
        for part in parts:
            others = [p for p in parts if p is not part]

            def rest(side: str, others: list[_Part] = others) -> list[str]:
                columns = [getattr(p, side) for p in others]
                return ["\x1f".join(v or "" for v in row) for row in zip(*columns, strict=True)]

            master_rest, input_rest = rest("master"), rest("inputs")
            for transform in (lambda v: v, _reverse):
                keys.append(
                    (
                        [
                            None if v is None else f"{transform(v)}\x1e{r}"
                            for v, r in zip(part.master, master_rest, strict=True)
                        ],
                        [
                            None if v is None else f"{transform(v)}\x1e{r}"
                            for v, r in zip(part.inputs, input_rest, strict=True)
                        ],
                    )
                )
        for fi, f in enumerate(rule.fields):
            if len(f.source) > 1:
                mine = [p for p in parts if p.field_index == fi]
                master = prepared(
                    [_joined(p) for p in zip(*(x.master for x in mine), strict=True)],
                    Scorer.TOKEN_SORT_RATIO,
                )
                asked = prepared(
                    [_joined(p) for p in zip(*(x.inputs for x in mine), strict=True)],
                    Scorer.TOKEN_SORT_RATIO,
                )
                keys.append((master, asked))
        return keys

    def _candidates(
        self, rule: MatchRule, parts: list[_Part], n_inputs: int
    ) -> tuple[IntArray, IntArray]:
        window = self.settings.window
        blocks = [
            _neighbours(master, asked, window) for master, asked in self._blocking_keys(rule, parts)
        ]
        matrix = np.concatenate(blocks, axis=1) if blocks else np.full((n_inputs, 0), -1)
        return _dedupe_rows(matrix)

    def _u_equal_of(self, part: _Part) -> FloatArray:
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

    def _u_similar(self, part: _Part) -> float:
        """How often two different master values of a part score as similar by chance."""
        key = (part.master_name, part.spec.strip_accents, part.spec.scorer, part.spec.similar_at)
        if key not in self._u_similar_cache:
            self._u_similar_cache[key] = self._estimate_u_similar(part)
        return self._u_similar_cache[key]

    def _estimate_u_similar(self, part: _Part) -> float:
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

    def _fuzzy_scores(self, rule: MatchRule, rows: Sequence[int]) -> _Candidates:
        """Score every blocked candidate of the inputs ``rows`` under one rule."""
        parts = self._parts(rule, rows)
        n_inputs = len(rows)
        qi, mi = self._candidates(rule, parts, n_inputs)
        self.comparisons += len(qi)
        if len(rule.fields) == 1:
            f = rule.fields[0]
            master = np.array(
                prepared(
                    [_joined(p) for p in zip(*(x.master for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            asked = np.array(
                prepared(
                    [_joined(p) for p in zip(*(x.inputs for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            score = pair_scores(asked[qi], master[mi], f.scorer, self.settings.workers)
            if f.required:
                score[score < f.similar_at] = -1.0
            return self._ranked(qi, mi, score, score)
        weight = self._evidence(rule, parts, qi, mi)
        bayes = np.exp2(np.clip(weight, -200.0, 200.0))
        prior = float(max(self.master.size, 1))
        total = np.bincount(qi, weights=bayes, minlength=n_inputs)
        shared = 100.0 * bayes / (prior + total[qi])
        own = 100.0 * bayes / (prior + bayes)
        dropped = np.isneginf(weight)
        shared[dropped] = -1.0
        own[dropped] = -1.0
        return self._ranked(qi, mi, shared, own)

    def _evidence(
        self, rule: MatchRule, parts: list[_Part], qi: IntArray, mi: IntArray
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
                        _Part(
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
                    u_equal = self._u_equal_of(part)
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
                        u_similar = self._u_similar(part)
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

    def _ranked(
        self, qi: IntArray, mi: IntArray, score: FloatArray, own: FloatArray
    ) -> _Candidates:
        # One float sort key: input number, then score descending (scores are -1..100).
        order = np.argsort(qi * 1_000.0 + (100.0 - score), kind="stable")
        return _Candidates(qi[order], mi[order], score[order], own[order])

    def _fuzzy_stage(
        self,
        rule: MatchRule,
        inputs: Sequence[Sequence[str | None]],
        todo: list[int],
        out: list[Resolution | None],
        pending: list[Resolution | None],
    ) -> list[int]:
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
        scored = self._fuzzy_scores(rule, applies)
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

    def resolve(self, inputs: Sequence[Sequence[str | None]]) -> list[Resolution]:
        """Resolve each distinct input (text values in the order of ``ref.sources``)."""
        self._inputs, self._columns = inputs, {}
        out: list[Resolution | None] = [None] * len(inputs)
        pending: list[Resolution | None] = [None] * len(inputs)
        todo = [i for i, values in enumerate(inputs) if any(v is not None for v in values)]
        rules = list(self.ref.match)
        todo = self._equal_stage(rules, inputs, todo, out, pending, normalized=False)
        todo = self._alias_stage(inputs, todo, out)
        todo = self._equal_stage(rules, inputs, todo, out, pending, normalized=True)
        for rule in rules:
            if todo and not rule.is_exact:
                todo = self._fuzzy_stage(rule, inputs, todo, out, pending)
        results = []
        for i, values in enumerate(inputs):
            found = out[i] or pending[i]
            if found is None:
                reason = (
                    "the value is empty"
                    if all(v is None for v in values)
                    else f"no {self.ref.entity} row is equal or similar to it"
                )
                found = Resolution(MatchType.UNMATCHED, reason=reason)
            elif found.match_type is MatchType.UNMATCHED and not found.reason:
                found.reason = f"no {self.ref.entity} row is similar enough"
            results.append(found)
        columns = [self._input_column(i, False, True) for i in range(len(self.ref.sources))]
        prefixes = [f"{label}=" for label in self._key_labels]
        for i, found in enumerate(results):
            found.key = "\x1f".join(
                p + (c[i] or "") for p, c in zip(prefixes, columns, strict=True)
            )
        return results


def _outranks(new: Resolution, old: Resolution) -> bool:
    """Whether ``new`` is a better reason to hold a value than ``old``."""
    rank = {MatchType.AMBIGUOUS: 2, MatchType.FUZZY: 2, MatchType.UNMATCHED: 0}
    a, b = rank.get(new.match_type, 1), rank.get(old.match_type, 1)
    if a != b:
        return a > b
    return (new.score or 0.0) > (old.score or 0.0)


def resolve_values(
    ref: ReferenceSpec,
    master: MasterData,
    inputs: Sequence[Sequence[str | None]],
    aliases: Mapping[str, str] | None = None,
    settings: ReconcileSettings = DEFAULT_SETTINGS,
) -> tuple[list[Resolution], int]:
    """Resolve distinct input tuples against master data, without touching the database.

    Args:
        ref: the reference (its rules).
        master: the master table's columns (:func:`read_master`).
        inputs: text values in the order of ``ref.sources``.
        aliases: learned aliases of the entity (:func:`read_aliases`).

    Returns:
        One resolution per input, and the number of fuzzy comparisons made.
    """
    matcher = _Matcher(ref, master, aliases or {}, settings)
    return matcher.resolve(inputs), matcher.comparisons
