"""Dagster resources: the target database."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.settings import Settings, mask_url


class DatabaseResource(dg.ConfigurableResource):
    """The target database: imported data and the tracking tables.

    One SQLAlchemy engine per process, created when a run starts using the resource and
    disposed when it ends. The URL comes from the environment (``HISTIMPORT_DATABASE_URL``).
    """

    url: str
    #: PostgreSQL schema of the tracking tables; unset means HISTIMPORT_DB_SCHEMA or the default.
    db_schema: str | None = None

    _db: Database | None = PrivateAttr(default=None)

    def _connect(self) -> Database:
        schema = self.db_schema or Settings.from_env().db_schema
        return Database.connect(self.url, schema)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._db = self._connect()
        if context.log is not None:
            context.log.info(f"target database: {mask_url(self.url)}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    @property
    def database(self) -> Database:
        """The open database; created on first use outside a run (e.g. in a sensor)."""
        if self._db is None:
            self._db = self._connect()
        return self._db
