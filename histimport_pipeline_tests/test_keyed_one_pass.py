"""``run_import``'s one pass for keyed appends on PostgreSQL: the checked rows are COPYed
straight into the keyed target, and a repeated or existing key sends the import back to the
staged path. What a user sees (status, counts, failed rows, the table) must be what the
step-by-step path (Dagster's ops) gives for the same file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import pipeline
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportResult, run_import
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline_tests.helpers import assert_accounting, audit_entries, history, rows

HEADER = "code,region,qty,note"


def spec_for(table: str, **overrides: Any) -> DatasetSpec:
    raw: dict[str, Any] = {
        "name": table,
        "target_table": table,
        "strategy": "append",
        "key": ["code", "region"],
        "max_error_ratio": 0.5,
        "columns": {
            "code": {"type": "string", "required": True},
            "region": {"type": "string", "required": True},
            "qty": {"type": "integer"},
            "note": {"type": "string"},
        },
        **overrides,
    }
    return DatasetSpec.model_validate(raw)


def csv_file(path: Path, lines: list[str]) -> Path:
    path.write_text(HEADER + "\n" + "".join(f"{line}\n" for line in lines))
    return path


def many(start: int, count: int, region: str = "north") -> list[str]:
    """``count`` rows with distinct codes (``0007``-style, leading zeros kept)."""
    return [f"{i:07d},{region},{i % 97},row {i}" for i in range(start, start + count)]


def by_steps(db: Database, spec: DatasetSpec, path: Path) -> ImportResult:
    """The file imported as Dagster's ops import it: each step on its own."""
    handle = pipeline.start_import(db, spec, path)
    pipeline.stage_file(db, spec, handle)
    pipeline.reconcile_import(db, spec, handle)
    rejected = pipeline.confirm_import(db, spec, handle)
    return rejected or pipeline.load_import(db, spec, handle)


def failures(db: Database, import_id: int) -> list[tuple[Any, ...]]:
    t = db.tables.import_failed_rows
    with db.engine.connect() as conn:
        found = conn.execute(
            sa.select(t.c.source_row, t.c.column_name, t.c.category, t.c.message, t.c.raw_value)
            .where(t.c.import_id == import_id)
            .order_by(t.c.source_row, t.c.failed_row_id)
        )
        # The twin tables' names and the imports that loaded a key differ.
        return [(*r[:3], _twin_neutral(r[3]), r[4]) for r in found]


def _twin_neutral(message: str) -> str:
    message = re.sub(r"import \d+", "import N", message)
    return re.sub(r"is already in \w+", "is already in T", message)


def table_rows(db: Database, table: str) -> list[dict[str, Any]]:
    system = ("_import_id", "_loaded_at")
    loaded = rows(db, table, order="code")
    return [{k: v for k, v in r.items() if k not in system} for r in loaded]


def went_in_one_pass(db: Database, import_id: int) -> bool:
    """The import was validated once, its rows streamed into the target, nothing staged."""
    entries = audit_entries(db, import_id)
    validated = [e for e in entries if e["action"] == "validated"]
    started = [e for e in entries if e["action"] == "validation_started"]
    metadata = history(db, import_id)["file_metadata"]
    return (
        len(started) == 1
        and len(validated) == 1
        and validated[0]["details"].get("streamed_into_target") is True
        and metadata["staged"] is False
    )


def assert_same_outcome(db: Database, one: ImportResult, steps: ImportResult) -> None:
    for field in (
        "status",
        "rows_read",
        "rows_created",
        "rows_failed",
        "rows_duplicate",
        "error_summary",
    ):
        assert getattr(one, field) == getattr(steps, field), field
    assert failures(db, one.import_id) == failures(db, steps.import_id)
    if one.status is not ImportStatus.REJECTED:
        assert_accounting(one)


def primary_key(db: Database, table: str) -> list[str]:
    return list(sa.inspect(db.engine).get_pk_constraint(table)["constrained_columns"])


def test_a_clean_keyed_append_into_a_new_table_goes_in_one_pass(
    pg_db: Database, tmp_path: Path
) -> None:
    path = csv_file(tmp_path / "clean.csv", [*many(1, 500), "0000001,south,5,same code"])
    one = run_import(pg_db, spec_for("one"), path)
    steps = by_steps(pg_db, spec_for("steps"), path)
    assert (one.status, one.rows_created, one.rows_duplicate) == (ImportStatus.SUCCESS, 501, 0)
    assert_same_outcome(pg_db, one, steps)
    assert table_rows(pg_db, "one") == table_rows(pg_db, "steps")
    assert went_in_one_pass(pg_db, one.import_id)
    assert not went_in_one_pass(pg_db, steps.import_id)
    # The table has its declared key once the import is in.
    assert primary_key(pg_db, "one") == primary_key(pg_db, "steps") == ["code", "region"]
    assert rows(pg_db, "one", order="code")[0]["code"] == "0000001"
    rollback_import(pg_db, one.import_id)
    assert rows(pg_db, "one") == []


def test_a_key_repeated_in_the_file_is_a_duplicate_as_when_staged(
    pg_db: Database, tmp_path: Path
) -> None:
    """A new table: the key's index, built after the COPY, finds the repeat; the import is
    staged instead, and ends exactly as the step-by-step import of the same file."""
    lines = [*many(1, 300), "0000150,north,1,again", *many(301, 10)]
    path = csv_file(tmp_path / "repeat.csv", lines)
    one = run_import(pg_db, spec_for("one"), path)
    steps = by_steps(pg_db, spec_for("steps"), path)
    assert (one.status, one.rows_created, one.rows_duplicate) == (ImportStatus.PARTIAL, 310, 1)
    assert_same_outcome(pg_db, one, steps)
    assert table_rows(pg_db, "one") == table_rows(pg_db, "steps")
    assert primary_key(pg_db, "one") == ["code", "region"]
    (failure,) = failures(pg_db, one.import_id)
    assert failure[0] == 302 and failure[2] == "duplicate"
    assert not went_in_one_pass(pg_db, one.import_id)
    # The audit trail says why the rows were validated a second time.
    started = [
        e for e in audit_entries(pg_db, one.import_id) if e["action"] == "validation_started"
    ]
    assert [e["details"].get("restarted") is not None for e in started] == [False, True]
    assert "rolled back" in started[1]["summary"] and "one" in started[1]["summary"]
    assert all("restarted" not in e["details"] for e in audit_entries(pg_db, steps.import_id))


@pytest.mark.parametrize("rows_before", [20, 120_000], ids=["one block", "many blocks"])
def test_keys_already_in_the_table_are_skipped_as_when_staged(
    pg_db: Database, tmp_path: Path, rows_before: int
) -> None:
    """An existing keyed table: new keys only go in one pass; a key that an earlier import
    loaded makes the COPY fail, wherever it is in the file, and the staged path then skips
    and names each such row. Many blocks: the conflict is at the file's first row, so the
    COPY fails while later blocks are still being sent."""
    seed = csv_file(tmp_path / "seed.csv", many(1, 10))
    for table in ("one", "steps"):
        assert run_import(pg_db, spec_for(table), seed).status is ImportStatus.SUCCESS
    fresh = csv_file(tmp_path / "fresh.csv", many(1000, rows_before))
    one = run_import(pg_db, spec_for("one"), fresh)
    steps = by_steps(pg_db, spec_for("steps"), fresh)
    assert (one.status, one.rows_created) == (ImportStatus.SUCCESS, rows_before)
    assert_same_outcome(pg_db, one, steps)
    assert went_in_one_pass(pg_db, one.import_id)

    clash = csv_file(tmp_path / "clash.csv", ["0000003,north,9,late", *many(200_000, rows_before)])
    one = run_import(pg_db, spec_for("one"), clash)
    steps = by_steps(pg_db, spec_for("steps"), clash)
    assert (one.status, one.rows_created, one.rows_duplicate) == (
        ImportStatus.PARTIAL,
        rows_before,
        1,
    )
    assert_same_outcome(pg_db, one, steps)
    assert table_rows(pg_db, "one") == table_rows(pg_db, "steps")
    ((source_row, _, category, message, _),) = failures(pg_db, one.import_id)
    assert (source_row, category) == (2, "duplicate")
    assert "key code=0000003, region=north is already in T (loaded by import N)" in message
    assert not went_in_one_pass(pg_db, one.import_id)
    # The row the earlier import loaded keeps its values.
    kept = [r for r in rows(pg_db, "one", order="code") if r["code"] == "0000003"]
    assert [(r["qty"], r["note"]) for r in kept] == [(3, "row 3")]


def test_over_the_gate_a_keyed_one_pass_leaves_no_table(pg_db: Database, tmp_path: Path) -> None:
    path = csv_file(tmp_path / "bad.csv", ["0000001,north,x,bad", "0000002,north,y,bad", "3,n,1,"])
    one = run_import(pg_db, spec_for("one"), path)
    steps = by_steps(pg_db, spec_for("steps"), path)
    assert one.status is ImportStatus.REJECTED
    assert_same_outcome(pg_db, one, steps)
    assert not sa.inspect(pg_db.engine).has_table("one")
