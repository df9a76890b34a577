"""Shared fixtures: a fresh database per test on SQLite and on the throwaway PostgreSQL.

``scripts/test.sh`` starts the PostgreSQL server and exports HISTIMPORT_TEST_PG_URL (and
HISTIMPORT_REQUIRE_PG=1, which turns a missing server into an error instead of a skip).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get("HISTIMPORT_TEST_PG_URL")
    if not url:
        if os.environ.get("HISTIMPORT_REQUIRE_PG") == "1":
            pytest.fail("HISTIMPORT_TEST_PG_URL is not set; run the tests with scripts/test.sh")
        pytest.skip("no PostgreSQL server (run the tests with scripts/test.sh)")
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty target database; the test runs once per backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def empty_db(db_url: str) -> Iterator[Database]:
    db = Database.connect(db_url)
    yield db
    db.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A target database with every migration applied."""
    migrations.upgrade(empty_db)
    return empty_db


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    """A migrated PostgreSQL target database (for what only PostgreSQL does)."""
    db = Database.connect(pg_url)
    migrations.upgrade(db)
    yield db
    db.dispose()
