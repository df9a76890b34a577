"""What the Dagster UI shows is what happened: checks per partition with their severity, a
failed partition that says why, corrections that supersede failures, table-level metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import files
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import corrections
from histimport_pipeline.orchestration.assets import build_dataset_asset
from histimport_pipeline.orchestration.checks import build_checks
from histimport_pipeline.orchestration.definitions import build_definitions
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline_tests.helpers import SIGNUPS, history
from histimport_pipeline_tests.test_dagster import _check_history, _make_home, _observations

REVIEWED: dict[str, Any] = {
    **SIGNUPS,
    "columns": {**SIGNUPS["columns"], "ambassador_name": {"type": "string"}},
    "references": {
        "ambassador_id": {
            "entity": "ambassadors",
            "match": [
                {"source": "ambassador_name", "field": "full_name", "method": "fuzzy"},
            ],
            "on_unmatched": "review",
        }
    },
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    """HISTIMPORT_* pointing into tmp_path, with the signups and sessions specs."""
    return _make_home(tmp_path, monkeypatch, db_url)


def _materialize(
    home: Path,
    db_url: str,
    raw: dict[str, Any],
    name: str,
    text: str,
    instance: dg.DagsterInstance | None = None,
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance, str]:
    """Drop ``text`` as ``name`` and materialize its file partition with the checks."""
    (home / "datasets" / "signups.yaml").write_text(yaml.safe_dump(raw))
    path = home / "inbox" / name
    path.write_text(text)
    key = files.partition_key_for(path, files.sha256_of(path))
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("signups_files", [key])
    spec = DatasetSpec.model_validate(raw)
    result = dg.materialize(
        [build_dataset_asset(spec), *build_checks(spec)],
        partition_key=key,
        instance=instance,
        resources={"database": DatabaseResource(url=db_url)},
        raise_on_error=False,
    )
    return result, instance, key


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_rows_waiting_for_review_are_a_warning_on_their_partition(home: Path, db_url: str) -> None:
    db = Database.connect(db_url)
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ambassadors (id INTEGER PRIMARY KEY, full_name TEXT)"))
        conn.execute(sa.text("INSERT INTO ambassadors VALUES (1, 'Ann Lee')"))
    text = "ID,email,ambassador_name\n1,a@example.com,Ann Lee\n2,b@example.com,Zed Nobody Known\n"
    result, instance, key = _materialize(home, db_url, REVIEWED, "signups_r.csv", text)
    assert result.success
    meta = _materialized(result)
    assert meta["status"] == "partial" and meta["rows_waiting_for_review"] == 1
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    refs = evaluations["references_resolved"]
    assert not refs.passed and refs.severity == dg.AssetCheckSeverity.WARN
    assert "1 row(s) wait for review" in str(refs.description)
    assert {e.partition for e in evaluations.values()} == {key}
    # nothing about this import is an ERROR, and it is not all green either
    assert not all(e.passed for e in evaluations.values())
    failed = [e for e in evaluations.values() if not e.passed]
    assert {e.severity for e in failed} == {dg.AssetCheckSeverity.WARN}
    [stored] = _check_history(instance, "references_resolved")
    assert stored.partition == key and stored.status.value == "FAILED"
    db.dispose()


def test_row_count_is_the_tables_rows_and_the_imports_own_counts_have_their_keys(
    home: Path, db_url: str
) -> None:
    first = "ID,email\n1,a@example.com\n2,b@example.com\n3,c@example.com\n"
    result, instance, _ = _materialize(home, db_url, SIGNUPS, "signups_1.csv", first)
    assert result.success
    second = "ID,email\n3,c@example.com\n4,d@example.com\n"
    result, _, _ = _materialize(home, db_url, SIGNUPS, "signups_2.csv", second, instance)
    assert result.success
    meta = _materialized(result)
    assert meta["dagster/row_count"] == 4  # the table after the import
    assert meta["rows_loaded"] == 2 and meta["rows_created"] == 1
    assert meta["rows_unchanged"] == 1
    assert meta["dagster/table_name"] == "signups"
    # values that never change between imports are text, so the UI draws no plots of them
    [event] = result.get_asset_materialization_events()
    assert isinstance(event.materialization.metadata["import_id"], dg.TextMetadataValue)


def test_a_corrected_file_supersedes_the_rejected_partition(home: Path, db_url: str) -> None:
    strict = {**SIGNUPS, "max_error_ratio": 0.1}
    bad = "ID,email\n1,a@example.com\n2,not-an-email\n"
    rejected, instance, old_key = _materialize(home, db_url, strict, "signups_jan.csv", bad)
    assert not rejected.success
    db = Database.connect(db_url)
    [open_failure] = corrections.failed_partitions(db, "signups")
    assert open_failure["partition_key"] == old_key
    fixed = "ID,email\n1,a@example.com\n2,b@example.com\n"
    result, _, new_key = _materialize(home, db_url, strict, "signups_jan.csv", fixed, instance)
    assert result.success and new_key != old_key
    # the failed partition left the partition set; its run stays in the history
    assert instance.get_dynamic_partitions("signups_files") == [new_key]
    assert instance.get_run_by_id(rejected.run_id) is not None
    new_id = int(_materialized(result)["import_id"])
    old_id = int(open_failure["import_id"])
    assert history(db, new_id)["corrects_import_id"] == old_id
    old = history(db, old_id)
    assert old["superseded_by"] == new_id and old["status"] == "rejected"
    assert corrections.failed_partitions(db, "signups") == []
    db.dispose()


def test_a_correction_that_fails_again_supersedes_nothing(home: Path, db_url: str) -> None:
    strict = {**SIGNUPS, "max_error_ratio": 0.1}
    bad = "ID,email\n1,a@example.com\n2,not-an-email\n"
    _, instance, first_key = _materialize(home, db_url, strict, "signups_feb.csv", bad)
    worse = "ID,email\n1,nope\n2,not-an-email\n"
    again, _, second_key = _materialize(home, db_url, strict, "signups_feb.csv", worse, instance)
    assert not again.success
    assert set(instance.get_dynamic_partitions("signups_files")) == {first_key, second_key}
    db = Database.connect(db_url)
    failed = corrections.failed_partitions(db, "signups")
    assert [f["partition_key"] for f in failed] == [first_key, second_key]
    # the second records what it tried to correct; once a third loads, both are superseded
    assert history(db, int(failed[1]["import_id"]))["corrects_import_id"] == failed[0]["import_id"]
    good = "ID,email\n1,a@example.com\n2,b@example.com\n"
    result, _, third_key = _materialize(home, db_url, strict, "signups_feb.csv", good, instance)
    assert result.success
    assert instance.get_dynamic_partitions("signups_files") == [third_key]
    assert corrections.failed_partitions(db, "signups") == []
    db.dispose()


def test_a_file_that_cannot_be_read_says_why_on_its_partition(home: Path, db_url: str) -> None:
    result, instance, key = _materialize(home, db_url, SIGNUPS, "signups_x.csv", "email\nx@y\n")
    assert not result.success
    [observed] = _observations(instance)
    assert observed.partition == key
    why = {k: v.value for k, v in observed.metadata.items()}
    assert why["status"] == "failed" and "signup_id" in str(why["message"])
    assert "fixed file" in str(why["what_to_do"])
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.error
    assert error is not None and error.cause is None and error.context is None


def test_group_owners_and_column_descriptions_come_from_the_spec(db_url: str) -> None:
    raw = {
        **SIGNUPS,
        "description": "Sign-ups from the partner portal.",
        "group": "sales",
        "owners": ["team:growth", "ann@example.com"],
        "columns": {
            **SIGNUPS["columns"],
            "email": {"type": "email", "required": True, "description": "Contact address"},
        },
    }
    plain = {**SIGNUPS, "name": "plain", "target_table": "plain", "files": "plain_*.csv"}
    specs = {s["name"]: DatasetSpec.model_validate(s) for s in (raw, plain)}
    defs = build_definitions(specs, resources={"database": DatabaseResource(url=db_url)})
    graph = defs.resolve_asset_graph()
    signups = graph.get(dg.AssetKey("signups"))
    assert signups.group_name == "sales"
    assert set(signups.owners) == {"team:growth", "ann@example.com"}
    assert signups.description == "Sign-ups from the partner portal."
    schema = signups.metadata["dagster/column_schema"]
    assert {c.name: c.description for c in schema.columns}["email"] == "Contact address"
    assert signups.metadata["dagster/table_name"] == "signups"
    # without a group every dataset shares one, so global lineage opens as one picture; an
    # inbox sits in its dataset's group
    assert graph.get(dg.AssetKey("plain")).group_name == "datasets"
    assert graph.get(dg.AssetKey(["inbox", "plain"])).group_name == "datasets"
    assert graph.get(dg.AssetKey(["inbox", "signups"])).group_name == "sales"


def test_a_master_table_sits_with_the_datasets_that_use_it(db_url: str) -> None:
    ref = {
        "entity": "ambassadors",
        "match": [{"source": "ambassador_name", "field": "full_name", "method": "exact"}],
    }
    raws = [
        {**REVIEWED, "references": {"ambassador_id": ref}},
        {**REVIEWED, "name": "other", "target_table": "other", "files": "other_*.csv"},
        {**REVIEWED, "name": "sold", "target_table": "sold", "files": "sold_*", "group": "sales"},
    ]
    specs = {s["name"]: DatasetSpec.model_validate(s) for s in raws}
    resources = {"database": DatabaseResource(url=db_url)}
    graph = build_definitions(specs, resources=resources).resolve_asset_graph()
    # used by datasets of two groups: its own group
    assert graph.get(dg.AssetKey(["masters", "ambassadors"])).group_name == "masters"
    two = {k: specs[k] for k in ("signups", "other")}
    graph = build_definitions(two, resources=resources).resolve_asset_graph()
    assert graph.get(dg.AssetKey(["masters", "ambassadors"])).group_name == "datasets"


def test_an_owner_that_is_neither_an_email_nor_a_team_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="e-mail address or team:NAME"):
        DatasetSpec.model_validate({**SIGNUPS, "owners": ["ann"]})
