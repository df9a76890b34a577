"""Benchmark: the web service (``histimport serve``) over a big history, under many pollers,
streaming a million failed rows.

Not a test. For each database (SQLite always; PostgreSQL when a URL is given) it makes a
throwaway database, migrates it, fills it, starts a real ``histimport serve`` process on
loopback (a subprocess, with one viewer token configured, sent as ``Authorization: Bearer``)
and waits until it answers. Then, all requests from this process over keep-alive HTTP
connections (httpx), each timed end to end (request sent until the whole body is read):

1. **History.** ``import_history`` holds ``--imports`` imports (default 100,000: eight
   datasets of skewed size, 25 users, a realistic mix of statuses -- about 7 % failed, 9 %
   partial, some rejected, duplicate, rolled back, a few running -- file names with dates,
   ``created_at`` spread over the past year, growing with the id), bulk-inserted through the
   engine's table definitions (COPY on PostgreSQL). ``GET /api/imports`` with typical
   filters (none; dataset + status; a file-name search; a since/until month; a user; sorted
   by another column; a deep offset) is requested ``--requests`` times each after a few
   warm-up requests: p50 / p95 / max milliseconds, target p95 < 50 ms. The HTML pages
   (``/``, ``/imports``) the same way, target p95 < 200 ms, when the route answers 200;
   otherwise the row says the page is not built on this branch.
2. **Polling.** ``--pollers`` clients (default 50), each on its own connection as browsers
   would be, poll ``/api/imports/{id}/status`` of the running imports for
   ``--poll-seconds``: once every ``--poll-interval`` seconds each (default 1, as the page's
   script does; 0 = as fast as they can), then for ``--flat-out-seconds`` as fast as they
   can. Requests made, errors (target 0), p50 / p95 / max, requests per second.
3. **Failed rows.** One more import with ``--failed-rows`` failed-row records (default
   1,000,000; 5 columns of original values each, 1 % parse errors), then
   ``GET /api/imports/{id}/errors`` streamed while the server process's RSS is sampled
   every 0.1 s (``/proc/PID/status``): bytes, seconds, MB/s, time to the first byte, RSS at
   start, peak and end; target: peak less than 50 MiB over the start. The CSV must have
   header + one line per failed row.

Client and server share this machine's CPUs: the flat-out figures are the two together.
Long because: three measurements with their own data, the server's lifecycle and the report.

The PostgreSQL server: ``--pg-url``, else ``HISTIMPORT_BENCH_PG_URL``, else
``HISTIMPORT_TEST_PG_URL`` (a role that may create databases: one is created for the run and
dropped after it). Passwords are never printed.

    python benchmarks/web_service.py [--pg-url URL] [--backend sqlite|postgresql|both]
        [--imports 100000] [--requests 200] [--pollers 50] [--poll-seconds 60]
        [--poll-interval 1] [--flat-out-seconds 10] [--failed-rows 1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from histimport_pipeline.engine import migrations  # noqa: E402
from histimport_pipeline.engine.db import Database  # noqa: E402
from histimport_pipeline.web.config import Role, new_token  # noqa: E402

URL_ENVS = ("HISTIMPORT_BENCH_PG_URL", "HISTIMPORT_TEST_PG_URL")
LIST_P95_MS = 50.0
PAGE_P95_MS = 200.0
RSS_GROWTH_MIB = 50.0
MIB = 1 << 20

#: Datasets and their share of the imports (a few big feeds, a long tail).
DATASETS = {
    "payments": 30,
    "signups": 20,
    "flights": 15,
    "orders": 12,
    "inventory": 9,
    "ledger": 7,
    "weather": 5,
    "customers": 2,
}
STATUSES = {
    "success": 72.5,
    "partial": 9.0,
    "failed": 7.0,
    "rejected": 3.0,
    "duplicate": 5.0,
    "rolled_back": 3.0,
}
#: Among the newest imports, every tenth one is still pending or running.
ACTIVE_AMONG_NEWEST = 600
SOURCES = {"inbox": 55, "schedule": 25, "cli": 12, "upload": 8}
TYPES = {"inbox": "DROP", "schedule": "DAILY", "cli": "MANUAL", "upload": "DROP"}
USERS = [f"user{n:02d}" for n in range(1, 26)]
HEADERS = ["id", "name", "email", "amount", "signup_date"]
CATEGORIES = ("type", "required", "format", "range", "duplicate")


# Databases ------------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def database(backend: str, home: Path, pg_url: str | None) -> Iterator[str]:
    """A fresh, migrated database; yields its SQLAlchemy URL. A PostgreSQL one is created on
    ``pg_url``'s server and dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{home / 'histimport.db'}"
        _migrate(url)
        yield url
        return
    import psycopg
    from psycopg import sql

    assert pg_url is not None
    name = f"histimport_webbench_{os.getpid()}"
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = (
        sa.make_url(pg_url)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    try:
        _migrate(url)
        yield url
    finally:
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _migrate(url: str) -> None:
    db = Database.connect(url)
    try:
        migrations.upgrade(db)
    finally:
        db.dispose()


def bulk_insert(db: Database, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same keys) into ``table``: COPY on PostgreSQL, one
    executemany on SQLite."""
    if not rows:
        return
    if db.dialect != "postgresql":
        with db.engine.begin() as conn:
            conn.execute(table.insert(), list(rows))
        return
    names = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    columns = ", ".join(f'"{n}"' for n in names)
    statement = f'COPY "{table.schema}"."{table.name}" ({columns}) FROM STDIN'
    raw = db.engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(
                    [
                        json.dumps(row[n]) if n in json_columns and row[n] is not None else row[n]
                        for n in names
                    ]
                )
        raw.commit()
    finally:
        raw.close()


# The history ----------------------------------------------------------------------------------


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def history_rows(count: int, now: datetime, seed: int = 14) -> list[dict[str, Any]]:
    """``count`` imports over the year before ``now``, oldest first (ids grow with time)."""
    rng = random.Random(seed)
    first = now - timedelta(days=365)
    step = timedelta(days=365) / count
    rows = []
    for n in range(count):
        created = first + step * n + timedelta(seconds=rng.uniform(0, step.total_seconds()))
        dataset = _pick(rng, DATASETS)
        status = _pick(rng, STATUSES)
        if n >= count - ACTIVE_AMONG_NEWEST and n % 10 == 0:
            status = "running" if n % 20 == 0 else "pending"
        source = _pick(rng, SOURCES)
        user = rng.choice(USERS) if source in ("cli", "upload") or rng.random() < 0.3 else None
        day = created.date() - timedelta(days=rng.choice((0, 1, 1, 1, 2)))
        ext = rng.choice((".csv", ".csv", ".csv", ".tsv", ".xlsx", ".json"))
        name = rng.choice((f"{dataset}_{day:%Y-%m-%d}", f"{dataset.title()} {day:%Y%m%d}"))
        in_file = int(rng.lognormvariate(8, 1.5)) + 1
        failed = {"partial": max(1, in_file // rng.randint(5, 200)), "failed": in_file}.get(
            status, 0
        )
        loaded = in_file - failed if status in ("success", "partial", "rolled_back") else 0
        created_rows = loaded if dataset in ("payments", "orders", "ledger") else loaded // 3
        ended = status not in ("running", "pending")
        seconds = round(0.2 + in_file / rng.uniform(20_000, 200_000), 3)
        started = None if status == "pending" else created + timedelta(seconds=rng.uniform(0, 3))
        rows.append(
            {
                "dataset": dataset,
                "target_table": f"hist_{dataset}",
                "import_type": TYPES[source] if status != "rolled_back" else "MANUAL",
                "source": source,
                "partition_key": day.isoformat() if source == "schedule" else None,
                "business_date": day if source == "schedule" else None,
                "file_name": name + ext,
                "file_path": f"/srv/histimport/archive/{dataset}/{name}{ext}",
                "file_size": in_file * rng.randint(60, 200),
                "file_type": ext.lstrip("."),
                "file_sha256": f"{rng.getrandbits(256):064x}",
                "file_metadata": {"headers": HEADERS, "encoding": "utf-8", "delimiter": ","},
                "strategy": "upsert" if dataset in ("customers", "inventory") else "append",
                "status": status,
                "phase": "COMPLETE" if ended else rng.choice(("PARSE", "VALIDATE", "LOAD")),
                "error_message": (
                    f"{failed} of {in_file} rows failed validation, over the 5% gate"
                    if status == "failed"
                    else ("header does not match the spec" if status == "rejected" else None)
                ),
                "rows_in_file": in_file,
                "rows_processed": in_file if ended else None,
                "rows_created": created_rows if ended else None,
                "rows_updated": loaded - created_rows if ended else None,
                "rows_unchanged": 0 if ended else None,
                "rows_failed": failed if ended else None,
                "rows_duplicate": 0,
                "rows_deleted": 0,
                "rows_done": None if ended else in_file // 2,
                "rows_expected": None if ended else in_file,
                "progress_percent": None if ended else 50.0,
                "progress_updated_at": None if ended else now,
                "total_seconds": seconds if ended else None,
                "triggered_by": user or f"sensor:{source}",
                "worker": None if ended else "worker-1",
                "heartbeat_at": None if ended else now,
                "created_at": created,
                "started_at": started,
                "finished_at": started + timedelta(seconds=seconds) if ended and started else None,
                "user_id": user,
                "user_email": f"{user}@example.org" if user else None,
                "schema_fingerprint": hashlib.sha256(dataset.encode()).hexdigest(),
                "header_present": True,
            }
        )
    return rows


def fill_history(db: Database, count: int) -> dict[str, Any]:
    """Insert the history; returns what the queries filter on and the running imports."""
    now = datetime.now(UTC)
    rows = history_rows(count, now)
    table = db.tables.import_history
    for start in range(0, len(rows), 20_000):
        bulk_insert(db, table, rows[start : start + 20_000])
    with db.reader() as conn:
        active = list(
            conn.execute(
                sa.select(table.c.import_id)
                .where(table.c.status.in_(("running", "pending")))
                .order_by(table.c.import_id)
            ).scalars()
        )
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    month = (now - timedelta(days=90)).replace(day=1)
    return {"now": now, "active": active, "statuses": statuses, "month": month, "count": count}


def fill_failed_rows(db: Database, count: int) -> int:
    """One partial import with ``count`` failed-row records; returns its id."""
    now = datetime.now(UTC)
    h, failed = db.tables.import_history, db.tables.import_failed_rows
    with db.engine.begin() as conn:
        import_id = conn.execute(
            h.insert()
            .values(
                dataset="signups",
                target_table="hist_signups",
                import_type="DROP",
                source="inbox",
                file_name="signups_big_file.csv",
                status="partial",
                phase="COMPLETE",
                rows_in_file=count * 2,
                rows_failed=count,
                file_metadata={"headers": HEADERS, "encoding": "utf-8"},
                created_at=now,
                started_at=now,
                finished_at=now,
            )
            .returning(h.c.import_id)
        ).scalar_one()
    rng = random.Random(1)
    chunk: list[dict[str, Any]] = []
    for n in range(count):
        category = "parse" if n % 100 == 0 else CATEGORIES[n % len(CATEGORIES)]
        raw = {
            "id": str(n),
            "name": f"Person {n} Müller-Łukasz",
            "email": f"person{n}@example" if category == "format" else f"p{n}@example.org",
            "amount": "-" if category == "type" else f"{rng.uniform(-500, 5000):.2f}",
            "signup_date": "2026-02-30" if category == "range" else "2026-01-15",
        }
        column = {"type": "amount", "format": "email", "range": "signup_date"}.get(category)
        chunk.append(
            {
                "import_id": import_id,
                "source_row": n * 2 + 2,
                "column_name": column,
                "category": category,
                "message": f"{category} error in {column or 'the row'}: value not accepted",
                "raw_value": raw.get(column or ""),
                "raw_values": raw,
                "created_at": now,
            }
        )
        if len(chunk) == 50_000:
            bulk_insert(db, failed, chunk)
            chunk = []
    bulk_insert(db, failed, chunk)
    return int(import_id)


# The server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A running ``histimport serve``: its process, base URL and token."""

    proc: subprocess.Popen[bytes]
    base: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def serve(url: str, home: Path) -> Iterator[Server]:
    """Start ``histimport serve`` on a free loopback port; wait until it answers; stop it."""
    token, entry = new_token("bench", Role.VIEWER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTIMPORT_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        HISTIMPORT_HOME=str(home),
        HISTIMPORT_DATABASE_URL=url,
        HISTIMPORT_WEB_TOKENS=entry,
    )
    cmd = [sys.executable, "-m", "histimport_pipeline.cli", "serve", "--port", str(port)]
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", token)
    try:
        _wait_until_up(server, home / "serve.log")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_up(server: Server, log: Path, patience: float = 120.0) -> None:
    """Until the service answers an authenticated request; gives up when the process ends,
    or when its log has not grown for ``patience`` seconds."""
    size, last_change = -1, time.monotonic()
    while True:
        if server.proc.poll() is not None:
            raise SystemExit(
                f"histimport serve exited {server.proc.returncode}:\n{log.read_text()}"
            )
        try:
            answer = httpx.get(f"{server.base}/api/imports?limit=1", headers=server.headers)
            if answer.status_code == 200:
                return
            raise SystemExit(f"histimport serve answered {answer.status_code}: {answer.text}")
        except httpx.TransportError:
            pass
        now_size = log.stat().st_size
        if now_size != size:
            size, last_change = now_size, time.monotonic()
        elif time.monotonic() - last_change > patience:
            raise SystemExit(f"histimport serve did not answer:\n{log.read_text()}")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# Measuring ------------------------------------------------------------------------------------


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of ``seconds``, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    p95 = statistics.quantiles(ms, n=100, method="inclusive")[94] if len(ms) > 1 else ms[0]
    return {"p50": statistics.median(ms), "p95": p95, "max": ms[-1]}


def time_requests(
    client: httpx.Client, pid: int, path: str, count: int, accept: str = "application/json"
) -> dict[str, Any]:
    """``count`` timed GETs of ``path`` after 5 warm-up ones; each must answer 200. Also the
    CPU the server process ``pid`` spent per request (on PostgreSQL the database's own
    processes come on top)."""
    latencies, size, total = [], 0, None
    cpu_start = 0.0
    for n in range(5 + count):
        if n == 5:
            cpu_start = cpu_seconds(pid)
        t0 = time.perf_counter()
        answer = client.get(path, headers={"Accept": accept})
        body = answer.content
        elapsed = time.perf_counter() - t0
        if answer.status_code != 200:
            raise SystemExit(f"GET {path} answered {answer.status_code}: {answer.text[:500]}")
        if n >= 5:
            latencies.append(elapsed)
        size = len(body)
        if accept == "application/json":
            total = answer.json()["total_count"]
    cpu_ms = (cpu_seconds(pid) - cpu_start) / count * 1000
    return {**summary_ms(latencies), "cpu_ms": cpu_ms, "bytes": size, "total_count": total}


def list_queries(info: dict[str, Any]) -> dict[str, str]:
    """The listings measured: name -> path and query."""
    month = info["month"]
    until = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    deep = info["count"] * 9 // 10
    return {
        "no filter": "/api/imports",
        "dataset + status": "/api/imports?dataset=payments&status=failed",
        "file name search": "/api/imports?file=flights_2026-0",
        "since/until month": f"/api/imports?since={month:%Y-%m-%d}&until={until:%Y-%m-%d}",
        "user": "/api/imports?user=user07",
        "sort -started_at": "/api/imports?sort=-started_at",
        "sort file_name": "/api/imports?sort=file_name",
        f"offset {deep:,}": f"/api/imports?offset={deep}",
    }


PAGES = {
    "page /": "/",
    "page /imports": "/imports",
    "page /imports?dataset+status": "/imports?dataset=payments&status=failed",
}


def measure_history(server: Server, info: dict[str, Any], count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pid = server.proc.pid
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as client:
        for name, path in list_queries(info).items():
            results[name] = {"path": path, **time_requests(client, pid, path, count)}
        for name, path in PAGES.items():
            probe = client.get(path, headers={"Accept": "text/html"})
            if probe.status_code != 200:
                results[name] = {"path": path, "missing": probe.status_code}
                continue
            results[name] = {"path": path, **time_requests(client, pid, path, count, "text/html")}
    return results


@dataclass
class PollStats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _poller(
    client: httpx.AsyncClient,
    ids: Sequence[int],
    interval: float,
    until: float,
    stats: PollStats,
) -> None:
    rng = random.Random()
    due = time.monotonic() + rng.uniform(0, interval)
    while True:
        if interval:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() >= until:
            return
        path = f"/api/imports/{rng.choice(ids)}/status"
        t0 = time.perf_counter()
        try:
            answer = await client.get(path)
            await answer.aread()
            elapsed = time.perf_counter() - t0
            if answer.status_code != 200 or "finished" not in answer.json():
                stats.errors.append(f"{path}: {answer.status_code} {answer.text[:200]}")
            else:
                stats.latencies.append(elapsed)
        except httpx.HTTPError as exc:
            stats.errors.append(f"{path}: {exc!r}")
        due += interval


def measure_polling(
    server: Server, ids: Sequence[int], pollers: int, seconds: float, interval: float
) -> dict[str, Any]:
    """``pollers`` clients polling status for ``seconds``, every ``interval`` (0: flat out).

    Each client has its own connection, opened before the clock starts (as browsers that
    have the page open already); ``verify=False`` because building a TLS context for each
    client (200 ms apiece) is no part of plain-HTTP polling on loopback.
    """
    stats = PollStats()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def run() -> float:
        clients = [
            httpx.AsyncClient(
                base_url=server.base,
                headers=server.headers,
                timeout=30,
                limits=limits,
                verify=False,
            )
            for _ in range(pollers)
        ]
        try:
            await asyncio.gather(*(c.get("/api/imports?limit=1") for c in clients))
            t0 = time.perf_counter()
            until = time.monotonic() + seconds
            await asyncio.gather(*(_poller(c, ids, interval, until, stats) for c in clients))
            return time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    wall = asyncio.run(run())
    made = len(stats.latencies) + len(stats.errors)
    return {
        "pollers": pollers,
        "interval": interval,
        "seconds": wall,
        "requests": made,
        "errors": len(stats.errors),
        "first_errors": stats.errors[:5],
        "per_second": made / wall,
        **(summary_ms(stats.latencies) if stats.latencies else {}),
    }


def measure_errors_csv(server: Server, import_id: int, expected_rows: int) -> dict[str, Any]:
    """Stream the failed rows' CSV while sampling the server's RSS every 0.1 s."""
    pid = server.proc.pid
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_bytes(pid))
            done.wait(0.1)

    time.sleep(1.0)  # let the polling's last requests settle
    start_rss = rss_bytes(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size = lines = 0
    first_byte = None
    head = b""
    t0 = time.perf_counter()
    with (
        httpx.Client(base_url=server.base, headers=server.headers, timeout=120) as client,
        client.stream("GET", f"/api/imports/{import_id}/errors") as answer,
    ):
        if answer.status_code != 200:
            raise SystemExit(f"errors CSV answered {answer.status_code}")
        for piece in answer.iter_raw():
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            if len(head) < 200:
                head += piece[:200]
            size += len(piece)
            lines += piece.count(b"\n")
    seconds = time.perf_counter() - t0
    time.sleep(0.5)
    done.set()
    sampler.join()
    end_rss = rss_bytes(pid)
    peak = max([start_rss, *samples])
    return {
        "bytes": size,
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
        "first_byte_s": first_byte,
        "lines": lines,
        "expected_lines": expected_rows + 1,
        "header": head.split(b"\r\n", 1)[0].decode("utf-8-sig", "replace"),
        "rss_start_mib": start_rss / MIB,
        "rss_peak_mib": peak / MIB,
        "rss_end_mib": end_rss / MIB,
        "rss_growth_mib": (peak - start_rss) / MIB,
        "samples": len(samples),
    }


# Running and reporting ------------------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace, pg_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="histimport-webbench-") as tmp:
        home = Path(tmp)
        with database(backend, home, pg_url) as url:
            db = Database.connect(url)
            try:
                t0 = time.perf_counter()
                info = fill_history(db, args.imports)
                fill_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                failed_id = fill_failed_rows(db, args.failed_rows)
                failed_s = time.perf_counter() - t0
                if db.dialect == "postgresql":
                    # What autovacuum does within a minute of such a load (statistics, and
                    # the visibility map that lets a count read an index alone); done now so
                    # that every run starts from a settled table.
                    with db.engine.connect() as conn:
                        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                            "VACUUM ANALYZE"
                        )
            finally:
                db.dispose()
            print(
                f"[{backend}] filled {args.imports:,} imports in {fill_s:.1f} s and "
                f"{args.failed_rows:,} failed rows in {failed_s:.1f} s; statuses "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(info["statuses"].items())),
                flush=True,
            )
            load_before = os.getloadavg()[0]
            with serve(url, home) as server:
                history = measure_history(server, info, args.requests)
                print(f"[{backend}] listings measured", flush=True)
                ids = info["active"] or [1]
                polling = measure_polling(
                    server, ids, args.pollers, args.poll_seconds, args.poll_interval
                )
                flat_out = (
                    measure_polling(server, ids, args.pollers, args.flat_out_seconds, 0.0)
                    if args.flat_out_seconds > 0
                    else None
                )
                print(f"[{backend}] polling measured", flush=True)
                stream = measure_errors_csv(server, failed_id, args.failed_rows)
    return {
        "backend": backend,
        "load_average": (load_before, os.getloadavg()[0]),
        "imports": args.imports,
        "history": history,
        "polling": polling,
        "flat_out": flat_out,
        "errors_csv": stream,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Print one backend's tables; returns its summary rows (what, value, target, verdict)."""
    backend = result["backend"]
    summary: list[tuple[str, str, str, str]] = []
    before, after = result["load_average"]
    print(
        f"\n== {backend}: {result['imports']:,} imports in the history "
        f"(load average {before:.1f} before, {after:.1f} after) =="
    )
    width = max(len(name) for name in result["history"])
    print(
        f"{'request':<{width}}  {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'cpu ms':>7}"
        f" {'matches':>8}  path"
    )
    for name, r in result["history"].items():
        page = name.startswith("page")
        if "missing" in r:
            print(f"{name:<{width}}  not built on this branch (HTTP {r['missing']})  {r['path']}")
            summary.append((f"{name} p95", "not built on this branch", "< 200 ms", "-"))
            continue
        matches = "" if r["total_count"] is None else f"{r['total_count']:,}"
        print(
            f"{name:<{width}}  {r['p50']:7.1f} {r['p95']:7.1f} {r['max']:7.1f}"
            f" {r['cpu_ms']:7.1f} {matches:>8}"
            f"  {r['path']}"
        )
        target = PAGE_P95_MS if page else LIST_P95_MS
        summary.append(
            (f"{name} p95", f"{r['p95']:.1f} ms", f"< {target:.0f} ms", _verdict(r["p95"] < target))
        )
    for key, label in (("polling", "pollers"), ("flat_out", "flat out")):
        p = result[key]
        if p is None:
            continue
        how = f"every {p['interval']:g} s each" if p["interval"] else "as fast as they can"
        latency = (
            f"p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms, max {p['max']:.1f} ms"
            if "p50" in p
            else "no answers"
        )
        print(
            f"{p['pollers']} clients polling status {how} for {p['seconds']:.1f} s: "
            f"{p['requests']:,} requests ({p['per_second']:.0f}/s), {p['errors']} errors, {latency}"
        )
        for line in p["first_errors"]:
            print(f"  error: {line}")
        summary.append(
            (
                f"{label}: errors",
                f"{p['errors']} of {p['requests']:,}",
                "0",
                _verdict(p["errors"] == 0),
            )
        )
        if "p95" in p:
            summary.append((f"{label}: status p95", f"{p['p95']:.1f} ms", "(none)", ""))
    s = result["errors_csv"]
    print(
        f"errors CSV: {s['bytes'] / 1e6:,.1f} MB in {s['seconds']:.1f} s = {s['mb_per_s']:.1f} MB/s"
        f" (first byte after {s['first_byte_s']:.2f} s), {s['lines']:,} lines "
        f"(expected {s['expected_lines']:,}); server RSS start {s['rss_start_mib']:.0f} MiB, "
        f"peak {s['rss_peak_mib']:.0f} MiB, end {s['rss_end_mib']:.0f} MiB "
        f"({s['samples']} samples); header {s['header']!r}"
    )
    summary.append(
        (
            "errors CSV lines",
            f"{s['lines']:,}",
            f"{s['expected_lines']:,}",
            _verdict(s["lines"] == s["expected_lines"]),
        )
    )
    summary.append(
        (
            "errors CSV RSS growth",
            f"{s['rss_growth_mib']:.1f} MiB",
            f"< {RSS_GROWTH_MIB:.0f} MiB",
            _verdict(s["rss_growth_mib"] < RSS_GROWTH_MIB),
        )
    )
    summary.append(("errors CSV speed", f"{s['mb_per_s']:.1f} MB/s", "(none)", ""))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg-url", help=f"PostgreSQL server URL (default: ${' or $'.join(URL_ENVS)})"
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        help="which databases (default: both when a PostgreSQL URL is known, else sqlite)",
    )
    parser.add_argument("--imports", type=int, default=100_000, help="imports in the history")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per listing")
    parser.add_argument("--pollers", type=int, default=50, help="concurrent status pollers")
    parser.add_argument("--poll-seconds", type=float, default=60.0, help="how long they poll")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between one poller's requests"
    )
    parser.add_argument(
        "--flat-out-seconds", type=float, default=10.0, help="then as fast as they can (0: skip)"
    )
    parser.add_argument("--failed-rows", type=int, default=1_000_000, help="rows in the CSV")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    pg_url = args.pg_url or next((os.environ[e] for e in URL_ENVS if os.environ.get(e)), None)
    backend = args.backend or ("both" if pg_url else "sqlite")
    if backend != "sqlite" and not pg_url:
        raise SystemExit(f"--backend {backend} needs --pg-url or ${URL_ENVS[0]}")
    backends = ["sqlite", "postgresql"] if backend == "both" else [backend]
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; server on loopback, client in this process",
        flush=True,
    )
    results = [run_backend(b, args, pg_url) for b in backends]
    rows: list[tuple[str, str, str, str]] = []
    for result in results:
        rows += [(result["backend"], *row) for row in report(result)]
    print("\nSummary")
    header = ("database", "measure", "value", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
