"""The web service's HTTP API through FastAPI's test client, on SQLite and PostgreSQL: the
history with filters and totals, one import, its status and failed rows, statistics,
lineage, datasets, reviews; who may do what; uploads, hostile names included."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.demo import write_demo
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import load_specs
from histimport_pipeline.web.app import create_app
from histimport_pipeline.web.auth import COOKIE, CSRF_HEADER, Caller, csrf_token
from histimport_pipeline.web.config import Role, UploadMode, WebConfig, hash_token
from histimport_pipeline_tests.helpers import audit_entries, history
from histimport_pipeline_tests.test_cli import BAD, GOOD, cli_env, cli_runner, write
from histimport_pipeline_tests.test_history_queries import _imports

ALICE, VICTOR = "alice-operator-token", "victor-viewer-token"


def _config(mode: UploadMode = UploadMode.SENSOR, **extra: Any) -> WebConfig:
    entries = f"alice:operator:{hash_token(ALICE)}, victor:viewer:{hash_token(VICTOR)}"
    env = {"HISTIMPORT_WEB_TOKENS": entries, "HISTIMPORT_WEB_UPLOAD_MODE": mode.value, **extra}
    return WebConfig.from_env(env)


def _settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings.from_env(cli_env(tmp_path, db_url))


@pytest.fixture
def settings(db: Database, db_url: str, tmp_path: Path) -> Settings:
    return _settings(tmp_path, db_url)


def _client(settings: Settings, db: Database, config: WebConfig, **kw: Any) -> TestClient:
    return TestClient(create_app(settings, config, db), **kw)


@pytest.fixture
def open_api(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The service with no tokens configured: reads for loopback clients, no writes."""
    with _client(settings, db, WebConfig()) as client:
        yield client


@pytest.fixture
def api(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The service with an operator (alice) and a viewer (victor)."""
    with _client(settings, db, _config(HISTIMPORT_DAGSTER_URL="http://dagster.test")) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ids(answer: Any) -> list[int]:
    assert answer.status_code == 200, answer.text
    return [i["import_id"] for i in answer.json()["imports"]]


def test_history_filters_sorts_and_pages_with_totals(
    open_api: TestClient, db: Database, tmp_path: Path
) -> None:
    _imports(db, tmp_path)
    page = open_api.get("/api/imports").json()
    assert set(page) == {"imports", "total_count", "limit", "offset"}
    assert page["total_count"] == 5 and [i["import_id"] for i in page["imports"]] == [5, 4, 3, 2, 1]
    first = page["imports"][-1]
    assert first["rows_inserted"] == first["rows_created"] == 3
    assert first["url"].endswith("/api/imports/1") and first["page_url"].endswith("/imports/1")
    assert first["started_at"].endswith(("Z", "+00:00"))  # ISO 8601, UTC
    assert _ids(open_api.get("/api/imports", params={"dataset": "signups", "status": "success"}))
    assert _ids(open_api.get("/api/imports", params={"status": "rejected"})) == [4]
    assert _ids(open_api.get("/api/imports", params={"file": "feb"})) == [2]
    assert _ids(open_api.get("/api/imports", params={"file": "100%"})) == [4]
    assert _ids(open_api.get("/api/imports", params={"table": "trades"})) == [3]
    assert _ids(open_api.get("/api/imports", params={"user": "bob"})) == [4, 2]
    assert _ids(open_api.get("/api/imports", params={"source": "cli"})) == [5, 4, 3, 2, 1]
    assert _ids(open_api.get("/api/imports", params={"source": "upload"})) == []
    assert _ids(open_api.get("/api/imports", params={"sort": "file_name"}))[0] == 2
    assert _ids(open_api.get("/api/imports", params={"until": "2000-01-01"})) == []
    assert _ids(open_api.get("/api/imports", params={"since": "1d"})) == [
        5,
        4,
        3,
        2,
    ]  # 1 is dated 2024
    second = open_api.get("/api/imports", params={"limit": 2, "offset": 2}).json()
    assert (second["total_count"], second["limit"], second["offset"]) == (5, 2, 2)
    assert [i["import_id"] for i in second["imports"]] == [3, 2]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "bogus"},
        {"source": "fax"},
        {"sort": "password"},
        {"since": "last tuesday"},
        {"limit": 0},
        {"limit": 100000},
        {"offset": -1},
    ],
)
def test_a_bad_filter_is_422_with_a_detail(open_api: TestClient, params: dict[str, Any]) -> None:
    answer = open_api.get("/api/imports", params=params)
    assert answer.status_code == 422
    assert answer.json()["detail"]


def test_one_import_its_status_and_unknown_ids(
    api: TestClient, db: Database, settings: Settings, tmp_path: Path
) -> None:
    spec = load_specs(settings.datasets)["signups"]
    result = run_import(
        db, spec, write(tmp_path, "signups_bad.csv", BAD), ImportOptions(dagster_run_id="r-1")
    )
    detail = api.get(f"/api/imports/{result.import_id}", headers=bearer(VICTOR)).json()
    assert detail["status"] == "rejected" and detail["rows_failed"] == 2
    assert detail["failed_rows"] == {"total": 2, "by_category": {"format": 2}}
    actions = [e["action"] for e in detail["audit_trail"]]
    assert (actions[0], actions[-1]) == ("file_received", "rejected")
    assert all(e["summary"] and e["severity"] for e in detail["audit_trail"])
    assert detail["file_metadata"]["headers"] == ["ID", "email", "amount"]
    assert detail["phase_seconds"] and detail["spec_used"]["name"] == "signups"
    links = detail["links"]
    assert links["dagster_run"] == "http://dagster.test/runs/r-1"
    assert links["failed_rows_csv"].endswith(f"/api/imports/{result.import_id}/errors")
    status = api.get(f"/api/imports/{result.import_id}/status", headers=bearer(VICTOR)).json()
    assert status["finished"] is True and status["status"] == "rejected"
    assert status["phase"] == "CONFIRM"  # the gate stopped it
    for path in ("/api/imports/999", "/api/imports/999/status", "/api/imports/999/errors"):
        answer = api.get(path, headers=bearer(VICTOR))
        assert answer.status_code == 404, path
        assert "no import with id 999" in answer.json()["detail"]


def test_the_errors_csv_is_the_file_histimport_errors_writes(
    open_api: TestClient, db: Database, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    spec = load_specs(settings.datasets)["notes"]
    text = (
        "id,qty,price,bonus,formula,handle,flag,email\n"
        "1,1,1.00,1,=SUM(A1),@me,-x,bad\n"
        "2,2,2.00,2,plain,ok,+1,a@example.com\n"
        '3,x,3.00,3,"multi\nline",h,f,c@example.com\n'
    )
    result = run_import(db, spec, write(tmp_path, "notes_1.csv", text))
    answer = open_api.get(f"/api/imports/{result.import_id}/errors")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="import_{result.import_id}_errors.csv"'
    )
    out = tmp_path / "cli.csv"
    cli_runner(tmp_path, db_url)("errors", str(result.import_id), "-o", str(out))
    assert answer.content == out.read_bytes()
    assert answer.content.startswith(b"\xef\xbb\xbf") and b"'=SUM(A1)" in answer.content


def test_statistics_lineage_and_datasets(
    open_api: TestClient, db: Database, settings: Settings, tmp_path: Path
) -> None:
    _imports(db, tmp_path)
    stats = open_api.get("/api/statistics", params={"days": 7}).json()
    # import 1 is dated 2024: outside the last 7 days
    assert stats["totals"]["imports"] == 4 and stats["totals"]["distinct_users"] == 2
    assert open_api.get("/api/statistics", params={"user": "bob"}).json()["totals"]["imports"] == 2
    lineage = open_api.get("/api/tables/signups/lineage").json()
    assert lineage["total_rows"] == 4 and lineage["rows_without_import"] == 0
    assert [i["import_id"] for i in lineage["imports"]] == [1, 2]
    one = open_api.get("/api/tables/signups/lineage", params={"key": "007"}).json()
    assert one["import_id"] == 1 and one["row"]["email"] == "a@example.com"
    missing = open_api.get("/api/tables/signups/lineage", params={"key": "nope"})
    assert missing.status_code == 404
    assert open_api.get("/api/tables/no_such/lineage").status_code == 422
    datasets = {d["name"]: d for d in open_api.get("/api/datasets").json()}
    assert set(datasets) == {"signups", "trades", "notes", "daily", "logs"}
    assert datasets["signups"]["imports"] == 4 and datasets["signups"]["last_import"]["import_id"]
    assert datasets["signups"]["spec"]["key"] == ["signup_id"]
    assert datasets["daily"]["freshness"][0]["check"] == "daily_deadline"
    assert datasets["daily"]["freshness"][0]["fresh"] is False
    activity = open_api.get("/api/datasets/signups/activity", params={"days": 3}).json()
    # imports 2, 4 and 5 (import 1 is dated 2024)
    assert len(activity) == 3 and sum(sum(d["by_status"].values()) for d in activity) == 3
    assert activity[-1]["by_status"] == {"partial": 1, "rejected": 1, "duplicate": 1}
    assert open_api.get("/api/datasets/nope/activity").status_code == 404


def test_who_may_do_what_and_refusals_are_audited(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    _imports(db, tmp_path)
    with _client(settings, db, _config()) as api:
        none = api.get("/api/imports")
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        assert api.get("/api/imports", headers=bearer("guess")).status_code == 401
        assert api.get("/api/imports", headers=bearer(VICTOR)).status_code == 200
        refused = api.post("/api/imports/1/rollback", headers=bearer(VICTOR))
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
        assert history(db, 1)["status"] == "success"
        done = api.post("/api/imports/1/rollback", headers=bearer(ALICE), json={"cascade": True})
        assert done.status_code == 200 and done.json()["undone"]
        assert history(db, 1)["status"] == "rolled_back"
        rollback = [e for e in audit_entries(db, 1) if e["action"] == "rolled_back"]
        assert rollback and rollback[0]["actor"] == "alice"
    t = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        refusals = conn.execute(
            sa.select(t.c.actor, t.c.details).where(t.c.action == "access_refused")
        ).all()
    assert len(refusals) == 3
    assert {r.details["status"] for r in refusals} == {401, 403}
    assert ("victor", "/api/imports/1/rollback") in {(r.actor, r.details["path"]) for r in refusals}
    # No tokens configured: reads on loopback only, and no writes at all.
    with _client(settings, db, WebConfig()) as local:
        assert local.get("/api/imports").status_code == 200
        assert local.post("/api/imports/2/rollback").status_code == 403
    with _client(settings, db, WebConfig(), client=("203.0.113.9", 4000)) as remote:
        assert remote.get("/api/imports").status_code == 403


def test_a_cookie_write_needs_the_csrf_token(
    api: TestClient, db: Database, settings: Settings, tmp_path: Path
) -> None:
    _imports(db, tmp_path)
    api.cookies.set(COOKIE, ALICE)
    assert api.post("/api/imports/3/rollback").status_code == 403
    assert history(db, 3)["status"] == "success"
    config: WebConfig = api.app.state.web.config  # type: ignore[attr-defined]
    caller = Caller("alice", Role.OPERATOR, True, hash_token(ALICE))
    answer = api.post("/api/imports/3/rollback", headers={CSRF_HEADER: csrf_token(config, caller)})
    assert answer.status_code == 200 and history(db, 3)["status"] == "rolled_back"


def test_errors_are_json_details_never_tracebacks(api: TestClient) -> None:
    answer = api.get("/api/imports/abc", headers=bearer(VICTOR))
    assert answer.status_code == 422 and "Traceback" not in answer.text
    assert api.get("/api/nothing-here", headers=bearer(VICTOR)).status_code == 404
    headers = api.get("/api/imports", headers=bearer(VICTOR)).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    schema = api.get("/openapi.json").json()
    assert {"/api/imports", "/api/imports/{import_id}/status", "/api/uploads"} <= set(
        schema["paths"]
    )


def _upload(api: TestClient, name: str, body: bytes, token: str = ALICE, **params: str) -> Any:
    return api.post(
        "/api/uploads",
        params={"dataset": "signups", **params},
        files={"file": (name, body, "text/csv")},
        headers=bearer(token),
    )


@pytest.mark.parametrize(
    "name", ["..", ".hidden.csv", "signups.exe", "a\x00b.csv", "<script>.csv", "", "x" * 300]
)
def test_a_hostile_upload_name_is_refused_and_nothing_is_written(
    api: TestClient, settings: Settings, name: str
) -> None:
    answer = _upload(api, name, GOOD.encode())
    assert answer.status_code == 422, answer.text
    inbox = settings.inbox
    assert not list((inbox / "signups").iterdir()) if (inbox / "signups").exists() else True
    assert not any(p.name.endswith(".part") for p in inbox.rglob("*"))


def test_an_upload_path_keeps_only_its_file_name(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    answer = _upload(api, "../../../../tmp/signups_evil.csv", GOOD.encode())
    assert answer.status_code == 202, answer.text
    assert answer.json()["file_name"] == "signups_evil.csv"
    assert (settings.inbox / "signups" / "signups_evil.csv").read_text() == GOOD
    assert not (tmp_path / "signups_evil.csv").exists()
    again = _upload(api, "signups_evil.csv", b"other")
    assert again.status_code == 409


def test_uploads_refuse_viewers_oversize_files_and_linked_folders(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    with _client(settings, db, _config(HISTIMPORT_WEB_MAX_UPLOAD_BYTES="100")) as api:
        assert _upload(api, "signups_v.csv", GOOD.encode(), VICTOR).status_code == 403
        big = _upload(api, "signups_big.csv", b"ID,email,amount\n" + b"1,a@b.cd,1\n" * 50)
        assert big.status_code == 413 and "100 bytes" in big.json()["detail"]
        assert not (settings.inbox / "signups" / "signups_big.csv").exists()
        assert not any(p.name.endswith(".part") for p in settings.inbox.rglob("*"))
        assert _upload(api, "x.csv", b"1", dataset="nope").status_code == 404
        broken = api.post(
            "/api/uploads?dataset=signups",
            content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.csv"\r\n'
            b"\r\nID\r\n--x",
            headers={**bearer(ALICE), "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert broken.status_code == 422 and not list(settings.inbox.rglob("*.csv"))
        plain = api.post("/api/uploads?dataset=signups", content=b"ID\n", headers=bearer(ALICE))
        assert plain.status_code == 422 and "multipart" in plain.json()["detail"]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (settings.inbox / "trades").symlink_to(elsewhere)
        linked = api.post(
            "/api/uploads",
            params={"dataset": "trades"},
            files={"file": ("trades_1.csv", b"account,trade_no\nA,1\n")},
            headers=bearer(ALICE),
        )
        assert linked.status_code == 422 and not list(elsewhere.iterdir())


def test_a_sensor_mode_upload_is_imported_as_its_uploader(
    api: TestClient, settings: Settings, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histimport_pipeline.orchestration.resources import DatabaseResource
    from histimport_pipeline.orchestration.sensors import build_inbox_sensor

    answer = _upload(api, "signups_up.csv", GOOD.encode())
    assert answer.status_code == 202
    body = answer.json()
    assert (body["mode"], body["uploaded_by"], body["import_id"]) == ("sensor", "alice", None)
    pending = api.get(body["status_url"], headers=bearer(VICTOR)).json()
    assert pending["import_id"] is None
    for name, value in cli_env(settings.home.parent, db_url).items():
        monkeypatch.setenv(name, value)
    spec = load_specs(settings.datasets)["signups"]
    sensor = build_inbox_sensor(spec, dg.define_asset_job("signups_import_job"))
    instance = dg.DagsterInstance.ephemeral()
    # an upload was linked into place whole: the first look requests it
    with dg.build_sensor_context(
        instance=instance, resources={"database": DatabaseResource(url=db_url)}
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.tags["user"] == "alice"


def test_a_direct_upload_is_imported_by_the_service_as_its_uploader(
    settings: Settings, db: Database
) -> None:
    with _client(settings, db, _config(UploadMode.DIRECT)) as api:
        body = _upload(api, "signups_direct.csv", GOOD.encode()).json()
        assert body["mode"] == "direct"
        found = _follow(api, body["status_url"])
        # the file moves on once its import has ended
        api.app.state.web.importer.shutdown(wait=True)  # type: ignore[attr-defined]
        detail = api.get(f"/api/imports/{found['import_id']}", headers=bearer(VICTOR)).json()
    assert (detail["status"], detail["rows_created"]) == ("success", 3)
    assert (detail["user_id"], detail["source"]) == ("alice", "upload")
    assert "/archive/signups/" in detail["file_path"]
    assert not (settings.inbox / "signups" / "signups_direct.csv").exists()
    t = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        uploaded = conn.execute(sa.select(t).where(t.c.action == "uploaded")).mappings().one()
    assert uploaded["actor"] == "alice" and uploaded["details"]["size"] == len(GOOD)


def _follow(api: TestClient, status_url: str) -> dict[str, Any]:
    """Poll an upload's status until its import has ended; fail only when nothing moves."""
    last: Any = None
    still = 0
    while True:
        found = api.get(status_url, headers=bearer(VICTOR)).json()
        if found["status"] not in (None, "pending", "running"):
            return dict(found)
        snapshot = json.dumps(found, sort_keys=True)
        still = still + 1 if snapshot == last else 0
        last = snapshot
        assert still < 600, f"the upload's import has not moved for a minute: {found}"
        time.sleep(0.1)


def test_reviews_are_listed_decided_and_applied_as_the_caller(
    settings: Settings, db: Database
) -> None:
    write_demo(settings, db, today=dt.date(2024, 4, 1))
    spec = load_specs(settings.datasets)["signups"]
    first = sorted(settings.inbox.glob("signups_2024-01.csv"))[0]
    result = run_import(db, spec, first)
    with _client(settings, db, _config()) as api:
        waiting = api.get("/api/reviews", headers=bearer(VICTOR)).json()
        assert waiting and all(w["decision"] == "needs_review" for w in waiting)
        item = waiting[0]
        assert (
            api.post(f"/api/reviews/{item['match_id']}/reject", headers=bearer(VICTOR)).status_code
            == 403
        )
        decided = api.post(f"/api/reviews/{item['match_id']}/reject", headers=bearer(ALICE))
        assert decided.status_code == 200 and decided.json()["decided_by"] == "alice"
        again = api.post(f"/api/reviews/{item['match_id']}/reject", headers=bearer(ALICE))
        assert again.status_code == 409
        assert api.post("/api/reviews/99999/accept", headers=bearer(ALICE)).status_code == 404
        left = api.get("/api/reviews", headers=bearer(VICTOR)).json()
        assert item["match_id"] not in {w["match_id"] for w in left}
        for other in left:
            api.post(f"/api/reviews/{other['match_id']}/reject", headers=bearer(ALICE))
        applied = api.post(f"/api/imports/{result.import_id}/review/apply", headers=bearer(ALICE))
        assert applied.status_code == 200, applied.text
        assert applied.json()["rows_still_held"] == 0
    applied_entries = [
        e for e in audit_entries(db, result.import_id) if e["action"] == "review_applied"
    ]
    assert applied_entries and applied_entries[0]["actor"] == "alice"
