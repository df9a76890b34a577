"""Settings read from the environment, and only from it.

Every setting has a documented default under ``HISTIMPORT_HOME`` so that a new user runs
everything with no server. Settings are read when :meth:`Settings.from_env` is called, never at
import time, so the same code runs in tests, ``dagster dev`` and production.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from histimport_pipeline.engine.dbapi import parse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_PG_SCHEMA = "histimport"
#: The largest value of one field, in UTF-8 bytes, that an import loads (32 MiB).
DEFAULT_MAX_FIELD_BYTES = 32 * 1024 * 1024
#: Days failed-row records and error files are kept (the source designs' 30 days).
DEFAULT_RETENTION_DAYS = 30
#: Days after which an import is archived (the source designs keep detail for a year).
DEFAULT_ARCHIVE_AFTER_DAYS = 365

#: name -> (meaning, default) for the README and ``histimport settings``.
ENVIRONMENT_VARIABLES: dict[str, tuple[str, str]] = {
    "HISTIMPORT_HOME": (
        "Folder for local state: SQLite database, inbox, archive.",
        "./.histimport",
    ),
    "HISTIMPORT_DATABASE_URL": (
        "SQLAlchemy URL of the target database (data and tracking tables).",
        "sqlite:///$HISTIMPORT_HOME/histimport.db",
    ),
    "HISTIMPORT_DB_SCHEMA": (
        "PostgreSQL schema that holds the tracking tables.",
        DEFAULT_PG_SCHEMA,
    ),
    "HISTIMPORT_INBOX": ("Watched drop folder.", "$HISTIMPORT_HOME/inbox"),
    "HISTIMPORT_DATASETS": ("Folder of dataset specs (YAML).", "$HISTIMPORT_HOME/datasets"),
    "HISTIMPORT_ARCHIVE": ("Where imported files are moved.", "$HISTIMPORT_HOME/archive"),
    "HISTIMPORT_QUARANTINE": ("Where rejected files are moved.", "$HISTIMPORT_HOME/quarantine"),
    "HISTIMPORT_LOOKBACK_DAYS": (
        "Days the daily schedule looks back for missing or failed dates.",
        "7",
    ),
    "HISTIMPORT_PARTITION_RETENTION_DAYS": (
        "Days after which a file partition is removed from Dagster (history stays).",
        "90",
    ),
    "HISTIMPORT_MAX_FIELD_BYTES": (
        "Largest value of one field (UTF-8 bytes); a larger one is a row error.",
        str(DEFAULT_MAX_FIELD_BYTES),
    ),
    "HISTIMPORT_STALE_AFTER_SECONDS": (
        "A running import whose worker on another host sent no heartbeat for this long is "
        "taken for dead (on the same host a gone process decides at once).",
        "600",
    ),
    "HISTIMPORT_PROGRESS_EVERY_S": (
        "Fewest seconds between two writes of a running import's progress (rows done, "
        "percent) on import_history; 0: after every batch.",
        "2",
    ),
    "HISTIMPORT_ERROR_DIR": (
        "Where each import with failed rows gets its error file (the failed rows as CSV).",
        "$HISTIMPORT_HOME/errors",
    ),
    "HISTIMPORT_RETENTION_DAYS": (
        "Days failed-row records and error files are kept (`histimport cleanup` and the "
        "daily retention schedule remove older ones; the history stays).",
        str(DEFAULT_RETENTION_DAYS),
    ),
    "HISTIMPORT_ARCHIVE_AFTER_DAYS": (
        "Days after which an import is archived: its detail rows (failed rows, "
        "reconciliation detail, before-images) are removed, its history row is kept, and it "
        "can no longer be rolled back.",
        str(DEFAULT_ARCHIVE_AFTER_DAYS),
    ),
    "HISTIMPORT_WAIT_SECONDS": (
        "How long `histimport import` waits for another running import of the same content "
        "(0: not at all; the import then ends failed).",
        "600",
    ),
    "HISTIMPORT_USER": (
        "Who the CLI records as the user of an import, rollback or review decision "
        "(`--user` wins).",
        "the OS user",
    ),
    "HISTIMPORT_USER_EMAIL": (
        "That user's e-mail address, recorded on imports (`--email` wins).",
        "none",
    ),
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SettingsError(ValueError):
    """A setting from the environment is unusable; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Where histimport keeps things. Build it with :meth:`from_env`.

    Attributes:
        home: folder for local state (``HISTIMPORT_HOME``).
        database_url: SQLAlchemy URL of the target database (``HISTIMPORT_DATABASE_URL``).
        db_schema: PostgreSQL schema of the tracking tables (``HISTIMPORT_DB_SCHEMA``);
            ignored on SQLite, which has no schemas.
        inbox, datasets, archive, quarantine: folders, each from its own variable.
        max_field_bytes: the largest field value an import loads (``HISTIMPORT_MAX_FIELD_BYTES``).
        user, user_email: who the CLI records as acting (``HISTIMPORT_USER``,
            ``HISTIMPORT_USER_EMAIL``); ``None`` when unset.
        error_dir: where an import's error file is written (``HISTIMPORT_ERROR_DIR``).
        retention_days: how long failed rows and error files are kept
            (``HISTIMPORT_RETENTION_DAYS``).
        archive_after_days: the age at which an import is archived
            (``HISTIMPORT_ARCHIVE_AFTER_DAYS``).
        web_url: base URL of the web history page (``HISTIMPORT_WEB_URL``), where the Dagster
            metadata links an import's failed rows; None links the error file instead.
    """

    home: Path
    database_url: str
    db_schema: str
    inbox: Path
    datasets: Path
    archive: Path
    quarantine: Path
    error_dir: Path
    lookback_days: int = 7
    partition_retention_days: int = 90
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    stale_after_seconds: int = 600
    wait_seconds: int = 600
    user: str | None = None
    user_email: str | None = None
    progress_every_s: float = 2.0
    retention_days: int = DEFAULT_RETENTION_DAYS
    archive_after_days: int = DEFAULT_ARCHIVE_AFTER_DAYS
    web_url: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``).

        Long because: one line, or one check, per environment variable.

        Args:
            environ: the environment to read; tests pass their own mapping.
            cwd: the folder a relative default ``HISTIMPORT_HOME`` is resolved against.

        Returns:
            The settings, with every folder an absolute path.

        Raises:
            SettingsError: a variable holds something unusable (a malformed URL or schema name).
        """
        env = os.environ if environ is None else environ
        base = cwd or Path.cwd()

        def folder(name: str, default: Path) -> Path:
            raw = env.get(name, "").strip()
            return (base / Path(raw).expanduser()).resolve() if raw else default

        home = folder("HISTIMPORT_HOME", base / ".histimport")
        url = env.get("HISTIMPORT_DATABASE_URL", "").strip()
        if not url:
            url = f"sqlite:///{home / 'histimport.db'}"
        try:
            # A URL of the usual shape needs no SQLAlchemy (the reports start without it);
            # anything else, SQLAlchemy judges.
            if parse_url(url) is None:
                from sqlalchemy.engine import make_url

                make_url(url)
        except Exception as exc:
            raise SettingsError(
                f"HISTIMPORT_DATABASE_URL is not a valid SQLAlchemy URL ({exc}); "
                "expected e.g. postgresql+psycopg://USER@HOST:5432/DB or sqlite:///path/file.db"
            ) from None
        schema = env.get("HISTIMPORT_DB_SCHEMA", "").strip() or DEFAULT_PG_SCHEMA
        if not _IDENTIFIER.match(schema):
            raise SettingsError(
                f"HISTIMPORT_DB_SCHEMA={schema!r} is not a plain identifier "
                "(letters, digits, underscore; at most 63 characters)"
            )

        def whole(name: str, default: int, unit: str = "days") -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit():
                raise SettingsError(f"{name}={raw!r} must be a whole number of {unit}")
            return int(raw)

        raw_limit = env.get("HISTIMPORT_MAX_FIELD_BYTES", "").strip()
        if raw_limit and not (raw_limit.isdigit() and int(raw_limit) > 0):
            raise SettingsError(
                f"HISTIMPORT_MAX_FIELD_BYTES={raw_limit!r} must be a whole number of bytes, "
                "at least 1"
            )
        raw_every = env.get("HISTIMPORT_PROGRESS_EVERY_S", "").strip() or "2"
        try:
            progress_every_s = float(raw_every)
        except ValueError:
            progress_every_s = -1.0
        if not progress_every_s >= 0:  # also refuses nan
            raise SettingsError(
                f"HISTIMPORT_PROGRESS_EVERY_S={raw_every!r} must be a number of seconds, 0 or more"
            )
        return cls(
            progress_every_s=progress_every_s,
            max_field_bytes=int(raw_limit) if raw_limit else DEFAULT_MAX_FIELD_BYTES,
            lookback_days=whole("HISTIMPORT_LOOKBACK_DAYS", 7),
            partition_retention_days=whole("HISTIMPORT_PARTITION_RETENTION_DAYS", 90),
            stale_after_seconds=whole("HISTIMPORT_STALE_AFTER_SECONDS", 600, "seconds"),
            wait_seconds=whole("HISTIMPORT_WAIT_SECONDS", 600, "seconds"),
            user=env.get("HISTIMPORT_USER", "").strip() or None,
            user_email=env.get("HISTIMPORT_USER_EMAIL", "").strip() or None,
            retention_days=whole("HISTIMPORT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS),
            archive_after_days=whole("HISTIMPORT_ARCHIVE_AFTER_DAYS", DEFAULT_ARCHIVE_AFTER_DAYS),
            error_dir=folder("HISTIMPORT_ERROR_DIR", home / "errors"),
            web_url=env.get("HISTIMPORT_WEB_URL", "").strip().rstrip("/") or None,
            home=home,
            database_url=url,
            db_schema=schema,
            inbox=folder("HISTIMPORT_INBOX", home / "inbox"),
            datasets=folder("HISTIMPORT_DATASETS", home / "datasets"),
            archive=folder("HISTIMPORT_ARCHIVE", home / "archive"),
            quarantine=folder("HISTIMPORT_QUARANTINE", home / "quarantine"),
        )

    @property
    def masked_database_url(self) -> str:
        """The database URL with its password replaced by ``***``, safe to print or log."""
        return mask_url(self.database_url)


def mask_url(url: str | URL) -> str:
    """Return ``url`` with any password masked, for logs and screens.

    Args:
        url: a SQLAlchemy URL or its string form.

    Returns:
        The URL as text with the password shown as ``***``. A string that does not parse as
        a URL is returned with anything between ``://user:`` and ``@`` masked.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))
    rendered: str = parsed.render_as_string(hide_password=True)
    return rendered


def normalize_database_url(url: str) -> str:
    """Pin the driver of a PostgreSQL URL for the engine: ``postgresql://`` means psycopg 3.

    SQLAlchemy 2.0 reads a bare ``postgresql://`` as psycopg2 and 2.1 as psycopg 3; the engine
    is tested on psycopg 3, so the bare forms (and ``postgres://``) are made explicit.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    rendered: str = parsed.render_as_string(hide_password=False)
    return rendered


def dagster_instance_url(url: str) -> str:
    """Turn a PostgreSQL URL into one that dagster-postgres can use for instance storage.

    dagster-postgres relies on psycopg2 behaviour (its run-event ``NOTIFY`` fails under
    psycopg 3, dagster issue 33958), while SQLAlchemy 2.1 maps a bare ``postgresql://`` to
    psycopg 3. So any PostgreSQL URL, bare or with another driver, is pinned to psycopg2.

    Raises:
        SettingsError: the URL is not a PostgreSQL URL.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SettingsError(
            f"Dagster instance storage needs a PostgreSQL URL, got {mask_url(parsed)}"
        )
    rendered: str = parsed.set(drivername="postgresql+psycopg2").render_as_string(
        hide_password=False
    )
    return rendered
