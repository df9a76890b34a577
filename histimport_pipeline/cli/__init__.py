"""The ``histimport`` command line: a thin layer over the engine.

Engine errors become a one-line message on stderr and exit code 2; nothing here holds logic
that the Dagster layer would need too. Commands that report on imports take ``--json`` for
scripts; the rest of the output is for people.

One module per command group: :mod:`.imports` (import, rollback, retry-failed),
:mod:`.history` (history, show, errors, stats), :mod:`.lineage`, :mod:`.review` (``review ...``),
:mod:`.db` (settings, ``db ...``, cleanup, dagster-url), :mod:`.demo`, :mod:`.adopt` (adopt an
existing table), :mod:`.serve` (serve, token); :mod:`.common` holds what they share. This
module builds the app from them.

The command modules import the engine inside the commands, not at the top: ``histimport
--help`` needs none of it, ``history``, ``show`` and ``stats`` only the tracking queries over
DB-API (``engine.dbapi``, no SQLAlchemy), the other reports SQLAlchemy too, and only
``import`` the readers, pyarrow and the matching (``histimport_pipeline_tests/test_startup.py``
holds them to it; the time it saves is shown by ``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from histimport_pipeline.cli import adopt, db, demo, history, imports, lineage, serve
from histimport_pipeline.cli.common import CliState, fail_unexpected
from histimport_pipeline.cli.review import review_app

app = typer.Typer(
    name="histimport",
    help="Import historical data files into a database, with a record of every import.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(db.db_app, name="db")
app.add_typer(review_app, name="review")

# In the order `histimport --help` lists them.
app.command("settings")(db.show_settings)
app.command("import")(imports.import_file)
app.command("history")(history.show_history)
app.command("show")(history.show_import)
app.command("errors")(history.export_errors)
app.command("stats")(history.show_stats)
app.command("lineage")(lineage.show_lineage)
app.command("rollback")(imports.rollback)
app.command("adopt")(adopt.adopt)
app.command("cleanup")(db.cleanup)
app.command("demo")(demo.demo)
app.command("retry-failed")(imports.retry_failed)
app.command("dagster-url")(db.dagster_url)
app.command("serve")(serve.serve)
app.command("token")(serve.new_token)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of an unexpected error.")
    ] = False,
) -> None:
    CliState.debug = debug


def main() -> None:
    """Console-script entry point: no traceback reaches a user (see ``fail_unexpected``)."""
    try:
        app()
    except Exception as exc:
        fail_unexpected(exc)
