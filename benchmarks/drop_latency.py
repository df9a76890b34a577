"""Benchmark: drop to loaded. How long a file dropped into the inbox takes to be loaded with
``dagster dev`` running, and where the time goes.

Not a test. It makes a throwaway HISTIMPORT_HOME with one dataset (``bench``, append, five
typed columns) on SQLite, migrates it, and starts ``dagster dev`` (webserver + daemon, the
queued run coordinator of ``deploy/dagster.local.yaml``, as ``scripts/run.sh`` does) on a free
port. Once the inbox sensor has ticked, it

* drops one file of ``--rows`` rows ``--rounds`` times (one at a time, waiting for each), and
* drops ``--files`` files at once,

timing from the moment each file is closed (its last write) until ``import_history`` records
the import as ended. Each import's time is split by the Dagster run's own events:

* ``detect``: last write → run created (sensor interval, the two looks a file must pass to be
  stable, hashing, the tick's run request);
* ``queue``: created → launched (``RUN_STARTING``: the run coordinator's queue and the
  per-dataset limit);
* ``launch``: launched → run started (the run worker process starting and loading the code);
* ``steps``: run started → the import recorded as ended (the parse, validate, reconcile,
  confirm and load steps; the total ends here too);
* ``checks``: the import ended → the run's last step ended (the four asset checks, which run
  after the load step and are not part of the total).

Targets (issue 16): one 1,000-row file loaded <= 15 s after its last write (median of the
rounds), ten files of one dataset dropped at once all loaded within 60 s.

    python benchmarks/drop_latency.py [--rows 1000] [--rounds 3] [--files 10] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
name: bench
target_table: bench
files: "bench_*.csv"
strategy: append
columns:
  id: {type: integer, required: true}
  name: {type: string}
  amount: {type: decimal, scale: 2}
  day: {type: date}
  email: {type: email}
"""
SINGLE_TARGET_S = 15.0
BATCH_TARGET_S = 60.0
#: Give up when nothing moved for this long (the import history and the run list).
STALL_S = 300.0
ENDED = {"success", "partial", "failed", "rejected", "duplicate", "rolled_back"}


@dataclass
class Timing:
    """One dropped file: when it was closed, and what its run and import recorded."""

    name: str
    written_at: float
    ended_at: float | None = None
    status: str | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return (self.ended_at or float("nan")) - self.written_at


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_file(folder: Path, name: str, rows: int, seed: int) -> float:
    """Write a CSV of ``rows`` rows in one go; return when it was closed (epoch seconds)."""
    lines = ["id,name,amount,day,email"]
    lines += [
        f"{seed * 1_000_000 + i},name {i},{i % 997}.{i % 100:02d},2024-01-{1 + i % 28:02d},"
        f"p{i}@example.com"
        for i in range(rows)
    ]
    path = folder / name
    with path.open("w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return time.time()


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HISTIMPORT_", "DAGSTER_"))}
    env |= {
        "HISTIMPORT_HOME": str(home),
        "HISTIMPORT_DATABASE_URL": f"sqlite:///{home / 'histimport.db'}",
        "DAGSTER_HOME": str(home / "dagster"),
    }
    return env


def prepare(home: Path) -> dict[str, str]:
    """The home, its spec, the migrated database and the Dagster instance file."""
    (home / "datasets").mkdir(parents=True)
    (home / "inbox").mkdir()
    (home / "dagster").mkdir()
    (home / "datasets" / "bench.yaml").write_text(SPEC)
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster" / "dagster.yaml")
    env = environment(home)
    subprocess.run(
        [sys.executable, "-m", "histimport_pipeline.cli", "db", "upgrade"],
        env=env,
        check=True,
        capture_output=True,
    )
    return env


def start_dagster(home: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    dagster = Path(sys.executable).with_name("dagster")
    log = (home / "dagster_dev.log").open("wb")
    command = [str(dagster), "dev", "-w", str(REPO / "workspace.yaml")]
    return subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _query(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "histimport.db", timeout=60) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for_sensor(home: Path, proc: subprocess.Popen[bytes], port: int) -> float:
    """Until the webserver answers and the inbox sensor has ticked; returns the seconds."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"dagster dev exited with {proc.returncode}; see {home}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                pass
            ticked = _query(
                home,
                "SELECT count(*) FROM processing_status WHERE process_name = ?",
                ("sensor:bench",),
            )
            if ticked and ticked[0][0]:
                return time.monotonic() - t0
        except (OSError, sqlite3.Error):
            pass
        if time.monotonic() - t0 > STALL_S:
            raise SystemExit(f"the inbox sensor did not tick within {STALL_S:.0f} s; see {home}")
        time.sleep(0.5)


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def wait_for_imports(home: Path, timings: list[Timing]) -> None:
    """Poll import_history until every file's import has ended (a stall fails it)."""
    last, moved = None, time.monotonic()
    while True:
        names = [t.name for t in timings]
        marks = ",".join("?" * len(names))
        found = _query(
            home,
            f"SELECT file_name, status, finished_at FROM import_history "  # noqa: S608
            f"WHERE file_name IN ({marks})",
            tuple(names),
        )
        by_name = {name: (status, finished) for name, status, finished in found}
        for t in timings:
            status, finished = by_name.get(t.name, (None, None))
            if status in ENDED and t.ended_at is None:
                t.status, t.ended_at = status, _epoch(finished)
        if all(t.ended_at is not None for t in timings):
            return
        mark = sorted(by_name.items())
        if mark != last:
            last, moved = mark, time.monotonic()
        if time.monotonic() - moved > STALL_S:
            raise SystemExit(f"nothing moved for {STALL_S:.0f} s: {mark}")
        time.sleep(0.2)


def add_breakdown(env: dict[str, str], timings: list[Timing]) -> None:
    """Split each import's time by its Dagster run's events (see the module docstring)."""
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        for t in timings:
            records = instance.get_run_records(
                filters=dg.RunsFilter(tags={"histimport/file": t.name})
            )
            if not records:
                continue
            record = records[0]
            events: dict[str, float] = {}
            last_step_end = None
            for entry in instance.all_logs(record.dagster_run.run_id):
                kind = entry.dagster_event.event_type_value if entry.dagster_event else None
                # The queued coordinator launches a run by reporting it STARTING (there is
                # no dequeue event); the run worker reports START once it has loaded the code.
                if kind in ("PIPELINE_STARTING", "PIPELINE_START"):
                    events.setdefault(kind, entry.timestamp)
                if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                    last_step_end = entry.timestamp
            created = record.create_timestamp.timestamp()
            launched = events.get("PIPELINE_STARTING", created)
            started = events.get("PIPELINE_START", launched)
            # The import is recorded as ended by the load step; the checks run after it.
            ended = t.ended_at or started
            t.phases = {
                "detect": created - t.written_at,
                "queue": launched - created,
                "launch": started - launched,
                "steps": ended - started,
                "checks": max(0.0, (last_step_end or ended) - ended),
            }


def row(label: str, timing: Timing) -> str:
    parts = " ".join(f"{timing.phases.get(k, float('nan')):6.1f}" for k in PHASES)
    return f"{label:<22} {timing.total:6.1f} {parts}  {timing.status}"


PHASES = ("detect", "queue", "launch", "steps", "checks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway home")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="histimport-drop-"))
    env = prepare(home)
    port = free_port()
    proc = start_dagster(home, env, port)
    try:
        ready_s = wait_for_sensor(home, proc, port)
        print(f"dagster dev up and the inbox sensor ticking after {ready_s:.1f} s")
        singles = []
        for i in range(args.rounds):
            name = f"bench_single_{i}.csv"
            timing = Timing(name, write_file(home / "inbox", name, args.rows, i))
            wait_for_imports(home, [timing])
            singles.append(timing)
        batch = [
            Timing(
                f"bench_batch_{i}.csv",
                write_file(home / "inbox", f"bench_batch_{i}.csv", args.rows, 100 + i),
            )
            for i in range(args.files)
        ]
        wait_for_imports(home, batch)
        add_breakdown(env, singles + batch)
    finally:
        stop(proc)
    load = os.getloadavg()[0]
    print(f"\n{os.cpu_count()} cores, load average {load:.1f} at the end")
    header = " ".join(f"{k:>6}" for k in PHASES)
    print(f"{'file':<22} {'total':>6} {header}  status   (seconds)")
    for t in singles + batch:
        print(row(t.name, t))
    single = statistics.median(t.total for t in singles)
    batch_s = max(t.ended_at or float("inf") for t in batch) - min(t.written_at for t in batch)
    verdicts = [
        (f"one {args.rows}-row file, median of {args.rounds}", single, SINGLE_TARGET_S),
        (f"{args.files} files at once, last loaded", batch_s, BATCH_TARGET_S),
    ]
    print()
    for label, seconds, target in verdicts:
        verdict = "PASS" if seconds <= target else "MISS"
        print(f"{label:<40} {seconds:6.1f} s  target <= {target:.0f} s  {verdict}")
    print(json.dumps({"single_median_s": single, "batch_s": batch_s}))
    if args.keep:
        print(f"home kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
