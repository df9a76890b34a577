"""The schema an import read: its fingerprint, its drift from the dataset's previous successful
import, files without a header row, and the spec stored with every import (SQLite and
PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import openpyxl
import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import files, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import history as hist
from histimport_pipeline.engine.tracking.drift import compare_schemas, schema_fingerprint
from histimport_pipeline.orchestration.assets import build_dataset_asset
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline_tests.helpers import SIGNUPS, history, make_spec, rows, write

FIRST = "signup_id,email,amount\n1,a@example.com,1.50\n2,b@example.com,2\n"
# signup_id now comes from its alias "Signup ID", amount is gone, note is new.
DRIFTED = "Signup ID,email,note\n3,c@example.com,hello\n"
# Two of two rows fail: rejected, so it is never "the previous successful import".
REJECTED = "ID,email\n4,nope\n5,nope\n"


def _import(db: Database, spec: DatasetSpec, path: Path) -> Any:
    return run_import(db, spec, path, ImportOptions(triggered_by="tester"))


def test_a_drifted_import_warns_naming_added_removed_and_renamed(
    db: Database, tmp_path: Path
) -> None:
    spec = make_spec()
    first = _import(db, spec, write(tmp_path / "signups_1.csv", FIRST))
    one = history(db, first.import_id)
    assert one["schema_drift"] is None and first.schema_drift is None  # nothing to compare
    assert len(one["schema_fingerprint"]) == 16 and one["header_present"] is True

    rejected = _import(db, spec, write(tmp_path / "signups_bad.csv", REJECTED))
    assert rejected.status is ImportStatus.REJECTED
    assert history(db, rejected.import_id)["schema_drift"]["previous_import_id"] == 1

    second = _import(db, spec, write(tmp_path / "signups_2.csv", DRIFTED))
    assert second.status is ImportStatus.SUCCESS
    drift = history(db, second.import_id)["schema_drift"]
    assert drift["previous_import_id"] == first.import_id  # not the rejected one
    assert drift["added"] == ["note"]
    assert drift["removed"] == ["amount"]
    assert drift["renamed"] == [{"column": "signup_id", "from": "signup_id", "to": "Signup ID"}]
    assert drift["previous_fingerprint"] == one["schema_fingerprint"]
    assert drift["fingerprint"] == history(db, second.import_id)["schema_fingerprint"]
    assert second.schema_drift == drift
    [warning] = [w for w in second.warnings if "differ" in w]
    assert "import 1" in warning
    assert "added 'note'" in warning and "removed 'amount'" in warning
    assert "renamed signup_id ('signup_id' -> 'Signup ID')" in warning
    assert warning in history(db, second.import_id)["warnings"]

    # The same headers again (other rows): the same fingerprint, no drift from import 3.
    third = _import(
        db, spec, write(tmp_path / "signups_3.csv", "Signup ID,email,note\n9,z@x.io,\n")
    )
    three = history(db, third.import_id)
    assert three["schema_fingerprint"] == drift["fingerprint"] and three["schema_drift"] is None
    assert not [w for w in third.warnings if "differ" in w]

    listed = hist.list_imports(db)["imports"]
    assert {r["import_id"]: bool(r["schema_drift"]) for r in listed} == {
        1: False,
        2: True,
        3: True,
        4: False,
    }


def test_imports_recorded_before_fingerprints_are_compared_by_their_headers(
    db: Database, tmp_path: Path
) -> None:
    spec = make_spec()
    first = _import(db, spec, write(tmp_path / "signups_1.csv", FIRST))
    t = db.tables.import_history
    with db.engine.begin() as conn:  # as migration 0007 leaves an older import
        conn.execute(sa.update(t).values(schema_fingerprint=None, header_present=None))
    again = _import(db, spec, write(tmp_path / "signups_2.csv", FIRST + "3,c@example.com,3\n"))
    assert history(db, again.import_id)["schema_drift"] is None
    reordered = _import(db, spec, write(tmp_path / "signups_3.csv", "email,signup_id,amount\n"))
    drift = history(db, reordered.import_id)["schema_drift"]
    assert drift["previous_import_id"] == again.import_id != first.import_id
    assert drift["reordered"] is True and drift["added"] == drift["removed"] == []
    assert "in another order" in drift["message"]


def test_the_fingerprint_is_of_the_ordered_headers_and_the_mapping() -> None:
    base = schema_fingerprint(["ID", "email"], {"ID": "signup_id", "email": "email"})
    assert base == schema_fingerprint(["ID", "email"], {"ID": "signup_id", "email": "email"})
    assert base != schema_fingerprint(["email", "ID"], {"ID": "signup_id", "email": "email"})
    assert base != schema_fingerprint(["ID", "email"], {"ID": "other", "email": "email"})
    assert base != schema_fingerprint(["ID", "email"], {"ID": "signup_id"})
    assert base != schema_fingerprint(
        ["ID", "email"], {"ID": "signup_id", "email": "email"}, header_present=False
    )
    changed = compare_schemas(["a", "x"], {"a": "col", "x": "x"}, ["a"], {"a": "other"})
    assert changed["remapped"] == [{"header": "a", "from": "col", "to": "other"}]
    assert changed["removed"] == ["x"]


HEADERLESS = "1,a@example.com,2024-01-31,1.50,first\n2,b@example.com,,2,\n3,c@example.com\n"


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_a_file_without_header_row_loads_by_position(
    db: Database, tmp_path: Path, delimiter: str
) -> None:
    # An append without key: on PostgreSQL the columnar reader would take it, but it reads
    # only files headed by their first record, so the Python reader does.
    spec = make_spec(header=False, strategy="append", key=[])
    text = HEADERLESS.replace(",", delimiter)
    result = _import(db, spec, write(tmp_path / "signups_noheader.csv", text))
    assert result.status is ImportStatus.PARTIAL
    assert (result.rows_read, result.rows_created, result.rows_failed) == (3, 2, 1)
    loaded = rows(db, "signups")
    assert [(r["_source_row"], r["signup_id"], r["email"]) for r in loaded] == [
        (1, "1", "a@example.com"),
        (2, "2", "b@example.com"),
    ]
    assert str(loaded[0]["amount"]) == "1.50" and loaded[0]["note"] == "first"
    row = history(db, result.import_id)
    assert row["header_present"] is False
    assert row["file_metadata"]["header_present"] is False
    assert row["file_metadata"]["header_row"] is None
    assert row["file_metadata"]["headers"] == list(spec.columns)
    assert row["file_metadata"]["reader"] == "python"
    assert row["column_mapping"] == {c: c for c in spec.columns}
    failed = hist.get_import_detail(db, result.import_id)["error_summary"]["top_errors"]
    assert "row has 2 fields, the dataset has 5 columns" in failed[0]["example"]
    assert "read by position" in failed[0]["example"]


def test_a_sheet_without_header_row_loads_by_position(db: Database, tmp_path: Path) -> None:
    spec = make_spec(header=False)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["007", "a@example.com", "2024-01-31", 1.5])  # note left empty
    ws.append(["008", "b@example.com", None, 2, "x"])
    path = tmp_path / "signups.xlsx"
    wb.save(path)
    result = _import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS and result.rows_created == 2
    assert [(r["_source_row"], r["signup_id"]) for r in rows(db, "signups")] == [
        (1, "007"),
        (2, "008"),
    ]
    assert history(db, result.import_id)["header_present"] is False


def test_a_headed_file_records_its_header(db: Database, tmp_path: Path) -> None:
    result = _import(db, make_spec(), write(tmp_path / "signups_1.csv", FIRST))
    row = history(db, result.import_id)
    assert row["header_present"] is True and row["file_metadata"]["header_row"] == 1


def test_the_whole_spec_is_stored_with_the_import(db: Database, tmp_path: Path) -> None:
    spec = make_spec(
        references={
            "ambassador_id": {
                "entity": "ambassadors",
                "match": [{"source": "email", "field": "email", "method": "exact"}],
                "on_unmatched": "null",
            }
        }
    )
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ambassadors (id INTEGER PRIMARY KEY, email TEXT)"))
    result = _import(db, spec, write(tmp_path / "signups_1.csv", FIRST))
    stored = hist.get_import_detail(db, result.import_id)["spec_used"]
    # As written (defaults left out), so it loads as the same spec again.
    assert stored == spec.model_dump(mode="json", exclude_unset=True)
    assert DatasetSpec.model_validate(stored) == spec
    assert stored["columns"]["amount"]["min"] == 0 and stored["columns"]["amount"]["scale"] == 2
    assert stored["columns"]["email"]["type"] == "email" and stored["strategy"] == "upsert"
    assert stored["references"]["ambassador_id"]["entity"] == "ambassadors"
    assert stored["columns"]["signup_id"]["aliases"] == ["ID", "Signup ID"]


def test_dagster_metadata_names_the_drift(tmp_path: Path, db_url: str, db: Database) -> None:
    for sub in ("inbox", "datasets", "archive", "quarantine"):
        (tmp_path / sub).mkdir()
    (tmp_path / "datasets" / "signups.yaml").write_text(yaml.safe_dump(SIGNUPS))
    env = {f"HISTIMPORT_{n}": str(tmp_path / n.lower()) for n in ("INBOX", "ARCHIVE")}
    env |= {"HISTIMPORT_HOME": str(tmp_path), "HISTIMPORT_DATABASE_URL": db_url}
    env |= {"HISTIMPORT_DATASETS": str(tmp_path / "datasets")}
    env |= {"HISTIMPORT_QUARANTINE": str(tmp_path / "quarantine")}
    migrations.upgrade(db)
    spec = DatasetSpec.model_validate(SIGNUPS)
    asset = build_dataset_asset(spec)
    instance = dg.DagsterInstance.ephemeral()
    metas = []
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name, text in (("signups_1.csv", FIRST), ("signups_2.csv", DRIFTED)):
            path = write(tmp_path / "inbox" / name, text)
            key = files.partition_key_for(path, files.sha256_of(path))
            instance.add_dynamic_partitions("signups_files", [key])
            result = dg.materialize(
                [asset],
                partition_key=key,
                instance=instance,
                resources={"database": DatabaseResource(url=db_url)},
            )
            assert result.success
            [event] = result.get_asset_materialization_events()
            metas.append({k: v.value for k, v in event.materialization.metadata.items()})
    assert "schema_drift" not in metas[0]
    drift = metas[1]["schema_drift"]
    assert (drift["added"], drift["removed"]) == (["note"], ["amount"])
    assert drift["renamed"][0]["to"] == "Signup ID"
