"""Reconciliation: resolve the entity references of staged rows against master tables.

The names other modules use are re-exported here, so callers import them from
``histimport_pipeline.engine.reconciliation`` whatever module of the stage they live in.
"""

from histimport_pipeline.engine.reconciliation.apply import (
    ENGINE_ACTOR,
    ReconcileOutcome,
    reconcile_staged,
    resolve_values,
)
from histimport_pipeline.engine.reconciliation.created import (
    drop_created_masters,
    imports_using_created_masters,
)
from histimport_pipeline.engine.reconciliation.master import (
    MasterData,
    read_aliases,
    read_master,
    reflect_master,
)
from histimport_pipeline.engine.reconciliation.review import (
    MatchNotFoundError,
    ReviewError,
    apply_review,
    decide_match,
    list_matches,
)
from histimport_pipeline.engine.reconciliation.rules import (
    DEFAULT_SETTINGS,
    TOP_CANDIDATES,
    ReconcileSettings,
    Resolution,
    as_text,
    input_key,
    key_labels,
    normalize,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "ENGINE_ACTOR",
    "TOP_CANDIDATES",
    "MasterData",
    "MatchNotFoundError",
    "ReconcileOutcome",
    "ReconcileSettings",
    "Resolution",
    "ReviewError",
    "apply_review",
    "as_text",
    "decide_match",
    "drop_created_masters",
    "imports_using_created_masters",
    "input_key",
    "key_labels",
    "list_matches",
    "normalize",
    "read_aliases",
    "read_master",
    "reconcile_staged",
    "reflect_master",
    "resolve_values",
]
