"""``histimport import``, ``rollback`` and ``retry-failed``: the commands that run or undo an
import, and the one-screen summary an import prints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from histimport_pipeline.cli.common import (
    UserOption,
    err,
    line,
    out,
    status_markup,
    tracked,
    user,
    user_email,
)
from histimport_pipeline.engine.errors import DatasetNotFoundError
from histimport_pipeline.engine.models import ImportSource, ImportStatus, ImportType

if TYPE_CHECKING:
    from histimport_pipeline.engine.pipeline import ImportResult
    from histimport_pipeline.engine.settings import Settings
    from histimport_pipeline.engine.spec import DatasetSpec

#: Exit code of an import that ended failed or rejected (engine errors exit with 2).
EXIT_IMPORT_FAILED = 1


def _spec_for(settings: Settings, path: Path, dataset: str | None) -> DatasetSpec:
    from histimport_pipeline.engine.spec import load_specs, route_file

    specs = load_specs(settings.datasets)
    if dataset is None:
        return route_file(path, specs, settings.inbox)
    if dataset not in specs:
        raise DatasetNotFoundError(f"dataset {dataset!r}", list(specs))
    return specs[dataset]


@contextmanager
def _progress_bar(path: Path) -> Iterator[Callable[[int], None] | None]:
    """A live row counter on stderr when it is a terminal; nothing otherwise (logs, pipes)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows read"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(path.name), total=None)

        def advance(rows_read: int) -> None:
            bar.update(task, completed=rows_read)

        yield advance


def _print_summary(result: ImportResult, detail: Mapping[str, Any] | None) -> None:
    """One screen: status, counts, per-phase seconds, top errors and what to do next."""
    status = result.status
    if result.dry_run:
        head = (
            f"dry run of {escape(result.file_name)} into {escape(result.dataset)}: "
            f"would end {status_markup(status.value)} [dim](nothing was written)[/dim]"
        )
    else:
        head = (
            f"import {result.import_id}: {status_markup(status.value)} - "
            f"{escape(result.file_name)} into {escape(result.dataset)}"
        )
    out.print(head, highlight=False)
    if status is ImportStatus.DUPLICATE:
        line(
            "duplicate",
            f"already imported by import {result.duplicate_of}; nothing loaded "
            "(use --force to import it again)",
        )
    elif result.error_message:
        line("error", escape(result.error_message))
    if status is not ImportStatus.DUPLICATE:
        verb = "would be " if result.dry_run else ""
        line(
            "rows",
            f"read {result.rows_read:,} | {verb}created {result.rows_created:,} | "
            f"{verb}updated {result.rows_updated:,} | unchanged {result.rows_unchanged:,} | "
            f"failed {result.rows_failed:,} | duplicates {result.rows_duplicate:,}"
            # Rows a replace_date import removed before loading its day.
            + (f" | {verb}deleted {result.rows_deleted:,}" if result.rows_deleted else ""),
        )
    seconds = dict(result.phase_seconds)
    if detail and detail.get("total_seconds") is not None:
        seconds["total"] = float(detail["total_seconds"])
    if seconds:
        line("seconds", " | ".join(f"{k} {float(v):.2f}" for k, v in seconds.items()))
    if result.error_file_path:
        line("error file", escape(result.error_file_path))
    for warning in result.warnings:
        line("warning", escape(warning))
    summary = (detail or {}).get("error_summary") or result.error_summary or {}
    top = summary.get("top_errors") or []
    if top:
        out.print("[bold]top errors[/bold]")
        for entry in top:
            where = entry.get("column") or "(row)"
            out.print(
                f"  {escape(str(where))} ({escape(str(entry.get('category')))}) "
                f"x{entry.get('count')}: {escape(str(entry.get('example')))}",
                highlight=False,
            )
    for hint in _next_steps(result):
        line("next", hint)


def _next_steps(result: ImportResult) -> list[str]:
    status, iid = result.status, result.import_id
    if result.dry_run:
        if status in (ImportStatus.FAILED, ImportStatus.REJECTED):
            return ["fix the file (or the spec) and try the dry run again"]
        return ["run the same command without --dry-run to import"]
    if status is ImportStatus.DUPLICATE:
        return [f"histimport show {result.duplicate_of}"]
    hints = []
    if result.error_file_path:
        hints.append("fix the rows in the error file and import it again")
    elif result.rows_failed or result.rows_duplicate:
        hints.append(f"histimport errors {iid} -o errors.csv")
    if status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL):
        hints.append(f"histimport show {iid}   (undo: histimport rollback {iid})")
    elif not hints:
        hints.append(f"histimport show {iid}")
    return hints


def import_file(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="The file to import."),
    ],
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="Dataset name (default: routed by the file name)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Import even if this content was imported before.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Do everything but keep nothing; report what would happen."),
    ] = False,
    wait: Annotated[
        int | None,
        typer.Option(
            "--wait",
            min=0,
            metavar="SECONDS",
            help="How long to wait for another running import of the same content "
            "(default: HISTIMPORT_WAIT_SECONDS, 600).",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Do not wait for it: end failed at once (exit 1)."),
    ] = False,
    user_id: Annotated[
        str | None,
        typer.Option(
            "--user",
            metavar="USER",
            help="Who imports, recorded on the import and its audit trail "
            "(default: HISTIMPORT_USER, else the OS user).",
        ),
    ] = None,
    email: Annotated[
        str | None,
        typer.Option(
            "--email",
            metavar="EMAIL",
            help="Their e-mail address (default: HISTIMPORT_USER_EMAIL).",
        ),
    ] = None,
) -> None:
    """Import FILE and print a summary. Exits 1 when the import failed or was rejected, or
    when another import of the same content still runs after the wait."""
    from histimport_pipeline.engine.digest import DigestAhead

    # Hashed on another core while the engine is imported (the import needs the hash first).
    digest = DigestAhead(file)
    from histimport_pipeline.engine.pipeline import ImportOptions, run_import
    from histimport_pipeline.engine.tracking import history

    with tracked() as (settings, db):
        spec = _spec_for(settings, file, dataset)
        wait_s = 0 if no_wait else settings.wait_seconds if wait is None else wait
        options = ImportOptions(
            force=force,
            dry_run=dry_run,
            import_type=ImportType.MANUAL,
            source=ImportSource.CLI,
            user_id=user(settings, user_id),
            user_email=user_email(settings, user_id, email),
            max_field_bytes=settings.max_field_bytes,
            wait_for_holder_s=wait_s,
            stale_after=timedelta(seconds=settings.stale_after_seconds),
            progress_every_s=settings.progress_every_s,
            error_dir=settings.error_dir,
        )

        def waiting(holder: int) -> None:
            err.print(
                f"waiting for import {holder} (running) of the same content to end, at most "
                f"{wait_s} s (--no-wait: don't wait)",
                highlight=False,
            )

        with _progress_bar(file) as progress:
            result = run_import(
                db, spec, file, options, progress, on_wait=waiting, digest=digest.result
            )
        detail = None if result.dry_run else history.get_import_detail(db, result.import_id)
        _print_summary(result, detail)
    if result.status in (ImportStatus.FAILED, ImportStatus.REJECTED):
        raise typer.Exit(EXIT_IMPORT_FAILED)


def rollback(
    import_id: Annotated[int, typer.Argument(help="The import to undo.")],
    cascade: Annotated[
        bool,
        typer.Option("--cascade", help="Also roll back later imports that changed its rows."),
    ] = False,
    user_id: UserOption = None,
) -> None:
    """Undo an import exactly: delete its rows and restore the rows it changed."""
    from histimport_pipeline.engine.rollback import rollback_import
    from histimport_pipeline.engine.tracking import history

    with tracked() as (settings, db):
        result = rollback_import(db, import_id, cascade=cascade, actor=user(settings, user_id))
        status = None
        if result.nothing_loaded:
            status = history.get_import_detail(db, import_id)["status"]
    if result.already:
        out.print(f"import {import_id} was already rolled back; nothing to do")
        return
    if result.nothing_loaded:
        out.print(f"import {import_id} loaded nothing (status {status}); nothing to undo")
        return
    for undone in result.undone:
        masters = (
            f"; removed {undone.master_rows_deleted:,} master row(s) it created"
            if undone.master_rows_deleted
            else ""
        )
        out.print(
            f"rolled back import {undone.import_id}: deleted {undone.rows_deleted:,} row(s) "
            f"from {escape(undone.target_table)}, restored {undone.rows_restored:,}{masters}",
            highlight=False,
        )


def retry_failed(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only imports since (ISO date or age: 12h, 7d).")
    ] = None,
    url: Annotated[
        str, typer.Option(envvar="HISTIMPORT_DAGSTER_URL", help="Dagster webserver URL.")
    ] = "http://127.0.0.1:3000",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, launch nothing.")] = False,
    include_rejected: Annotated[
        bool,
        typer.Option(
            "--include-rejected",
            help="Retry rejected imports too (they fail again unless the spec's "
            "max_error_ratio was raised).",
        ),
    ] = False,
) -> None:
    """Launch runs for partitions whose latest import failed, through the Dagster webserver.

    A rejected import (over the error gate) is skipped unless --include-rejected: the same
    file is rejected again, so it needs a fixed file dropped into the inbox, or a run
    launched with run config max_error_ratio.
    """
    from histimport_pipeline.engine.spec import load_specs
    from histimport_pipeline.engine.tracking import corrections, history

    with tracked() as (settings, db):
        cutoff = history.parse_since(since) if since else None
        found = corrections.failed_partitions(db, dataset, cutoff)
    rejected = [r for r in found if r["status"] == ImportStatus.REJECTED.value]
    failed = found if include_rejected else [r for r in found if r not in rejected]
    if rejected and not include_rejected:
        ids = ", ".join(str(r["import_id"]) for r in rejected)
        out.print(
            f"skipped {len(rejected)} rejected import(s) ({ids}): the same file would be "
            "rejected again. Fix the file and drop it into the inbox again (it supersedes the "
            "rejected one), raise the spec's max_error_ratio, or retry them with "
            "--include-rejected",
            highlight=False,
        )
    if not failed:
        out.print("no failed partitions to retry")
        return
    client = None
    specs = load_specs(settings.datasets)
    if not dry_run:
        from urllib.parse import urlparse

        from dagster_graphql import DagsterGraphQLClient

        from histimport_pipeline.orchestration.assets import parse_run_config

        parsed = urlparse(url)
        client = DagsterGraphQLClient(
            parsed.hostname or "127.0.0.1",
            port_number=parsed.port,
            use_https=parsed.scheme == "https",
        )
    # The runs' imports record who asked for the retry.
    who = {"user": retrier} if (retrier := user(settings)) else {}
    launched = 0
    for item in failed:
        name, key = item["dataset"], item["partition_key"]
        if client is None:
            out.print(
                f"would retry {name} partition {key} (import {item['import_id']})", highlight=False
            )
            continue
        config = (
            parse_run_config(specs[name], item["file_path"])
            if item["file_path"] and name in specs
            else {}
        )
        try:
            run_id = client.submit_job_execution(
                f"{name}_import_job",
                run_config=config,
                tags={
                    "dagster/partition": key,
                    "histimport/dataset": name,
                    "histimport/trigger": "retry",
                    "histimport/retry_of": str(item["import_id"]),
                    **who,
                },
            )
        except Exception as exc:  # the webserver answers with its own error types
            err.print(f"[red]error:[/red] could not launch {name} {key}: {escape(str(exc))}")
            raise typer.Exit(2) from None
        launched += 1
        out.print(
            f"launched run {run_id} for {name} partition {key} "
            f"(retrying import {item['import_id']})",
            highlight=False,
        )
    if client is not None:
        out.print(f"{launched} run(s) launched; watch them at {url}/runs", highlight=False)
