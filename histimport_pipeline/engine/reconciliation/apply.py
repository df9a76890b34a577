"""Applying decisions to an import's staged rows: :func:`reconcile_staged` resolves every
reference, applies ``on_unmatched``, records each decision in
``import_reconciliation_matches`` and sets the staged rows' ids and holds set-wise."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ErrorCategory, MatchDecision, MatchType
from histimport_pipeline.engine.reconciliation.created import (
    create_master_row,
    drop_created_masters,
)
from histimport_pipeline.engine.reconciliation.master import MasterData, read_aliases, read_master
from histimport_pipeline.engine.reconciliation.matching import resolve_values
from histimport_pipeline.engine.reconciliation.rules import (
    DEFAULT_SETTINGS,
    ReconcileSettings,
    Resolution,
    as_text,
)
from histimport_pipeline.engine.spec import DatasetSpec, OnUnmatched, ReferenceSpec

#: Who a decision taken by a rule or a policy is recorded as.
ENGINE_ACTOR = "histimport"
HOLD_REVIEW = "review"
HOLD_REJECT = "reject"


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


def apply_mapping(
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
            (sa.or_(stage.c._hold == HOLD_REJECT, held == HOLD_REJECT), HOLD_REJECT),
            (sa.or_(stage.c._hold == HOLD_REVIEW, held == HOLD_REVIEW), HOLD_REVIEW),
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


def typed_id(ref: ReferenceSpec, text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if ref.id_type == "integer" else text


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


def values_text(sources: Sequence[str], values: Sequence[str | None]) -> str:
    return ", ".join(f"{s}={v!r}" for s, v in zip(sources, values, strict=True))


def write_rejected_rows(
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
    query = sa.select(stage).where(stage.c._hold == HOLD_REJECT)
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


def distinct_inputs(
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
    # Long on purpose: each input's decision is written next to its match record, one loop.
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
        distinct = distinct_inputs(conn, stage, sources)
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
                decision, hold = MatchDecision.NEEDS_REVIEW, HOLD_REVIEW
            elif ref.on_unmatched is OnUnmatched.CREATE and given:
                if key not in created:
                    created[key] = create_master_row(
                        conn, ref, master.table, dict(zip(sources, values, strict=True))
                    )
                out = created[key]
                found = Resolution(MatchType.CREATED, out, None, found.candidates)
                decision, decided_by = MatchDecision.CREATED, ENGINE_ACTOR
            elif ref.on_unmatched is OnUnmatched.REJECT:
                decision, hold, decided_by = MatchDecision.REJECTED, HOLD_REJECT, ENGINE_ACTOR
                reasons[output][text] = (
                    f"{values_text(sources, text)}: {found.reason}; the reference "
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
                mapping.append((values, typed_id(ref, out), hold))
        _write_matches(conn, db, records)
        apply_mapping(conn, db, spec, import_id, output, sources, mapping)
    rejected = write_rejected_rows(conn, db, spec, import_id, reasons)
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
