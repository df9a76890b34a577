"""The foundation: real servers, migrations both ways, schema = code, settings, layering."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import FileStatus, ImportPhase, ImportStatus
from histimport_pipeline.engine.schema import tracking_tables
from histimport_pipeline.engine.settings import (
    Settings,
    SettingsError,
    dagster_instance_url,
    mask_url,
    normalize_database_url,
)

REPO = Path(__file__).resolve().parent.parent
TRACKING = {
    "import_history",
    "processed_files",
    "processing_status",
    "import_failed_rows",
    "import_reconciliation_matches",
    "import_audit_trail",
    "import_row_images",
}


def tables_in(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names(schema=db.schema))


def test_postgres_is_a_real_server(pg_url: str) -> None:
    db = Database.connect(pg_url)
    with db.engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version()").scalar_one()
        number = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
    db.dispose()
    assert version.startswith("PostgreSQL")
    assert number >= 130000


def test_upgrade_downgrade_upgrade(empty_db: Database) -> None:
    assert migrations.current(empty_db) is None
    applied = migrations.upgrade(empty_db)
    assert applied[0] == "0001" and applied[-1] == migrations.head()
    assert tables_in(empty_db) >= TRACKING
    assert migrations.current(empty_db) == migrations.head()

    assert migrations.upgrade(empty_db) == []  # up to date: a no-op

    migrations.downgrade(empty_db, "base")
    assert tables_in(empty_db) & TRACKING == set()
    assert migrations.current(empty_db) is None

    migrations.upgrade(empty_db)
    assert tables_in(empty_db) >= TRACKING


def test_0004_backfills_users_audit_summaries_and_file_facts_and_goes_back(
    empty_db: Database,
) -> None:
    db = empty_db
    migrations.upgrade(db, "0003")
    t = db.tables
    late = dt.datetime(2024, 3, 5, 23, 30, tzinfo=dt.UTC)
    with db.engine.begin() as conn:
        done = _new_import(
            conn,
            db,
            status="success",
            triggered_by="ann",
            file_type="csv",
            file_metadata={"delimiter": "\t"},
            rows_in_file=4,
            started_at=late,
            finished_at=late,
        )
        running = _new_import(conn, db, status="running", file_type="csv")
        for import_id, sha, status in ((done, "a", "imported"), (running, "b", "processing")):
            conn.execute(
                sa.insert(t.processed_files).values(
                    dataset="signups",
                    sha256=sha * 64,
                    file_name="f.tsv",
                    status=status,
                    last_import_id=import_id,
                )
            )
        entries = [
            (done, "started", "ann", {"file": "f.tsv"}),
            (done, "completed", None, {"status": "partial"}),
            (done, "moved", None, {"reason": "quarantined", "to": "/q/f.tsv"}),
            (running, "failed", None, {"error": "first line\nsecond line"}),
            (None, "cleanup", "ops", {"older_than_days": 30}),
        ]
        for import_id, action, actor, details in entries:
            conn.execute(
                sa.text(
                    f"INSERT INTO {_qualified(db, 'import_audit_trail')} "
                    "(import_id, action, actor, details) VALUES (:i, :a, :who, :d)"
                ),
                {"i": import_id, "a": action, "who": actor, "d": json.dumps(details)},
            )

    assert migrations.upgrade(db, "0004") == ["0004"]
    # the tables as 0004 left them (the code's definitions have later migrations' columns)
    md = sa.MetaData(schema=db.schema)
    h, processed, audit = (
        sa.Table(name, md, autoload_with=db.engine)
        for name in ("import_history", "processed_files", "import_audit_trail")
    )
    with db.engine.connect() as conn:
        users = {r.import_id: r.user_id for r in conn.execute(sa.select(h))}
        types = set(conn.execute(sa.select(h.c.file_type)).scalars())
        files = {
            r.last_import_id: (r.file_type, r.records_count, r.process_date)
            for r in conn.execute(sa.select(processed))
        }
        trail = [
            (r.action, r.actor, r.severity, r.summary)
            for r in conn.execute(sa.select(audit).order_by(audit.c.audit_id))
        ]
    assert users == {done: "ann", running: None}
    assert types == {"tsv", "csv"}  # the tab-delimited one is a TSV now
    assert files == {done: ("tsv", 4, dt.date(2024, 3, 5)), running: ("csv", None, None)}
    assert trail == [
        ("started", "ann", "info", "import started by ann"),
        ("completed", "ann", "warning", "completed: partial"),  # actor: the import's user
        ("moved", "ann", "warning", "file quarantined to /q/f.tsv"),
        ("failed", None, "error", "failed: first line second line"),  # one line
        ("cleanup", "ops", "info", "cleanup of records older than 30 days"),
    ]
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(
            sa.insert(audit).values(action="parsed", severity="fatal", summary="x", import_id=done)
        )

    assert migrations.downgrade(db, "0003") == ["0004"]
    inspector = sa.inspect(db.engine)
    columns = {
        table: {c["name"] for c in inspector.get_columns(table, schema=db.schema)}
        for table in ("import_history", "import_audit_trail", "processed_files")
    }
    assert not columns["import_history"] & {"user_id", "user_email", "master_rows_created"}
    assert not columns["import_audit_trail"] & {"severity", "summary"}
    assert not columns["processed_files"] & {"file_type", "records_count", "process_date"}
    with db.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text(f"SELECT count(*) FROM {_qualified(db, 'import_audit_trail')}")
            ).scalar_one()
            == 5
        )
        kinds = conn.execute(
            sa.text(f"SELECT DISTINCT file_type FROM {_qualified(db, 'import_history')}")
        ).scalars()
        assert set(kinds) == {"csv"}
    assert migrations.upgrade(db) and migrations.current(db) == migrations.head()


def test_migration_0006_adds_and_removes_the_error_file_and_archive_columns(
    empty_db: Database,
) -> None:
    def columns() -> set[str]:
        inspector = sa.inspect(empty_db.engine)
        return {c["name"] for c in inspector.get_columns("import_history", schema=empty_db.schema)}

    migrations.upgrade(empty_db, "0006")
    assert {"error_file_path", "archived_at"} <= columns()
    stamp = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with empty_db.engine.begin() as conn:
        import_id = _new_import(
            conn, empty_db, error_file_path="/e/x.csv", archived_at=stamp, updated_at=stamp
        )

    assert migrations.downgrade(empty_db, "0005") == ["0006"]
    assert not {"error_file_path", "archived_at"} & columns()
    h = sa.Table(
        "import_history", sa.MetaData(schema=empty_db.schema), autoload_with=empty_db.engine
    )
    with empty_db.engine.begin() as conn:
        assert conn.execute(sa.select(h.c.dataset).where(h.c.import_id == import_id)).scalar_one()
        # A plain update still refreshes updated_at (on SQLite the trigger survived the drop).
        conn.execute(sa.update(h).where(h.c.import_id == import_id).values(status="failed"))

    migrations.upgrade(empty_db)
    assert {"error_file_path", "archived_at"} <= columns()
    row = _history_row(empty_db, import_id)
    assert row["error_file_path"] is None and row["archived_at"] is None
    assert row["status"] == "failed"
    updated = row["updated_at"]
    assert isinstance(updated, dt.datetime)
    assert updated.replace(tzinfo=updated.tzinfo or dt.UTC) > stamp


def _history_row(db: Database, import_id: int) -> dict[str, object]:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.import_id == import_id)).mappings().one())


SCHEMA_COLUMNS = {"schema_fingerprint", "schema_drift", "header_present", "spec_used"}


def _history_columns(db: Database) -> set[str]:
    inspector = sa.inspect(db.engine)
    return {c["name"] for c in inspector.get_columns("import_history", schema=db.schema)}


def test_migration_0007_adds_and_removes_the_schema_columns(db: Database) -> None:
    """Down to 0003 drops the schema and spec columns and keeps the imports (and, on SQLite,
    the updated_at trigger); up again brings the columns back, empty for older imports."""
    assert _history_columns(db) >= SCHEMA_COLUMNS
    with db.engine.begin() as conn:
        import_id = _new_import(
            conn, db, schema_fingerprint="0123456789abcdef", spec_used={"name": "signups"}
        )
    migrations.downgrade(db, "0003")
    assert migrations.current(db) == "0003"
    assert _history_columns(db) & SCHEMA_COLUMNS == set()
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    history = _qualified(db, "import_history")
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {history} SET updated_at = :past"), {"past": past})
        conn.execute(sa.text(f"UPDATE {history} SET status = 'failed'"))
        stamp = conn.execute(sa.text(f"SELECT updated_at FROM {history}")).scalar_one()
    assert str(stamp) >= "2026"  # the trigger still keeps updated_at current
    migrations.upgrade(db)
    assert _history_columns(db) >= SCHEMA_COLUMNS
    t = db.tables.import_history
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.import_id == import_id)).mappings().one()
    assert row["status"] == "failed"
    assert [row[c] for c in sorted(SCHEMA_COLUMNS)] == [None] * 4


def test_migrated_schema_matches_the_code(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": db.schema is not None,
                "include_name": lambda name, type_, _parent: type_ != "schema" or name == db.schema,
                "version_table": migrations.VERSION_TABLE,
                "version_table_schema": db.schema,
                "compare_type": True,
            },
        )
        diff = compare_metadata(ctx, tracking_tables(db.schema).metadata)
    assert diff == []


def test_postgres_tables_live_in_the_configured_schema(pg_url: str) -> None:
    db = Database.connect(pg_url, pg_schema="track_x")
    migrations.upgrade(db)
    inspector = sa.inspect(db.engine)
    assert set(inspector.get_table_names(schema="track_x")) >= TRACKING
    assert set(inspector.get_table_names(schema="public")) == set()
    db.dispose()


def test_json_columns_are_jsonb_on_postgres(pg_url: str) -> None:
    db = Database.connect(pg_url)
    migrations.upgrade(db)
    with db.engine.connect() as conn:
        kind = conn.exec_driver_sql(
            "SELECT data_type FROM information_schema.columns WHERE table_schema='histimport' "
            "AND table_name='import_history' AND column_name='file_metadata'"
        ).scalar_one()
    db.dispose()
    assert kind == "jsonb"


def _new_import(conn: sa.Connection, db: Database, **values: object) -> int:
    row = {
        "dataset": "signups",
        "target_table": "signups",
        "import_type": "MANUAL",
        "source": "cli",
        **values,
    }
    t = db.tables.import_history
    return int(conn.execute(sa.insert(t).values(**row).returning(t.c.import_id)).scalar_one())


def test_updated_at_is_kept_current_on_update(db: Database) -> None:
    t = db.tables.processing_status
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(t).values(process_name="sensor:x", process_type="sensor", updated_at=past)
        )
    with db.engine.begin() as conn:
        # A plain UPDATE that does not mention updated_at, as a DBA would write it.
        conn.execute(sa.text(f"UPDATE {_qualified(db, 'processing_status')} SET state = 'running'"))
    with db.engine.connect() as conn:
        stamp = conn.execute(sa.select(t.c.updated_at)).scalar_one()
    assert stamp.year >= 2026


def _qualified(db: Database, table: str) -> str:
    return f'"{db.schema}"."{table}"' if db.schema else f'"{table}"'


def test_processed_files_unique_on_dataset_and_hash(db: Database) -> None:
    t = db.tables.processed_files
    row = {"dataset": "signups", "sha256": "ab" * 32, "file_name": "a.csv", "status": "imported"}
    with db.engine.begin() as conn:
        conn.execute(sa.insert(t).values(**row))
        conn.execute(sa.insert(t).values(**{**row, "dataset": "other"}))
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.insert(t).values(**{**row, "file_name": "renamed.csv"}))


def test_status_vocabularies_are_enforced(db: Database) -> None:
    with db.engine.begin() as conn:
        for status in ImportStatus:
            for phase in ImportPhase:
                _new_import(conn, db, status=status.value, phase=phase.value)
        for i, file_status in enumerate(FileStatus):
            conn.execute(
                sa.insert(db.tables.processed_files).values(
                    dataset="d", sha256=f"{i:064d}", file_name="f", status=file_status.value
                )
            )
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        _new_import(conn, db, status="done")


def test_child_rows_need_an_existing_import(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(
            sa.insert(db.tables.import_failed_rows).values(
                import_id=999_999, category="type", message="x"
            )
        )
    with db.engine.begin() as conn:
        import_id = _new_import(conn, db)
        conn.execute(
            sa.insert(db.tables.import_failed_rows).values(
                import_id=import_id, category="type", message="x"
            )
        )
    with db.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(db.tables.import_failed_rows)
        ).scalar_one()
    assert count == 1


def test_ddl_is_transactional(empty_db: Database) -> None:
    """What lets a migration and its bookkeeping commit or vanish together, on both DBs."""
    conn = empty_db.engine.connect()
    trans = conn.begin()
    conn.exec_driver_sql("CREATE TABLE half_done (x integer)")
    trans.rollback()
    conn.close()
    assert "half_done" not in sa.inspect(empty_db.engine).get_table_names()


def test_settings_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings.from_env({}, cwd=tmp_path)
    assert s.home == tmp_path / ".histimport"
    assert s.database_url == f"sqlite:///{tmp_path / '.histimport' / 'histimport.db'}"
    assert s.inbox == s.home / "inbox"
    assert s.archive == s.home / "archive"
    assert s.quarantine == s.home / "quarantine"
    assert s.datasets == s.home / "datasets"
    assert s.db_schema == "histimport"
    assert s.max_field_bytes == 32 * 1024 * 1024
    assert (s.user, s.user_email) == (None, None)  # the CLI then records the OS user

    s = Settings.from_env(
        {
            "HISTIMPORT_HOME": "h",
            "HISTIMPORT_INBOX": "/srv/drop",
            "HISTIMPORT_DB_SCHEMA": "imp",
            "HISTIMPORT_MAX_FIELD_BYTES": "1048576",
            "HISTIMPORT_USER": " ann ",
            "HISTIMPORT_USER_EMAIL": "ann@example.com",
        },
        cwd=tmp_path,
    )
    assert (s.user, s.user_email) == ("ann", "ann@example.com")
    assert s.home == tmp_path / "h"
    assert s.inbox == Path("/srv/drop")
    assert s.db_schema == "imp"
    assert s.max_field_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "env",
    [
        {"HISTIMPORT_DB_SCHEMA": "bad name; drop"},
        {"HISTIMPORT_DATABASE_URL": "not a url"},
        {"HISTIMPORT_MAX_FIELD_BYTES": "64MiB"},
        {"HISTIMPORT_MAX_FIELD_BYTES": "0"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        Settings.from_env(env, cwd=tmp_path)


def test_passwords_are_masked() -> None:
    url = "postgresql+psycopg://loader:s3cr3t@db.example:5432/prod"
    assert "s3cr3t" not in mask_url(url)
    assert "loader:***@db.example" in mask_url(url)
    s = Settings.from_env({"HISTIMPORT_DATABASE_URL": url})
    assert "s3cr3t" not in s.masked_database_url
    assert "s3cr3t" not in repr(Database.connect(url).masked_url)


def test_postgres_urls_pin_their_driver() -> None:
    assert normalize_database_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert dagster_instance_url("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert dagster_instance_url("postgresql+psycopg://u@h/db").startswith("postgresql+psycopg2")
    with pytest.raises(SettingsError):
        dagster_instance_url("sqlite:///x.db")


def test_engine_never_imports_dagster() -> None:
    engine_dir = REPO / "histimport_pipeline" / "engine"
    offenders = []
    for path in engine_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "dagster"]
    assert len(list(engine_dir.rglob("*.py"))) > 3
    assert offenders == []


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "histimport_pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_db_commands(db_url: str, tmp_path: Path) -> None:
    env = {"HISTIMPORT_DATABASE_URL": db_url, "HISTIMPORT_HOME": str(tmp_path)}
    first = _cli(["db", "upgrade"], env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001" in first.stdout
    again = _cli(["db", "upgrade"], env)
    assert "nothing to do" in again.stdout
    assert "up to date" in _cli(["db", "current"], env).stdout
    down = _cli(["db", "downgrade", "base"], env)
    assert down.returncode == 0, down.stderr
    assert "now at base" in down.stdout
    db = Database.connect(db_url)
    assert tables_in(db) & TRACKING == set()
    db.dispose()


def test_cli_reports_unreachable_database_cleanly(tmp_path: Path) -> None:
    env = {
        "HISTIMPORT_DATABASE_URL": "postgresql+psycopg://u:topsecret@127.0.0.1:1/none",
        "HISTIMPORT_HOME": str(tmp_path),
    }
    result = _cli(["db", "current"], env)
    assert result.returncode == 2
    assert "topsecret" not in result.stdout + result.stderr
    assert "cannot reach the database" in result.stderr


def test_cli_sql_prints_postgres_ddl_for_every_table() -> None:
    result = _cli(["db", "sql", "--schema", "audit"], {})
    assert result.returncode == 0, result.stderr
    for table in TRACKING:
        assert f"CREATE TABLE audit.{table}" in result.stdout
    assert "JSONB" in result.stdout
    assert "COMMIT" in result.stdout


def test_workspace_definitions_validate(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        env={
            **os.environ,
            "HISTIMPORT_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}",
            "DAGSTER_HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_sqlite_readers_do_not_block_writers(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite:///{tmp_path / 'x.db'}")
    migrations.upgrade(db)
    with db.reader() as reader:
        reader.execute(sa.select(db.tables.import_history)).all()  # read transaction open
        with db.engine.begin() as writer:
            writer.execute(
                sa.insert(db.tables.processing_status).values(
                    process_name="p", process_type="sensor"
                )
            )
    with db.reader() as conn:
        assert conn.execute(sa.select(db.tables.processing_status)).all()
    db.dispose()
