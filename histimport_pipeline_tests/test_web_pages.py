"""The HTML pages through FastAPI's test client, on SQLite and PostgreSQL: what the listing
shows for its filters, search, sort and pages; one import; who sees which buttons; CSRF;
sign-in; escaping; datasets and lineage. The demo's files are imported first."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.rollback import rollback_import, rollback_preview
from histimport_pipeline.engine.spec import load_specs
from histimport_pipeline.engine.tracking import cleanup as retention
from histimport_pipeline.engine.tracking import history, lineage, overview
from histimport_pipeline.web.app import create_app
from histimport_pipeline.web.auth import COOKIE
from histimport_pipeline.web.config import WebConfig
from histimport_pipeline_tests.helpers import rows
from histimport_pipeline_tests.web_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    demo_settings,
    import_demo,
    web_config,
)

HTML = {"accept": "text/html"}


class Demo:
    """The demo imported, and a test client of the service over it."""

    def __init__(self, tmp_path: Path, db_url: str, db: Database, config: WebConfig) -> None:
        self.settings = demo_settings(tmp_path, db_url)
        self.db = db
        self.ids = import_demo(self.settings, db)
        self.config = config
        self.client = TestClient(create_app(self.settings, config, db))

    def as_(self, token: str | None) -> TestClient:
        """The client signed in with ``token`` (its cookie), or signed out."""
        self.client.cookies.clear()
        if token:
            self.client.cookies.set(COOKIE, token)
        return self.client

    def page(self, url: str, token: str | None = VIEWER_TOKEN) -> str:
        response = self.as_(token).get(url, headers=HTML)
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture
def demo(tmp_path: Path, db_url: str, db: Database) -> Iterator[Demo]:
    found = Demo(tmp_path, db_url, db, web_config())
    with found.client:
        yield found


def listed(page: str) -> list[int]:
    """The import ids of the listing's rows, top to bottom."""
    return [int(i) for i in re.findall(r'<tr data-import-id="(\d+)"', page)]


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]*)">', page)
    assert found, "the page has no CSRF meta tag"
    return found.group(1)


def by(demo: Demo, **filters: Any) -> list[int]:
    """The ids the engine lists for ``filters``, newest first (what the page must show)."""
    found = history.list_imports(demo.db, history.HistoryFilter(**filters), limit=1000)
    return [r["import_id"] for r in found["imports"]]


def test_listing_filters_search_and_dates(demo: Demo) -> None:
    everything = demo.page("/")
    assert listed(everything) == sorted(demo.ids.values(), reverse=True)
    assert "Imports 1 to 11 of 11" in everything
    sessions = listed(demo.page("/imports?dataset=sessions"))
    assert sessions == sorted(
        (i for n, i in demo.ids.items() if n.startswith("sessions")), reverse=True
    )
    partial = listed(demo.page("/imports?status=partial"))
    assert partial == [demo.ids["signups_2024-01_corrected.csv"], demo.ids["signups_2024-01.csv"]]
    january = listed(demo.page("/imports?file=2024-01"))
    assert sorted(january) == sorted(i for n, i in demo.ids.items() if "2024-01" in n)
    both = listed(demo.page("/imports?dataset=signups&status=success"))
    assert both == [demo.ids["signups_2024-03.xlsx"], demo.ids["signups_2024-02.json"]]
    today = dt.datetime.now(dt.UTC).date()
    assert listed(demo.page(f"/imports?since={today}")) == listed(everything)
    assert listed(demo.page(f"/imports?until={today - dt.timedelta(days=1)}")) == []
    assert "No imports match." in demo.page(f"/imports?until={today - dt.timedelta(days=1)}")


def test_listing_says_what_is_wrong_with_a_filter(demo: Demo) -> None:
    page = demo.page("/imports?status=finished&since=last+tuesday&sort=secret")
    assert "status &#39;finished&#39; is not one of" in page
    assert "since &#39;last tuesday&#39; is neither a date" in page
    assert "cannot sort by &#39;secret&#39;" in page
    assert listed(page) == sorted(demo.ids.values(), reverse=True)


def test_listing_sorts_by_a_column_and_keeps_the_filters(demo: Demo) -> None:
    page = demo.page("/imports?dataset=signups")
    heading = re.search(r'<a href="([^"]+)">File</a>', page)
    assert heading, "the File heading is not a link"
    href = html.unescape(heading.group(1))
    assert "dataset=signups" in href and "sort=file_name" in href
    ascending = demo.page(href)
    names = [n for n in sorted(demo.ids) if n.startswith("signups")]
    assert listed(ascending) == [demo.ids[n] for n in names]
    assert 'aria-sort="ascending"' in ascending
    assert '<input type="hidden" name="sort" value="file_name">' in ascending  # filtering keeps it
    again = re.search(r'<a href="([^"]+)">File <span aria-hidden="true">▲</span></a>', ascending)
    assert again, "the sorted heading does not show its direction"
    descending = demo.page(html.unescape(again.group(1)))
    assert listed(descending) == [demo.ids[n] for n in reversed(names)]
    assert 'aria-sort="descending"' in descending
    by_failed = listed(demo.page("/imports?sort=-rows_failed"))
    failed = {
        r["import_id"]: r["rows_failed"] or 0 for r in history.list_imports(demo.db)["imports"]
    }
    assert [failed[i] for i in by_failed[:3]] == sorted(failed.values(), reverse=True)[:3]


def test_listing_pages_show_the_total_and_the_right_rows(demo: Demo) -> None:
    newest_first = sorted(demo.ids.values(), reverse=True)
    first = demo.page("/imports?per_page=4")
    assert listed(first) == newest_first[:4]
    assert "Imports 1 to 4 of 11" in first and "Page 1 of 3" in first
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert nxt and "per_page=4" in html.unescape(nxt.group(1))
    third = demo.page("/imports?per_page=4&page=3")
    assert listed(third) == newest_first[8:]
    assert "Imports 9 to 11 of 11" in third and 'rel="next"' not in third
    filtered = demo.page("/imports?dataset=sessions&per_page=4&page=2")
    assert listed(filtered) == by(demo, dataset="sessions")[4:]
    assert "of 6" in filtered


def test_one_import_shows_summary_errors_failed_rows_reviews_and_audit(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-01.csv"]
    page = demo.page(f"/imports/{import_id}")
    assert 'class="badge status-partial"' in page
    assert "signups_2024-01.csv" in page and "demo" in page
    assert f'href="/api/imports/{import_id}/errors"' in page
    assert "Download failed rows (CSV)" in page
    assert "amount: &#39;-3.00&#39; is below the minimum 0" in page  # a top error
    failed = overview.first_failed_rows(demo.db, import_id)
    assert len(failed) == 4
    assert re.findall(r"<td class=\"num\">(\d+)</td><td>(\w+)</td>", page)[: len(failed)] == [
        (str(f["source_row"]), f["column_name"]) for f in failed
    ]
    assert "Zed Unknown" in page and "needs_review" in page  # the value waiting for review
    assert '<svg class="phases"' in page and "reconcile:" in page  # the phase bar
    assert "<td>file_received</td>" in page and "<td>parsed</td>" in page  # the audit trail
    # A viewer sees no operator's buttons.
    assert "/rollback" not in page and "/accept" not in page and "/reject" not in page
    operator = demo.page(f"/imports/{import_id}", OPERATOR_TOKEN)
    assert f'href="/imports/{import_id}/rollback"' in operator
    assert "/accept" in operator and "/reject" in operator


def test_a_rejected_import_shows_why_and_offers_no_rollback(demo: Demo) -> None:
    rejected = by(demo, status="rejected")[0]
    page = demo.page(f"/imports/{rejected}", OPERATOR_TOKEN)
    assert 'class="badge status-rejected"' in page
    message = history.get_import_detail(demo.db, rejected)["error_message"]
    assert "above the dataset" in message and str(escape(message)) in page
    assert f"/imports/{rejected}/rollback" not in page
    confirm = demo.page(f"/imports/{rejected}/rollback", OPERATOR_TOKEN)
    assert "loaded nothing (status rejected)" in confirm and "confirm-rollback" not in confirm


def test_viewer_gets_403_and_operator_needs_the_csrf_token(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-02.json"]
    before = len(rows(demo.db, "signups"))
    viewer = demo.as_(VIEWER_TOKEN)
    token = csrf_of(viewer.get(f"/imports/{import_id}", headers=HTML).text)
    refused = viewer.post(f"/imports/{import_id}/rollback", data={"csrf": token}, headers=HTML)
    assert refused.status_code == 403 and "vera is a viewer" in refused.text
    operator = demo.as_(OPERATOR_TOKEN)
    no_csrf = operator.post(f"/imports/{import_id}/rollback", data={}, headers=HTML)
    assert no_csrf.status_code == 403 and "CSRF token is missing or wrong" in no_csrf.text
    wrong = operator.post(f"/imports/{import_id}/rollback", data={"csrf": token}, headers=HTML)
    assert wrong.status_code == 403  # the viewer's token is not the operator's
    assert len(rows(demo.db, "signups")) == before
    assert history.import_progress(demo.db, import_id)["status"] == "success"
    for verdict in ("accept", "reject"):
        match = f"/imports/{demo.ids['signups_2024-01.csv']}/reviews/3/{verdict}"
        assert viewer.post(match, data={"csrf": token}).status_code == 403
    assert viewer.post("/imports/1/reviews/apply", data={"csrf": token}).status_code == 403


def test_rollback_confirms_what_it_undoes_then_undoes_it(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-02.json"]
    mine = [r for r in rows(demo.db, "signups") if r["_import_id"] == import_id]
    assert len(mine) == 12
    confirm = demo.page(f"/imports/{import_id}/rollback", OPERATOR_TOKEN)
    assert (
        f"Roll back import {import_id} (signups_2024-02.json, dataset signups): deletes the 12 "
        "row(s) it wrote and restores 0 row(s)" in confirm
    )
    operator = demo.as_(OPERATOR_TOKEN)
    done = operator.post(
        f"/imports/{import_id}/rollback", data={"csrf": csrf_of(confirm)}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/imports/{import_id}?")
    after = operator.get(done.headers["location"], headers=HTML).text
    assert "rolled back import" in after and 'class="badge status-rolled_back"' in after
    assert "rolled_back" in after and "olga" in after  # the audit trail names the operator
    assert not [r for r in rows(demo.db, "signups") if r["_import_id"] == import_id]


def test_rollback_of_an_import_with_later_changes_names_them_and_cascades(demo: Demo) -> None:
    first, corrected = demo.ids["signups_2024-01.csv"], demo.ids["signups_2024-01_corrected.csv"]
    preview = rollback_preview(demo.db, first)
    assert preview["possible"] and preview["dependents"] == [corrected]
    confirm = demo.page(f"/imports/{first}/rollback", OPERATOR_TOKEN)
    assert f'<a href="/imports/{corrected}">import {corrected}</a>' in confirm
    assert 'name="cascade" value="1"' in confirm
    later = rollback_preview(demo.db, corrected)
    assert (later["rows_to_delete"], later["rows_to_restore"]) == (1, 1)  # one row it updated
    result = rollback_import(demo.db, corrected)
    assert [(u.rows_deleted, u.rows_restored) for u in result.undone] == [(1, 1)]
    assert rollback_preview(demo.db, corrected)["reason"] == (
        f"import {corrected} was rolled back already"
    )


def test_review_accept_then_load_the_held_rows(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-01.csv"]
    page = demo.page(f"/imports/{import_id}", OPERATOR_TOKEN)
    match = re.search(rf'action="/imports/{import_id}/reviews/(\d+)/accept"', page)
    assert match, "no accept form for the value waiting for review"
    operator = demo.as_(OPERATOR_TOKEN)
    decided = operator.post(
        f"/imports/{import_id}/reviews/{match.group(1)}/accept",
        data={"csrf": csrf_of(page), "entity_id": "5"},
        follow_redirects=False,
    )
    assert decided.status_code == 303
    page = operator.get(decided.headers["location"], headers=HTML).text
    assert "decided: as 5" in page and 'id="apply-review"' in page
    applied = operator.post(
        f"/imports/{import_id}/reviews/apply", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert applied.status_code == 303
    page = operator.get(applied.headers["location"], headers=HTML).text
    assert "loaded 1 held row(s); 0 still wait" in page
    zed = [r for r in rows(demo.db, "signups") if r["ambassador_name"] == "Zed Unknown"]
    assert [str(r["ambassador_id"]) for r in zed] == ["5"]


def test_a_hostile_file_name_is_escaped(demo: Demo, tmp_path: Path) -> None:
    spec = load_specs(demo.settings.datasets)["signups"]
    path = tmp_path / "signups_x.csv"
    path.write_text("ID,E-mail\nS1,a@example.com\n")
    hostile = 'signups_<script>alert("x")</script>.csv'
    result = run_import(demo.db, spec, path, ImportOptions(file_name=hostile, user_id="<b>me</b>"))
    for page in (demo.page("/imports"), demo.page(f"/imports/{result.import_id}")):
        assert "<script>alert" not in page and "<b>me</b>" not in page
        assert "signups_&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;.csv" in page
        assert "&lt;b&gt;me&lt;/b&gt;" in page
    looked_up = demo.page("/lineage?table=signups&key=%3Cscript%3E")
    assert "<script>" not in looked_up.replace('<script src="/static/app.js" defer></script>', "")


def test_pages_have_no_inline_script_or_style(demo: Demo) -> None:
    for url in ("/imports", "/imports/1", "/datasets", "/lineage?table=signups", "/login"):
        page = demo.page(url)
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [], url
        assert " style=" not in page and "<style" not in page, url
        assert re.findall(r'(?:src|href)="https?://', page) == [], url
        assert "<th>" not in page, url  # every header cell says its scope


def test_sign_in_sets_the_cookie_and_the_header_shows_who(demo: Demo) -> None:
    client = demo.as_(None)
    gate = client.get("/imports?dataset=signups", headers=HTML, follow_redirects=False)
    assert gate.status_code == 303
    assert gate.headers["location"] == "/login?next=%2Fimports%3Fdataset%3Dsignups"
    form = client.get(gate.headers["location"], headers=HTML)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert csrf and 'name="next" value="/imports?dataset=signups"' in form.text
    no_csrf = client.post("/login", data={"token": OPERATOR_TOKEN}, headers=HTML)
    assert no_csrf.status_code == 403
    wrong = client.post("/login", data={"token": "nope", "csrf": csrf.group(1)}, headers=HTML)
    assert wrong.status_code == 401 and "not one this service knows" in wrong.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', wrong.text)  # a fresh form
    assert csrf
    done = client.post(
        "/login",
        data={"token": OPERATOR_TOKEN, "csrf": csrf.group(1), "next": "/imports?dataset=signups"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/imports?dataset=signups"
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http; over https the cookie is Secure
    page = client.get("/imports", headers=HTML).text
    assert 'Signed in as <strong>olga</strong> <span class="role">operator</span>' in page
    assert 'href="/upload"' in page
    out = client.post("/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert out.status_code == 303
    assert any(c.startswith(f'{COOKIE}=""') for c in out.headers.get_list("set-cookie"))


def test_sign_in_to_another_site_is_refused(demo: Demo) -> None:
    """A form posted from elsewhere carries no nonce cookie of ours: refused, no cookie."""
    client = demo.as_(None)
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/login").text)
    assert found
    client.cookies.clear()
    refused = client.post("/login", data={"token": VIEWER_TOKEN, "csrf": found.group(1)})
    assert refused.status_code == 403 and COOKIE not in refused.headers.get("set-cookie", "")
    assert safe_redirect(demo, "//evil.example/x") == "/"
    assert safe_redirect(demo, "https://evil.example/x") == "/"


def safe_redirect(demo: Demo, target: str) -> str:
    client = demo.as_(None)
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/login").text)
    assert found
    done = client.post(
        "/login",
        data={"token": VIEWER_TOKEN, "csrf": found.group(1), "next": target},
        follow_redirects=False,
    )
    return str(done.headers["location"])


def test_without_tokens_this_machine_reads_and_cannot_write(
    tmp_path: Path, db_url: str, db: Database
) -> None:
    demo = Demo(tmp_path, db_url, db, WebConfig(secret=b"s"))
    with demo.client:
        page = demo.page("/imports", None)
        assert "no tokens configured, read only" in page
        assert 'href="/upload"' not in page
        refused = demo.client.post("/imports/4/rollback", data={"csrf": csrf_of(page)})
        assert refused.status_code == 403 and "none configured" in refused.text
        assert demo.client.get("/upload", headers=HTML).status_code == 403


def test_datasets_page_draws_imports_and_rows_per_day(demo: Demo) -> None:
    page = demo.page("/datasets")
    today = dt.datetime.now(dt.UTC).date()
    activity = overview.daily_activity(demo.db, "sessions", 30)
    assert activity[-1]["by_status"] == {"success": 5, "rejected": 1}
    section = page[page.index('id="dataset-sessions"') :]
    assert f"<title>{today}: 5 success</title>" in section
    assert f"<title>{today}: 1 rejected</title>" in section
    assert f"<title>{today}: {activity[-1]['rows_loaded']:,} rows loaded</title>" in section
    assert section.count('class="bar status-success"') >= 1
    assert "Last success" in section and ("stale" in section or "fresh" in section)
    signups = page[page.index('id="dataset-signups"') :]
    section = section[: section.index('id="dataset-signups"')]
    assert f"<title>{today}: 2 partial</title>" not in section
    assert f"<title>{today}: 2 partial</title>" in signups


def test_lineage_page_lists_contributing_imports_and_finds_a_row(demo: Demo) -> None:
    page = demo.page("/lineage?table=signups")
    found = re.findall(r'<td class="num"><a href="/imports/(\d+)">', page)
    expected = [i["import_id"] for i in lineage.lineage(demo.db, "signups")["imports"]]
    assert [int(i) for i in found] == expected
    row = demo.page("/lineage?table=signups&key=007")
    assert f'Written by <a href="/imports/{demo.ids["signups_2024-01.csv"]}">' in row
    assert "source row 17" in row
    missing = demo.page("/lineage?table=signups&key=S99999")
    assert "no row with key S99999 in signups" in missing
    unknown = demo.page("/lineage?table=nope")
    assert "no table &#39;nope&#39;" in unknown


def test_first_failed_rows_stops_at_the_limit(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-01.csv"]
    two = overview.first_failed_rows(demo.db, import_id, limit=2)
    assert [r["source_row"] for r in two] == [
        r["source_row"] for r in overview.first_failed_rows(demo.db, import_id)
    ][:2]
    assert overview.first_failed_rows(demo.db, demo.ids["signups_2024-02.json"]) == []


def test_an_unknown_import_is_a_404_page_without_a_traceback(demo: Demo) -> None:
    response = demo.as_(VIEWER_TOKEN).get("/imports/999", headers=HTML)
    assert response.status_code == 404
    assert "404: not found" in response.text and "999" in response.text
    assert "Traceback" not in response.text and 'href="/imports"' in response.text
    confirm = demo.as_(OPERATOR_TOKEN).get("/imports/999/rollback", headers=HTML)
    assert confirm.status_code == 404
    # an address of no page, or with a value of the wrong kind, is a page too, not JSON
    for path, code in (("/nowhere", 404), ("/imports/abc", 422)):
        answer = demo.as_(VIEWER_TOKEN).get(path, headers=HTML)
        assert answer.status_code == code and answer.headers["content-type"].startswith("text/html")
        assert "Traceback" not in answer.text and 'href="/imports"' in answer.text
    assert demo.as_(VIEWER_TOKEN).get("/api/imports/abc").json()["detail"][0]["loc"]


def test_the_dagster_run_link_and_a_secure_cookie_over_https(
    tmp_path: Path, db_url: str, db: Database
) -> None:
    config = dataclasses.replace(web_config(), dagster_url="http://dagster.example:3000")
    demo = Demo(tmp_path, db_url, db, config)
    import_id = demo.ids["signups_2024-02.json"]
    with db.engine.begin() as conn:
        tracking.update_import(conn, db, import_id, dagster_run_id="0123abcd-run")
    with TestClient(create_app(demo.settings, config, db), base_url="https://testserver") as client:
        form = client.get("/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
        assert csrf
        done = client.post(
            "/login", data={"token": VIEWER_TOKEN, "csrf": csrf.group(1)}, follow_redirects=False
        )
        cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith(COOKIE))
        assert "Secure" in cookie and "HttpOnly" in cookie
        page = client.get(f"/imports/{import_id}", headers=HTML).text
    assert 'href="http://dagster.example:3000/runs/0123abcd-run"' in page
    assert "Dagster run 0123abcd" in page


def test_an_archived_import_offers_no_rollback_and_says_why(demo: Demo) -> None:
    import_id = demo.ids["signups_2024-02.json"]
    year = tracking.utcnow() + dt.timedelta(days=366)
    retention.cleanup(demo.db, 1000, year, error_dir=demo.settings.error_dir)
    preview = rollback_preview(demo.db, import_id)
    assert not preview["possible"] and "archived" in preview["reason"]
    page = demo.page(f"/imports/{import_id}", OPERATOR_TOKEN)
    assert "its detail rows are gone; no rollback" in page
    assert f'href="/imports/{import_id}/rollback"' not in page
    confirm = demo.page(f"/imports/{import_id}/rollback", OPERATOR_TOKEN)
    assert str(escape(preview["reason"])) in confirm and "confirm-rollback" not in confirm
