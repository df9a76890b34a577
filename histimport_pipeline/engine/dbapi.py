"""Reading the tracking tables over plain DB-API, without SQLAlchemy.

The report commands (``history``, ``show``, ``stats``) spend most of their start-up importing
SQLAlchemy, whose top-level import pulls in the whole Core; the queries they run are a few
fixed SELECTs. :class:`Reader` opens the database named by the settings with the driver
itself (``sqlite3``, psycopg 3) so that they need none of it. The queries are written once,
in ``tracking.history``, against :class:`ReadSession`, which both a :class:`Reader` and an
``engine.db.Database`` (over a pooled connection of its engine) hand out: the two paths run
the same SQL and return the same values.

Values are bound, never inlined; identifiers are quoted (:func:`quote`). SQLite keeps
timestamps, dates and JSON as text and booleans as integers; :func:`convert` turns them back
into what SQLAlchemy's types would have returned (see ``tracking.columns``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from histimport_pipeline.engine.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.settings import Settings

#: Seconds a SQLite writer waits for the lock before giving up. Imports running at once take
#: turns for it, and a big file's load holds it for its whole transaction: a minute was too
#: short with several large imports queued.
SQLITE_BUSY_TIMEOUT_S = 300
#: The text of a driver error that says the database cannot be reached at all.
CONNECT_FAILURES = (
    "connection refused",
    "could not connect",
    "connection failed",
    "could not translate host",
    "server closed the connection",
    "terminating connection",
    "unable to open database file",
    "timeout expired",
    "no such host",
)
#: A database URL as SQLAlchemy's ``make_url`` reads it (the same pattern).
_URL = re.compile(
    r"""
    (?P<name>[\w\+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?(?::(?P<port>[^/\?]*))?)?
    (?:/(?P<database>[^\?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)
_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
_PG_DRIVERS = ("postgresql", "postgres", "postgresql+psycopg")
#: Query options of a PostgreSQL URL that SQLAlchemy itself interprets (several hosts).
_PG_SPECIAL_OPTIONS = ("host", "port")


@dataclass(frozen=True)
class DatabaseUrl:
    """The parts of a database URL (never printed: the password is one of them)."""

    drivername: str
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    database: str | None
    query: tuple[tuple[str, str], ...]


def parse_url(text: str) -> DatabaseUrl | None:
    """Split a SQLAlchemy-style URL into its parts, as ``sqlalchemy.make_url`` would.

    Returns:
        The parts, or ``None`` for anything this simple reading is not sure of (no match, a
        port that is not a number, a query option given twice): callers then leave the URL
        to SQLAlchemy.
    """
    m = _URL.match(text)
    if m is None:
        return None
    port = m["port"]
    if port and not port.isdigit():
        return None
    query = tuple(parse_qsl(m["query"])) if m["query"] is not None else ()
    if len({k for k, _ in query}) != len(query):
        return None

    def unquoted(value: str | None) -> str | None:
        return unquote(value) if value is not None else None

    return DatabaseUrl(
        drivername=m["name"],
        username=unquoted(m["username"]),
        password=unquoted(m["password"]),
        host=m["ipv4host"] or m["ipv6host"],
        port=int(port) if port else None,
        database=unquoted(m["database"]),
        query=query,
    )


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (the same on SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def is_connect_failure(exc: BaseException) -> bool:
    """Whether a driver error's text says the database cannot be reached."""
    text = str(exc).lower()
    return any(marker in text for marker in CONNECT_FAILURES)


def convert(kind: str, value: Any) -> Any:
    """A value read back, as SQLAlchemy's type of kind ``kind`` returns it.

    Args:
        kind: ``datetime``, ``date``, ``json``, ``bool`` or anything else (left as read).
        value: what the driver returned: text for SQLite's timestamps, dates and JSON, an
            integer for its booleans; PostgreSQL's native values pass unchanged.

    Returns:
        The value; a timestamp timezone-aware UTC (SQLite's are stored as naive UTC).
    """
    if value is None:
        return None
    if kind == "datetime":
        stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
    if kind == "date":
        return date.fromisoformat(value) if isinstance(value, str) else value
    if kind == "json":
        return json.loads(value) if isinstance(value, str | bytes) else value
    if kind == "bool":
        return bool(value)
    return value


class ReadSession:
    """One read-only transaction on the tracking tables over a DB-API connection.

    Built by :meth:`Reader.raw_reader` and ``Database.raw_reader``; queries are written with
    ``?`` placeholders and run on either backend.
    """

    def __init__(self, conn: Any, dialect: str, schema: str | None, paramstyle: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.schema = schema
        self._marker = "?" if paramstyle == "qmark" else "%s"

    def table(self, name: str) -> str:
        """The quoted name of tracking table ``name``, in its schema on PostgreSQL."""
        return f"{quote(self.schema)}.{quote(name)}" if self.schema else quote(name)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) with ``params`` bound; every row as a tuple."""
        if self._marker != "?":
            if "%" in sql:
                raise ValueError("a literal % in SQL for a %s-style driver; bind it instead")
            sql = sql.replace("?", self._marker)
        cur = self.conn.cursor()
        try:
            cur.execute(sql, [self._bind(v) for v in params])
            return list(cur.fetchall())
        finally:
            cur.close()

    def records(
        self, sql: str, params: Sequence[Any], kinds: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Run ``sql``, which selects the columns of ``kinds`` in its order; each row as a
        dict of them, values converted by kind (:func:`convert`)."""
        names = list(kinds)
        return [
            {name: self.value(kinds[name], v) for name, v in zip(names, row, strict=True)}
            for row in self.rows(sql, params)
        ]

    def value(self, kind: str, value: Any) -> Any:
        """A value of kind ``kind`` read back, as SQLAlchemy's type would return it."""
        # psycopg parsed JSON already; a JSON string it returns is a value, not text to parse.
        if kind == "json" and self.dialect != "sqlite":
            return value
        return convert(kind, value)

    def has_table(self, name: str) -> bool:
        """Whether table (or view) ``name`` exists in the schema of the tracking tables."""
        if self.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?"
            return bool(self.rows(sql, [name]))
        where_schema = "n.nspname = ?" if self.schema else "n.nspname = current_schema()"
        sql = (
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            f"ON n.oid = c.relnamespace WHERE {where_schema} AND c.relname = ? "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        )
        return bool(self.rows(sql, [*([self.schema] if self.schema else []), name]))

    def _bind(self, value: Any) -> Any:
        # SQLite compares the text SQLAlchemy stored, which is this format in UTC.
        if self.dialect == "sqlite" and isinstance(value, datetime):
            stamp = value.astimezone(UTC) if value.tzinfo else value
            return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")
        if self.dialect == "sqlite" and isinstance(value, date):
            return value.isoformat()
        return value


@contextmanager
def read_session(
    connect: Callable[[], Any],
    driver: Any,
    dialect: str,
    schema: str | None,
    masked_url: Callable[[], str],
) -> Iterator[ReadSession]:
    """One read-only transaction over the connection ``connect`` opens, closed after.

    Args:
        connect: opens (or checks out) the DB-API connection.
        driver: the DB-API module (its ``paramstyle``, ``OperationalError``, ...).
        dialect, schema: the backend and the schema of the tracking tables (PostgreSQL).
        masked_url: the URL without its password, for the error that says it is unreachable.

    Raises:
        DatabaseUnavailableError: the database cannot be reached (a driver error whose text
            says so, as ``engine.db.unavailable_as_transient`` turns SQLAlchemy's).
    """
    errors = (driver.OperationalError, driver.InterfaceError)
    try:
        conn = connect()
    except errors as exc:
        raise _unavailable(exc, masked_url) from exc
    try:
        if dialect == "sqlite":
            # One snapshot for every query of the session; deferred: no write lock.
            conn.execute("BEGIN DEFERRED")
        yield ReadSession(conn, dialect, schema, driver.paramstyle)
    except errors as exc:
        raise _unavailable(exc, masked_url) from exc
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def _unavailable(exc: BaseException, masked_url: Callable[[], str]) -> BaseException:
    if not is_connect_failure(exc):
        return exc
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailableError(masked_url(), reason)


@dataclass(frozen=True)
class Reader:
    """The database named by the settings, opened with its driver alone (see the module).

    Build it with :meth:`from_settings`; where the URL is one this simple path does not
    handle, that returns ``None`` and callers use an ``engine.db.Database``.
    """

    #: The database URL as the settings have it (the password included: never print it).
    url: str = field(repr=False)
    #: ``sqlite`` or ``postgresql``.
    dialect: str
    #: Schema of the tracking tables (PostgreSQL), else ``None``.
    schema: str | None
    #: Keyword arguments of the driver's ``connect``.
    connect_args: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Reader | None:
        """The reader of ``settings.database_url`` (tracking tables in ``settings.db_schema``
        on PostgreSQL), or ``None`` when this path does not handle the URL.

        Handled: ``sqlite:///FILE`` of a file that exists, without options, and PostgreSQL
        through psycopg with one host (bare ``postgresql://`` means psycopg, as for the
        engine). Not handled (``None``): in-memory or missing SQLite files (they need
        migrating first), other drivers, several hosts.
        """
        return cls.from_url(settings.database_url, settings.db_schema)

    @classmethod
    def from_url(cls, url: str, pg_schema: str) -> Reader | None:
        """As :meth:`from_settings`, from a URL and the PostgreSQL schema."""
        parts = parse_url(url)
        if parts is None:
            return None
        if parts.drivername in _SQLITE_DRIVERS:
            if parts.query or parts.username or parts.password or parts.host or parts.port:
                return None
            if not parts.database or parts.database == ":memory:":
                return None
            path = Path(parts.database).absolute()
            if not path.is_file():
                return None
            return cls(url, "sqlite", None, {"database": str(path)})
        if parts.drivername in _PG_DRIVERS:
            options = dict(parts.query)
            if any(k in options for k in _PG_SPECIAL_OPTIONS):
                return None
            args = {
                "user": parts.username,
                "password": parts.password,
                "host": parts.host,
                "port": parts.port,
                "dbname": parts.database,
            }
            args = {k: v for k, v in args.items() if v not in (None, "")}
            return cls(url, "postgresql", pg_schema, {**args, **options})
        return None

    @property
    def masked_url(self) -> str:
        """The URL with its password masked, as ``Database.masked_url`` says it (with the
        driver the engine pins); for error messages only: it imports SQLAlchemy."""
        from histimport_pipeline.engine.settings import mask_url, normalize_database_url

        return mask_url(normalize_database_url(self.url))

    def raw_reader(self) -> AbstractContextManager[ReadSession]:
        """A read-only transaction on a connection of its own, closed after."""
        if self.dialect == "sqlite":
            import sqlite3

            path = self.connect_args["database"]
            return read_session(
                lambda: sqlite3.connect(path, SQLITE_BUSY_TIMEOUT_S, isolation_level=None),
                sqlite3,
                "sqlite",
                None,
                lambda: self.masked_url,
            )
        import psycopg

        connect_args = self.connect_args
        return read_session(
            lambda: psycopg.connect(**connect_args),
            psycopg,
            "postgresql",
            self.schema,
            lambda: self.masked_url,
        )

    @cached_property
    def database(self) -> Database:
        """The same database through SQLAlchemy, opened on first use, for what writes
        (``show --watch`` failing an import whose worker died). :meth:`close` disposes it."""
        from histimport_pipeline.engine.db import Database

        return Database.connect(self.url, self.schema or "histimport")

    def close(self) -> None:
        """Dispose the SQLAlchemy engine of :attr:`database`, if one was opened."""
        opened = self.__dict__.get("database")
        if opened is not None:
            opened.dispose()
