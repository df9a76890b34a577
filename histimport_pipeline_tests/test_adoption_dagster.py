"""The Dagster asset of an adopted dataset: its first materialization shows the rows the table
held before histimport (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from histimport_pipeline.engine import files
from histimport_pipeline.engine.db import Database
from histimport_pipeline.orchestration.assets import build_dataset_asset
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline_tests.test_adoption import (
    adopt,
    create_production_table,
    summary_raw,
    summary_spec,
)


def test_first_materialization_shows_the_rows_that_predate_histimport(
    db: Database, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sub in ("inbox", "datasets", "archive", "quarantine"):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(f"HISTIMPORT_{sub.upper()}", str(tmp_path / sub))
    (tmp_path / "datasets" / "summary.yaml").write_text(yaml.safe_dump(summary_raw()))
    monkeypatch.setenv("HISTIMPORT_HOME", str(tmp_path))
    monkeypatch.setenv("HISTIMPORT_DATABASE_URL", db_url)
    create_production_table(db, rows=250)
    spec = summary_spec()
    adopt(db, spec)
    asset = build_dataset_asset(spec)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"database": DatabaseResource(url=db_url)}

    def materialize(name: str, text: str) -> dict[str, object]:
        path = tmp_path / "inbox" / name
        path.write_text("ID,email,signed_up,amount,note\n" + text)
        key = files.partition_key_for(path, files.sha256_of(path))
        instance.add_dynamic_partitions("summary_files", [key])
        result = dg.materialize([asset], partition_key=key, instance=instance, resources=resources)
        assert result.success
        [event] = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    first = materialize("summary_1.csv", "000001,moved@example.com,,1,\n900001,n@example.com,,2,\n")
    assert first["rows_before_histimport"] == 250
    assert (first["rows_created"], first["rows_updated"], first["dagster/row_count"]) == (1, 1, 251)
    second = materialize("summary_2.csv", "900002,m@example.com,,3,\n")
    assert "rows_before_histimport" not in second
    assert second["dagster/row_count"] == 252
