"""Database connections: one SQLAlchemy engine per process and URL.

SQLite is set up so that a transaction really is one (``BEGIN IMMEDIATE`` is emitted by us,
not left to the driver), with foreign keys on and WAL so that readers don't block the writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from histimport_pipeline.engine.dbapi import (
    SQLITE_BUSY_TIMEOUT_S,
    ReadSession,
    is_connect_failure,
    read_session,
)
from histimport_pipeline.engine.errors import DatabaseUnavailableError
from histimport_pipeline.engine.schema import TrackingTables, tracking_tables
from histimport_pipeline.engine.settings import Settings, mask_url, normalize_database_url

#: Execution option marking a connection that only reads (SQLite: no write lock).
READ_ONLY = "histimport_read_only"


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """Create a SQLAlchemy engine for ``url`` with histimport's connection settings.

    Args:
        url: SQLAlchemy URL; a bare ``postgresql://`` is pinned to psycopg 3.
        **kwargs: passed on to :func:`sqlalchemy.create_engine`.

    Returns:
        The engine. On SQLite every ``BEGIN`` takes the write lock at once, which makes a
        read-then-write transaction safe against a concurrent writer.
    """
    url = normalize_database_url(url)
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # The sqlite3 module would otherwise open transactions only before DML and
            # run DDL outside them; we want every statement inside our own BEGIN.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # Writers take the lock up front (no deadlock when two upgrade a read lock);
            # readers opened with Database.reader() don't block writers at all.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


@dataclass(frozen=True)
class Database:
    """A target database: its engine and the tracking tables in their schema."""

    engine: Engine
    schema: str | None

    @classmethod
    def connect(cls, url: str, pg_schema: str = "histimport", **kwargs: Any) -> Database:
        """Open ``url``; on PostgreSQL the tracking tables live in ``pg_schema``."""
        engine = create_db_engine(url, **kwargs)
        schema = pg_schema if engine.dialect.name == "postgresql" else None
        return cls(engine=engine, schema=schema)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Database:
        """Open the database named by ``settings`` (creating the SQLite folder if needed)."""
        url = sa.make_url(settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            from pathlib import Path

            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return cls.connect(settings.database_url, settings.db_schema, **kwargs)

    @contextmanager
    def reader(self) -> Iterator[sa.Connection]:
        """A connection for reading only; on SQLite it never holds the write lock."""
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            yield conn

    def raw_reader(self) -> AbstractContextManager[ReadSession]:
        """A read-only transaction over a pooled DB-API connection of this engine: what the
        read queries of ``tracking.history`` run on (as on ``engine.dbapi.Reader``)."""
        return read_session(
            self.engine.raw_connection,
            self.engine.dialect.dbapi,
            self.dialect,
            self.schema,
            lambda: self.masked_url,
        )

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        name: str = self.engine.dialect.name
        return name

    @property
    def tables(self) -> TrackingTables:
        """The tracking tables of this database's schema."""
        return tracking_tables(self.schema)

    @property
    def masked_url(self) -> str:
        """The URL with its password masked."""
        return mask_url(self.engine.url)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


@contextmanager
def unavailable_as_transient(url: str | sa.URL) -> Iterator[None]:
    """Turn "cannot connect" driver errors into :class:`DatabaseUnavailableError`.

    Only connection-level failures are translated; a constraint violation or bad SQL stays
    what it is, since retrying it unchanged would not help.
    """
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if not is_unavailable(exc):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(mask_url(url), reason) from exc


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection-level failure :func:`unavailable_as_transient` turns
    into :class:`DatabaseUnavailableError`."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) and (
        exc.connection_invalidated or is_connect_failure(exc.orig or exc)
    )
