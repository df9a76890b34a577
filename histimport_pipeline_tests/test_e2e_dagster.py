"""End to end: `dagster dev` (webserver and daemon) imports dropped files into PostgreSQL.

The test starts the real thing in a temporary home, drops files into the inbox and watches
the runs through the webserver's GraphQL API, as an operator's tooling would. A file with a
header the spec does not know makes one run fail; the spec is fixed and the run re-executed
from failure through GraphQL. Every process the test starts is stopped, and checked gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from histimport_pipeline.engine import files
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.settings import dagster_instance_url
from histimport_pipeline_tests.helpers import SIGNUPS, rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).parent / "dagster"
#: A wait fails when nothing has moved for STALL_S (no new output while starting; no new
#: run, status, run event or sensor tick while waiting for runs), or after OVERALL_S in all,
#: well inside CI's limit: a loaded machine is slow, not stuck.
STALL_S = 120.0
OVERALL_S = 900.0
STOP_TIMEOUT_S = 30.0
SENSOR = "signups_inbox_sensor"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}

GOOD_FILES = {
    "signups_a.csv": "ID,email,amount\n001,a@example.com,1.50\n002,b@example.com,2\n",
    "signups_b.csv": "Signup ID,email,signed_up\n003,c@example.com,2024-01-02\n"
    "004,d@example.com,03/01/2024\n005,e@example.com,2024-01-04\n",
}
#: `Customer Ref` is not a header the spec knows, so the required signup_id is missing.
BAD_NAME = "signups_c.csv"
BAD_TEXT = "Customer Ref,email\n006,f@example.com\n007,g@example.com\n"

RUNS_QUERY = """
query Runs {
  runsOrError {
    __typename
    ... on Runs { results {
      runId status jobName parentRunId startTime endTime tags { key value }
    } }
    ... on Error { message }
  }
}"""
STEPS_QUERY = """
query Steps($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status stepStats { stepKey status } }
    ... on Error { message }
  }
}"""
LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events {
      __typename
      ... on MessageEvent { message stepKey }
      ... on ErrorEvent { error { message } }
    } }
    ... on Error { message }
  }
}"""
TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 5) { tickId status error { message } } } }
    ... on Error { message }
  }
}"""
EVENTS_QUERY = """
query Events($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { cursor }
    ... on Error { message }
  }
}"""
BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
#: A daily dataset whose gate rejects any failed row.
SESSIONS: dict[str, Any] = {
    **SIGNUPS,
    "name": "sessions",
    "target_table": "sessions",
    "files": "sessions_*.csv",
    "partitioning": "daily",
    "strategy": "replace_date",
    "key": [],
    "start_date": "2024-01-01",
    "max_error_ratio": 0.0,
}
DAILY_FILES = {
    "sessions_2024-01-01.csv": "ID,email\n101,a@example.com\n102,b@example.com\n",
    "sessions_2024-01-02.csv": "ID,email\n201,c@example.com\n202,not-an-email\n",
}
#: Over the gate (two of three rows fail, the spec allows half), and the file that corrects it.
REJECTED_NAME = "signups_d.csv"
REJECTED_TEXT = "ID,email\n008,nope\n009,nope\n010,h@example.com\n"
CORRECTED_TEXT = "ID,email\n008,i@example.com\n009,j@example.com\n010,h@example.com\n"
CHECKS_QUERY = """
query Checks($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 20) {
    runId status partition
    evaluation { success severity partition description }
  }
}"""
WHY_QUERY = """
query Why($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetObservations(partitions: $partitions) {
      partition description runId
      metadataEntries {
        label ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue }
      }
    } }
    ... on Error { message }
  }
}"""
PARTITIONS_QUERY = """
query Partitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { partitionKeys }
    ... on Error { message }
  }
}"""
REEXECUTE = """
mutation Reexecute($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _group_members(pgid: int, zombies: bool = False) -> list[int]:
    """Processes whose process group or session is ``pgid`` (zombies only if asked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces; the fields after it are space separated
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if (zombies or state != "Z") and pgid in (pgrp, session):
            found.append(int(entry.name))
    return found


def _processes() -> dict[int, tuple[int, int, int, str, str]]:
    """Every process: pid -> (parent, process group, session, state, start time)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (
            int(fields[1]),
            int(fields[2]),
            int(fields[3]),
            fields[0],
            fields[19],
        )
    return found


def _tree(root: int) -> dict[int, str]:
    """``root`` and its descendants that have not exited: pid -> start time."""
    procs = _processes()
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs and procs[pid][3] not in ("Z", "X"):
            tree[pid] = procs[pid][4]
        todo += [child for child, info in procs.items() if info[0] == pid]
    return tree


def _still_running(started: dict[int, str]) -> list[int]:
    """The processes of ``started`` (pid -> start time) that have not exited."""
    procs = _processes()
    return [
        pid
        for pid, start in started.items()
        if pid in procs and procs[pid][4] == start and procs[pid][3] not in ("Z", "X")
    ]


class Progress:
    """A wait that fails only when what it watches stops changing for ``STALL_S`` (or after
    ``OVERALL_S`` in all): ``moved(mark)`` is called with a snapshot on every poll."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = self.last_move = time.monotonic()
        self.mark: object = None

    def stuck(self, mark: object) -> str | None:
        """Why the wait should give up now, or ``None`` to poll again."""
        now = time.monotonic()
        if mark != self.mark:
            self.mark, self.last_move = mark, now
        if now - self.last_move > STALL_S:
            return f"nothing moved for {STALL_S:.0f} s while waiting for {self.what}"
        if now - self.started > OVERALL_S:
            return f"still waiting for {self.what} after {OVERALL_S:.0f} s"
        return None


class DagsterDev:
    """`dagster dev` in its own session, with its output in files and a GraphQL client."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout = home / "dagster_dev.out"
        self.stderr = home / "dagster_dev.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(DAGSTER),
                    "dev",
                    "-w",
                    str(REPO / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                cwd=home,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM the whole session, wait, SIGKILL what is left; assert nothing survives."""
        pgid = self.proc.pid
        for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
            members = _group_members(pgid)
            if not members and self.proc.poll() is not None:
                break
            with suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            for pid in members:  # children that left the group but not the session
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.proc.poll()
                if self.proc.returncode is not None and not _group_members(pgid):
                    break
                time.sleep(0.2)
        self.proc.wait(timeout=5)
        assert _group_members(pgid) == [], "dagster dev left processes behind"
        # Orphans that already exited may wait a moment for init to reap them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"process group {pgid} still exists: {_group_members(pgid, zombies=True)}")

    def tail(self, chars: int = 6000) -> str:
        return "\n".join(
            f"--- {p.name} (last {chars} chars)\n{p.read_text(errors='replace')[-chars:]}"
            for p in (self.stdout, self.stderr)
            if p.exists()
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _graphql(self.url, query, variables)

    def wait_until_up(self) -> None:
        wait_until_answers(self.url, self.proc, [self.stdout, self.stderr], self.tail)
        # the code location must have loaded, or no sensor will ever tick
        status = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        [entry] = status["workspaceOrError"]["locationEntries"]
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

    def runs(self) -> list[dict[str, Any]]:
        result = self.graphql(RUNS_QUERY)["runsOrError"]
        assert result["__typename"] == "Runs", result
        out: list[dict[str, Any]] = result["results"]
        for run in out:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return out

    def steps(self, run_id: str) -> dict[str, str]:
        run = self.graphql(STEPS_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return {s["stepKey"]: s["status"] for s in run["stepStats"]}

    def messages(self, run_id: str) -> str:
        logs = self.graphql(LOGS_QUERY, {"runId": run_id})["logsForRun"]
        events = logs.get("events") or []
        return "\n".join(
            f"  [{e.get('stepKey') or '-'}] {e['__typename']}: {(e.get('message') or '')[:400]}"
            + (f"\n    error: {e['error']['message'][:1000]}" if e.get("error") else "")
            for e in events
        ) or json.dumps(logs)

    def sensor_ticks(self, sensor: str) -> list[dict[str, Any]]:
        """The sensor's latest ticks, newest first."""
        selector = {
            "repositoryLocationName": "histimport",
            "repositoryName": "__repository__",
            "sensorName": sensor,
        }
        found = self.graphql(TICKS_QUERY, {"selector": selector})["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        ticks: list[dict[str, Any]] = found["sensorState"]["ticks"]
        return ticks

    def event_cursor(self, run_id: str) -> str | None:
        """Where the run's event log ends: it moves with every event the run writes."""
        logs = self.graphql(EVENTS_QUERY, {"runId": run_id})["logsForRun"]
        cursor: str | None = logs.get("cursor")
        return cursor

    def check_executions(self, check: str) -> list[dict[str, Any]]:
        """The executions of one signups check, newest first, as the checks tab lists them."""
        found = self.graphql(CHECKS_QUERY, {"key": {"path": ["signups"]}, "check": check})
        return list(found["assetCheckExecutions"])

    def why_partition_failed(self, partition: str) -> list[dict[str, Any]]:
        """The observations recorded on one signups partition."""
        found = self.graphql(WHY_QUERY, {"key": {"path": ["signups"]}, "partitions": [partition]})
        asset = found["assetOrError"]
        assert asset["__typename"] == "Asset", asset
        return list(asset["assetObservations"])

    def partition_keys(self) -> list[str]:
        found = self.graphql(PARTITIONS_QUERY, {"key": {"path": ["signups"]}})["assetNodeOrError"]
        assert found["__typename"] == "AssetNode", found
        return list(found["partitionKeys"])

    def report(self) -> str:
        """What a failed wait prints: every run, the logs of unsuccessful ones, the output."""
        lines = []
        try:
            for run in self.runs():
                lines.append(f"{run['runId']} {run['status']} {run['tags']}")
                if run["status"] not in ("SUCCESS", "QUEUED", "STARTING", "STARTED"):
                    lines.append(self.messages(run["runId"]))
        except Exception as exc:  # the report must not hide the original failure
            lines.append(f"(could not list runs: {exc!r})")
        return "\n".join(lines) + "\n" + self.tail()

    def wait_for(
        self, what: str, done: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None]
    ) -> list[dict[str, Any]]:
        """Poll the run list until ``done`` returns the runs it waited for. Runs appearing or
        changing status, events of unfinished runs and sensor ticks count as progress."""
        progress = Progress(what)
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited while waiting for {what}\n{self.report()}")
            runs = self.runs()
            found = done(runs)
            if found is not None:
                return found
            ticks = self.sensor_ticks(SENSOR)
            errors = [t["error"]["message"] for t in ticks if t["status"] == "FAILURE"]
            if errors:
                pytest.fail(f"{SENSOR} failed while waiting for {what}:\n{errors[0]}")
            mark = (
                sorted((r["runId"], r["status"]) for r in runs),
                [self.event_cursor(r["runId"]) for r in runs if r["status"] not in TERMINAL],
                ticks[0]["tickId"] if ticks else None,
            )
            why = progress.stuck(mark)
            if why:
                pytest.fail(f"{why}\n{self.report()}")
            time.sleep(2)


def _graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload: dict[str, Any] = json.load(response)
    assert "errors" not in payload, payload["errors"]
    data: dict[str, Any] = payload["data"]
    return data


def wait_until_answers(
    url: str, proc: subprocess.Popen[bytes], logs: list[Path], tail: Callable[[], str]
) -> None:
    """Poll ``url``/server_info until the webserver answers; its output growing is progress."""
    progress = Progress(f"the webserver at {url}")
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}\n{tail()}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        why = progress.stuck([p.stat().st_size if p.exists() else 0 for p in logs])
        if why:
            pytest.fail(f"{why}\n{tail()}")
        time.sleep(1)


def _finished_runs_of(
    names: set[str], parent: str | None = None
) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None]:
    """A ``wait_for`` condition: one finished run for each file in ``names``."""

    def done(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        mine = [
            r
            for r in runs
            if r["tags"].get("histimport/file") in names and r["parentRunId"] == parent
        ]
        if len(mine) == len(names) and all(r["status"] in TERMINAL for r in mine):
            return mine
        return None

    return done


@contextmanager
def _dagster_dev(home: Path, env: dict[str, str]) -> Iterator[DagsterDev]:
    server = DagsterDev(home, env)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


def _history(db: Database) -> list[dict[str, Any]]:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.import_id)).mappings()]


def _table(db: Database, name: str) -> list[dict[str, Any]]:
    t = getattr(db.tables, name)
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t)).mappings()]


@pytest.fixture
def e2e_home(tmp_path: Path, pg_url: str) -> tuple[Path, dict[str, str]]:
    """A histimport home with the signups spec, a migrated PostgreSQL target and the env
    that `scripts/run.sh` would set."""
    for sub in ("inbox", "datasets", "archive", "quarantine", "dagster"):
        (tmp_path / sub).mkdir()
    (tmp_path / "datasets" / "signups.yaml").write_text(yaml.safe_dump(SIGNUPS))
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", tmp_path / "dagster" / "dagster.yaml")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HISTIMPORT_", "DAGSTER_"))},
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "HISTIMPORT_HOME": str(tmp_path),
        "HISTIMPORT_DATABASE_URL": pg_url,
        **{
            f"HISTIMPORT_{n.upper()}": str(tmp_path / n)
            for n in ("inbox", "datasets", "archive", "quarantine")
        },
    }
    subprocess.run(
        [sys.executable, "-m", "histimport_pipeline.cli", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tmp_path, env


@pytest.fixture
def pg_instance(
    e2e_home: tuple[Path, dict[str, str]], pg_admin_url: str
) -> Iterator[tuple[Path, dict[str, str]]]:
    """``e2e_home`` with the production instance file: runs, events and schedules in a
    PostgreSQL database of their own, and the queue of deploy/dagster.yaml."""
    home, env = e2e_home
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    try:
        yield home, {**env, "HISTIMPORT_DAGSTER_PG_URL": dagster_instance_url(url)}
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_dagster_dev_imports_dropped_files_and_reexecutes_a_fixed_failure(
    e2e_home: tuple[Path, dict[str, str]], pg_url: str
) -> None:
    home, env = e2e_home
    inbox = home / "inbox"
    db = Database.connect(pg_url)
    try:
        with _dagster_dev(home, env) as dagster:
            # -- two good files: one run each, imported, tracked and archived
            shas = {}
            for name, text in GOOD_FILES.items():
                (inbox / name).write_text(text)
                shas[name] = files.sha256_of(inbox / name)
            runs = dagster.wait_for("the two good files", _finished_runs_of(set(GOOD_FILES)))
            bad_runs = [r for r in runs if r["status"] != "SUCCESS"]
            assert not bad_runs, dagster.report()
            run_of = {r["tags"]["histimport/file"]: r for r in runs}
            assert {r["jobName"] for r in runs} == {"signups_import_job"}

            history = _history(db)
            assert len(history) == 2
            for h in history:
                assert h["status"] == "success" and h["phase"] == "COMPLETE", h
                assert h["import_type"] == "DROP" and h["source"] == "inbox", h
                assert h["dagster_run_id"] == run_of[h["file_name"]]["runId"], h
                assert h["file_sha256"] == shas[h["file_name"]], h
                assert h["partition_key"] == run_of[h["file_name"]]["tags"]["dagster/partition"]
                assert h["rows_created"] == GOOD_FILES[h["file_name"]].count("\n") - 1, h
            assert sorted(r["signup_id"] for r in rows(db, "signups")) == [
                "001",
                "002",
                "003",
                "004",
                "005",
            ]
            import_ids = {h["import_id"] for h in history}
            assert {r["_import_id"] for r in rows(db, "signups")} == import_ids

            processed = _table(db, "processed_files")
            assert len(processed) == 2
            assert {p["sha256"] for p in processed} == set(shas.values())
            assert {p["status"] for p in processed} == {"imported"}

            status = {s["process_name"]: s for s in _table(db, "processing_status")}
            assert status["dataset:signups"]["last_success_at"] is not None
            assert status["dataset:signups"]["consecutive_errors"] == 0
            assert status["dataset:signups"]["last_import_id"] in import_ids
            assert status["sensor:signups"]["state"] == "watching"

            assert not any(inbox.iterdir())
            archived = {p.name for p in (home / "archive" / "signups").glob("*.csv")}
            assert archived == {f"{h['import_id']}__{h['file_name']}" for h in history}

            # every check evaluation names the partition it checked, one per run
            for check in ("failed_share_within_gate", "rows_accounted_for"):
                executions = dagster.check_executions(check)
                partitions = {e["partition"] for e in executions}
                assert partitions == {r["tags"]["dagster/partition"] for r in runs}, executions
                for e in executions:
                    assert e["status"] == "SUCCEEDED", executions
                    assert e["evaluation"]["partition"] == e["partition"], executions

            # -- a file with a header the spec does not know: the run fails at parse
            (inbox / BAD_NAME).write_text(BAD_TEXT)
            bad_sha = files.sha256_of(inbox / BAD_NAME)
            [failed] = dagster.wait_for("the bad file", _finished_runs_of({BAD_NAME}))
            assert failed["status"] == "FAILURE", dagster.report()
            steps = dagster.steps(failed["runId"])
            [parse_step] = [k for k in steps if k.endswith("signups_parse")]
            assert steps[parse_step] == "FAILURE", steps
            assert all(s != "SUCCESS" for s in steps.values()), steps
            assert "Customer Ref" in dagster.messages(failed["runId"])
            [failed_import] = [h for h in _history(db) if h["file_sha256"] == bad_sha]
            assert failed_import["status"] == "failed"
            assert failed_import["dagster_run_id"] == failed["runId"]
            assert list((home / "quarantine" / "signups").glob(f"*__{BAD_NAME}"))
            status = {s["process_name"]: s for s in _table(db, "processing_status")}
            assert status["dataset:signups"]["consecutive_errors"] == 1

            # -- fix the cause (teach the spec the header) and re-execute from failure
            spec = {**SIGNUPS, "columns": {**SIGNUPS["columns"]}}
            signup_id = dict(spec["columns"]["signup_id"])
            signup_id["aliases"] = [*signup_id["aliases"], "Customer Ref"]
            spec["columns"]["signup_id"] = signup_id
            (home / "datasets" / "signups.yaml").write_text(yaml.safe_dump(spec))
            launched = dagster.graphql(
                REEXECUTE, {"params": {"parentRunId": failed["runId"], "strategy": "FROM_FAILURE"}}
            )
            launched = launched["launchRunReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            retry_id = launched["run"]["runId"]
            [retry] = dagster.wait_for(
                "the re-execution", _finished_runs_of({BAD_NAME}, parent=failed["runId"])
            )
            assert retry["runId"] == retry_id
            assert retry["status"] == "SUCCESS", dagster.report()
            steps = dagster.steps(retry_id)
            assert any(k.endswith("signups_parse") for k in steps), steps
            assert set(steps.values()) == {"SUCCESS"}, steps

            imports = [h for h in _history(db) if h["file_sha256"] == bad_sha]
            assert [(h["status"], h["import_type"]) for h in imports] == [
                ("failed", "DROP"),
                ("success", "RETRY"),
            ]
            retried = imports[1]
            assert retried["dagster_run_id"] == retry_id
            assert retried["partition_key"] == failed["tags"]["dagster/partition"]
            assert retried["rows_created"] == 2
            # recorded under the name it was dropped with, linked to the failed attempt,
            # and moved on from quarantine to the archive
            assert retried["file_name"] == BAD_NAME
            assert retried["retry_of"] == imports[0]["import_id"]
            assert (home / "archive" / "signups" / f"{retried['import_id']}__{BAD_NAME}").exists()
            assert not list((home / "quarantine" / "signups").glob(f"*__{BAD_NAME}"))
            loaded = {r["signup_id"]: r["_import_id"] for r in rows(db, "signups")}
            assert loaded["006"] == loaded["007"] == retried["import_id"]
            [claim] = [p for p in _table(db, "processed_files") if p["sha256"] == bad_sha]
            assert claim["status"] == "imported"
            assert claim["last_import_id"] == retried["import_id"]
            status = {s["process_name"]: s for s in _table(db, "processing_status")}
            assert status["dataset:signups"]["consecutive_errors"] == 0
            assert status["dataset:signups"]["last_import_id"] == retried["import_id"]

            # -- over the gate: confirm fails, and the partition says why through GraphQL
            (inbox / REJECTED_NAME).write_text(REJECTED_TEXT)
            [rejected] = dagster.wait_for("the rejected file", _finished_runs_of({REJECTED_NAME}))
            assert rejected["status"] == "FAILURE", dagster.report()
            steps = dagster.steps(rejected["runId"])
            [confirm_step] = [k for k in steps if k.endswith("signups_confirm")]
            assert steps[confirm_step] == "FAILURE", steps
            assert not any(k.endswith("signups_load") for k in steps), steps
            rejected_key = rejected["tags"]["dagster/partition"]
            [gate] = [
                e
                for e in dagster.check_executions("failed_share_within_gate")
                if e["partition"] == rejected_key
            ]
            assert gate["status"] == "FAILED", gate
            assert gate["evaluation"]["severity"] == "ERROR", gate
            assert "above the gate of 50.0%" in gate["evaluation"]["description"], gate
            [why] = dagster.why_partition_failed(rejected_key)
            assert why["runId"] == rejected["runId"], why
            entries = {e["label"]: e.get("text", e.get("intValue")) for e in why["metadataEntries"]}
            assert entries["status"] == "rejected" and entries["rows_failed"] == 2, entries
            assert "above the dataset's limit of 50.0%" in entries["message"], entries
            assert "drop the fixed file into the inbox" in entries["what_to_do"], entries

            # -- the corrected file under the same name supersedes the rejected partition
            (inbox / REJECTED_NAME).write_text(CORRECTED_TEXT)

            def corrected(found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
                mine = [r for r in found if r["tags"].get("histimport/file") == REJECTED_NAME]
                done = len(mine) == 2 and all(r["status"] in TERMINAL for r in mine)
                return mine if done else None

            runs = dagster.wait_for("the corrected file", corrected)
            [fix] = [r for r in runs if r["runId"] != rejected["runId"]]
            assert fix["status"] == "SUCCESS", dagster.report()
            keys = dagster.partition_keys()
            assert rejected_key not in keys and fix["tags"]["dagster/partition"] in keys, keys
            by_run = {h["dagster_run_id"]: h for h in _history(db)}
            old, new = by_run[rejected["runId"]], by_run[fix["runId"]]
            assert new["corrects_import_id"] == old["import_id"], new
            assert old["superseded_by"] == new["import_id"] and old["status"] == "rejected"
    finally:
        db.dispose()


def test_a_backfill_launched_through_graphql_reimports_the_dates(
    pg_instance: tuple[Path, dict[str, str]], pg_url: str
) -> None:
    """A date range backfilled from the UI (an asset backfill run by the daemon) imports each
    date's file as BACKFILL, wherever the file now lies; content already loaded is a
    duplicate, as with the schedule. On the production instance (PostgreSQL storage, the
    queue's one run per dataset) the backfill's runs carry the dataset's tags and run one
    date at a time."""
    home, env = pg_instance
    spec_path = home / "datasets" / "sessions.yaml"
    spec_path.write_text(yaml.safe_dump(SESSIONS))
    db = Database.connect(pg_url)
    try:
        with _dagster_dev(home, env) as dagster:
            # -- the sensor imports 01-01; 01-02 has a bad row and the gate (0 %) rejects it
            for name, text in DAILY_FILES.items():
                (home / "inbox" / name).write_text(text)
            runs = dagster.wait_for("the daily files", _finished_runs_of(set(DAILY_FILES)))
            status_of = {r["tags"]["histimport/file"]: r["status"] for r in runs}
            assert status_of == {
                "sessions_2024-01-01.csv": "SUCCESS",
                "sessions_2024-01-02.csv": "FAILURE",
            }, dagster.report()
            assert list((home / "quarantine" / "sessions").glob("*__sessions_2024-01-02.csv"))

            # -- the operator accepts one bad row in two and backfills both dates
            spec_path.write_text(yaml.safe_dump({**SESSIONS, "max_error_ratio": 0.5}))
            dates = ["2024-01-01", "2024-01-02"]
            launched = dagster.graphql(
                BACKFILL,
                {"params": {"assetSelection": [{"path": ["sessions"]}], "partitionNames": dates}},
            )["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]

            def backfilled(found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
                mine = [r for r in found if r["tags"].get("dagster/backfill") == backfill_id]
                done = len(mine) == len(dates) and all(r["status"] in TERMINAL for r in mine)
                return mine if done else None

            runs = dagster.wait_for("the backfill", backfilled)
            assert {r["status"] for r in runs} == {"SUCCESS"}, dagster.report()
            assert sorted(r["tags"]["dagster/partition"] for r in runs) == dates
            for run in runs:
                day = run["tags"]["dagster/partition"]
                assert run["tags"]["histimport/dataset"] == "sessions", run
                assert run["tags"]["histimport/trigger"] == "backfill", run
                # Dagster names backfill runs __ASSET_JOB; the tag names the dataset's job
                assert run["tags"]["histimport/job"] == "sessions_import_job", run
                assert run["tags"]["histimport/file"] == f"sessions_{day}.csv", run
            first, second = sorted(runs, key=lambda r: r["startTime"])
            assert first["endTime"] <= second["startTime"], (first, second)

            backfill = {
                str(h["business_date"]): h for h in _history(db) if h["import_type"] == "BACKFILL"
            }
            assert sorted(backfill) == dates
            rerun = backfill["2024-01-02"]
            assert rerun["status"] == "partial", rerun
            # read from where the first imports had moved the files; once loaded, the file
            # moves on to the archive and file_path follows it (the audit trail keeps the way)
            assert rerun["source"] == "quarantine", rerun
            assert Path(rerun["file_path"]).parent == (home / "archive" / "sessions").resolve()
            [moved] = [
                a
                for a in _table(db, "import_audit_trail")
                if a["import_id"] == rerun["import_id"] and a["action"] == "moved"
            ]
            came_from = Path(moved["details"]["from"]).parent
            assert came_from == (home / "quarantine" / "sessions").resolve(), moved
            again = backfill["2024-01-01"]
            assert again["source"] == "archive", again
            assert Path(again["file_path"]).parent == (home / "archive" / "sessions").resolve()
            assert (rerun["rows_created"], rerun["rows_failed"]) == (1, 1)
            assert rerun["file_name"] == "sessions_2024-01-02.csv"
            # 01-01 was loaded by the sensor's run: the same content again is a duplicate
            assert backfill["2024-01-01"]["status"] == "duplicate"
            loaded = {r["signup_id"]: r["_business_date"] for r in rows(db, "sessions")}
            assert sorted(loaded) == ["101", "102", "201"]
            assert str(loaded["201"]) == "2024-01-02"
            status = {s["process_name"]: s for s in _table(db, "processing_status")}
            assert status["dataset:sessions"]["consecutive_errors"] == 0
            assert status["dataset:sessions"]["last_import_id"] in {
                h["import_id"] for h in backfill.values()
            }
    finally:
        db.dispose()


def _web_total(url: str) -> int | None:
    """``total_count`` of the web service's history, or ``None`` while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(json.loads(answer.read())["total_count"])
    except (OSError, ValueError):
        return None


def test_run_sh_stops_webserver_daemon_and_run_workers_on_sigterm(tmp_path: Path) -> None:
    """`scripts/run.sh` started as a background job of a shell (SIGINT ignored, which made
    `dagster dev` ignore SIGTERM as well), on a port of our choosing; once a run is under way,
    SIGTERM to its process group stops every process it started within seconds. The web
    service it starts beside Dagster shows the demo's imports as they are recorded."""
    port, web_port = _free_port(), _free_port()
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HISTIMPORT_", "DAGSTER_"))},
        "HISTIMPORT_HOME": str(home),
        "HISTIMPORT_SKIP_BOOTSTRAP": "1",
        "DAGSTER_PORT": str(port),
        "HISTIMPORT_WEB_PORT": str(web_port),
        "PATH": f"{DAGSTER.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run_sh.log"

    def background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "run.sh")],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=background_job,
        )
    started: dict[int, str] = {}

    def tail() -> str:
        return log.read_text(errors="replace")[-6000:]

    try:
        wait_until_answers(url, proc, [log], tail)
        # the demo files: wait for a run to be under way, so run workers are alive too
        progress = Progress("a run of the demo files to start")
        while True:
            found = _graphql(url, RUNS_QUERY)["runsOrError"]["results"]
            if any(r["status"] == "STARTED" for r in found):
                break
            why = progress.stuck((log.stat().st_size, sorted(r["status"] for r in found)))
            if why:
                pytest.fail(f"{why}\n{tail()}")
            time.sleep(1)
        # the history page's API lists the demo's imports once the runs record them
        web = f"http://127.0.0.1:{web_port}/api/imports"
        seen = Progress("the web service to list the demo's imports")
        while True:
            total = _web_total(web)
            if total:
                break
            why = seen.stuck((log.stat().st_size, total))
            if why:
                pytest.fail(f"{why}\n{tail()}")
            time.sleep(1)
        assert f"Import history (web): http://127.0.0.1:{web_port}" in log.read_text()
        started = _tree(proc.pid)
        assert len(started) >= 6, started  # supervisor, dagster dev, webserver, daemon, web...
        os.killpg(proc.pid, signal.SIGTERM)
        stopping = time.monotonic()
        while _still_running(started) and time.monotonic() - stopping < STOP_TIMEOUT_S:
            time.sleep(0.5)
        left = _still_running(started)
        assert not left, f"still running {STOP_TIMEOUT_S} s after SIGTERM: {left}\n{tail()}"
        assert proc.wait(timeout=5) != 0  # stopped by a signal, and says so
    finally:
        # A failure before the tree was taken must not leave dagster dev running: it runs in
        # a session of its own, out of reach of a signal to the supervisor's group.
        for pid in _still_running({**_tree(proc.pid), **started}):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
