"""The checks' verdicts on an import: a check step asks for its own verdict only, and the key
check trusts a key the database enforces, reading the whole table only when none does."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import run_import
from histimport_pipeline.engine.tracking import verdicts
from histimport_pipeline_tests.helpers import make_spec, write

ROWS = "ID,email,amount\n007,a@example.com,1.50\n008,b@example.com,2\n"


def test_one_verdict_is_computed_alone_and_an_enforced_key_is_trusted(
    db: Database, tmp_path: Path
) -> None:
    spec = make_spec(strategy="append")
    result = run_import(db, spec, write(tmp_path / "signups_1.csv", ROWS))
    assert result.status is ImportStatus.SUCCESS
    alone = verdicts.import_verdicts(db, spec, result.import_id, verdicts.UNIQUE_KEYS)
    assert list(alone) == [verdicts.UNIQUE_KEYS]
    assert alone[verdicts.UNIQUE_KEYS].passed
    assert "the table's key enforces it" in alone[verdicts.UNIQUE_KEYS].summary
    every = verdicts.import_verdicts(db, spec, result.import_id)
    assert list(every) == list(verdicts.CHECKS)
    assert every[verdicts.UNIQUE_KEYS] == alone[verdicts.UNIQUE_KEYS]


def test_without_an_enforced_key_a_repeated_key_fails_the_check(
    pg_db: Database, tmp_path: Path
) -> None:
    spec = make_spec(strategy="append")
    result = run_import(pg_db, spec, write(tmp_path / "signups_1.csv", ROWS))
    with pg_db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE signups DROP CONSTRAINT signups_pkey"))
        conn.execute(sa.text("INSERT INTO signups SELECT * FROM signups WHERE signup_id = '007'"))
    verdict = verdicts.import_verdicts(pg_db, spec, result.import_id, verdicts.UNIQUE_KEYS)[
        verdicts.UNIQUE_KEYS
    ]
    assert not verdict.passed
    assert verdict.summary == "1 key value(s) of (signup_id) appear more than once in signups"
    # A unique index on the key columns, NOT NULL, enforces it again.
    with pg_db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM signups WHERE ctid IN (SELECT max(ctid) FROM signups)"))
        conn.execute(sa.text("CREATE UNIQUE INDEX signups_key ON signups (signup_id)"))
    again = verdicts.import_verdicts(pg_db, spec, result.import_id, verdicts.UNIQUE_KEYS)
    assert "enforces it" in again[verdicts.UNIQUE_KEYS].summary
