"""Small builders shared by the engine tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.pipeline import ImportResult
from histimport_pipeline.engine.spec import DatasetSpec

SIGNUPS: dict[str, Any] = {
    "name": "signups",
    "target_table": "signups",
    "files": "signups_*.csv",
    "strategy": "upsert",
    "key": ["signup_id"],
    "max_error_ratio": 0.5,
    "columns": {
        "signup_id": {"type": "string", "required": True, "aliases": ["ID", "Signup ID"]},
        "email": {"type": "email", "required": True},
        "signed_up": {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
        "amount": {"type": "decimal", "min": 0, "scale": 2},
        "note": {"type": "string"},
    },
}


def make_spec(**overrides: Any) -> DatasetSpec:
    raw = {**SIGNUPS, **overrides}
    return DatasetSpec.model_validate(raw)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def rows(db: Database, table: str, order: str = "_source_row") -> list[dict[str, Any]]:
    t = sa.Table(table, sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c[order])).mappings()]


def table_checksum(db: Database, table: str) -> str:
    """A checksum of every row and column of a table, independent of physical order."""
    t = sa.Table(table, sa.MetaData(), autoload_with=db.engine)
    with db.engine.connect() as conn:
        lines = sorted(repr(tuple(r)) for r in conn.execute(sa.select(t)))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def history(db: Database, import_id: int) -> dict[str, Any]:
    t = db.tables.import_history
    with db.engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.import_id == import_id)).mappings().one())


def audit_actions(db: Database, import_id: int) -> list[str]:
    t = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(t.c.action).where(t.c.import_id == import_id).order_by(t.c.audit_id)
            ).scalars()
        )


def audit_entries(db: Database, import_id: int) -> list[dict[str, Any]]:
    """The import's audit entries, oldest first: action, severity, summary, actor, details."""
    t = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        query = (
            sa.select(t.c.action, t.c.severity, t.c.summary, t.c.actor, t.c.details)
            .where(t.c.import_id == import_id)
            .order_by(t.c.audit_id)
        )
        return [dict(r) for r in conn.execute(query).mappings()]


def assert_accounting(result: ImportResult) -> None:
    """rows read = created + updated + unchanged + failed + duplicates (+ waiting for review)."""
    assert result.rows_read == (
        result.rows_created
        + result.rows_updated
        + result.rows_unchanged
        + result.rows_failed
        + result.rows_duplicate
        + result.rows_review
    ), result
