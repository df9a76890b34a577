"""The review cycle: list the values waiting for a decision, accept or reject them (learning
an alias), and load the rows they held."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.models import (
    AuditAction,
    FileStatus,
    ImportStatus,
    MatchDecision,
)
from histimport_pipeline.engine.reconciliation.apply import (
    HOLD_REJECT,
    HOLD_REVIEW,
    apply_mapping,
    distinct_inputs,
    typed_id,
    values_text,
    write_rejected_rows,
)
from histimport_pipeline.engine.reconciliation.created import create_master_row, master_row_counts
from histimport_pipeline.engine.reconciliation.master import reflect_master
from histimport_pipeline.engine.reconciliation.rules import as_text
from histimport_pipeline.engine.spec import DatasetSpec, OnUnmatched, Strategy


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
    # Long on purpose: the grouped and the plain listing share one reader transaction.
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
    # Long on purpose: one transaction locks, decides, learns the alias and audits.
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
            suggested = row["matched_id"]
            # A reviewer who picks another row than the one suggested overrides the rules.
            overridden = suggested is not None and str(chosen) != str(suggested)
            action = AuditAction.USER_OVERRIDE if overridden else AuditAction.REVIEW_ACCEPTED
        else:
            values |= {"decision": MatchDecision.REJECTED.value}
            conn.execute(sa.update(t).where(t.c.match_id.in_(match_ids)).values(values))
            action, suggested = AuditAction.REVIEW_REJECTED, row["matched_id"]
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
                    "suggested_id": suggested,
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
    # Long on purpose: one transaction releases, loads and accounts for the held rows.
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
        conn.execute(sa.update(stage).where(stage.c._hold == HOLD_REVIEW).values(_hold=sa.null()))
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
            for values, _count in distinct_inputs(conn, stage, sources):
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
                    hold = HOLD_REVIEW
                elif m is not None and ref.on_unmatched is OnUnmatched.CREATE:
                    if master_table is None:
                        master_table = reflect_master(conn, ref)
                    out = create_master_row(
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
                    hold = HOLD_REJECT
                    who = m["decided_by"] if m and m["decided_by"] else "a reviewer"
                    reasons[output][text] = (
                        f"{values_text(sources, text)}: the match was rejected in review by {who}"
                    )
                if out is not None or hold is not None:
                    mapping.append((values, typed_id(ref, out), hold))
            apply_mapping(conn, db, spec, import_id, output, sources, mapping)
        rejected = write_rejected_rows(conn, db, spec, import_id, reasons)
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
            **master_row_counts(conn, db, import_id),
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
        tracking.record_audit(conn, db, import_id, AuditAction.REVIEW_APPLIED, actor, result)
        load.finish_staging(conn, db, spec, import_id)
        return result
