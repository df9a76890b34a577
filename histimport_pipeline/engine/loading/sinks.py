"""The COPY sinks of the columnar reader: into an import's staging table, or into the target
on the load transaction's connection (the direct load)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import failpoints
from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline_records import ImportHandle
from histimport_pipeline.engine.reading import columnar
from histimport_pipeline.engine.spec import DatasetSpec


@dataclass(frozen=True)
class IntoTarget:
    """``run_import``'s one-pass direct load: the target, and the load transaction's
    connection whose COPY the checked rows stream into."""

    conn: sa.Connection
    table: sa.Table


@dataclass(frozen=True)
class Streamed:
    """The rows ``run_import``'s one pass has COPYed into ``table``, uncommitted."""

    table: sa.Table
    rows: int
    #: The table is new and was made without its primary key
    #: (``create_target_keyed_later``): the load adds it.
    key_later: bool = False


class StagingSink:
    """One binary COPY into an import's staging table, fed block by block.

    Without a caller's connection it runs on a connection of its own, so that failed rows can
    be written meanwhile, and commits at the end; inside a dry run (the caller's connection)
    each block is a COPY of its own.
    """

    def __init__(
        self, db: Database, spec: DatasetSpec, handle: ImportHandle, conn: sa.Connection | None
    ) -> None:
        self._db = db
        self._outer = conn
        self._stack = ExitStack()
        self._pump: columnar.CopyPump | None = None
        self._table = load.staging_name(handle.import_id)

    def __enter__(self) -> StagingSink:
        return self

    def write(self, columns: Sequence[str], payload: memoryview) -> None:
        """Send one block of binary COPY tuples with these columns."""
        if self._outer is not None:
            raw = self._outer.connection.driver_connection
            sql = self._sql(self._outer, columns)
            with (
                columnar.quiet_copy_abort(),
                raw.cursor() as cur,  # type: ignore[union-attr]
                cur.copy(sql) as copy,
            ):
                copy.write(columnar.COPY_HEADER)
                copy.write(payload)
                copy.write(columnar.COPY_TRAILER)
            return
        if self._pump is None:
            own = self._stack.enter_context(self._db.engine.connect())
            self._stack.enter_context(own.begin())
            self._pump = _start_copy(self._stack, own, self._sql(own, columns))
        self._pump.put(payload)

    def _sql(self, conn: sa.Connection, columns: Sequence[str]) -> str:
        table = load.qualified_name(conn, self._db.schema or "public", self._table)
        return columnar.copy_sql(conn.dialect.identifier_preparer, table, columns)

    def commit(self) -> None:
        """Finish the COPY and commit it."""
        self._pump = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # With an exception: the pump stops, psycopg aborts the COPY, the transaction rolls
        # back. (After commit() the stack is empty.)
        self._stack.__exit__(exc_type, exc, tb)


def _start_copy(stack: ExitStack, conn: sa.Connection, sql: str) -> columnar.CopyPump:
    """Open ``sql`` (a ``COPY ... FROM STDIN``) on ``conn`` with a pump feeding it; ``stack``
    ends them (the COPY aborts when it is left with an exception)."""
    raw: Any = conn.connection.driver_connection
    stack.enter_context(columnar.quiet_copy_abort())  # left last, after the COPY's abort
    cursor = stack.enter_context(raw.cursor())
    copy = stack.enter_context(cursor.copy(sql))
    return stack.enter_context(columnar.CopyPump(copy))


class TargetSink:
    """One binary COPY into the target on the load transaction's connection, fed by a thread;
    ``commit`` ends the COPY (the caller commits the transaction)."""

    def __init__(self, into: IntoTarget) -> None:
        self._into = into
        self._stack = ExitStack()
        self._pump: columnar.CopyPump | None = None

    def __enter__(self) -> TargetSink:
        return self

    def write(self, columns: Sequence[str], payload: memoryview) -> None:
        """Send one block of binary COPY tuples with these columns."""
        if self._pump is None:
            conn = self._into.conn
            table = load.qualified_name(conn, None, self._into.table.name)
            sql = columnar.copy_sql(conn.dialect.identifier_preparer, table, columns)
            self._pump = _start_copy(self._stack, conn, sql)
        self._pump.put(payload)
        failpoints.checkpoint("copy")

    def commit(self) -> None:
        """Finish the COPY."""
        self._pump = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._stack.__exit__(exc_type, exc, tb)


def target_constants(target: sa.Table, handle: ImportHandle) -> list[columnar.Constant]:
    """The system columns a direct load writes with one value per import."""
    constants = [columnar.Constant("_import_id", handle.import_id)]
    if "_business_date" in target.c:
        constants.append(columnar.Constant("_business_date", handle.business_date))
    return constants
