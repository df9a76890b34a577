"""Adoption of existing tables: ``histimport adopt`` compares a table that already holds rows
with its dataset spec, plans the DDL that lets histimport import into it (``plan``), applies
it in one transaction with a record, and undoes exactly that (``apply``)."""

from histimport_pipeline.engine.adoption.apply import (
    LOCK_TIMEOUT_S,
    AdoptionRecord,
    adoption_of,
    apply_adoption,
    rows_before_first_import,
    undo_adoption,
)
from histimport_pipeline.engine.adoption.plan import LAST_UPDATED, AdoptionPlan, plan_adoption

__all__ = [
    "LAST_UPDATED",
    "LOCK_TIMEOUT_S",
    "AdoptionPlan",
    "AdoptionRecord",
    "adoption_of",
    "apply_adoption",
    "plan_adoption",
    "rows_before_first_import",
    "undo_adoption",
]
