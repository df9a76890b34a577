"""``histimport demo``: demo specs, a master table and messy sample files for a first start."""

from __future__ import annotations

from histimport_pipeline.cli.common import out, session


def demo() -> None:
    """Write demo dataset specs, a master table and messy sample files into HISTIMPORT_HOME.

    Migrates the database first (as scripts/run.sh does): the demo is a first start.
    """
    from histimport_pipeline.engine import migrations
    from histimport_pipeline.engine.demo import write_demo

    with session() as (settings, db):
        applied = migrations.upgrade(db)
        result = write_demo(settings, db)
    if applied:
        out.print(f"migrated {db.masked_url} to {applied[-1]}", highlight=False)
    out.print(
        f"wrote {len(result.specs)} dataset specs to {settings.datasets}, "
        f"{len(result.files)} files to {settings.inbox}, "
        f"and {result.master_rows} rows into the master table ambassadors",
        highlight=False,
    )
    out.print(
        "with the Dagster UI running (scripts/run.sh), the inbox sensors import them; "
        "or import one now: histimport import FILE",
        highlight=False,
    )
