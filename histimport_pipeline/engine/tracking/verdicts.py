"""The checks every import is held to, as verdicts any surface can show (the Dagster asset
checks are one).

* ``failed_share_within_gate``: rejected (over the error gate) is an ERROR; failed rows under
  the gate are a WARN (the import is ``partial``: those rows were not loaded).
* ``no_duplicate_keys``: a natural key twice in the target table is an ERROR.
* ``references_resolved``: rows waiting for review, and unmatched values left empty by the
  ``null`` policy, are a WARN; a required reference empty in the target is an ERROR.
* ``rows_accounted_for``: rows read = loaded + failed + skipped, else an ERROR.

So an import whose status is ``partial`` never passes every check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.loading.targets import unique_column_sets
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.spec import DatasetSpec, OnUnmatched

Severity = Literal["ERROR", "WARN"]

GATE = "failed_share_within_gate"
UNIQUE_KEYS = "no_duplicate_keys"
REFERENCES = "references_resolved"
ACCOUNTING = "rows_accounted_for"
#: Every check, in the order surfaces list them.
CHECKS = (GATE, UNIQUE_KEYS, REFERENCES, ACCOUNTING)

_NOTHING_LOADED = (ImportStatus.DUPLICATE, ImportStatus.REJECTED, ImportStatus.FAILED)


@dataclass(frozen=True)
class Verdict:
    """One check's outcome for one import."""

    check: str
    passed: bool
    #: How bad a failure is (meaningless when passed).
    severity: Severity
    #: One sentence a person reads first.
    summary: str
    facts: dict[str, Any] = field(default_factory=dict)


def _audit_details(conn: sa.Connection, db: Database, import_id: int, action: str) -> dict:
    a = db.tables.import_audit_trail
    found = conn.execute(
        sa.select(a.c.details)
        .where(a.c.import_id == import_id, a.c.action == action)
        .order_by(a.c.audit_id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return dict(found or {})


def _gate(conn: sa.Connection, db: Database, spec: DatasetSpec, row: dict[str, Any]) -> Verdict:
    status = ImportStatus(row["status"])
    read = int(row["rows_in_file"] or 0)
    failed = int(row["rows_failed"] or 0)
    share = failed / read if read else 0.0
    decided = _audit_details(conn, db, row["import_id"], "rejected") or _audit_details(
        conn, db, row["import_id"], "confirmed"
    )
    gate = float(decided.get("gate", spec.max_error_ratio))
    top = (row.get("error_summary") or {}).get("top_errors") or []
    facts = {
        "failed_share": round(share, 4),
        "max_error_ratio": gate,
        "rows_failed": failed,
        "rows_read": read,
        "top_errors": top,
    }
    if status is ImportStatus.REJECTED:
        return Verdict(
            GATE,
            False,
            "ERROR",
            f"rejected: {failed} of {read} rows failed ({share:.1%}), above the gate of "
            f"{gate:.1%}; nothing was loaded",
            facts,
        )
    if failed and status not in _NOTHING_LOADED:
        return Verdict(
            GATE,
            False,
            "WARN",
            f"{failed} of {read} rows failed ({share:.1%}), within the gate of {gate:.1%}; "
            f"they were not loaded (histimport errors {row['import_id']})",
            facts,
        )
    if status is ImportStatus.DUPLICATE:
        return Verdict(
            GATE, True, "ERROR", "a duplicate of content already loaded: nothing read", facts
        )
    return Verdict(GATE, True, "ERROR", f"{failed} of {read} rows failed", facts)


def _target(conn: sa.Connection, spec: DatasetSpec) -> sa.Table | None:
    if not sa.inspect(conn).has_table(spec.target_table):
        return None
    return sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)


def _unique_keys(conn: sa.Connection, spec: DatasetSpec) -> Verdict:
    if not spec.key:
        return Verdict(UNIQUE_KEYS, True, "ERROR", "the dataset has no key")
    t = _target(conn, spec)
    if t is None:
        return Verdict(UNIQUE_KEYS, True, "ERROR", "the target table does not exist yet")
    key = ", ".join(spec.key)
    if _key_enforced(conn, t, spec):
        # The database refuses a repeated key: no need to read the whole table for one.
        return Verdict(
            UNIQUE_KEYS,
            True,
            "ERROR",
            f"every ({key}) is unique (the table's key enforces it)",
            {"duplicate_keys": 0},
        )
    cols = [t.c[k] for k in spec.key]
    dupes = sa.select(*cols).group_by(*cols).having(sa.func.count() > 1).subquery()
    count = int(conn.execute(sa.select(sa.func.count()).select_from(dupes)).scalar_one())
    if count:
        return Verdict(
            UNIQUE_KEYS,
            False,
            "ERROR",
            f"{count} key value(s) of ({key}) appear more than once in {spec.target_table}",
            {"duplicate_keys": count},
        )
    return Verdict(UNIQUE_KEYS, True, "ERROR", f"every ({key}) is unique", {"duplicate_keys": 0})


def _key_enforced(conn: sa.Connection, table: sa.Table, spec: DatasetSpec) -> bool:
    """Whether the table's primary key, or a unique index or constraint on NOT NULL columns,
    is on (a part of) the dataset's key (a unique index lets NULLs repeat, which the check's
    grouping counts as repeats)."""
    wanted = set(spec.key)
    return any(
        cols <= wanted and (primary or not any(table.c[c].nullable for c in cols))
        for cols, primary in unique_column_sets(sa.inspect(conn), table.name)
    )


def _references(
    conn: sa.Connection, db: Database, spec: DatasetSpec, row: dict[str, Any]
) -> Verdict:
    if not spec.references:
        return Verdict(REFERENCES, True, "WARN", "the dataset has no references")
    review = int(row["rows_review"] or 0)
    without = _audit_details(conn, db, row["import_id"], "reconciled").get("rows_without_id")
    nulled = {
        name: int(n)
        for name, n in dict(without or {}).items()
        if name in spec.references
        and spec.references[name].on_unmatched is OnUnmatched.NULL
        and int(n)
    }
    required = [n for n, r in spec.references.items() if r.on_unmatched is not OnUnmatched.NULL]
    unresolved = 0
    t = _target(conn, spec) if required else None
    if t is not None and "_import_id" in t.c:
        unresolved = int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    t.c._import_id == row["import_id"],
                    sa.or_(*(t.c[n].is_(None) for n in required if n in t.c)),
                )
            ).scalar_one()
        )
    facts = {
        "rows_waiting_for_review": review,
        "rows_nulled_by_policy": sum(nulled.values()),
        "unresolved_rows": unresolved,
    }
    if unresolved:
        return Verdict(
            REFERENCES,
            False,
            "ERROR",
            f"{unresolved} loaded row(s) have an empty reference that its policy requires",
            facts,
        )
    problems = []
    if review:
        problems.append(f"{review} row(s) wait for review (histimport review {row['import_id']})")
    if nulled:
        problems.append(
            "unmatched values left empty by on_unmatched: null ("
            + ", ".join(f"{n}: {c}" for n, c in nulled.items())
            + ")"
        )
    if problems:
        return Verdict(REFERENCES, False, "WARN", "; ".join(problems), facts)
    return Verdict(REFERENCES, True, "WARN", "every reference is resolved", facts)


_PARTS = (
    "rows_created",
    "rows_updated",
    "rows_unchanged",
    "rows_failed",
    "rows_duplicate",
    "rows_review",
)


def _accounting(row: dict[str, Any]) -> Verdict:
    status = ImportStatus(row["status"])
    if status in _NOTHING_LOADED:
        return Verdict(ACCOUNTING, True, "ERROR", f"import {status.value}: nothing loaded")
    parts = {k: int(row[k] or 0) for k in _PARTS}
    read = int(row["rows_in_file"] or 0)
    facts = {"rows_read": read, **parts}
    if read != sum(parts.values()):
        return Verdict(
            ACCOUNTING,
            False,
            "ERROR",
            f"{read} rows read but {sum(parts.values())} accounted for "
            "(loaded, failed, duplicate or waiting for review)",
            facts,
        )
    return Verdict(ACCOUNTING, True, "ERROR", f"all {read} rows accounted for", facts)


def import_verdicts(
    db: Database, spec: DatasetSpec, import_id: int, only: str | None = None
) -> dict[str, Verdict]:
    """The checks' verdicts on one finished import (see the module docstring for the rules).

    Args:
        db: the target database.
        spec: the import's dataset.
        import_id: the import.
        only: one check name, or all of them (as ``freshness_verdicts``); a Dagster check
            step asks for its own, since a verdict may read the whole target table.

    Returns:
        The verdicts by check name, in :data:`CHECKS` order.

    Raises:
        KeyError: no such import.
    """
    h = db.tables.import_history
    with db.reader() as conn:
        found = conn.execute(sa.select(h).where(h.c.import_id == import_id)).mappings().first()
        if found is None:
            raise KeyError(import_id)
        row = dict(found)
        rules: dict[str, Callable[[], Verdict]] = {
            GATE: lambda: _gate(conn, db, spec, row),
            UNIQUE_KEYS: lambda: _unique_keys(conn, spec),
            REFERENCES: lambda: _references(conn, db, spec, row),
            ACCOUNTING: lambda: _accounting(row),
        }
        return {name: rules[name]() for name in CHECKS if only in (None, name)}
