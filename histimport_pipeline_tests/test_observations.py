"""Observed sources and freshness in Dagster: the observation sensor's ticks record what waits
in each inbox and the size and last change of each master table; the spec's freshness
becomes a policy and checks that go stale and fresh with the import history."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.definitions import freshness_evaluator
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.loader import LoadingContextForTest

from histimport_pipeline.engine import files, freshness, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.freshness import DAILY_CHECK, LAG_CHECK, freshness_verdicts
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.orchestration.definitions import build_definitions
from histimport_pipeline.orchestration.observations import (
    OBSERVATION_SENSOR,
    REFRESH_S,
    build_source_assets,
)
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline_tests.helpers import SIGNUPS

ROWS = "ID,email,amount\n007,a@example.com,1.50\n008,b@example.com,2\n"
AMBASSADORS = {
    "ambassador_id": {
        "entity": "ambassadors",
        "match": [{"source": "note", "field": "email"}],
        "on_unmatched": "null",
    }
}
REGIONS = {
    "region_id": {
        "entity": "regions",
        "match": [{"source": "note", "field": "name"}],
        "on_unmatched": "null",
    }
}
SESSIONS: dict[str, Any] = {
    **SIGNUPS,
    "name": "sessions",
    "target_table": "sessions",
    "files": "sessions_*.csv",
    "partitioning": "daily",
    "strategy": "replace_date",
    "key": [],
    "start_date": "2024-01-01",
}


RAW_SPECS: dict[str, dict[str, Any]] = {
    "signups": {**SIGNUPS, "freshness": {"max_lag_hours": 26}, "references": AMBASSADORS},
    "sessions": {**SESSIONS, "references": REGIONS},
}


def _specs() -> dict[str, DatasetSpec]:
    return {name: DatasetSpec.model_validate(raw) for name, raw in RAW_SPECS.items()}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    """HISTIMPORT_* pointing into tmp_path, a migrated database and the specs on disk."""
    for sub in ("inbox", "datasets", "archive", "quarantine"):
        (tmp_path / sub).mkdir()
    for name, raw in RAW_SPECS.items():
        (tmp_path / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("HISTIMPORT_HOME", str(tmp_path))
    monkeypatch.setenv("HISTIMPORT_DATABASE_URL", db_url)
    for name in ("INBOX", "DATASETS", "ARCHIVE", "QUARANTINE"):
        monkeypatch.setenv(f"HISTIMPORT_{name}", str(tmp_path / name.lower()))
    db = Database.connect(db_url)
    migrations.upgrade(db)
    db.dispose()
    return tmp_path


def _resources(db_url: str) -> dict[str, Any]:
    return {"database": DatabaseResource(url=db_url)}


def _tick(
    defs: dg.Definitions, db_url: str, cursor: str | None, instance: dg.DagsterInstance
) -> dg.SensorResult:
    """One tick of the observation sensor, its observations stored as the daemon stores them."""
    sensor = defs.resolve_sensor_def(OBSERVATION_SENSOR)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=_resources(db_url)
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def _observed(instance: dg.DagsterInstance, *path: str) -> list[dict[str, Any]]:
    """Metadata of the asset's observations, newest first."""
    records = instance.fetch_observations(dg.AssetKey(list(path)), limit=10).records
    return [
        {k: v.value for k, v in r.asset_observation.metadata.items()}
        for r in records
        if r.asset_observation is not None
    ]


def _keys(result: dg.SensorResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.asset_events}


def _create_masters(db_url: str) -> sa.Table:
    engine = sa.create_engine(db_url)
    meta = sa.MetaData()
    ambassadors = sa.Table(
        "ambassadors",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    regions = sa.Table(
        "regions",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            ambassadors.insert(),
            [
                {
                    "id": 1,
                    "email": "a@x.org",
                    "updated_at": dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC),
                },
                {
                    "id": 2,
                    "email": "b@x.org",
                    "updated_at": dt.datetime(2024, 3, 2, 9, tzinfo=dt.UTC),
                },
            ],
        )
        conn.execute(regions.insert(), [{"id": i, "name": f"r{i}"} for i in range(1, 4)])
    engine.dispose()
    return ambassadors


def test_a_tick_observes_the_files_waiting_and_the_oldest_ones_age(home: Path, db_url: str) -> None:
    _create_masters(db_url)
    defs = build_definitions(_specs())
    graph = defs.resolve_asset_graph()
    # observable sources: the UI shows their "Latest observation", not "Never materialized"
    assert graph.get(dg.AssetKey(["inbox", "signups"])).is_observable
    assert graph.get(dg.AssetKey(["masters", "ambassadors"])).is_observable
    inbox = home / "inbox"
    old = inbox / "signups_old.csv"
    old.write_text(ROWS)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    (inbox / "signups").mkdir()
    (inbox / "signups" / "march.csv").write_text(ROWS)
    (inbox / "signups_new.csv.part").write_text(ROWS)  # still being written: not waiting
    (inbox / "sessions_2024-01-05.csv").write_text(ROWS)
    instance = dg.DagsterInstance.ephemeral()

    first = _tick(defs, db_url, None, instance)
    assert _keys(first) == {
        "inbox/signups",
        "inbox/sessions",
        "masters/ambassadors",
        "masters/regions",
    }
    [signups] = _observed(instance, "inbox", "signups")
    assert signups["files_waiting"] == 2
    assert signups["bytes_waiting"] == 2 * len(ROWS)
    assert signups["oldest_file"] == "signups_old.csv"
    assert 119 <= signups["oldest_age_minutes"] <= 125
    assert signups["oldest_waiting_since"] == pytest.approx(two_hours_ago, abs=1)
    assert _observed(instance, "inbox", "sessions")[0]["files_waiting"] == 1

    # nothing changed: no new observation (the cursor remembers what was seen)
    second = _tick(defs, db_url, first.cursor, instance)
    assert _keys(second) == set()
    assert len(_observed(instance, "inbox", "signups")) == 1

    # the old file is imported (gone), a new one arrives: observed anew
    old.unlink()
    (inbox / "signups_b.csv").write_text(ROWS + "009,c@example.com,3\n")
    third = _tick(defs, db_url, second.cursor, instance)
    assert _keys(third) == {"inbox/signups"}
    latest = _observed(instance, "inbox", "signups")[0]
    assert latest["files_waiting"] == 2 and latest["oldest_age_minutes"] < 5
    assert latest["oldest_file"] in {"march.csv", "signups_b.csv"}

    # unchanged but last observed longer than REFRESH_S ago: observed again (age moves on)
    state = json.loads(third.cursor or "{}")
    state["sources"]["inbox/sessions"][1] -= REFRESH_S + 1
    fourth = _tick(defs, db_url, json.dumps(state), instance)
    assert _keys(fourth) == {"inbox/sessions"}


def test_a_tick_observes_master_tables_and_a_change_is_observed_anew(
    home: Path, db_url: str
) -> None:
    ambassadors = _create_masters(db_url)
    defs = build_definitions(_specs())
    instance = dg.DagsterInstance.ephemeral()

    first = _tick(defs, db_url, None, instance)
    [amb] = _observed(instance, "masters", "ambassadors")
    assert amb["dagster/row_count"] == 2 and amb["change_column"] == "updated_at"
    assert amb["last_changed"] == dt.datetime(2024, 3, 2, 9, tzinfo=dt.UTC).timestamp()
    [regions] = _observed(instance, "masters", "regions")
    assert regions["dagster/row_count"] == 3 and "last_changed" not in regions

    second = _tick(defs, db_url, first.cursor, instance)
    assert _keys(second) == set()

    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        # an edit that moves the change timestamp, and a row deleted from a table without one
        conn.execute(
            ambassadors.update()
            .where(ambassadors.c.id == 1)
            .values(email="a2@x.org", updated_at=dt.datetime(2024, 4, 1, tzinfo=dt.UTC))
        )
        conn.execute(sa.text("DELETE FROM regions WHERE id = 2"))
    engine.dispose()
    third = _tick(defs, db_url, second.cursor, instance)
    assert _keys(third) == {"masters/ambassadors", "masters/regions"}
    amb_now = _observed(instance, "masters", "ambassadors")[0]
    assert amb_now["dagster/row_count"] == 2
    assert amb_now["last_changed"] == dt.datetime(2024, 4, 1, tzinfo=dt.UTC).timestamp()
    assert _observed(instance, "masters", "regions")[0]["dagster/row_count"] == 2


def test_a_missing_master_table_is_observed_as_missing(home: Path, db_url: str) -> None:
    defs = build_definitions(_specs())
    instance = dg.DagsterInstance.ephemeral()
    _tick(defs, db_url, None, instance)
    [record] = instance.fetch_observations(dg.AssetKey(["masters", "regions"]), limit=1).records
    observation = record.asset_observation
    assert observation is not None and observation.metadata["exists"].value is False
    assert observation.description == "table regions is missing in the target database"


def test_observing_the_sources_in_a_run(home: Path, db_url: str) -> None:
    """What "Observe sources" in the UI does: the same look, in a run."""
    _create_masters(db_url)
    (home / "inbox" / "signups_1.csv").write_text(ROWS)
    defs = build_definitions(_specs(), resources=_resources(db_url))
    sources = build_source_assets(_specs())
    assert sources is not None
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=list(sources.keys)
    )
    assert result.success
    seen = {
        e.asset_observation_data.asset_observation.asset_key.to_user_string(): {
            k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()
        }
        for e in result.get_asset_observation_events()
    }
    assert seen["inbox/signups"]["files_waiting"] == 1
    assert seen["inbox/sessions"]["files_waiting"] == 0
    assert seen["masters/regions"]["dagster/row_count"] == 3


def test_the_specs_freshness_becomes_a_policy_and_checks() -> None:
    specs = _specs()
    plain = DatasetSpec.model_validate({**SIGNUPS, "name": "plain", "target_table": "plain"})
    off = DatasetSpec.model_validate({**SESSIONS, "name": "off", "freshness": None})
    defs = build_definitions({**specs, "plain": plain, "off": off})
    graph = defs.resolve_asset_graph()
    lag = graph.get(dg.AssetKey("signups")).freshness_policy
    assert lag == dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26))
    daily = graph.get(dg.AssetKey("sessions")).freshness_policy
    # stale when nothing was loaded since the day before the deadline: an hour after the
    # 02:00 schedule
    assert daily == dg.FreshnessPolicy.cron("0 3 * * *", lower_bound_delta=dt.timedelta(days=1))
    assert graph.get(dg.AssetKey("plain")).freshness_policy is None
    assert graph.get(dg.AssetKey("off")).freshness_policy is None
    checks = {k.to_user_string() for k in graph.asset_check_keys}
    assert {f"signups:{LAG_CHECK}", f"sessions:{DAILY_CHECK}"} <= checks
    assert not {c for c in checks if c.startswith(("plain:", "off:")) and "max_lag" in c}
    assert f"off:{DAILY_CHECK}" not in checks
    # an import run evaluates them too: they are in the dataset's job
    job = defs.resolve_job_def("sessions_import_job")
    assert (
        dg.AssetCheckKey(dg.AssetKey("sessions"), DAILY_CHECK)
        in job.asset_layer.asset_graph.asset_check_keys
    )
    custom = DatasetSpec.model_validate({**SESSIONS, "freshness": {"deadline_hour": 9}})
    policy = build_definitions({"sessions": custom}).resolve_asset_graph()
    assert policy.get(dg.AssetKey("sessions")).freshness_policy == dg.FreshnessPolicy.cron(
        "0 9 * * *", lower_bound_delta=dt.timedelta(days=1)
    )


@pytest.mark.parametrize(
    ("freshness_spec", "message"),
    [
        ({"deadline_hour": 5}, "deadline_hour needs `partitioning: daily`"),
        ({"max_lag_hours": 0.001}, "at least one minute"),
        ({"max_lag": 3}, "max_lag"),
    ],
)
def test_a_bad_freshness_spec_is_refused(freshness_spec: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        DatasetSpec.model_validate({**SIGNUPS, "freshness": freshness_spec})


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (dt.datetime(2024, 1, 6, 2, 59, tzinfo=dt.UTC), dt.date(2024, 1, 4)),
        (dt.datetime(2024, 1, 6, 3, 0, tzinfo=dt.UTC), dt.date(2024, 1, 5)),
        (dt.datetime(2024, 1, 6, 23, 0, tzinfo=dt.UTC), dt.date(2024, 1, 5)),
    ],
)
def test_yesterday_is_due_once_the_deadline_hour_passed(
    now: dt.datetime, expected: dt.date
) -> None:
    day, deadline = freshness.expected_business_date(now, 3)
    assert day == expected and deadline <= now < deadline + dt.timedelta(days=1)


def _import_day(
    defs: dg.Definitions, home: Path, day: dt.date, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    # each day's own rows: the same content twice would be a duplicate, which loads nothing
    rows = ROWS.replace("a@example.com", f"a{day:%Y%m%d}@example.com")
    (home / "inbox" / f"sessions_{day.isoformat()}.csv").write_text(rows)
    return defs.resolve_job_def("sessions_import_job").execute_in_process(
        partition_key=day.isoformat(), instance=instance
    )


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_the_daily_check_fails_while_the_due_partition_is_missing(home: Path, db_url: str) -> None:
    _create_masters(db_url)
    defs = build_definitions(_specs(), resources=_resources(db_url))
    instance = dg.DagsterInstance.ephemeral()
    due, _ = freshness.expected_business_date(dt.datetime.now(dt.UTC), 3)
    check_key = dg.AssetCheckKey(dg.AssetKey("sessions"), DAILY_CHECK)

    # the sensor asks for a first evaluation, in a run of the check alone
    first = _tick(defs, db_url, None, instance)
    [request] = first.run_requests
    assert check_key in (request.asset_check_keys or [])
    job = defs.resolve_implicit_global_asset_job_def()
    alone = job.get_subset(
        asset_selection=set(), asset_check_selection={check_key}
    ).execute_in_process(instance=instance)
    [evaluation] = alone.get_asset_check_evaluations()
    assert not evaluation.passed
    assert f"sessions for {due} is not loaded" in (evaluation.description or "")
    assert evaluation.metadata["expected_date"].value == due.isoformat()

    # an older day loaded does not make it fresh; the due day does, in the import run itself
    older = _import_day(defs, home, due - dt.timedelta(days=1), instance)
    assert older.success and not _evaluations(older)[DAILY_CHECK].passed
    loaded = _import_day(defs, home, due, instance)
    assert loaded.success
    assert _evaluations(loaded)[DAILY_CHECK].passed

    # the verdict moved since the sensor's last look: it runs the check again
    second = _tick(defs, db_url, first.cursor, instance)
    [again] = second.run_requests
    assert again.asset_check_keys == [check_key]
    third = _tick(defs, db_url, second.cursor, instance)
    assert not third.run_requests
    # a fresh verdict holds until the next deadline; past it the check runs again
    state = json.loads(third.cursor or "{}")
    fresh, until = state["checks"][check_key.to_user_string()]
    assert fresh is True and until > time.time()
    state["checks"][check_key.to_user_string()] = [True, time.time() - 1]
    [expired] = _tick(defs, db_url, json.dumps(state), instance).run_requests
    assert expired.asset_check_keys == [check_key]


def test_the_lag_check_and_policy_go_stale_past_max_lag(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create_masters(db_url)
    specs = _specs()
    defs = build_definitions(specs, resources=_resources(db_url))
    instance = dg.DagsterInstance.ephemeral()
    node = defs.resolve_asset_graph().get(dg.AssetKey("signups"))
    evaluator = freshness_evaluator.TimeWindowFreshnessPolicyEvaluator()

    def policy_state() -> FreshnessState:
        return asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))

    assert policy_state() is FreshnessState.UNKNOWN  # never materialized
    path = home / "inbox" / "signups_1.csv"
    path.write_text(ROWS)
    key = files.partition_key_for(path, files.sha256_of(path))
    instance.add_dynamic_partitions("signups_files", [key])
    result = defs.resolve_job_def("signups_import_job").execute_in_process(
        partition_key=key, instance=instance
    )
    assert result.success
    assert _evaluations(result)[LAG_CHECK].passed
    assert policy_state() is FreshnessState.PASS

    db = Database.connect(db_url)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=27)
    stale = freshness_verdicts(specs["signups"], db, later)[LAG_CHECK]
    assert not stale.fresh and "more than 26 h" in stale.description
    fresh = freshness_verdicts(specs["signups"], db, later - dt.timedelta(hours=2))[LAG_CHECK]
    assert fresh.fresh and fresh.fresh_until is not None
    db.dispose()
    monkeypatch.setattr(freshness_evaluator, "get_current_timestamp", lambda: later.timestamp())
    assert policy_state() is FreshnessState.FAIL
