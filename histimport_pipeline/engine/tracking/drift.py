"""The schema an import read: its fingerprint, and its drift from the dataset's previous
successful import.

The fingerprint (``import_history.schema_fingerprint``, the source designs'
``detectedSchemaVersion``) is a short SHA-256 of the headers in file order, the spec column
each maps to, and whether the file had a header row at all: two files share it exactly when
they were read the same way. When it differs from the fingerprint of the dataset's previous
successful (``success`` or ``partial``) import, the import records ``schema_drift`` and a
warning naming the columns added, removed and renamed (the same spec column found under
another header, e.g. through an alias).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import FileInfo, ImportStatus

#: Hex digits kept of the SHA-256: short enough to read, far from colliding per dataset.
FINGERPRINT_CHARS = 16
_SUCCESSFUL = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)


def schema_fingerprint(
    headers: Sequence[str], mapping: Mapping[str, str], header_present: bool = True
) -> str:
    """The short SHA-256 of a file's schema as read.

    Args:
        headers: the headers in file order (a file without a header row: the spec's columns).
        mapping: header -> spec column, for the headers the dataset uses.
        header_present: whether the file had a header row.

    Returns:
        ``FINGERPRINT_CHARS`` lowercase hex digits.
    """
    payload = json.dumps(
        {
            "headers": list(headers),
            "mapping": [[h, mapping[h]] for h in headers if h in mapping],
            "header_present": header_present,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:FINGERPRINT_CHARS]


def compare_schemas(
    previous_headers: Sequence[str],
    previous_mapping: Mapping[str, str],
    headers: Sequence[str],
    mapping: Mapping[str, str],
) -> dict[str, Any]:
    """What changed between two files' headers.

    Returns:
        ``added`` and ``removed`` (headers, in file order), ``renamed`` (``column``, ``from``
        and ``to`` header: one spec column mapped from a different header), ``remapped``
        (``header``, ``from`` and ``to`` column: one header now names another column) and
        ``reordered`` (the same headers in another order).
    """
    before = {column: header for header, column in previous_mapping.items()}
    renamed = [
        {"column": column, "from": before[column], "to": header}
        for header, column in mapping.items()
        if column in before and before[column] != header
    ]
    renamed_from = {r["from"] for r in renamed}
    renamed_to = {r["to"] for r in renamed}
    old, new = set(previous_headers), set(headers)
    added = [h for h in headers if h not in old and h not in renamed_to]
    removed = [h for h in previous_headers if h not in new and h not in renamed_from]
    remapped = [
        {"header": h, "from": previous_mapping[h], "to": mapping[h]}
        for h in headers
        if h in mapping and h in previous_mapping and mapping[h] != previous_mapping[h]
    ]
    reordered = old == new and list(previous_headers) != list(headers)
    return {
        "added": added,
        "removed": removed,
        "renamed": renamed,
        "remapped": remapped,
        "reordered": reordered,
    }


def drift_message(drift: Mapping[str, Any]) -> str:
    """The warning an import with ``drift`` records: every change named."""
    parts = []
    if drift.get("added"):
        parts.append("added " + ", ".join(map(repr, drift["added"])))
    if drift.get("removed"):
        parts.append("removed " + ", ".join(map(repr, drift["removed"])))
    if drift.get("renamed"):
        parts.append(
            "renamed "
            + ", ".join(f"{r['column']} ({r['from']!r} -> {r['to']!r})" for r in drift["renamed"])
        )
    if drift.get("remapped"):
        parts.append(
            "remapped "
            + ", ".join(f"{r['header']!r} ({r['from']} -> {r['to']})" for r in drift["remapped"])
        )
    if drift.get("reordered"):
        parts.append("the same columns in another order")
    if drift.get("header_present") != drift.get("previous_header_present"):
        had = "a header row" if drift.get("header_present") else "no header row"
        parts.append(f"the file has {had}, unlike the previous one")
    return (
        f"the file's columns differ from those of import {drift['previous_import_id']}, the "
        f"dataset's previous successful import: {'; '.join(parts) or 'the header mapping changed'}"
    )


def detect_drift(
    conn: sa.Connection, db: Database, dataset: str, import_id: int, info: FileInfo
) -> tuple[str, dict[str, Any] | None]:
    """The fingerprint of the file ``info`` describes, and its drift from the dataset's
    previous successful import (before ``import_id``).

    Imports recorded before fingerprints existed are compared by the headers and mapping
    they recorded.

    Returns:
        The fingerprint, and ``None`` when there is no previous successful import or it read
        the same schema; else the drift: ``previous_import_id``, ``previous_fingerprint``,
        ``fingerprint``, ``header_present``, ``previous_header_present``, the changes of
        :func:`compare_schemas` and ``message`` (the warning).
    """
    fingerprint = schema_fingerprint(info.headers, info.mapping, info.header_present)
    h = db.tables.import_history
    previous = (
        conn.execute(
            sa.select(h.c.import_id, h.c.schema_fingerprint, h.c.file_metadata, h.c.column_mapping)
            .where(h.c.dataset == dataset, h.c.import_id < import_id, h.c.status.in_(_SUCCESSFUL))
            .order_by(h.c.import_id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    if previous is None:
        return fingerprint, None
    metadata = previous["file_metadata"] or {}
    if not isinstance(metadata.get("headers"), list):
        return fingerprint, None
    old_headers = [str(x) for x in metadata["headers"]]
    old_mapping = {str(k): str(v) for k, v in (previous["column_mapping"] or {}).items()}
    old_present = bool(metadata.get("header_present", True))
    old_fingerprint = previous["schema_fingerprint"] or schema_fingerprint(
        old_headers, old_mapping, old_present
    )
    if old_fingerprint == fingerprint:
        return fingerprint, None
    drift: dict[str, Any] = {
        "previous_import_id": int(previous["import_id"]),
        "previous_fingerprint": old_fingerprint,
        "fingerprint": fingerprint,
        "header_present": info.header_present,
        "previous_header_present": old_present,
        **compare_schemas(old_headers, old_mapping, info.headers, info.mapping),
    }
    drift["message"] = drift_message(drift)
    return fingerprint, drift
