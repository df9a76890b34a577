"""Tracking and history: every import's rows in ``import_history``, ``processed_files``,
``processing_status``, ``import_failed_rows`` and the audit trail, and the queries that read
them back.

* ``records``: creating and updating an import, the audit trail, claims on a file's content,
  outcomes, failed rows and the error summary.
* ``audit``: an audit entry's severity and one-line summary, from its action and details.
* ``liveness``: imports left running by a dead worker, the holder of a file's content.
* ``progress``: live progress of a running import (rows done of rows expected, percent).
* ``history``: the queries behind ``show``, ``history`` and ``stats``.
* ``lineage``: the queries behind ``lineage`` (per table, per import, per row).
* ``drift``: the fingerprint of the schema an import read, and its drift from the last one.
* ``cleanup``: the retention cleanup.

The write side is re-exported here, so callers write ``tracking.update_import(...)``; the read
side is imported as ``from histimport_pipeline.engine.tracking import history`` (or
``lineage``). The re-exports load on first use: ``history`` reads without SQLAlchemy, and a
report that imports it should not pay for the write side it never calls.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histimport_pipeline.engine.tracking.liveness import (
        STALE_AFTER,
        fail_dead_imports,
        fail_unfinished_imports_of_run,
        imports_of_run,
        running_holder,
    )
    from histimport_pipeline.engine.tracking.progress import (
        PROGRESS_EVERY_S,
        ProgressWriter,
        estimate_rows,
        final_values,
        percent,
    )
    from histimport_pipeline.engine.tracking.records import (
        EXTRA_VALUE_PREFIX,
        TOP_ERRORS,
        Claim,
        claim_file,
        create_import,
        dates_needing_import,
        error_summary,
        expired_partition_keys,
        get_import,
        original_values,
        record_audit,
        record_event,
        record_file_moved,
        record_nothing_loaded,
        record_outcome,
        set_file_status,
        touch_process,
        update_import,
        utcnow,
        worker_id,
        write_failed_rows,
    )

#: Re-exported name -> the module of this package that defines it.
_HOME = {
    "STALE_AFTER": "liveness",
    "fail_dead_imports": "liveness",
    "fail_unfinished_imports_of_run": "liveness",
    "imports_of_run": "liveness",
    "running_holder": "liveness",
    "PROGRESS_EVERY_S": "progress",
    "ProgressWriter": "progress",
    "estimate_rows": "progress",
    "final_values": "progress",
    "percent": "progress",
    "EXTRA_VALUE_PREFIX": "records",
    "TOP_ERRORS": "records",
    "Claim": "records",
    "claim_file": "records",
    "create_import": "records",
    "dates_needing_import": "records",
    "error_summary": "records",
    "expired_partition_keys": "records",
    "get_import": "records",
    "original_values": "records",
    "record_audit": "records",
    "record_event": "records",
    "record_file_moved": "records",
    "record_nothing_loaded": "records",
    "record_outcome": "records",
    "set_file_status": "records",
    "touch_process": "records",
    "update_import": "records",
    "utcnow": "records",
    "worker_id": "records",
    "write_failed_rows": "records",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "EXTRA_VALUE_PREFIX",
    "PROGRESS_EVERY_S",
    "STALE_AFTER",
    "TOP_ERRORS",
    "Claim",
    "ProgressWriter",
    "claim_file",
    "create_import",
    "dates_needing_import",
    "error_summary",
    "estimate_rows",
    "expired_partition_keys",
    "fail_dead_imports",
    "fail_unfinished_imports_of_run",
    "final_values",
    "get_import",
    "imports_of_run",
    "original_values",
    "percent",
    "record_audit",
    "record_event",
    "record_file_moved",
    "record_nothing_loaded",
    "record_outcome",
    "running_holder",
    "set_file_status",
    "touch_process",
    "update_import",
    "utcnow",
    "worker_id",
    "write_failed_rows",
]
