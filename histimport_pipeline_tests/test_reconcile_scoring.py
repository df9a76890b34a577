"""Bulk scoring of multi-field rules decides exactly as scoring each candidate pair did.

The reference below is the scoring the engine had before each field's distinct values were
coded once and scored in bulk: every candidate pair's texts prepared afresh and scored with
``cpdist``. It lives here, not in the package, to check the package against it on a
generated FEBRL-like set with typos, swapped names, missing values and tied candidates.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from rapidfuzz import fuzz

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import MatchType
from histimport_pipeline.engine.pipeline import run_import
from histimport_pipeline.engine.reconciliation import (
    DEFAULT_SETTINGS,
    MasterData,
    Resolution,
    resolve_values,
)
from histimport_pipeline.engine.reconciliation import evidence as evidence_module
from histimport_pipeline.engine.reconciliation import values as bulk
from histimport_pipeline.engine.reconciliation.blocking import (
    InputColumns,
    Part,
    candidate_pairs,
    rule_parts,
)
from histimport_pipeline.engine.reconciliation.evidence import Evidence
from histimport_pipeline.engine.reconciliation.rules import pair_scores, prepared
from histimport_pipeline.engine.spec import (
    DatasetSpec,
    MatchMethod,
    MatchRule,
    ReferenceSpec,
    Scorer,
)
from histimport_pipeline_tests.helpers import write

FIELDS = (
    "given_name",
    "surname",
    "date_of_birth",
    "soc_sec_id",
    "postcode",
    "suburb",
    "address_1",
    "state",
)
SEVEN_FIELDS: dict[str, Any] = {
    "fields": [
        {
            "source": ["given_name", "surname"],
            "field": ["given_name", "surname"],
            "method": "fuzzy",
        },
        {"source": "date_of_birth", "field": "date_of_birth", "method": "fuzzy"},
        {"source": "soc_sec_id", "field": "soc_sec_id", "method": "fuzzy"},
        {"source": "postcode", "field": "postcode", "method": "fuzzy"},
        {"source": "suburb", "field": "suburb", "method": "fuzzy"},
        {"source": "address_1", "field": "address_1", "method": "fuzzy"},
        {"source": "state", "field": "state", "method": "exact"},
    ]
}
# Other scorers (no bound on them), required fields, weights, a stricter similarity.
STRICT: dict[str, Any] = {
    "fields": [
        {
            "source": ["given_name", "surname"],
            "field": ["given_name", "surname"],
            "method": "fuzzy",
            "scorer": "jaro_winkler",
            "similar_at": 85,
            "required": True,
        },
        {"source": "date_of_birth", "field": "date_of_birth", "method": "fuzzy", "scorer": "ratio"},
        {"source": "soc_sec_id", "field": "soc_sec_id", "method": "fuzzy", "scorer": "levenshtein"},
        {
            "source": "postcode",
            "field": "postcode",
            "method": "fuzzy",
            "scorer": "damerau_levenshtein",
        },
        {"source": "suburb", "field": "suburb", "method": "fuzzy", "scorer": "partial_ratio"},
        {"source": "address_1", "field": "address_1", "method": "fuzzy", "weight": 2},
        {"source": "state", "field": "state", "method": "exact", "required": True},
    ],
    "threshold": 95,
}


def reference_evidence(self: Evidence, rule: MatchRule, parts: list[Part], qi: Any, mi: Any) -> Any:
    """The evidence as it was computed pair by pair (the engine's code before bulk scoring)."""
    s = self.settings
    size = max(self.master.size, 1)
    total = np.zeros(len(qi))
    for fi, f in enumerate(rule.fields):
        mine = [p for p in parts if p.field_index == fi]
        alignments = [mine]
        if len(mine) > 1:
            alignments.append(
                [
                    Part(p.field_index, p.spec, p.source_index, q.master_name, p.inputs, q.master)
                    for p, q in zip(mine, reversed(mine), strict=True)
                ]
            )
        best: Any = None
        best_ok: Any = None
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
                    a = np.array(prepared(asked, f.scorer), dtype=object)
                    b = np.array(prepared(have, f.scorer), dtype=object)
                    scores = pair_scores(a, b, f.scorer, s.workers)
                    similar = present & ~equal & (scores >= f.similar_at)
                    u_similar = self.u_similar(part)
                    similar_bits = math.log2(s.m_similar / u_similar)
                    different_bits = math.log2(s.m_different / max(1.0 - u_similar, 0.5))
                else:
                    similar = np.zeros(len(qi), dtype=bool)
                    similar_bits, different_bits = 0.0, math.log2(1.0 - s.m_equal)
                bits = np.where(
                    equal,
                    np.log2(s.m_equal / np.maximum(u_equal[mi], 1.0 / size)),
                    np.where(similar, similar_bits, different_bits),
                )
                field_total += np.where(present, bits, 0.0)
                if f.required:
                    ok &= equal | similar | (asked == None)  # noqa: E711
                    ok &= have != None  # noqa: E711
            if best is None:
                best, best_ok = field_total, ok
            else:
                better = field_total > best
                best = np.where(better, field_total, best)
                best_ok = np.where(better, ok, best_ok)
        total += f.weight * best
        total[~best_ok] = -np.inf
    return total


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    kind = rng.choice("sidt")
    if kind == "s":
        return text[:i] + rng.choice("aeiourstn") + text[i + 1 :]
    if kind == "i":
        return text[:i] + rng.choice("aeiourstn") + text[i:]
    if kind == "d" and len(text) > 2:
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i + 1 : i + 2] + text[i : i + 1] + text[i + 2 :]


def make_people(seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """~300 master people and ~450 incoming records made from them (and some strangers)."""
    rng = random.Random(seed)
    syllables = ["an", "el", "ma", "ri", "jo", "son", "li", "ke", "ta", "be", "ro", "zoë", "łu"]

    def word(low: int, high: int) -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.randint(low, high)))

    givens = [word(1, 2) for _ in range(40)]
    states = ("nsw", "vic", "qld")
    places = [(word(1, 3), str(rng.randint(2000, 2090)), rng.choice(states)) for _ in range(25)]

    def person() -> dict[str, Any]:
        suburb, postcode, state = rng.choice(places)
        street = f"{word(1, 3)} {rng.choice(('street', 'road', 'place'))}"
        if rng.random() < 0.03:  # longer than the masked width of the character buckets
            street = " ".join(word(2, 3) for _ in range(12))
        return {
            "given_name": rng.choice(givens).capitalize(),
            "surname": word(2, 3).upper() if rng.random() < 0.1 else word(2, 3),
            "date_of_birth": f"19{rng.randint(20, 99)}{rng.randint(1, 12):02}"
            f"{rng.randint(1, 28):02}",
            "soc_sec_id": str(rng.randint(1_000_000, 1_000_400)),
            "postcode": postcode,
            "suburb": suburb,
            "address_1": street,
            "state": state,
        }

    master = [person() for _ in range(280)]
    for original in rng.sample(master, 12):
        # Twins: all but the id number alike; and rows alike in every field (tied candidates).
        master.append(original | {"soc_sec_id": str(rng.randint(2_000_000, 2_000_100))})
        master.append(dict(original))
    for row in rng.sample(master, 40):
        row[rng.choice(FIELDS)] = None
    for k, row in enumerate(master):
        row["id"] = f"p{k:03}"
    incoming = []
    for original in rng.choices(master, k=420) + [person() for _ in range(30)]:
        dup = {f: original[f] for f in FIELDS}
        for _ in range(rng.choice((0, 1, 2, 3, 5))):
            column = rng.choice(FIELDS)
            value, roll = dup[column], rng.random()
            if value is None or roll < 0.15:
                dup[column] = None
            elif roll < 0.3 and column in ("given_name", "surname"):
                dup["given_name"], dup["surname"] = dup["surname"], dup["given_name"]
            elif roll < 0.4 and " " in value:
                dup[column] = " ".join(reversed(value.split(" ")))
            elif roll < 0.5:
                dup[column] = f"  {value.upper()} "
            else:
                dup[column] = _typo(rng, value)
        incoming.append(dup)
    return master, incoming


def _reference(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entity": "people", "id_type": "string", "match": rules, "on_unmatched": "review"}


def _reference_spec(rules: list[dict[str, Any]]) -> ReferenceSpec:
    return ReferenceSpec.model_validate(_reference(rules))


def _inputs(ref: ReferenceSpec, incoming: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        {tuple(r[s] for s in ref.sources) for r in incoming}, key=lambda t: [v or "" for v in t]
    )


def _master_data(master: list[dict[str, Any]]) -> MasterData:
    return MasterData(
        table=sa.Table("people", sa.MetaData()),
        ids=[m["id"] for m in master],
        raw={f: [m[f] for m in master] for f in FIELDS},
    )


def _decisions(resolutions: list[Resolution]) -> list[tuple[Any, ...]]:
    return [
        (r.match_type, r.matched_id, r.score, r.candidates, r.accepted, r.reason, r.key)
        for r in resolutions
    ]


def _force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    # Small chunks of pairs, so that many chunk boundaries fall inside an input's candidates.
    monkeypatch.setattr(evidence_module, "PAIR_CHUNK", 777)
    if path == "pairwise":
        monkeypatch.setattr(bulk, "DENSE_CELLS_PER_PAIR", 0)
    elif path == "table":
        monkeypatch.setattr(bulk, "DENSE_CELLS_PER_PAIR", 10**9)
        monkeypatch.setattr(bulk, "DENSE_MAX_CELLS", 10**12)


@pytest.mark.parametrize("path", ["chosen", "pairwise", "table"])
@pytest.mark.parametrize("rules", [[SEVEN_FIELDS], [STRICT, SEVEN_FIELDS]], ids=["seven", "two"])
def test_multi_field_decisions_equal_pair_by_pair_scoring(
    monkeypatch: pytest.MonkeyPatch, rules: list[dict[str, Any]], path: str
) -> None:
    master, incoming = make_people()
    ref = _reference_spec(rules)
    inputs = _inputs(ref, incoming)
    _force_path(monkeypatch, path)
    found, compared = resolve_values(ref, _master_data(master), inputs)
    with monkeypatch.context() as m:
        m.setattr(Evidence, "evidence", reference_evidence)
        expected, expected_compared = resolve_values(ref, _master_data(master), inputs)
    assert compared == expected_compared > 0
    assert _decisions(found) == _decisions(expected)
    # The set covers what can go wrong: every kind of decision, ties, missing values.
    kinds = {r.match_type for r in found}
    assert {MatchType.FUZZY, MatchType.AMBIGUOUS, MatchType.UNMATCHED} <= kinds
    assert sum(r.accepted and r.match_type is MatchType.FUZZY for r in found) > 100
    assert any(len(r.candidates) > 1 and r.candidates[0][1] == r.candidates[1][1] for r in found)
    assert any(None in values and r.accepted for values, r in zip(inputs, found, strict=True))


@pytest.mark.parametrize("path", ["chosen", "pairwise", "table"])
def test_evidence_of_every_candidate_pair_is_bit_for_bit_the_same(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    master, incoming = make_people(seed=8)
    ref = _reference_spec([STRICT, SEVEN_FIELDS])
    data = _master_data(master)
    inputs = _inputs(ref, incoming)
    columns = InputColumns(inputs)
    _force_path(monkeypatch, path)
    for rule in ref.match:
        parts = rule_parts(ref, data, columns, rule, range(len(inputs)))
        qi, mi = candidate_pairs(rule, parts, len(inputs), DEFAULT_SETTINGS.window)
        evidence = Evidence(data, DEFAULT_SETTINGS)
        found = evidence.evidence(rule, parts, qi, mi)
        expected = reference_evidence(evidence, rule, parts, qi, mi)
        assert found.tobytes() == expected.tobytes()
        assert np.isneginf(found).any() == any(f.required for f in rule.fields)


def test_pairs_left_unscored_cannot_reach_similar_at() -> None:
    rng = random.Random(2)
    texts = ["".join(rng.choice("aabcdé1 ") for _ in range(rng.randint(1, 12))) for _ in range(300)]
    texts += ["".join(rng.choice("abcdef") for _ in range(rng.randint(60, 90))) for _ in range(60)]
    texts = sorted(set(texts))
    codes = bulk.field_codes([texts], [texts], Scorer.RATIO)
    left = np.array([rng.randrange(len(texts)) for _ in range(20_000)])
    right = np.array([rng.randrange(len(texts)) for _ in range(20_000)])
    scores = np.array([fuzz.ratio(texts[a], texts[b]) for a, b in zip(left, right, strict=True)])
    for at in (0.0, 40.0, 75.0, 87.5, 100.0):
        kept = bulk.may_reach(codes, left, right, at)
        assert kept[scores >= at].all()
        if 0 < at < 100:
            assert (~kept).sum() > 0.2 * (scores < at).sum()


def test_imported_decisions_equal_pair_by_pair_scoring(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master, incoming = make_people(seed=3)
    people = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        *(sa.Column(f, sa.Text) for f in FIELDS),
    )
    with db.engine.begin() as conn:
        people.create(conn)
        conn.execute(sa.insert(people), master)
    lines = [",".join(("rec_id", *FIELDS))]
    lines += [",".join((f"r{k}", *(r[f] or "" for f in FIELDS))) for k, r in enumerate(incoming)]
    path = write(tmp_path / "visits.csv", "\n".join(lines) + "\n")
    t = db.tables.import_reconciliation_matches

    def import_as(name: str) -> dict[str, tuple[Any, ...]]:
        spec = DatasetSpec.model_validate(
            {
                "name": name,
                "target_table": name,
                "max_error_ratio": 1.0,
                "columns": {"rec_id": {"required": True}, **{f: {} for f in FIELDS}},
                "references": {"person_id": _reference([SEVEN_FIELDS])},
            }
        )
        result = run_import(db, spec, path)
        query = sa.select(
            t.c.input_key, t.c.match_type, t.c.matched_id, t.c.score, t.c.candidates, t.c.decision
        ).where(t.c.import_id == result.import_id)
        with db.engine.connect() as conn:
            return {key: tuple(rest) for key, *rest in conn.execute(query)}

    found = import_as("visits")
    # The same file through the same pipeline (the same order of distinct values, which the
    # order of tied candidates can depend on), scored pair by pair.
    monkeypatch.setattr(Evidence, "evidence", reference_evidence)
    expected = import_as("visits_ref")
    assert found == expected
    assert len(found) > 400
    assert (
        sum(
            kind == "fuzzy" and decision == "auto_accepted" for kind, *_, decision in found.values()
        )
        > 100
    )
    assert any(kind == "ambiguous" for kind, *_ in found.values())
