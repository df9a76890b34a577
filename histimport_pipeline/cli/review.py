"""``histimport review``: list, accept and reject reconciliation decisions, then apply them.

A thin layer over :mod:`histimport_pipeline.engine.reconciliation`; engine errors become a
one-line message on stderr and exit code 2, as in :mod:`histimport_pipeline.cli`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from histimport_pipeline.cli.common import UserOption, out, print_json, tracked, user
from histimport_pipeline.engine.errors import DatasetNotFoundError
from histimport_pipeline.engine.models import MatchDecision

review_app = typer.Typer(
    help="Review reconciliation decisions: list them, accept or reject, then apply.",
    no_args_is_help=True,
)


def _inputs(values: Any) -> str:
    if not isinstance(values, dict):
        return ""
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _candidates(values: Any) -> str:
    if not values:
        return ""
    return ", ".join(f"{c.get('id')} ({c.get('score')})" for c in values)


@review_app.command("list")
def list_reviews(
    import_id: Annotated[int | None, typer.Option("--import", help="Only this import.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every decision, not only those waiting for review.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the values waiting for a decision (oldest first), each once for every import.

    One decision on an item settles every import that waits on the same value.
    """
    from histimport_pipeline.engine import reconciliation

    with tracked() as (_settings, db):
        decision = None if show_all else MatchDecision.NEEDS_REVIEW
        rows = reconciliation.list_matches(db, import_id, dataset, decision, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("nothing waits for review" if not show_all else "no reconciliation matches")
        return
    table = Table(
        "match",
        "imports",
        "dataset",
        "column",
        "entity",
        "input",
        "type",
        "suggested",
        "score",
        "candidates",
        "rows",
        "decision",
    )
    for r in rows:
        table.add_row(
            str(r["match_id"]),
            ", ".join(str(i) for i in r["import_ids"]),
            escape(r["dataset"]),
            escape(r["reference_column"]),
            escape(r["entity"]),
            escape(_inputs(r["input_values"])),
            escape(r["match_type"]),
            escape(r["matched_id"] or ""),
            "" if r["score"] is None else f"{r['score']:.1f}",
            escape(_candidates(r["candidates"])),
            str(r["rows_waiting"] if not show_all else r["rows_affected"] or 0),
            escape(r["decision"]),
        )
    out.print(table)
    if not show_all:
        out.print(
            "[dim]histimport review accept MATCH [--entity ID] | histimport review reject "
            "MATCH (for every import listed), then histimport review apply IMPORT...[/dim]"
        )


@review_app.command("accept")
def accept(
    match_id: Annotated[int, typer.Argument(help="The match id (see `histimport review list`).")],
    entity: Annotated[
        str | None,
        typer.Option("--entity", help="The master id to match (default: the suggested one)."),
    ] = None,
    user_id: UserOption = None,
) -> None:
    """Accept a value for every import waiting on it; it is remembered as an alias.

    Another entity than the suggested one is recorded as a user override."""
    from histimport_pipeline.engine import reconciliation

    with tracked() as (settings, db):
        row = reconciliation.decide_match(
            db, match_id, accept=True, entity_id=entity, actor=user(settings, user_id)
        )
    out.print(
        f"match {match_id}: accepted {escape(_inputs(row['input_values']))} -> "
        f"{escape(row['entity'])} {escape(str(row['matched_id']))} (alias recorded)"
        f"{_settled(row)}",
        highlight=False,
    )


def _settled(row: dict[str, Any]) -> str:
    imports = row["import_ids"]
    ids = " ".join(str(i) for i in imports)
    what = f" for {len(imports)} imports" if len(imports) > 1 else ""
    return f"{what}; load the rows with: histimport review apply {ids}"


@review_app.command("reject")
def reject(
    match_id: Annotated[int, typer.Argument(help="The match id (see `histimport review list`).")],
    user_id: UserOption = None,
) -> None:
    """Reject a value for every import waiting on it; apply then follows on_unmatched."""
    from histimport_pipeline.engine import reconciliation

    with tracked() as (settings, db):
        row = reconciliation.decide_match(db, match_id, accept=False, actor=user(settings, user_id))
    out.print(
        f"match {match_id}: rejected {escape(_inputs(row['input_values']))}{_settled(row)}",
        highlight=False,
    )


@review_app.command("apply")
def apply(
    import_ids: Annotated[list[int], typer.Argument(help="The import(s) whose held rows to load.")],
    user_id: UserOption = None,
) -> None:
    """Load the held rows of each import whose matches are decided; undecided ones stay held.

    Each import is applied in its own transaction, in the order given; the first that
    cannot be applied stops the command (those before it are applied).
    """
    from histimport_pipeline.engine import reconciliation
    from histimport_pipeline.engine.spec import load_specs
    from histimport_pipeline.engine.tracking import history

    with tracked() as (settings, db):
        specs = load_specs(settings.datasets)
        for import_id in import_ids:
            detail = history.get_import_detail(db, import_id)
            spec = specs.get(detail["dataset"])
            if spec is None:
                raise DatasetNotFoundError(f"dataset {detail['dataset']!r}", list(specs))
            result = reconciliation.apply_review(db, spec, import_id, actor=user(settings, user_id))
            out.print(
                f"import {import_id}: {result['status']} - loaded {result['rows_loaded']:,} "
                f"(created {result['rows_created']:,}, updated {result['rows_updated']:,}), "
                f"rejected {result['rows_rejected']:,}, still held "
                f"{result['rows_still_held']:,}",
                highlight=False,
            )
