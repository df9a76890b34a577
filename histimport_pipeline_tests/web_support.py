"""What the page tests and the browser tests share: a home with the demo imported, tokens,
and the service's configuration."""

from __future__ import annotations

from pathlib import Path

from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.demo import write_demo
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import load_specs, route_file
from histimport_pipeline.web.config import Role, TokenEntry, UploadMode, WebConfig

VIEWER_TOKEN = "viewer-token-0123456789"
OPERATOR_TOKEN = "operator-token-9876543210"


def demo_settings(tmp_path: Path, db_url: str) -> Settings:
    """Settings for a test's home under ``tmp_path`` over the test's database."""
    return Settings.from_env(
        {"HISTIMPORT_HOME": str(tmp_path / "home"), "HISTIMPORT_DATABASE_URL": db_url}
    )


def import_demo(settings: Settings, db: Database) -> dict[str, int]:
    """Write the demo and import each of its files as user ``demo``, as ``histimport
    import`` would; returns file name -> import id."""
    migrations.upgrade(db)
    written = write_demo(settings, db)
    specs = load_specs(settings.datasets)
    ids = {}
    for path in written.files:
        options = ImportOptions(user_id="demo", error_dir=settings.error_dir)
        ids[path.name] = run_import(db, route_file(path, specs), path, options).import_id
    return ids


def web_config(upload_mode: UploadMode = UploadMode.SENSOR) -> WebConfig:
    """A viewer token ``vera`` and an operator token ``olga``."""
    return WebConfig(
        tokens=(
            TokenEntry("vera", Role.VIEWER, _digest(VIEWER_TOKEN)),
            TokenEntry("olga", Role.OPERATOR, _digest(OPERATOR_TOKEN)),
        ),
        upload_mode=upload_mode,
        secret=b"a fixed secret for the tests",
    )


def _digest(token: str) -> bytes:
    import hashlib

    return hashlib.sha256(token.encode()).digest()
