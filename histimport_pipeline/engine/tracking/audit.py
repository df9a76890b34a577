"""What an audit entry says at a glance: its severity and a one-line summary, made from its
action and details (``records.record_audit`` stores both with the entry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from histimport_pipeline.engine.models import AuditAction, AuditSeverity

#: The longest summary kept; the details hold the rest.
SUMMARY_CHARS = 300

_ERRORS = {AuditAction.FAILED, AuditAction.REJECTED}
_WARNINGS = {
    AuditAction.DUPLICATE,
    AuditAction.REVIEW_REJECTED,
    AuditAction.USER_OVERRIDE,
    AuditAction.ROLLED_BACK,
    AuditAction.ACCESS_REFUSED,
}


def severity_of(action: AuditAction, details: Mapping[str, Any]) -> AuditSeverity:
    """How much an entry asks for attention.

    Errors: the import failed or was rejected. Warnings: a duplicate, a value rejected in
    review, a reviewer's override of the suggestion, a rollback, an import that completed
    partly, a file quarantined, rows that failed validation. Everything else is info.
    """
    if action in _ERRORS:
        return AuditSeverity.ERROR
    partly = action is AuditAction.COMPLETED and details.get("status") == "partial"
    quarantined = action is AuditAction.MOVED and details.get("reason") == "quarantined"
    failed_rows = action is AuditAction.VALIDATED and bool(
        details.get("rows_failed") or details.get("rows_duplicate")
    )
    if action in _WARNINGS or partly or quarantined or failed_rows:
        return AuditSeverity.WARNING
    return AuditSeverity.INFO


def _n(details: Mapping[str, Any], key: str) -> str:
    value = details.get(key)
    return f"{value:,}" if isinstance(value, int) else "?" if value is None else str(value)


def _rows(count: Any) -> str:
    return "1 row" if count == 1 else f"{count:,} rows" if isinstance(count, int) else "? rows"


def _started(d: Mapping[str, Any], actor: str | None) -> str:
    how = " (forced)" if d.get("force") else ""
    how += " (dry run)" if d.get("dry_run") else ""
    return f"import of {d.get('file', '?')} started" + (f" by {actor}" if actor else "") + how


def _received(d: Mapping[str, Any], _actor: str | None) -> str:
    sha = str(d.get("sha256") or "")[:12]
    return f"received {d.get('file', '?')} ({_n(d, 'size')} bytes, sha256 {sha}…)" + (
        f" from {d['source']}" if d.get("source") else ""
    )


def _parsed(d: Mapping[str, Any], _actor: str | None) -> str:
    headers = d.get("headers") or []
    kind = d.get("file_type") or d.get("format") or "?"
    encoding = f", {d['encoding']}" if d.get("encoding") else ""
    return f"parsed as {kind}{encoding}, {len(headers)} column(s)"


def _validated(d: Mapping[str, Any], _actor: str | None) -> str:
    return (
        f"validated {_rows(d.get('rows_read'))}: {_n(d, 'rows_valid')} valid, "
        f"{_n(d, 'rows_failed')} failed, {_n(d, 'rows_duplicate')} duplicate"
    )


def _reconciled(d: Mapping[str, Any], _actor: str | None) -> str:
    matches = d.get("matches") or {}
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(matches.items())) or "no values"
    masters = ""
    if d.get("master_rows_created") or d.get("master_rows_linked"):
        masters = (
            f"; master rows created {_n(d, 'master_rows_created')}, "
            f"linked {_n(d, 'master_rows_linked')}"
        )
    return (
        f"reconciled ({by_type}): {_rows(d.get('rows_review'))} held for review, "
        f"{_n(d, 'rows_rejected')} rejected{masters}"
    )


def _share(d: Mapping[str, Any]) -> str:
    share, gate = d.get("failed_share"), d.get("gate")
    if isinstance(share, int | float) and isinstance(gate, int | float):
        return f"failed share {share:.1%}, gate {gate:.1%}"
    return "failed share ?"


def _loaded(d: Mapping[str, Any], _actor: str | None) -> str:
    deleted = f", {_n(d, 'deleted')} deleted" if d.get("deleted") else ""
    return (
        f"loaded ({d.get('strategy', '?')}): {_n(d, 'created')} created, "
        f"{_n(d, 'updated')} updated, {_n(d, 'unchanged')} unchanged{deleted}"
    )


def _failed(d: Mapping[str, Any], _actor: str | None) -> str:
    return f"failed: {d.get('error') or d.get('reason') or 'see details'}"


def _inputs(d: Mapping[str, Any]) -> str:
    values = d.get("input_values")
    if isinstance(values, Mapping):
        return ", ".join(f"{k}={v!r}" for k, v in values.items())
    return "?"


def _override(d: Mapping[str, Any], actor: str | None) -> str:
    who = actor or "a reviewer"
    return (
        f"{who} matched {_inputs(d)} to {d.get('entity_id', '?')} instead of the suggested "
        f"{d.get('suggested_id', '?')}"
    )


def _rolled_back(d: Mapping[str, Any], _actor: str | None) -> str:
    masters = (
        f", {_n(d, 'master_rows_deleted')} master row(s) removed"
        if d.get("master_rows_deleted")
        else ""
    )
    cascade = f" (cascade of import {d['cascade_of']})" if d.get("cascade_of") else ""
    return (
        f"rolled back{cascade}: {_n(d, 'rows_deleted')} row(s) deleted, "
        f"{_n(d, 'rows_restored')} restored{masters}"
    )


def _rollback_started(d: Mapping[str, Any], actor: str | None) -> str:
    by = f" by {actor}" if actor else ""
    cascade = f" (cascade of import {d['cascade_of']})" if d.get("cascade_of") else ""
    return f"rollback started{by}{cascade}"


def _cleanup(d: Mapping[str, Any], _actor: str | None) -> str:
    return (
        f"cleanup (older than {_n(d, 'older_than_days')} days): "
        f"{_n(d, 'failed_rows_deleted')} failed-row record(s), "
        f"{_n(d, 'error_files_deleted')} error file(s), "
        f"{_n(d, 'staging_tables_dropped')} staging table(s) removed"
    )


_Summary = Callable[[Mapping[str, Any], str | None], str]
_SUMMARIES: dict[AuditAction, _Summary] = {
    AuditAction.FILE_RECEIVED: _received,
    AuditAction.STARTED: _started,
    AuditAction.PARSED: _parsed,
    AuditAction.VALIDATION_STARTED: lambda d, _a: (
        f"validation of the rows started ({d.get('reader', 'python')} reader)"
        + (f"; again: {d['restarted']}" if d.get("restarted") else "")
    ),
    AuditAction.VALIDATED: _validated,
    AuditAction.RECONCILIATION_STARTED: lambda d, _a: (
        f"reconciliation started: {', '.join(d.get('references') or []) or '?'}"
    ),
    AuditAction.RECONCILED: _reconciled,
    AuditAction.CONFIRMED: lambda d, _a: f"within the error gate ({_share(d)}); may load",
    AuditAction.REJECTED: lambda d, _a: f"rejected: {_share(d)}; nothing loaded",
    AuditAction.LOADED: _loaded,
    AuditAction.COMPLETED: lambda d, _a: f"completed: {d.get('status', '?')}",
    AuditAction.FAILED: _failed,
    AuditAction.DUPLICATE: lambda d, _a: (
        f"duplicate of import {_n(d, 'holder_import_id')}; nothing loaded"
    ),
    AuditAction.RESUMED: lambda d, _a: (
        f"resumed after {d.get('seconds_before', '?')} s in earlier attempts"
    ),
    AuditAction.MOVED: lambda d, _a: f"file {d.get('reason', 'moved')} to {d.get('to', '?')}",
    AuditAction.REVIEW_ACCEPTED: lambda d, a: (
        f"review{f' by {a}' if a else ''}: {_inputs(d)} accepted as {d.get('entity_id', '?')}"
    ),
    AuditAction.REVIEW_REJECTED: lambda d, a: (
        f"review{f' by {a}' if a else ''}: {_inputs(d)} rejected"
    ),
    AuditAction.USER_OVERRIDE: _override,
    AuditAction.REVIEW_APPLIED: lambda d, _a: (
        f"review applied: {d.get('status', '?')}, loaded {_n(d, 'rows_loaded')}, rejected "
        f"{_n(d, 'rows_rejected')}, still held {_n(d, 'rows_still_held')}"
    ),
    AuditAction.ROLLBACK_STARTED: _rollback_started,
    AuditAction.ROLLED_BACK: _rolled_back,
    AuditAction.ERROR_FILE_WRITTEN: lambda d, _a: (
        f"failed rows ({_n(d, 'rows')}) written to {d.get('path', '?')}"
    ),
    AuditAction.ARCHIVED: lambda d, _a: (
        f"archived (ended before {d.get('ended_before', '?')}): detail rows removed, no rollback"
    ),
    AuditAction.SUPERSEDED: lambda d, _a: (
        f"superseded by import {_n(d, 'superseded_by')}, which loaded a corrected file"
    ),
    AuditAction.CLEANUP: _cleanup,
    AuditAction.UPLOADED: lambda d, a: (
        f"{d.get('file_name', '?')} ({_n(d, 'size')} bytes) uploaded{f' by {a}' if a else ''} "
        f"into the inbox of {d.get('dataset', '?')}"
    ),
    AuditAction.ACCESS_REFUSED: lambda d, a: (
        f"{a or 'an anonymous caller'} was refused {d.get('method', '?')} {d.get('path', '?')} "
        f"({d.get('status', '?')}): {d.get('reason', '?')}"
    ),
}


def summary_of(action: AuditAction, actor: str | None, details: Mapping[str, Any]) -> str:
    """One line that says what the entry records, from its details (at most
    :data:`SUMMARY_CHARS` characters; line breaks become spaces)."""
    text = _SUMMARIES[action](details, actor)
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"
