"""``histimport adopt``: review, apply or undo what importing into an existing table takes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from histimport_pipeline.cli.common import UserOption, err, line, out, print_json, tracked, user
from histimport_pipeline.engine.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from histimport_pipeline.engine.adoption import AdoptionPlan, AdoptionRecord
    from histimport_pipeline.engine.settings import Settings
    from histimport_pipeline.engine.spec import DatasetSpec

#: Exit code of a plan with problems (the table cannot be adopted as the spec stands).
EXIT_PROBLEMS = 1


def _spec(settings: Settings, dataset: str) -> DatasetSpec:
    from histimport_pipeline.engine.spec import load_specs

    specs = load_specs(settings.datasets)
    if dataset not in specs:
        raise DatasetNotFoundError(f"dataset {dataset!r}", list(specs))
    return specs[dataset]


def adopt(
    dataset: Annotated[str, typer.Argument(help="The dataset whose target_table exists.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Apply the plan in one transaction and record it.")
    ] = False,
    undo: Annotated[
        bool, typer.Option("--undo", help="Remove exactly what the adoption added.")
    ] = False,
    acting: UserOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The plan or record as JSON.")] = False,
) -> None:
    """Compare DATASET's existing target table with its spec and print the DDL that lets
    histimport import into it; --apply applies it, --undo removes it again."""
    from histimport_pipeline.engine import adoption

    if apply and undo:
        raise typer.BadParameter("give --apply or --undo, not both")
    record: AdoptionRecord | None = None
    with tracked() as (settings, db):
        spec = _spec(settings, dataset)
        if undo:
            record = adoption.undo_adoption(db, spec, actor=user(settings, acting))
        else:
            plan = adoption.plan_adoption(db, spec)
            if apply and plan.ready:
                record = adoption.apply_adoption(db, spec, plan, actor=user(settings, acting))
    if record is not None:
        _print_record(record, as_json, "undone" if undo else "adopted")
        return
    _print_plan(plan, as_json)
    if plan.problems:
        raise typer.Exit(EXIT_PROBLEMS)


def _print_plan(plan: AdoptionPlan, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "dataset": plan.dataset,
                "table": plan.table,
                "rows": plan.rows,
                "ready": plan.ready,
                "adoption_id": plan.adoption_id,
                "statements": list(plan.statements),
                "undo": list(plan.undo),
                "added": plan.added,
                "problems": list(plan.problems),
                "notes": list(plan.notes),
            }
        )
        return
    table = escape(plan.table)
    if plan.adoption_id is not None:
        out.print(
            f"table {table} is adopted (adoption {plan.adoption_id}): imports of "
            f"{escape(plan.dataset)} write it; `histimport adopt {escape(plan.dataset)} --undo` "
            "removes what adoption added"
        )
        return
    out.print(f"adopting table {table} ({plan.rows:,} rows) for dataset {escape(plan.dataset)}")
    for note in plan.notes:
        line("note", escape(note))
    if plan.problems:
        err.print(f"[red]{len(plan.problems)} problem(s) to fix first:[/red]")
        for problem in plan.problems:
            err.print(f"  - {escape(problem)}", highlight=False, soft_wrap=True)
        return
    out.print("[dim]-- the DDL --apply runs, in one transaction:[/dim]")
    for statement in plan.statements:
        out.print(escape(statement) + ";", highlight=False, soft_wrap=True)
    out.print("[dim]-- and what --undo runs to remove it:[/dim]")
    for statement in plan.undo:
        out.print(escape(statement) + ";", highlight=False, soft_wrap=True)
    out.print(f"[dim]review it, then: histimport adopt {escape(plan.dataset)} --apply[/dim]")


def _print_record(record: AdoptionRecord, as_json: bool, done: str) -> None:
    if as_json:
        print_json(
            {
                "adoption_id": record.adoption_id,
                "dataset": record.dataset,
                "table": record.table,
                "status": record.status.value,
                "adopted_by": record.adopted_by,
                "adopted_at": record.adopted_at,
                "rows_before": record.rows_before,
                "ddl": list(record.ddl),
                "undo_ddl": list(record.undo_ddl),
                "undone_by": record.undone_by,
                "undone_at": record.undone_at,
            }
        )
        return
    statements = record.undo_ddl if done == "undone" else record.ddl
    out.print(
        f"{done} table {escape(record.table)} (adoption {record.adoption_id}): "
        f"{len(statements)} statement(s) in one transaction"
    )
    who = record.undone_by if done == "undone" else record.adopted_by
    if who:
        line("by", escape(who))
    line("rows", f"{record.rows_before:,} row(s) predate histimport")
