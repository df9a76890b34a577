"""Asset checks per dataset, evaluated per partition on the import that the run performed.

The rules are the engine's (:mod:`histimport_pipeline.engine.tracking.verdicts`); here they
become check results. A run whose confirm step rejects the import never reaches these check
steps, so the confirm step records the same verdicts itself (:func:`check_evaluations`).
"""

from typing import Any

import dagster as dg

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import verdicts
from histimport_pipeline.orchestration.partitions import dataset_partitions
from histimport_pipeline.orchestration.resources import DatabaseResource

_DESCRIPTIONS = {
    verdicts.GATE: "The share of failed rows is within max_error_ratio (ERROR when rejected, "
    "WARN when some rows failed under the gate).",
    verdicts.UNIQUE_KEYS: "No natural key appears twice in the target table.",
    verdicts.REFERENCES: "Every reference is resolved (WARN for rows waiting for review or "
    "values left empty by the null policy).",
    verdicts.ACCOUNTING: "Rows read = loaded + failed + skipped (duplicates, review).",
}


def _facts(verdict: verdicts.Verdict) -> dict[str, Any]:
    meta: dict[str, Any] = {"summary": dg.MetadataValue.text(verdict.summary)}
    for name, value in verdict.facts.items():
        if name == "top_errors":
            if value:
                meta[name] = dg.MetadataValue.md(top_errors_table(value))
        elif name == "max_error_ratio":
            # the gate seldom changes: text, so the checks tab draws no flat plot of it
            meta[name] = dg.MetadataValue.text(f"{value:g}")
        else:
            meta[name] = value
    return meta


def top_errors_table(top: list[dict[str, Any]]) -> str:
    """The import's most frequent errors as a Markdown table."""
    return "| column | category | rows | example |\n|---|---|---|---|\n" + "\n".join(
        f"| {e.get('column') or '(row)'} | {e.get('category')} | {e.get('count')} | "
        f"{str(e.get('example')).replace('|', '/')[:120]} |"
        for e in top
    )


def _severity(verdict: verdicts.Verdict) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.WARN if verdict.severity == "WARN" else dg.AssetCheckSeverity.ERROR


def check_evaluations(
    spec: DatasetSpec, database: DatabaseResource, import_id: int, partition: str | None
) -> list[dg.AssetCheckEvaluation]:
    """Every check of ``spec`` evaluated on one import, for a step to log itself."""
    found = verdicts.import_verdicts(database.database, spec, import_id)
    return [
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(spec.name),
            check_name=name,
            passed=v.passed,
            severity=_severity(v),
            description=v.summary,
            metadata={"import_id": dg.MetadataValue.text(str(import_id)), **_facts(v)},
            partition=partition,
        )
        for name, v in found.items()
    ]


def _run_import(database: DatabaseResource, run_id: str) -> dict[str, Any] | None:
    with database.database.reader() as conn:
        rows = tracking.imports_of_run(conn, database.database, run_id)
    return rows[-1] if rows else None


def _build_check(spec: DatasetSpec, name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(spec.name),
        name=name,
        blocking=name == verdicts.GATE,
        description=_DESCRIPTIONS[name],
        partitions_def=dataset_partitions(spec),
    )
    def check(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> dg.AssetCheckResult:
        row = _run_import(database, context.run.run_id)
        if row is None:
            return dg.AssetCheckResult(
                passed=True, description="no import in this run", metadata={}
            )
        found = verdicts.import_verdicts(database.database, spec, int(row["import_id"]), name)
        v = found[name]
        return dg.AssetCheckResult(
            passed=v.passed,
            severity=_severity(v),
            description=v.summary,
            metadata={"import_id": dg.MetadataValue.text(str(row["import_id"])), **_facts(v)},
        )

    return check


def build_checks(spec: DatasetSpec) -> list[dg.AssetChecksDefinition]:
    """The four checks of one dataset, partitioned like its asset."""
    return [_build_check(spec, name) for name in verdicts.CHECKS]
