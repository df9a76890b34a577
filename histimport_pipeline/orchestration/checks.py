"""Asset checks per dataset, evaluated on the import that the run performed."""

from typing import Any

import dagster as dg
import sqlalchemy as sa

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.spec import DatasetSpec, OnUnmatched
from histimport_pipeline.orchestration.resources import DatabaseResource


def _run_import(database: DatabaseResource, run_id: str) -> dict[str, Any] | None:
    with database.database.reader() as conn:
        rows = tracking.imports_of_run(conn, database.database, run_id)
    return rows[-1] if rows else None


def _no_import(spec: DatasetSpec) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"note": "no import in this run"})


def build_checks(spec: DatasetSpec) -> list[dg.AssetChecksDefinition]:
    """The four checks of one dataset."""
    key = dg.AssetKey(spec.name)

    @dg.asset_check(
        asset=key,
        name="failed_share_within_gate",
        blocking=True,
        description="The share of failed rows is within max_error_ratio.",
    )
    def gate(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> dg.AssetCheckResult:
        row = _run_import(database, context.run.run_id)
        if row is None:
            return _no_import(spec)
        read = int(row["rows_in_file"] or 0)
        failed = int(row["rows_failed"] or 0)
        share = failed / read if read else 0.0
        return dg.AssetCheckResult(
            passed=share <= spec.max_error_ratio and row["status"] != "rejected",
            metadata={
                "import_id": dg.MetadataValue.text(str(row["import_id"])),
                "failed_share": share,
                "max_error_ratio": spec.max_error_ratio,
                "rows_failed": failed,
            },
        )

    @dg.asset_check(
        asset=key,
        name="no_duplicate_keys",
        description="No natural key appears twice in the target table.",
    )
    def unique_keys(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> dg.AssetCheckResult:
        db = database.database
        if not spec.key:
            return dg.AssetCheckResult(passed=True, metadata={"note": "dataset has no key"})
        with db.reader() as conn:
            if not sa.inspect(conn).has_table(spec.target_table):
                return dg.AssetCheckResult(passed=True, metadata={"note": "no table yet"})
            t = sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)
            cols = [t.c[k] for k in spec.key]
            dupes = sa.select(*cols).group_by(*cols).having(sa.func.count() > 1).subquery()
            count = conn.execute(sa.select(sa.func.count()).select_from(dupes)).scalar_one()
        return dg.AssetCheckResult(passed=count == 0, metadata={"duplicate_keys": int(count)})

    @dg.asset_check(
        asset=key,
        name="references_resolved",
        description="Every reference column is resolved, or null by policy.",
    )
    def references(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> dg.AssetCheckResult:
        db = database.database
        row = _run_import(database, context.run.run_id)
        required = [n for n, r in spec.references.items() if r.on_unmatched is not OnUnmatched.NULL]
        if row is None or not required:
            return dg.AssetCheckResult(passed=True, metadata={"checked_columns": len(required)})
        with db.reader() as conn:
            if not sa.inspect(conn).has_table(spec.target_table):
                return dg.AssetCheckResult(passed=True, metadata={"note": "no table yet"})
            t = sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)
            unresolved = conn.execute(
                sa.select(sa.func.count()).where(
                    t.c._import_id == row["import_id"],
                    sa.or_(*(t.c[n].is_(None) for n in required)),
                )
            ).scalar_one()
        return dg.AssetCheckResult(
            passed=unresolved == 0,
            metadata={
                "unresolved_rows": int(unresolved),
                "waiting_for_review": int(row["rows_review"] or 0),
            },
        )

    @dg.asset_check(
        asset=key,
        name="rows_accounted_for",
        description="Rows read = loaded + failed + skipped (duplicates, review).",
    )
    def accounting(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> dg.AssetCheckResult:
        row = _run_import(database, context.run.run_id)
        if row is None or row["status"] in ("duplicate", "rejected", "failed"):
            return (
                _no_import(spec)
                if row is None
                else dg.AssetCheckResult(
                    passed=True, metadata={"note": f"import {row['status']}: nothing loaded"}
                )
            )
        parts = {
            k: int(row[k] or 0)
            for k in (
                "rows_created",
                "rows_updated",
                "rows_unchanged",
                "rows_failed",
                "rows_duplicate",
                "rows_review",
            )
        }
        read = int(row["rows_in_file"] or 0)
        return dg.AssetCheckResult(
            passed=read == sum(parts.values()),
            metadata={"rows_read": read, **parts},
        )

    return [gate, unique_keys, references, accounting]
