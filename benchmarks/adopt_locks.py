"""How long ``histimport adopt --apply`` holds a PostgreSQL table, and how long its readers wait.

Makes a table of N rows in the given database (the tracking tables are migrated there first),
plans its adoption, then applies it while a second connection reads the table over and over
(``SELECT count(*)`` of a page of it). Printed: the plan's seconds, the adoption transaction's
seconds, of which the part from the first ``ALTER TABLE`` (ACCESS EXCLUSIVE: readers wait) to
the commit, and the longest and median read meanwhile. Then it undoes the adoption and drops
the table.

    python benchmarks/adopt_locks.py postgresql://... [--rows 10000] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import adoption, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.spec import DatasetSpec

TABLE = "bench_adopt"


def _spec() -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "bench_adopt",
            "target_table": TABLE,
            "strategy": "upsert",
            "key": ["id"],
            "columns": {"id": {"type": "integer", "required": True}, "v": {"type": "string"}},
        }
    )


def _make_table(db: Database, rows: int) -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (id BIGINT NOT NULL, v TEXT)")
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"  # noqa: S608
        )
        conn.exec_driver_sql(f"ANALYZE {TABLE}")


def measure(db: Database, rows: int) -> dict[str, float]:
    """One adoption of a table of ``rows`` rows, with a reader running meanwhile."""
    _make_table(db, rows)
    spec = _spec()
    started = time.perf_counter()
    plan = adoption.plan_adoption(db, spec)
    planned = time.perf_counter() - started
    reads: list[float] = []
    stop = threading.Event()
    marks: dict[str, float] = {}

    def read() -> None:
        with db.engine.connect() as conn:
            while not stop.is_set():
                t0 = time.perf_counter()
                conn.exec_driver_sql(f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} LIMIT 100) s")  # noqa: S608
                conn.rollback()
                reads.append(time.perf_counter() - t0)

    def mark(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("ALTER TABLE") and "exclusive" not in marks:
            marks["exclusive"] = time.perf_counter()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    sa.event.listen(db.engine, "before_cursor_execute", mark)
    begun = time.perf_counter()
    adoption.apply_adoption(db, spec, plan, actor="benchmark")
    committed = time.perf_counter()
    sa.event.remove(db.engine, "before_cursor_execute", mark)
    time.sleep(0.2)
    stop.set()
    reader.join()
    adoption.undo_adoption(db, spec, actor="benchmark")
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")
    return {
        "plan_s": planned,
        "transaction_s": committed - begun,
        "exclusive_s": committed - marks["exclusive"],
        "longest_read_s": max(reads),
        "median_read_s": statistics.median(reads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="a PostgreSQL database to use (a table is made and dropped)")
    parser.add_argument("--rows", type=int, action="append", help="table sizes (10000)")
    args = parser.parse_args()
    db = Database.connect(args.url)
    migrations.upgrade(db)
    try:
        print(f"{'rows':>10} {'plan s':>8} {'tx s':>8} {'excl s':>8} {'max read s':>11}")
        for rows in args.rows or [10_000]:
            m = measure(db, rows)
            print(
                f"{rows:>10,} {m['plan_s']:>8.3f} {m['transaction_s']:>8.3f} "
                f"{m['exclusive_s']:>8.3f} {m['longest_read_s']:>11.3f}"
                f"  (median read {m['median_read_s'] * 1000:.2f} ms)"
            )
    finally:
        db.dispose()


if __name__ == "__main__":
    main()
