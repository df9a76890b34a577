"""Reconciliation speed: a single-field rule on 100,000 names, and a seven-field person rule.

Part 1 (``--names``, the single-field rule): 100,000 distinct incoming names against a
100,000-row master table.

The master table holds 100,000 distinct synthetic full names. The import file holds 100,000
distinct values made from them: 15% as written, 10% with other case and spacing, 65% with one
or two typos (a quarter of those in the first letter), 10% names that are not in the master
table. The import runs through a dataset spec with the rule
``{source: name, field: full_name, method: fuzzy, threshold: 90}``.

Printed: the time of the reconcile step and of the whole import, fuzzy comparisons made,
the peak RSS of the process, the share of each match type, and the recall lost to blocking:
for a random sample of the typo'd values, the best candidate of an exhaustive search over
the whole master table, compared with what the blocked search found.

Part 2 (``--people``, the seven-field rule): FEBRL-style people, 5k x 5k and (unless
``--no-people-100k``) 100k x 100k, with PASS/MISS against <= 5 s and <= 60 s and a rapidfuzz
baseline measured in the same run; see ``_reconcile_people.py``.

    python benchmarks/reconcile_speed.py [--rows 100000] [--url postgresql+psycopg://...]
        [--no-names] [--no-people] [--no-people-100k]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from rapidfuzz import fuzz, process

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reconcile_common import import_file
from _reconcile_people import HEADER, load_note, people_benchmark

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.migrations import upgrade
from histimport_pipeline.engine.reconciliation import (
    MasterData,
    normalize,
    resolve_values,
)
from histimport_pipeline.engine.spec import DatasetSpec, load_spec

SPEC = """\
name: speed_signups
target_table: speed_signups
strategy: append
max_error_ratio: 1.0
columns:
  signup_id: {type: string, required: true}
  name:      {type: string}
references:
  ambassador_id:
    entity: speed_ambassadors
    match:
      - {source: name, field: full_name, method: fuzzy, threshold: 90}
    on_unmatched: null
"""
SYLLABLES = (
    "ka",
    "ri",
    "to",
    "man",
    "el",
    "sa",
    "no",
    "be",
    "lu",
    "ve",
    "dan",
    "mi",
    "ra",
    "son",
    "ter",
    "li",
    "ne",
    "go",
    "la",
    "ber",
    "and",
    "wy",
    "zo",
    "ch",
    "is",
    "ton",
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(low, high))).capitalize()


def _typo(rng: random.Random, text: str, first: bool) -> str:
    chars = list(text)
    i = 0 if first else rng.randrange(1, len(chars))
    kind = rng.choice(("sub", "del", "ins", "swap"))
    if kind == "sub" or (kind == "swap" and i + 1 >= len(chars)):
        chars[i] = rng.choice(LETTERS).upper() if i == 0 else rng.choice(LETTERS)
    elif kind == "del" and len(chars) > 3:
        del chars[i]
    elif kind == "ins":
        chars.insert(i, rng.choice(LETTERS))
    else:
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def make_data(n: int, seed: int = 11) -> tuple[list[str], list[tuple[str, int | None]]]:
    """Master names, and incoming (value, true master index or None)."""
    rng = random.Random(seed)
    given = sorted({_word(rng, 1, 3) for _ in range(4000)})
    family = sorted({_word(rng, 2, 4) for _ in range(20000)})
    names: set[str] = set()
    while len(names) < n:
        names.add(f"{rng.choice(given)} {rng.choice(family)}")
    master = sorted(names)
    rng.shuffle(master)
    incoming: dict[str, int | None] = {}
    order = list(range(n))
    rng.shuffle(order)
    for k, idx in enumerate(order):
        base, roll = master[idx], k / n
        if roll < 0.15:
            value: str = base
        elif roll < 0.25:
            value = "  ".join(base.upper().split(" "))
        elif roll < 0.90:
            value = _typo(rng, base, first=rng.random() < 0.25)
            if rng.random() < 0.4:
                value = _typo(rng, value, first=False)
        else:
            value = f"{_word(rng, 1, 3)} {_word(rng, 2, 4)}"
            idx = None  # type: ignore[assignment]
        while value in incoming:
            value += rng.choice(LETTERS)
            idx = None  # type: ignore[assignment]
        incoming[value] = idx
    return master, list(incoming.items())


def blocking_recall(master: list[str], sample: Sequence[tuple[str, int | None]]) -> tuple[int, int]:
    """(values whose exhaustive best is >= 90, of those: found by the blocked search)."""
    spec = load_spec_text()
    ref = spec.references["ambassador_id"]
    data = MasterData(
        table=sa.Table("x", sa.MetaData()),
        ids=[str(i) for i in range(len(master))],
        raw={"full_name": list[str | None](master)},
    )
    results, _ = resolve_values(ref, data, [(v,) for v, _ in sample])
    prepared = [" ".join(sorted((normalize(m) or "").split(" "))) for m in master]
    queries = [" ".join(sorted((normalize(v) or "").split(" "))) for v, _ in sample]
    scores = process.cdist(queries, prepared, scorer=fuzz.ratio, workers=-1)
    best = scores.max(axis=1)
    reachable = found = 0
    for row, res in zip(range(len(sample)), results, strict=True):
        if best[row] < 90:
            continue
        reachable += 1
        # Candidates' scores are stored rounded to 2 decimals.
        winners = {str(i) for i in np.flatnonzero(scores[row] >= best[row] - 1e-6)}
        top = {c for c, s in res.candidates if s >= round(float(best[row]), 2) - 0.01}
        found += bool(winners & top)
    return reachable, found


def load_spec_text() -> DatasetSpec:
    import yaml

    from histimport_pipeline.engine.spec import DatasetSpec

    return DatasetSpec.model_validate(yaml.safe_load(SPEC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--url", help="target database URL (default: SQLite in a temp folder)")
    parser.add_argument("--sample", type=int, default=1000, help="values checked exhaustively")
    parser.add_argument(
        "--names",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the single-field rule on --rows names",
    )
    parser.add_argument(
        "--people",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the seven-field person rule, 5k x 5k (FEBRL 4 and generated)",
    )
    parser.add_argument(
        "--people-100k",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the seven-field rule on 100k x 100k generated people (a few minutes)",
    )
    args = parser.parse_args()
    print(load_note())
    if args.names:
        print("== single-field rule: names ==")
        names_benchmark(args)
    if args.people:
        print("== seven-field person rule (names, date of birth, id number, postcode, suburb, ")
        print("   street, state) ==")
        print(HEADER)
        with tempfile.TemporaryDirectory() as tmp:
            people_benchmark(args.url, Path(tmp), args.people_100k)
        print(
            "reconcile: the import's reconcile step; matcher: resolve_values alone in memory "
            "(wall, CPU); rapidfuzz: cpdist alone scoring the rule's candidate pairs once per "
            "compared part; ratio = reconcile / rapidfuzz"
        )
    print(load_note())


def names_benchmark(args: argparse.Namespace) -> None:
    """The single-field rule: ``--rows`` typo'd names against as many master names."""
    t0 = time.perf_counter()
    master, incoming = make_data(args.rows)
    print(
        f"generated {len(master):,} master names and {len(incoming):,} distinct values "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = Database.connect(args.url or f"sqlite:///{work / 'speed.db'}")
        upgrade(db)
        table = sa.Table(
            "speed_ambassadors",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("full_name", sa.Text),
            sa.Column("email", sa.Text),
        )
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS speed_signups")
            table.drop(conn, checkfirst=True)
            table.create(conn)
            conn.execute(
                sa.insert(table), [{"id": i, "full_name": m} for i, m in enumerate(master)]
            )
        spec_path = work / "speed_signups.yaml"
        spec_path.write_text(SPEC)
        spec = load_spec(spec_path)
        data = work / "speed_signups.csv"
        with data.open("w", encoding="utf-8") as fh:
            fh.write("signup_id,name\n")
            for k, (value, _) in enumerate(incoming):
                fh.write(f"s{k},{value}\n")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result, seconds = import_file(db, spec, data)
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        matches = db.tables.import_reconciliation_matches
        with db.engine.connect() as conn:
            kinds: dict[str, int] = dict(
                conn.execute(
                    sa.select(matches.c.match_type, sa.func.count())
                    .where(matches.c.import_id == result.import_id)
                    .group_by(matches.c.match_type)
                ).all()
            )
            audit = db.tables.import_audit_trail
            reconciled = conn.execute(
                sa.select(audit.c.details).where(
                    audit.c.import_id == result.import_id, audit.c.action == "reconciled"
                )
            ).scalar_one()
            comparisons = int(reconciled["comparisons"])
            truth = dict(incoming)
            right = wrong = 0
            query = sa.select(matches.c.input_values, matches.c.matched_id).where(
                matches.c.import_id == result.import_id, matches.c.decision == "auto_accepted"
            )
            for values, matched in conn.execute(query):
                expected = truth.get(values["name"])
                if expected is not None and matched == str(expected):
                    right += 1
                else:
                    wrong += 1
        db.dispose()
    print(
        f"import {result.status.value}: {result.rows_read:,} rows, {result.rows_created:,} loaded"
    )
    reconcile_s = seconds.get("reconcile")
    if reconcile_s is not None:
        print(f"reconcile step: {reconcile_s:.2f} s   (target <= 10 s)")
    print(
        f"whole import (parse, validate, stage, reconcile, load): {seconds['import_total']:.2f} s"
    )
    print(
        f"fuzzy comparisons: {comparisons:,} (exhaustive would be {len(incoming) * len(master):,})"
    )
    print(
        f"peak RSS: {rss_peak / 1024:.0f} MiB (before the import: {rss_before / 1024:.0f} MiB; "
        "target <= 1024 MiB)"
    )
    print("match types: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))
    print(
        f"auto-accepted: {right:,} right, {wrong:,} wrong "
        f"(precision {right / max(right + wrong, 1):.4f})"
    )
    rng = random.Random(3)
    typos = [(v, i) for v, i in incoming if i is not None and normalize(v) != normalize(master[i])]
    sample = rng.sample(typos, min(args.sample, len(typos)))
    reachable, found = blocking_recall(master, sample)
    lost = 1 - found / reachable if reachable else 0.0
    print(
        f"blocking recall: of {len(sample)} sampled typo'd values, {reachable} have a master "
        f"name scoring >= 90 exhaustively; blocking found that best candidate for {found} "
        f"(recall lost to blocking: {lost:.2%})"
    )


if __name__ == "__main__":
    main()
