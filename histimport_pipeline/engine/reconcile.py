"""Reconcile: resolve the entity references of staged rows against master tables.

Each distinct tuple of source values is resolved once, not each row, in this order:

1. **exact**: the values equal a master row's fields as written (a dict lookup);
2. **alias**: a reviewer accepted this normalized input for the entity before;
3. **normalized**: equal after normalisation (Unicode NFKC, case-fold, spaces trimmed and
   collapsed, accents removed where a field says so);
4. **fuzzy**: only for what is left, against candidates found by blocking.

Blocking is a sorted neighbourhood over several keys at once (the value, the value read
backwards, its words sorted, and for a rule of several fields each field followed by the
others), so a typo in the first letter still finds its master row through the other keys,
and cost grows with ``n log n`` instead of ``n x m``.

Scores are 0-100. A rule of one field scores a candidate by the field's similarity (the
rapidfuzz scorer it names). A rule of several fields scores it by evidence, the
Fellegi-Sunter way: each field that agrees adds evidence in proportion to how rare the
agreeing value is in the master table, a similar value (a typo) adds a fixed amount, a
different one subtracts a little, and a missing one counts for nothing; the score is the
estimated probability, in percent, that the candidate is the right one among those found.

Decisions: the best candidate at or above the rule's ``threshold`` is accepted, unless a
second one is within ``margin`` (ambiguous: review). In a rule of several fields a second
candidate whose score on its own reaches the review band also makes a best one below the
threshold ambiguous. Between ``review_threshold`` and
``threshold`` the value goes to review. Below, it is unmatched and the reference's
``on_unmatched`` policy applies: ``review``, ``reject`` (a failed row of category
reconciliation), ``null`` (loaded without an id) or ``create`` (a new master row).

Every decision is stored in ``import_reconciliation_matches``; accepting one in review stores
an alias in ``reconciliation_aliases`` so the same input matches exactly next time.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from rapidfuzz import fuzz, process
from rapidfuzz.distance import DamerauLevenshtein, Jaro, JaroWinkler, Levenshtein

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.models import (
    ErrorCategory,
    FileStatus,
    ImportStatus,
    MatchDecision,
    MatchType,
)
from histimport_pipeline.engine.spec import (
    DatasetSpec,
    MatchField,
    MatchMethod,
    MatchRule,
    OnUnmatched,
    ReferenceSpec,
    Scorer,
    Strategy,
)

#: Who a decision taken by a rule or a policy is recorded as.
ENGINE_ACTOR = "histimport"
#: Candidates kept with each decision.
TOP_CANDIDATES = 3
_HOLD_REVIEW = "review"
_HOLD_REJECT = "reject"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ReconcileSettings:
    """Engine tuning of the matcher. The defaults fit names, dates, codes and e-mails.

    Attributes:
        window: master rows taken on each side of an input in every blocking key's sort
            order. Candidates per input are at most ``2 * window`` per key.
        m_equal, m_similar, m_different: how often a field of a true match is equal, similar
            (a typo) or different; the evidence of a multi-field rule rests on them.
        u_sample: random master pairs drawn to learn how often two different rows look
            similar by chance (drawn from the rows in id order, see :func:`read_master`).
        prior_rows, u_equal_prior, u_similar_prior: the chance rates learned from the master
            table are blended with these, as if ``prior_rows`` more rows had been seen, so a
            small master table does not make every agreement look like chance.
        seed: seed of that draw, so that a re-run decides the same way.
        workers: threads rapidfuzz scores with (-1: all cores).
    """

    window: int = 8
    m_equal: float = 0.80
    m_similar: float = 0.12
    m_different: float = 0.08
    u_sample: int = 2_000
    prior_rows: int = 100
    u_equal_prior: float = 0.001
    u_similar_prior: float = 0.01
    seed: int = 20_240_101
    workers: int = -1


DEFAULT_SETTINGS = ReconcileSettings()


@dataclass(frozen=True)
class ReconcileOutcome:
    """What reconciliation did to an import's staged rows."""

    #: Staged rows now held for review (``_hold = 'review'``).
    rows_review: int
    #: Staged rows failed by reconciliation (``_hold = 'reject'``), also in failed rows.
    rows_rejected: int
    #: Distinct inputs by match type, over every reference.
    matches: dict[str, int]
    #: Fuzzy candidate pairs scored (what blocking let through).
    comparisons: int = 0
    #: Staged rows loaded without an id by policy (``null``, or an empty value under
    #: ``create``), per reference column.
    rows_without_id: dict[str, int] = field(default_factory=dict)


@dataclass
class Resolution:
    """How one distinct input was resolved, before the policy for unmatched values."""

    match_type: MatchType
    matched_id: str | None = None
    score: float | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    accepted: bool = False
    reason: str = ""
    #: The normalized input key (:func:`input_key`), set by :func:`resolve_values`.
    key: str = ""


# Text ----------------------------------------------------------------------------------------


def as_text(value: Any) -> str | None:
    """A staged or master value as the text it is compared by (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return text if text != "-0" else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalize(text: str | None, strip_accents: bool = False) -> str | None:
    """Text for comparison: NFKC, case-folded, spaces trimmed and collapsed.

    Args:
        strip_accents: also remove combining marks (``Zoë`` -> ``zoe``).

    Returns:
        The normalized text, or ``None`` for a missing or blank value.
    """
    if text is None:
        return None
    folded = unicodedata.normalize("NFKC", text).casefold()
    if strip_accents:
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = unicodedata.normalize(
            "NFC", "".join(c for c in decomposed if not unicodedata.combining(c))
        )
    folded = _SPACES.sub(" ", folded).strip()
    return folded or None


def key_labels(ref: ReferenceSpec) -> list[str]:
    """The labels of an input key: the master field each source is compared with."""
    fields = ref.field_of_source
    return [fields[source] for source in ref.sources]


def input_key(
    ref: ReferenceSpec, values: Sequence[str | None], labels: Sequence[str] | None = None
) -> str:
    """The normalized key of an input tuple: what an alias is stored and found by.

    Values are labelled by the master field each source is compared with, so datasets that
    name their columns differently share the entity's aliases.

    Args:
        labels: :func:`key_labels` of ``ref``, when the caller has them at hand.
    """
    names = labels if labels is not None else key_labels(ref)
    return "\x1f".join(
        f"{name}={normalize(value) or ''}" for name, value in zip(names, values, strict=True)
    )


# Master data ---------------------------------------------------------------------------------


@dataclass
class MasterData:
    """The columns of a master table that one reference needs, read once per import."""

    table: sa.Table
    ids: list[str]
    raw: dict[str, list[str | None]]
    _norm: dict[tuple[str, bool], list[str | None]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Rows in the master table."""
        return len(self.ids)

    def normalized(self, name: str, strip_accents: bool) -> list[str | None]:
        """The normalized values of one master field (computed once)."""
        key = (name, strip_accents)
        if key not in self._norm:
            self._norm[key] = [normalize(v, strip_accents) for v in self.raw[name]]
        return self._norm[key]


def reflect_master(conn: sa.Connection, ref: ReferenceSpec) -> sa.Table:
    """The reference's master table as it is in the database.

    Raises:
        HistimportError: the table or one of the columns the rules name does not exist.
    """
    try:
        table = sa.Table(ref.entity, sa.MetaData(), autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise HistimportError(
            f"master table {ref.entity!r} of a reference does not exist in the target "
            "database; create it or fix `entity` in the dataset spec"
        ) from None
    needed = [ref.id_column, *(n for rule in ref.match for f in rule.fields for n in f.field)]
    missing = [n for n in dict.fromkeys(needed) if n not in table.c]
    if missing:
        raise HistimportError(
            f"master table {ref.entity!r} has no column(s) {', '.join(missing)}; its columns "
            f"are {', '.join(table.c.keys())}. Fix `id_column` / `field` in the dataset spec"
        )
    return table


def read_master(conn: sa.Connection, ref: ReferenceSpec) -> MasterData:
    """Read the id column and the fields the reference's rules compare, in one query.

    The rows are put in id order (ids compared as the values they are, text by code
    point), whatever order the database returns them in: the chance rates learned from a
    sample of the master table, and the order of equal candidates, then do not depend on
    its physical row order, and SQLite and PostgreSQL decide alike.
    """
    table = reflect_master(conn, ref)
    names = list(dict.fromkeys(n for rule in ref.match for f in rule.fields for n in f.field))
    query = sa.select(table.c[ref.id_column], *(table.c[n] for n in names))
    rows = [row for row in conn.execute(query) if row[0] is not None]
    # Sorted here, not by ORDER BY: the database would sort text ids by its collation.
    try:
        rows.sort(key=lambda row: row[0])
    except TypeError:
        rows.sort(key=lambda row: str(row[0]))
    ids: list[str] = []
    raw: dict[str, list[str | None]] = {n: [] for n in names}
    for row in rows:
        ids.append(str(row[0]))
        for i, name in enumerate(names, start=1):
            raw[name].append(as_text(row[i]))
    return MasterData(table=table, ids=ids, raw=raw)


def read_aliases(conn: sa.Connection, db: Database, entity: str) -> dict[str, str]:
    """The learned aliases of an entity: normalized input key -> master id."""
    t = db.tables.reconciliation_aliases
    query = sa.select(t.c.input_key, t.c.entity_id).where(t.c.entity == entity)
    return {key: entity_id for key, entity_id in conn.execute(query)}


# Scoring -------------------------------------------------------------------------------------

_SCORERS: dict[Scorer, tuple[Any, float]] = {
    Scorer.RATIO: (fuzz.ratio, 1.0),
    Scorer.PARTIAL_RATIO: (fuzz.partial_ratio, 1.0),
    # token_sort_ratio is ratio() of the words sorted: sorted once per value, not per pair.
    Scorer.TOKEN_SORT_RATIO: (fuzz.ratio, 1.0),
    Scorer.TOKEN_SET_RATIO: (fuzz.token_set_ratio, 1.0),
    Scorer.WRATIO: (fuzz.WRatio, 1.0),
    Scorer.JARO: (Jaro.normalized_similarity, 100.0),
    Scorer.JARO_WINKLER: (JaroWinkler.normalized_similarity, 100.0),
    Scorer.LEVENSHTEIN: (Levenshtein.normalized_similarity, 100.0),
    Scorer.DAMERAU_LEVENSHTEIN: (DamerauLevenshtein.normalized_similarity, 100.0),
}

ObjArray = npt.NDArray[np.object_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _prepared(values: Iterable[str | None], scorer: Scorer) -> list[str | None]:
    if scorer is not Scorer.TOKEN_SORT_RATIO:
        return list(values)
    return [None if v is None else " ".join(sorted(v.split(" "))) for v in values]


def _pair_scores(left: ObjArray, right: ObjArray, scorer: Scorer, workers: int) -> FloatArray:
    """Similarity (0-100) of ``left[i]`` and ``right[i]``; 0 where either is missing."""
    if len(left) == 0:
        return np.zeros(0)
    function, scale = _SCORERS[scorer]
    present = (left != None) & (right != None)  # noqa: E711 - elementwise on object arrays
    result = np.zeros(len(left))
    if present.any():
        scores = process.cpdist(
            left[present], right[present], scorer=function, workers=workers
        ).astype(np.float64)
        result[present] = scores * scale
    return result


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
                        _prepared(master, Scorer.TOKEN_SORT_RATIO),
                        _prepared(asked, Scorer.TOKEN_SORT_RATIO),
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
                master = _prepared(
                    [_joined(p) for p in zip(*(x.master for x in mine), strict=True)],
                    Scorer.TOKEN_SORT_RATIO,
                )
                asked = _prepared(
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
                a = np.array(_prepared(left[differ], scorer), dtype=object)
                b = np.array(_prepared(right[differ], scorer), dtype=object)
                similar = _pair_scores(a, b, scorer, s.workers) >= part.spec.similar_at
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
                _prepared(
                    [_joined(p) for p in zip(*(x.master for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            asked = np.array(
                _prepared(
                    [_joined(p) for p in zip(*(x.inputs for x in parts), strict=True)], f.scorer
                ),
                dtype=object,
            )
            score = _pair_scores(asked[qi], master[mi], f.scorer, self.settings.workers)
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
                        a = np.array(_prepared(asked, scorer), dtype=object)
                        b = np.array(_prepared(have, scorer), dtype=object)
                        similar = (
                            present
                            & ~equal
                            & (_pair_scores(a, b, scorer, s.workers) >= f.similar_at)
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


# Writing decisions ---------------------------------------------------------------------------


def _mapping_table(
    spec: DatasetSpec, sources: Sequence[str], output: str, import_id: int
) -> sa.Table:
    """A temporary table: source values -> output id and hold, joined to the staging rows."""
    cols: list[sa.Column[Any]] = []
    for name in sources:
        col = spec.columns[name]
        cols.append(sa.Column(name, load.column_type(col.type, col.scale, col.max_length)))
    cols += [
        sa.Column("_out", load.reference_columns(spec)[output]),
        sa.Column("_hold", sa.String(10)),
        sa.Column("_pattern", sa.Integer, nullable=False),
    ]
    return sa.Table(
        f"hi_recon_{import_id}_{output}"[:63], sa.MetaData(), *cols, prefixes=["TEMPORARY"]
    )


def _copy_rows(
    conn: sa.Connection, table: sa.Table, names: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY rows into a PostgreSQL table (the caller's transaction)."""
    preparer = conn.dialect.identifier_preparer
    target = preparer.format_table(table)
    column_list = ", ".join(preparer.quote(n) for n in names)
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {target} ({column_list}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert_many(
    conn: sa.Connection,
    db: Database,
    table: sa.Table,
    names: Sequence[str],
    rows: Iterable[Sequence[Any]],
    json_ready: bool = False,
) -> None:
    """Bulk insert: COPY on PostgreSQL; on SQLite one prepared statement run for every row,
    with the values converted by the columns' own SQLAlchemy types (JSON, dates).

    Args:
        json_ready: the JSON columns' values are JSON text already.
    """
    is_json = [isinstance(table.c[n].type, sa.JSON) for n in names]
    if db.dialect == "postgresql":
        json_cols = set() if json_ready else {n for n, j in zip(names, is_json, strict=True) if j}
        if json_cols:
            positions = [i for i, n in enumerate(names) if n in json_cols]

            def as_json(row: Sequence[Any]) -> list[Any]:
                values = list(row)
                for i in positions:
                    if values[i] is not None:
                        values[i] = json.dumps(values[i])
                return values

            rows = (as_json(r) for r in rows)
        _copy_rows(conn, table, names, rows)
        return
    dialect = conn.dialect
    processors = [
        None if json_ready and j else table.c[n].type.bind_processor(dialect)
        for n, j in zip(names, is_json, strict=True)
    ]
    statement = str(sa.insert(table).compile(dialect=dialect, column_keys=list(names)))
    prepared = [
        tuple(v if f is None or v is None else f(v) for f, v in zip(processors, row, strict=True))
        for row in rows
    ]
    if prepared:
        conn.exec_driver_sql(statement, prepared)


def _apply_mapping(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    output: str,
    sources: Sequence[str],
    mapping: Sequence[tuple[Sequence[Any], Any, str | None]],
) -> None:
    """Set the output id and the hold of the staged rows of each input tuple, set-wise.

    ``mapping`` holds (typed source values, output id, hold). Rows are joined on the source
    values by equality; tuples with NULLs are joined per pattern of NULLs, so every join is
    a plain equi-join the database can hash or index.
    """
    if not mapping:
        return
    stage = load.staging_table(db, spec, import_id)
    tmp = _mapping_table(spec, sources, output, import_id)
    tmp.drop(conn, checkfirst=True)
    tmp.create(conn)
    patterns: dict[tuple[bool, ...], int] = {}
    records = []
    for values, out, held in mapping:
        pattern = tuple(v is None for v in values)
        number = patterns.setdefault(pattern, len(patterns))
        records.append([*values, out, held, number])
    names = [*sources, "_out", "_hold", "_pattern"]
    _insert_many(conn, db, tmp, names, records)
    if db.dialect == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.format_table(tmp)}")
    else:
        sa.Index(f"ix_{tmp.name}"[:63], *(tmp.c[s] for s in sources)).create(conn)

    def hold_expr(held: Any) -> Any:
        return sa.case(
            (sa.or_(stage.c._hold == _HOLD_REJECT, held == _HOLD_REJECT), _HOLD_REJECT),
            (sa.or_(stage.c._hold == _HOLD_REVIEW, held == _HOLD_REVIEW), _HOLD_REVIEW),
            else_=sa.null(),
        )

    for pattern, number in patterns.items():
        if all(pattern):
            # Every value empty: one mapping row, nothing to join on.
            one = sa.select(tmp).where(tmp.c._pattern == number).subquery()
            out_value: Any = sa.select(one.c._out).scalar_subquery()
            held_value: Any = sa.select(one.c._hold).scalar_subquery()
            conditions: list[sa.ColumnElement[bool]] = [stage.c[name].is_(None) for name in sources]
        else:
            out_value, held_value = tmp.c._out, tmp.c._hold
            conditions = [tmp.c._pattern == number]
            for name, is_null in zip(sources, pattern, strict=True):
                conditions.append(
                    stage.c[name].is_(None) if is_null else stage.c[name] == tmp.c[name]
                )
        conn.execute(
            sa.update(stage)
            .where(*conditions)
            .values({output: out_value, "_hold": hold_expr(held_value)})
        )
    tmp.drop(conn)


def _typed_id(ref: ReferenceSpec, text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if ref.id_type == "integer" else text


def _create_master_row(
    conn: sa.Connection, ref: ReferenceSpec, table: sa.Table, values: Mapping[str, Any]
) -> str:
    """Insert a new master row from the source values; returns its id as text."""
    row: dict[str, Any] = {}
    for source, name in ref.field_of_source.items():
        if values.get(source) is not None:
            row[name] = values[source]
    id_col = table.c[ref.id_column]
    if ref.id_type == "string" and id_col.server_default is None:
        row[ref.id_column] = uuid.uuid4().hex
    new_id = conn.execute(sa.insert(table).values(row).returning(id_col)).scalar_one()
    return str(new_id)


def _header_names(conn: sa.Connection, db: Database, import_id: int) -> dict[str, str]:
    """Spec column -> the file's original header, from the import's column mapping."""
    h = db.tables.import_history
    mapping = conn.execute(sa.select(h.c.column_mapping).where(h.c.import_id == import_id)).scalar()
    return {column: header for header, column in (mapping or {}).items()}


_MATCH_COLUMNS = (
    "import_id", "dataset", "reference_column", "entity", "input_values", "match_type",
    "matched_id", "score", "candidates", "decision", "rows_affected", "decided_by",
    "decided_at", "created_at", "updated_at", "input_key", "id_column",
)  # fmt: skip
_quote = json.encoder.encode_basestring


def _json_object(names: Sequence[str], values: Sequence[str | None]) -> str:
    """``{"name": "value", ...}`` as JSON text (faster than ``json.dumps`` for 100k rows)."""
    return (
        "{"
        + ", ".join(
            f"{_quote(n)}: {'null' if v is None else _quote(v)}"
            for n, v in zip(names, values, strict=True)
        )
        + "}"
    )


def _json_candidates(candidates: Sequence[tuple[str, float]]) -> str | None:
    if not candidates:
        return None
    return (
        "["
        + ", ".join(f'{{"id": {_quote(c)}, "score": {float(v)!r}}}' for c, v in candidates)
        + "]"
    )


def _write_matches(conn: sa.Connection, db: Database, rows: list[tuple[Any, ...]]) -> None:
    """Insert match rows given as tuples in :data:`_MATCH_COLUMNS` order, JSON as text."""
    table = db.tables.import_reconciliation_matches
    _insert_many(conn, db, table, _MATCH_COLUMNS, rows, json_ready=True)


def _values_text(sources: Sequence[str], values: Sequence[str | None]) -> str:
    return ", ".join(f"{s}={v!r}" for s, v in zip(sources, values, strict=True))


def _write_rejected_rows(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    reasons: Mapping[str, Mapping[tuple[str | None, ...], str]],
    only_rows: set[int] | None = None,
) -> int:
    """Record the staged rows held as ``reject`` as failed rows of category reconciliation.

    One failed row per staged row, naming the first reference that rejected it.
    """
    stage = load.staging_table(db, spec, import_id)
    headers = _header_names(conn, db, import_id)
    records = []
    query = sa.select(stage).where(stage.c._hold == _HOLD_REJECT)
    for row in conn.execute(query).mappings():
        if only_rows is not None and row["_source_row"] not in only_rows:
            continue
        for output, ref in spec.references.items():
            key = tuple(as_text(row[s]) for s in ref.sources)
            message = reasons.get(output, {}).get(key)
            if message is None:
                continue
            records.append(
                {
                    "import_id": import_id,
                    "source_row": row["_source_row"],
                    "column_name": output,
                    "category": ErrorCategory.RECONCILIATION.value,
                    "message": message,
                    "raw_value": "; ".join(v or "" for v in key),
                    "raw_values": {headers.get(c, c): as_text(row[c]) for c in spec.columns},
                    "created_at": tracking.utcnow(),
                }
            )
            break
    if records:
        conn.execute(sa.insert(db.tables.import_failed_rows), records)
    return len(records)


def _distinct_inputs(
    conn: sa.Connection, stage: sa.Table, sources: Sequence[str], where: Any = None
) -> list[tuple[tuple[Any, ...], int]]:
    cols = [stage.c[s] for s in sources]
    query = sa.select(*cols, sa.func.count()).group_by(*cols)
    if where is not None:
        query = query.where(where)
    return [(tuple(r[:-1]), int(r[-1])) for r in conn.execute(query)]


def reconcile_staged(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    settings: ReconcileSettings = DEFAULT_SETTINGS,
) -> ReconcileOutcome:
    """Resolve every reference of an import's staged rows, in the caller's transaction.

    For each reference: read the distinct source tuples of the staging table (with their row
    counts), read the master table once (only the id and the compared fields) and the
    entity's aliases, resolve each tuple once, apply ``on_unmatched``, write one
    ``import_reconciliation_matches`` row per tuple, then set the staged rows' output id and
    hold set-wise. Rows held ``reject`` are also written to ``import_failed_rows``.
    Running it again for the same import first removes what an earlier run recorded.

    Returns:
        Rows held for review, rows rejected, and distinct inputs by match type.

    Raises:
        HistimportError: a master table or one of its columns is missing.
    """
    if not spec.references:
        return ReconcileOutcome(0, 0, {})
    stage = load.staging_table(db, spec, import_id)
    _forget_earlier_run(conn, db, spec, import_id, stage)
    by_type: Counter[str] = Counter()
    comparisons = 0
    reasons: dict[str, dict[tuple[str | None, ...], str]] = {}
    masters: dict[tuple[str, tuple[str, ...]], MasterData] = {}
    stamp = tracking.utcnow()
    without_id: dict[str, int] = {}
    for output, ref in spec.references.items():
        sources = ref.sources
        distinct = _distinct_inputs(conn, stage, sources)
        texts = [tuple(as_text(v) for v in values) for values, _ in distinct]
        wanted = (ref.entity, (ref.id_column, *sorted(ref.field_of_source.values())))
        master = masters.get(wanted) or read_master(conn, ref)
        masters[wanted] = master
        aliases = read_aliases(conn, db, ref.entity)
        resolutions, compared = resolve_values(ref, master, texts, aliases, settings)
        comparisons += compared
        created: dict[str, str] = {}
        records: list[tuple[Any, ...]] = []
        mapping: list[tuple[Sequence[Any], Any, str | None]] = []
        reasons[output] = {}
        for (values, count), text, found in zip(distinct, texts, resolutions, strict=True):
            key = found.key
            decided_by: str | None = None
            hold: str | None = None
            out: str | None = None
            given = any(v is not None for v in text)
            # An empty value is unmatched like any other: under `review` a person decides.
            to_review = (
                found.match_type is not MatchType.UNMATCHED
                or ref.on_unmatched is OnUnmatched.REVIEW
            )
            if found.accepted:
                decision, out, decided_by = (
                    MatchDecision.AUTO_ACCEPTED,
                    found.matched_id,
                    ENGINE_ACTOR,
                )
            elif to_review:
                decision, hold = MatchDecision.NEEDS_REVIEW, _HOLD_REVIEW
            elif ref.on_unmatched is OnUnmatched.CREATE and given:
                if key not in created:
                    created[key] = _create_master_row(
                        conn, ref, master.table, dict(zip(sources, values, strict=True))
                    )
                out = created[key]
                found = Resolution(MatchType.CREATED, out, None, found.candidates)
                decision, decided_by = MatchDecision.CREATED, ENGINE_ACTOR
            elif ref.on_unmatched is OnUnmatched.REJECT:
                decision, hold, decided_by = MatchDecision.REJECTED, _HOLD_REJECT, ENGINE_ACTOR
                reasons[output][text] = (
                    f"{_values_text(sources, text)}: {found.reason}; the reference "
                    f"{output} rejects unmatched values (on_unmatched: reject)"
                )
            else:
                # null, or an empty value under create (nothing to create a row from):
                # loaded without an id
                decision, decided_by = MatchDecision.REJECTED, ENGINE_ACTOR
                without_id[output] = without_id.get(output, 0) + count
            by_type[found.match_type.value] += 1
            records.append(
                (
                    import_id,
                    spec.name,
                    output,
                    ref.entity,
                    _json_object(sources, text),
                    found.match_type.value,
                    found.matched_id,
                    found.score,
                    _json_candidates(found.candidates),
                    decision.value,
                    count,
                    decided_by,
                    stamp if decided_by else None,
                    stamp,
                    stamp,
                    key,
                    ref.id_column,
                )
            )
            if out is not None or hold is not None:
                mapping.append((values, _typed_id(ref, out), hold))
        _write_matches(conn, db, records)
        _apply_mapping(conn, db, spec, import_id, output, sources, mapping)
    rejected = _write_rejected_rows(conn, db, spec, import_id, reasons)
    review = load.held_rows(conn, db, spec, import_id)
    _warn_without_id(conn, db, spec, import_id, without_id)
    return ReconcileOutcome(
        rows_review=review,
        rows_rejected=rejected,
        matches=dict(by_type),
        comparisons=comparisons,
        rows_without_id=without_id,
    )


_WITHOUT_ID = "loaded without "


def _warn_without_id(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    without_id: Mapping[str, int],
) -> None:
    """Say in the import's warnings how many rows load without an id, per reference."""
    row = tracking.get_import(conn, db, import_id) or {}
    # A re-run of the step replaces what the earlier run said.
    warnings = [w for w in (row.get("warnings") or []) if _WITHOUT_ID not in w]
    for output, count in without_id.items():
        ref = spec.references[output]
        warnings.append(
            f"{count} row{'s' if count != 1 else ''} {_WITHOUT_ID}{output}: empty or matching no "
            f"{ref.entity} row (on_unmatched: {ref.on_unmatched.value}); see `histimport "
            f"review list --import {import_id} --all`"
        )
    if warnings != (row.get("warnings") or []):
        tracking.update_import(conn, db, import_id, warnings=warnings)


def _forget_earlier_run(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int, stage: sa.Table
) -> None:
    """Make a re-run of the step start clean: its matches, failed rows and holds go."""
    matches, failed = db.tables.import_reconciliation_matches, db.tables.import_failed_rows
    # The earlier run's new master rows go too, or the re-run would create them twice.
    drop_created_masters(conn, db, import_id)
    conn.execute(sa.delete(matches).where(matches.c.import_id == import_id))
    conn.execute(
        sa.delete(failed).where(
            failed.c.import_id == import_id,
            failed.c.category == ErrorCategory.RECONCILIATION.value,
        )
    )
    reset: dict[str, Any] = dict.fromkeys(spec.references) | {"_hold": None}
    conn.execute(sa.update(stage).values(reset))


def _created_masters(
    conn: sa.Connection, db: Database, import_id: int
) -> dict[tuple[str, str], list[str]]:
    """(entity, id column) -> ids of the master rows ``import_id`` created, as text."""
    m = db.tables.import_reconciliation_matches
    rows = conn.execute(
        sa.select(m.c.entity, m.c.id_column, m.c.matched_id).where(
            m.c.import_id == import_id,
            m.c.decision == MatchDecision.CREATED.value,
            m.c.matched_id.is_not(None),
        )
    )
    created: dict[tuple[str, str], list[str]] = {}
    for entity, id_column, matched_id in rows:
        created.setdefault((entity, id_column or "id"), []).append(matched_id)
    return created


def imports_using_created_masters(conn: sa.Connection, db: Database, import_id: int) -> list[int]:
    """Other loaded imports whose rows point at master rows that ``import_id`` created.

    Rolling ``import_id`` back deletes those master rows, so these imports depend on it.
    """
    created = _created_masters(conn, db, import_id)
    if not created:
        return []
    m, h = db.tables.import_reconciliation_matches, db.tables.import_history
    found: set[int] = set()
    for (entity, _), ids in created.items():
        rows = conn.execute(
            sa.select(m.c.import_id)
            .distinct()
            .join(h, h.c.import_id == m.c.import_id)
            .where(
                m.c.import_id != import_id,
                m.c.entity == entity,
                m.c.matched_id.in_(ids),
                h.c.status.in_([ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value]),
            )
        )
        found.update(r[0] for r in rows)
    return sorted(found)


def drop_created_masters(conn: sa.Connection, db: Database, import_id: int) -> int:
    """Delete the master rows that ``import_id`` created (policy ``create``), in ``conn``'s
    transaction, with any alias learned for them since. Returns how many rows went.

    Used when the import is rolled back or rejected, and when its reconcile step runs again.

    Raises:
        HistimportError: a created row is still referenced by a foreign key elsewhere.
    """
    deleted = 0
    aliases = db.tables.reconciliation_aliases
    for (entity, id_column), ids in _created_masters(conn, db, import_id).items():
        if not sa.inspect(conn).has_table(entity):
            continue
        table = sa.Table(entity, sa.MetaData(), autoload_with=conn)
        column = table.c[id_column]
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            python_type = str
        keys = [python_type(i) if python_type is int else i for i in ids]
        try:
            with conn.begin_nested():
                deleted += int(conn.execute(sa.delete(table).where(column.in_(keys))).rowcount)
        except sa.exc.IntegrityError as exc:
            raise HistimportError(
                f"import {import_id} created {len(ids)} row(s) in {entity} that other tables "
                f"still reference ({exc.orig}); remove those references first, then try again"
            ) from None
        conn.execute(
            sa.delete(aliases).where(aliases.c.entity == entity, aliases.c.entity_id.in_(ids))
        )
    return deleted


# Review --------------------------------------------------------------------------------------


class MatchNotFoundError(HistimportError):
    """No reconciliation match with that id."""

    def __init__(self, match_id: int) -> None:
        super().__init__(
            f"no reconciliation match with id {match_id}; see `histimport review list`"
        )
        self.match_id = match_id


class ReviewError(HistimportError):
    """A review action that cannot be done as asked."""


def _value_group(t: sa.Table) -> Any:
    """What makes matches the same value to decide: the normalized input key (a match
    recorded without one, by an early version, stands alone)."""
    return sa.func.coalesce(t.c.input_key, sa.cast(t.c.match_id, sa.String))


def list_matches(
    db: Database,
    import_id: int | None = None,
    dataset: str | None = None,
    decision: MatchDecision | None = MatchDecision.NEEDS_REVIEW,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Reconciliation matches, oldest first; by default those waiting for a decision.

    Waiting matches are listed once per value: the matches of every import that wait on
    the same entity and normalized input (``input_key``) are one item, shown by its oldest
    match, and one decision (:func:`decide_match`) settles them all. ``import_id`` and
    ``dataset`` pick the items with a waiting match there; the item still names every
    import that waits on the value.

    Returns:
        One dict per item: the oldest ``import_reconciliation_matches`` row, with
        ``match_ids`` and ``import_ids`` of every match it stands for and ``rows_waiting``,
        their rows in total (for decided matches: that match alone).
    """
    t = db.tables.import_reconciliation_matches
    with db.reader() as conn:
        if decision is not MatchDecision.NEEDS_REVIEW:
            query = sa.select(t).order_by(t.c.match_id).limit(limit)
            if import_id is not None:
                query = query.where(t.c.import_id == import_id)
            if dataset is not None:
                query = query.where(t.c.dataset == dataset)
            if decision is not None:
                query = query.where(t.c.decision == decision.value)
            return [
                dict(r)
                | {
                    "match_ids": [r["match_id"]],
                    "import_ids": [r["import_id"]],
                    "rows_waiting": int(r["rows_affected"] or 0)
                    if r["decision"] == MatchDecision.NEEDS_REVIEW.value
                    else 0,
                }
                for r in conn.execute(query).mappings()
            ]
        group = _value_group(t)
        first = sa.func.min(t.c.match_id)
        query = (
            sa.select(first)
            .where(t.c.decision == MatchDecision.NEEDS_REVIEW.value)
            .group_by(t.c.entity, t.c.id_column, group)
            .order_by(first)
            .limit(limit)
        )
        for column, wanted in ((t.c.import_id, import_id), (t.c.dataset, dataset)):
            if wanted is not None:
                query = query.having(sa.func.sum(sa.case((column == wanted, 1), else_=0)) > 0)
        firsts = list(conn.execute(query).scalars())
        if not firsts:
            return []
        heads = {
            r["match_id"]: dict(r)
            for r in conn.execute(sa.select(t).where(t.c.match_id.in_(firsts))).mappings()
        }
        keys = {
            (h["entity"], h["id_column"], h["input_key"] or str(h["match_id"]))
            for h in heads.values()
        }
        members = conn.execute(
            sa.select(
                t.c.entity, t.c.id_column, group, t.c.match_id, t.c.import_id, t.c.rows_affected
            )
            .where(
                t.c.decision == MatchDecision.NEEDS_REVIEW.value,
                group.in_(sorted({k[2] for k in keys})),
            )
            .order_by(t.c.match_id)
        )
        found: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}
        for entity, id_column, key, match_id, of_import, count in members:
            if (entity, id_column, key) in keys:
                found.setdefault((entity, id_column, key), []).append(
                    (match_id, of_import, int(count or 0))
                )
    items = []
    for match_id in firsts:
        head = heads[match_id]
        group_of = found[(head["entity"], head["id_column"], head["input_key"] or str(match_id))]
        items.append(
            head
            | {
                "match_ids": [m for m, _, _ in group_of],
                "import_ids": sorted({i for _, i, _ in group_of}),
                "rows_waiting": sum(c for _, _, c in group_of),
            }
        )
    return items


def decide_match(
    db: Database,
    match_id: int,
    *,
    accept: bool,
    entity_id: str | None = None,
    actor: str | None,
) -> dict[str, Any]:
    """Accept or reject a value waiting for review, for every import that waits on it.

    The decision is taken for the match ``match_id`` and for every other match waiting on
    the same entity and normalized input (see :func:`list_matches`), whatever import it is
    of. Accepting sets the matched id (``entity_id``, else the suggested candidate) and
    records an alias, so the same normalized input matches exactly in later imports.
    Neither decision loads anything: :func:`apply_review` does, per import.

    Returns:
        The updated match row, with ``match_ids`` and ``import_ids`` of every match decided.

    Raises:
        MatchNotFoundError: no match with that id.
        ReviewError: the match was decided already, or there is no id to accept (an
            ambiguous or unmatched value needs ``entity_id``), or the id is not in the
            master table.
    """
    t = db.tables.import_reconciliation_matches
    aliases = db.tables.reconciliation_aliases
    with db.engine.begin() as conn:
        row = (
            conn.execute(sa.select(t).where(t.c.match_id == match_id).with_for_update())
            .mappings()
            .first()
        )
        if row is None:
            raise MatchNotFoundError(match_id)
        if row["decision"] != MatchDecision.NEEDS_REVIEW.value:
            by = f" by {row['decided_by']}" if row["decided_by"] else ""
            raise ReviewError(
                f"match {match_id} is already {row['decision']}{by}; only matches waiting "
                "for review can be decided"
            )
        siblings = conn.execute(
            sa.select(t.c.match_id, t.c.import_id)
            .where(
                t.c.decision == MatchDecision.NEEDS_REVIEW.value,
                t.c.entity == row["entity"],
                t.c.id_column.is_not_distinct_from(row["id_column"]),
                _value_group(t) == (row["input_key"] or str(match_id)),
            )
            .order_by(t.c.match_id)
            .with_for_update()
        ).all()
        match_ids = [m for m, _ in siblings]
        stamp = tracking.utcnow()
        values: dict[str, Any] = {"decided_by": actor, "decided_at": stamp, "updated_at": stamp}
        if accept:
            chosen = entity_id or row["matched_id"]
            if chosen is None:
                options = (
                    ", ".join(f"{c['id']} ({c['score']})" for c in (row["candidates"] or []))
                    or "none"
                )
                raise ReviewError(
                    f"match {match_id} ({row['match_type']}) has no suggested id: pass "
                    f"--entity ID (candidates: {options})"
                )
            _check_entity_id(conn, row["entity"], row["id_column"] or "id", chosen)
            values |= {"decision": MatchDecision.ACCEPTED.value, "matched_id": str(chosen)}
            conn.execute(sa.update(t).where(t.c.match_id.in_(match_ids)).values(values))
            given = row["input_values"] or {}
            # An empty input is never looked up as an alias: nothing to remember.
            if any(v is not None for v in given.values()):
                _remember_alias(conn, aliases, dict(row), str(chosen), actor, stamp)
            action = "review_accepted"
        else:
            values |= {"decision": MatchDecision.REJECTED.value}
            conn.execute(sa.update(t).where(t.c.match_id.in_(match_ids)).values(values))
            action = "review_rejected"
        by_import: dict[int, list[int]] = {}
        for sibling, of_import in siblings:
            by_import.setdefault(of_import, []).append(sibling)
        for of_import, decided in by_import.items():
            tracking.record_audit(
                conn,
                db,
                of_import,
                action,
                actor,
                {
                    "match_id": decided[0],
                    "match_ids": decided,
                    "decided_as": match_id,
                    "reference_column": row["reference_column"],
                    "input_values": row["input_values"],
                    "entity_id": values.get("matched_id"),
                },
            )
        updated = conn.execute(sa.select(t).where(t.c.match_id == match_id)).mappings().one()
        return dict(updated) | {"match_ids": match_ids, "import_ids": sorted(by_import)}


def _remember_alias(
    conn: sa.Connection,
    aliases: sa.Table,
    match: Mapping[str, Any],
    entity_id: str,
    actor: str | None,
    stamp: datetime,
) -> None:
    """Store (or move) the alias of an accepted match's normalized input."""
    key = match["input_key"] or ""
    existing = conn.execute(
        sa.select(aliases.c.alias_id).where(
            aliases.c.entity == match["entity"], aliases.c.input_key == key
        )
    ).scalar()
    alias_values = {
        "entity_id": entity_id,
        "input_values": match["input_values"],
        "match_id": match["match_id"],
        "created_by": actor,
        "updated_at": stamp,
    }
    if existing is None:
        conn.execute(
            sa.insert(aliases).values(
                entity=match["entity"], input_key=key, created_at=stamp, **alias_values
            )
        )
    else:
        conn.execute(sa.update(aliases).where(aliases.c.alias_id == existing).values(alias_values))


def _check_entity_id(conn: sa.Connection, entity: str, id_column: str, entity_id: str) -> None:
    try:
        table = sa.Table(entity, sa.MetaData(), autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise ReviewError(f"master table {entity!r} no longer exists") from None
    column = table.c[id_column]
    value: Any = entity_id
    if isinstance(column.type, sa.Integer):
        try:
            value = int(entity_id)
        except ValueError:
            raise ReviewError(f"{entity}.{id_column} is an integer; got {entity_id!r}") from None
    found = conn.execute(sa.select(sa.func.count()).where(column == value)).scalar_one()
    if not found:
        raise ReviewError(f"{entity} has no row with {id_column} = {entity_id!r}")


def apply_review(
    db: Database, spec: DatasetSpec, import_id: int, actor: str | None = None
) -> dict[str, Any]:
    """Load the held rows of an import whose matches are now decided, in one transaction.

    Accepted matches set the output id; rejected ones follow ``on_unmatched``: ``null``
    loads the row without an id, ``create`` inserts a new master row, ``review`` and
    ``reject`` fail the row (category reconciliation). Rows still undecided stay held. The
    released rows are written by the dataset's strategy (``replace_date`` appends: the day
    was replaced by the import already) under the same import id; the import's counts and
    status are updated.

    Returns:
        ``rows_loaded``, ``rows_created``, ``rows_updated``, ``rows_unchanged``,
        ``rows_rejected``, ``rows_duplicate``, ``rows_still_held`` and the new ``status``.

    Raises:
        ImportNotFoundError: no import with that id.
        ReviewError: the import is of another dataset, or has no rows held for review.
    """
    matches = db.tables.import_reconciliation_matches
    with db.engine.begin() as conn:
        history = tracking.get_import(conn, db, import_id)
        if history is None:
            raise ImportNotFoundError(import_id)
        if history["dataset"] != spec.name:
            raise ReviewError(f"import {import_id} is of dataset {history['dataset']!r}")
        stage = load.staging_table(db, spec, import_id)
        if history["status"] != ImportStatus.PARTIAL.value or not sa.inspect(conn).has_table(
            stage.name, schema=db.schema
        ):
            raise ReviewError(
                f"import {import_id} ({history['status']}) has no rows waiting for review"
            )
        held_before = load.held_rows(conn, db, spec, import_id)
        conn.execute(sa.update(stage).where(stage.c._hold == _HOLD_REVIEW).values(_hold=sa.null()))
        stamp = tracking.utcnow()
        reasons: dict[str, dict[tuple[str | None, ...], str]] = {}
        for output, ref in spec.references.items():
            sources = ref.sources
            decided: dict[tuple[str | None, ...], dict[str, Any]] = {}
            query = sa.select(matches).where(
                matches.c.import_id == import_id, matches.c.reference_column == output
            )
            for found in conn.execute(query).mappings():
                given = found["input_values"] or {}
                decided[tuple(given.get(s) for s in sources)] = dict(found)
            reasons[output] = {}
            mapping: list[tuple[Sequence[Any], Any, str | None]] = []
            master_table: sa.Table | None = None
            for values, _count in _distinct_inputs(conn, stage, sources):
                text = tuple(as_text(v) for v in values)
                m = decided.get(text)
                decision = m["decision"] if m else MatchDecision.NEEDS_REVIEW.value
                out: str | None = None
                hold: str | None = None
                if decision in (
                    MatchDecision.ACCEPTED.value,
                    MatchDecision.AUTO_ACCEPTED.value,
                    MatchDecision.CREATED.value,
                ):
                    out = m["matched_id"] if m else None
                elif decision == MatchDecision.NEEDS_REVIEW.value:
                    hold = _HOLD_REVIEW
                elif m is not None and ref.on_unmatched is OnUnmatched.CREATE:
                    if master_table is None:
                        master_table = reflect_master(conn, ref)
                    out = _create_master_row(
                        conn, ref, master_table, dict(zip(sources, values, strict=True))
                    )
                    conn.execute(
                        sa.update(matches)
                        .where(matches.c.match_id == m["match_id"])
                        .values(
                            decision=MatchDecision.CREATED.value, matched_id=out, updated_at=stamp
                        )
                    )
                elif ref.on_unmatched is not OnUnmatched.NULL:
                    hold = _HOLD_REJECT
                    who = m["decided_by"] if m and m["decided_by"] else "a reviewer"
                    reasons[output][text] = (
                        f"{_values_text(sources, text)}: the match was rejected in review by {who}"
                    )
                if out is not None or hold is not None:
                    mapping.append((values, _typed_id(ref, out), hold))
            _apply_mapping(conn, db, spec, import_id, output, sources, mapping)
        rejected = _write_rejected_rows(conn, db, spec, import_id, reasons)
        duplicates = 0
        if spec.strategy is Strategy.APPEND and spec.key:
            duplicates = load.record_append_conflicts(conn, db, spec, import_id)
        strategy = Strategy.APPEND if spec.strategy is Strategy.REPLACE_DATE else None
        counts = load.write_target(
            conn, db, spec, import_id, history["business_date"], strategy=strategy
        )
        still_held = load.held_rows(conn, db, spec, import_id)
        failed = int(history["rows_failed"] or 0) + rejected
        duplicate_total = int(history["rows_duplicate"] or 0) + duplicates
        status = (
            ImportStatus.PARTIAL
            if failed or duplicate_total or still_held
            else ImportStatus.SUCCESS
        )
        warnings = [
            w for w in (history["warnings"] or []) if "wait for a reconciliation decision" not in w
        ]
        if still_held:
            warnings.append(
                f"{still_held} rows wait for a reconciliation decision: see `histimport review "
                f"list --import {import_id}`, then `histimport review apply {import_id}`"
            )
        tracking.update_import(
            conn,
            db,
            import_id,
            status=status.value,
            rows_review=still_held,
            rows_created=int(history["rows_created"] or 0) + counts.created,
            rows_updated=int(history["rows_updated"] or 0) + counts.updated,
            rows_unchanged=int(history["rows_unchanged"] or 0) + counts.unchanged,
            rows_failed=failed,
            rows_duplicate=duplicate_total,
            warnings=warnings,
            error_summary=tracking.error_summary(conn, db, import_id),
        )
        file_status = FileStatus.IMPORTED if status is ImportStatus.SUCCESS else FileStatus.PARTIAL
        tracking.set_file_status(
            conn, db, spec.name, history["file_sha256"], import_id, file_status
        )
        result = {
            "import_id": import_id,
            "rows_released": held_before - still_held - rejected,
            "rows_loaded": counts.created + counts.updated + counts.unchanged,
            "rows_created": counts.created,
            "rows_updated": counts.updated,
            "rows_unchanged": counts.unchanged,
            "rows_rejected": rejected,
            "rows_duplicate": duplicates,
            "rows_still_held": still_held,
            "status": status.value,
        }
        tracking.record_audit(conn, db, import_id, "review_applied", actor, result)
        load.finish_staging(conn, db, spec, import_id)
        return result
