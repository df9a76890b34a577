"""What the ``histimport`` commands load when they start: the reports need none of the import
machinery, ``--help`` not even the database layer.

The time this saves is shown by ``benchmarks/cli_startup.py``; here each command runs in a
fresh process of its own and reports the modules it imported, which is what makes it start
fast and, unlike a time, the same on every machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from histimport_pipeline.cli import app
from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError

SPEC = """\
name: members
target_table: members
files: "members_*.csv"
strategy: upsert
key: [member_id]
max_error_ratio: 0.5
columns:
  member_id: {type: integer, required: true}
  email: {type: email, required: true}
"""
CSV = "member_id,email\n1,a@example.com\n2,not-an-email\n3,c@example.com\n"
#: What the import machinery, the migrations and the Dagster layer bring in; no report uses
#: any of them.
IMPORT_MACHINERY = (
    "alembic",
    "charset_normalizer",
    "dagster",
    "numpy",
    "openpyxl",
    "pandas",
    "pyarrow",
    "rapidfuzz",
)
#: What a report that only reads the tracking tables (``history``, ``show``, ``stats``) does
#: without: it reads over DB-API (``engine.dbapi``), not SQLAlchemy.
SQLALCHEMY_LAYER = (
    "sqlalchemy",
    "histimport_pipeline.engine.db",
    "histimport_pipeline.engine.schema",
    "histimport_pipeline.engine.tracking.records",
)
#: Runs the CLI as the console script does, then writes the modules it imported.
RUNNER = """\
import json, os, sys
from histimport_pipeline.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(os.environ["STARTUP_MODULES_FILE"], "w") as fh:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, fh)
"""


def _started(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    """Run ``histimport ARGS`` in a new process: its stdout and the modules it imported (the
    top-level packages and every module of histimport_pipeline)."""
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        env={**os.environ, **env, "STARTUP_MODULES_FILE": str(report)},
        capture_output=True,
        text=True,
        check=False,
    )
    result = json.loads(report.read_text())
    assert result["exit"] == 0, f"histimport {' '.join(args)}: {done.stdout}\n{done.stderr}"
    modules = {m.split(".")[0] for m in result["modules"]}
    return done.stdout, modules | {m for m in result["modules"] if m.startswith("histimport_")}


@pytest.fixture
def imported(db: Database, db_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI whose database holds one partial import (id 1)."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "members.yaml").write_text(SPEC)
    data = tmp_path / "members_2024-01.csv"
    data.write_text(CSV)
    env = {
        "HISTIMPORT_HOME": str(tmp_path / "home"),
        "HISTIMPORT_DATABASE_URL": db_url,
        "HISTIMPORT_DATASETS": str(datasets),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, ["import", str(data)], env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    return env


def test_help_loads_no_database_layer(imported: dict[str, str], tmp_path: Path) -> None:
    out, modules = _started(imported, tmp_path, "--help")
    assert "history" in out and "import" in out
    assert sorted(modules & {"sqlalchemy", "pydantic", *IMPORT_MACHINERY}) == []


@pytest.mark.parametrize(
    ("args", "shown", "light"),
    [
        (("history",), "members_2024-01.csv", True),
        (("history", "--json"), '"import_id": 1', True),
        (("history", "--file", "MEMBERS_", "--sort", "started_at"), "members_2024-01.csv", True),
        (("show", "1"), "audit trail", True),
        (("show", "1", "--json"), '"failed_rows"', True),
        (("show", "1", "--watch"), "audit trail", True),
        (("stats",), "members", True),
        (("lineage", "members"), "lineage of members", False),
        (("lineage", "members", "--key", "3"), "row member_id=3 of members", False),
        (("errors", "1", "-o", "{tmp}/errors.csv"), "wrote 1 failed row(s) of import 1", False),
    ],
)
def test_reports_load_none_of_the_import_machinery(
    imported: dict[str, str], tmp_path: Path, args: tuple[str, ...], shown: str, light: bool
) -> None:
    out, modules = _started(imported, tmp_path, *(a.format(tmp=tmp_path) for a in args))
    assert shown in out
    assert sorted(modules & set(IMPORT_MACHINERY)) == []
    if light:
        assert sorted(modules & set(SQLALCHEMY_LAYER)) == []
        assert "histimport_pipeline.engine.dbapi" in modules


def test_schema_check_without_alembic_knows_the_newest_revision() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.migrations_dir()))
    assert migrations.head() == ScriptDirectory.from_config(cfg).get_current_head()


def test_a_branched_version_table_is_an_error_that_names_the_revisions(db: Database) -> None:
    version = sa.table(migrations.VERSION_TABLE, sa.column("version_num"), schema=db.schema)
    with db.engine.begin() as conn:
        conn.execute(sa.insert(version).values(version_num="0002b"))
    expected = rf"several revisions at once \(0002b, {migrations.head()}\)"
    with pytest.raises(HistimportError, match=expected):
        migrations.ensure_schema(db)


def test_the_values_the_cli_spells_out_match_the_engines() -> None:
    """The CLI names a few engine values itself so that it need not import the engine to
    start; they must stay the engine's."""
    import inspect

    from histimport_pipeline.cli import history as history_cli
    from histimport_pipeline.cli import watch
    from histimport_pipeline.engine.tracking import history

    assert watch.ACTIVE == history.ACTIVE
    default_sort = inspect.signature(history_cli.show_history).parameters["sort"].default
    assert default_sort == history.DEFAULT_SORT


def test_a_schema_behind_stops_the_light_reports_as_it_stops_the_rest(
    pg_db: Database, pg_url: str, tmp_path: Path
) -> None:
    env = {"HISTIMPORT_HOME": str(tmp_path), "HISTIMPORT_DATABASE_URL": pg_url, "NO_COLOR": "1"}
    migrations.downgrade(pg_db)
    behind = migrations.current(pg_db)
    # `lineage` still goes through SQLAlchemy's Database; its words are the reference.
    reference = CliRunner().invoke(app, ["lineage", "members"], env=env)
    assert reference.exit_code == 2 and f"at revision {behind}" in reference.stderr
    assert "histimport db upgrade" in reference.stderr
    for args in (["history"], ["show", "1"], ["stats"]):
        result = CliRunner().invoke(app, args, env=env)
        assert (result.exit_code, result.stderr) == (2, reference.stderr), args


def test_the_light_reports_say_an_unreachable_database_as_the_rest(tmp_path: Path) -> None:
    env = {
        "HISTIMPORT_DATABASE_URL": "postgresql+psycopg://u:topsecret@127.0.0.1:1/none",
        "HISTIMPORT_HOME": str(tmp_path),
        "NO_COLOR": "1",
    }
    reference = CliRunner().invoke(app, ["lineage", "members"], env=env)
    assert reference.exit_code == 2 and "cannot reach the database" in reference.stderr
    for args in (["history"], ["show", "1", "--watch"], ["stats"]):
        result = CliRunner().invoke(app, args, env=env)
        assert (result.exit_code, result.stderr) == (2, reference.stderr), args
        assert "topsecret" not in result.stdout + result.stderr


def test_a_report_on_a_new_sqlite_home_creates_and_migrates_it(tmp_path: Path) -> None:
    env = {"HISTIMPORT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    result = CliRunner().invoke(app, ["history"], env=env)
    assert (result.exit_code, result.stdout) == (0, "no imports yet\n"), result.stderr
    db = Database.connect(f"sqlite:///{tmp_path / 'home' / 'histimport.db'}")
    assert migrations.current(db) == migrations.head()
    db.dispose()
