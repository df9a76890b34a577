"""The pages in a real headless Chromium (Playwright, Debian's ``chromium``), against the
service on uvicorn on a loopback port: the issue's scenario from signing in to a rollback.

``scripts/test.sh`` installs chromium when it can and sets HISTIMPORT_REQUIRE_BROWSER=1, so
a machine without a browser fails these tests there instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.tracking import failed_rows, history
from histimport_pipeline.web.app import create_app
from histimport_pipeline.web.auth import COOKIE
from histimport_pipeline.web.config import UploadMode
from histimport_pipeline_tests.helpers import rows
from histimport_pipeline_tests.web_support import (
    OPERATOR_TOKEN,
    demo_settings,
    import_demo,
    web_config,
)

#: How long a wait may see nothing change before it fails.
STALL_S = 60.0


def chromium_path() -> str:
    """Debian's chromium, or a skip (a failure when HISTIMPORT_REQUIRE_BROWSER=1)."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    problem = None
    if found is None:
        problem = "no chromium on PATH (on Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("HISTIMPORT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests need a browser: {problem}")
        pytest.skip(problem)
    assert found is not None
    return found


def wait_for(what: str, probe: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """Call ``probe`` until ``done`` holds for its value; fail when its value has not
    changed for :data:`STALL_S` seconds (whatever the total time)."""
    last, since = object(), time.monotonic()
    while True:
        value = probe()
        if done(value):
            return value
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            pytest.fail(f"waited for {what}; nothing changed for {STALL_S:.0f} s: {value!r}")
        time.sleep(0.1)


class Service:
    """The service on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Service:
        self.thread.start()
        wait_for(
            "the service to start",
            lambda: (self.thread.is_alive(), self.server.started),
            lambda state: state[1] or not state[0],
        )
        if not self.server.started:
            pytest.fail("the service stopped before it answered (see the log above)")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox"], headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_scenario_in_a_browser(browser: Any, tmp_path: Path, db_url: str, db: Database) -> None:
    """Import the demo; sign in; filter, search and sort the imports; open one and download
    its failed rows (the bytes ``histimport errors`` writes); upload a file and watch it
    import; roll it back after confirming; the table's rows are gone."""
    settings = demo_settings(tmp_path, db_url)
    ids = import_demo(settings, db)
    app = create_app(settings, web_config(UploadMode.DIRECT), db)
    with Service(app) as service:
        context = browser.new_context(accept_downloads=True, base_url=service.url)
        page = context.new_page()
        refused: list[str] = []
        page.on(
            "console", lambda m: refused.append(m.text) if "Content Security" in m.text else None
        )

        page.goto("/imports")
        assert page.url.startswith(f"{service.url}/login?next=")  # not signed in yet
        page.fill("#token", OPERATOR_TOKEN)
        page.click("form.login button[type=submit]")
        page.wait_for_url("**/imports")
        assert "olga" in page.inner_text("#who") and "operator" in page.inner_text("#who")
        assert len(texts(page, "#imports tbody tr")) == len(ids)

        page.select_option("#f-dataset", "sessions")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/imports?dataset=sessions*")
        assert set(texts(page, "#imports tbody td:nth-child(2)")) == {"sessions"}
        assert len(texts(page, "#imports tbody tr")) == 6

        page.select_option("#f-dataset", "")
        page.fill("#f-file", "2024-01")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**file=2024-01*")
        january = sorted(n for n in ids if "2024-01" in n)
        assert sorted(texts(page, "#imports td.file")) == january

        page.click("#imports thead >> text=File")
        page.wait_for_url("**sort=file_name*")
        assert texts(page, "#imports td.file") == january
        assert "file=2024-01" in page.url
        page.click("#imports thead >> text=File")
        page.wait_for_url("**sort=-file_name*")
        assert texts(page, "#imports td.file") == list(reversed(january))

        first = ids["signups_2024-01.csv"]
        page.click(f'#imports td.file a[href="/imports/{first}"]')
        page.wait_for_url(f"**/imports/{first}")
        assert page.inner_text("#status") == "partial"
        with page.expect_download() as download:
            page.click("#download-errors")
        got = Path(download.value.path()).read_bytes()
        written = tmp_path / "errors.csv"
        failed_rows.export_failed_rows(db, first, written)
        assert got == written.read_bytes()
        assert download.value.suggested_filename == f"import_{first}_errors.csv"

        upload = tmp_path / "signups_2024-04.csv"
        upload.write_text(
            "ID,E-mail,signed_up,plan,amount,ambassador_email,ambassador_name\n"
            + "".join(
                f"U{i},u{i}@example.com,2024-04-0{i},pro,1.00,ana.lima@example.org,Ana Lima\n"
                for i in range(1, 6)
            )
        )
        page.goto("/upload")
        page.select_option("#u-dataset", "signups")
        page.set_input_files("#u-file", str(upload))
        page.click("#u-send")
        wait_for(
            "the upload's import to finish on the page",
            lambda: page.inner_text("#upload-status"),
            lambda text: page.get_attribute("#upload-status", "data-finished") is not None,
        )
        assert "finished: success" in page.inner_text("#upload-status")
        page.click("#upload-import-link")
        page.wait_for_url("**/imports/*")
        uploaded = int(page.url.rsplit("/", 1)[1])
        assert page.inner_text("#status") == "success"
        detail = history.get_import_detail(db, uploaded)
        assert (detail["source"], detail["user_id"], detail["rows_created"]) == (
            "upload",
            "olga",
            5,
        )
        assert len([r for r in rows(db, "signups") if r["_import_id"] == uploaded]) == 5

        page.click("#rollback")
        page.wait_for_url(f"**/imports/{uploaded}/rollback")
        assert "deletes the 5 row(s) it wrote and restores 0 row(s)" in page.inner_text("#plan")
        page.click("#confirm-rollback")
        page.wait_for_url(f"**/imports/{uploaded}?notice=*")
        assert page.inner_text("#status") == "rolled_back"
        assert "rolled back import" in page.inner_text("#notice")
        assert [r for r in rows(db, "signups") if r["_import_id"] == uploaded] == []
        assert refused == []  # no page broke the content security policy
        context.close()


def test_running_import_progress_updates_live_then_the_page_reloads(
    browser: Any, tmp_path: Path, db_url: str, db: Database
) -> None:
    """A running import's bar follows its recorded progress (``app.js`` polls its status)
    and, once it has ended, the page reloads with its final status."""
    settings = demo_settings(tmp_path, db_url)
    ids = import_demo(settings, db)
    running = ids["signups_2024-03.xlsx"]

    def record(**values: Any) -> None:
        with db.engine.begin() as conn:
            tracking.update_import(conn, db, running, **values)

    record(status="running", phase="LOAD", rows_done=3, rows_expected=10, progress_percent=30.0)
    app = create_app(settings, web_config(), db)
    with Service(app) as service:
        context = browser.new_context(base_url=service.url)
        context.add_cookies([{"name": COOKIE, "value": OPERATOR_TOKEN, "url": service.url}])
        page = context.new_page()
        page.goto("/imports")
        row = f'#imports tr[data-import-id="{running}"]'
        assert float(page.get_attribute(f"{row} progress", "value") or 0) == 30
        record(rows_done=6, progress_percent=60.0)
        wait_for(
            "the bar to show 60%",
            lambda: page.evaluate(f"document.querySelector('{row} progress').value"),
            lambda value: value == 60,
        )
        assert "6 rows" in page.inner_text(f"{row} .live-text")
        record(status="success", phase="COMPLETE", rows_done=10, progress_percent=100.0)
        wait_for(
            "the page to reload with the final status",
            lambda: page.inner_text(f"{row} .badge"),
            lambda text: text == "success",
        )
        assert page.locator(f"{row} progress").count() == 0
        context.close()


def test_the_api_docs_render_without_the_internet(
    browser: Any, tmp_path: Path, db_url: str, db: Database
) -> None:
    """``/docs`` draws the endpoints with Swagger UI served by the service itself: every
    request the page makes goes to the service, none leaves the machine."""
    settings = demo_settings(tmp_path, db_url)
    app = create_app(settings, web_config(), db)
    with Service(app) as service:
        page = browser.new_context(base_url=service.url).new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        page.goto("/docs")
        paths = wait_for(
            "Swagger UI to list the endpoints",
            lambda: texts(page, ".opblock-summary-path"),
            lambda found: "/api/imports" in found,
        )
        assert "/api/imports/{import_id}/errors" in paths and "/api/uploads" in paths
        assert asked and all(url.startswith(service.url) for url in asked), asked
