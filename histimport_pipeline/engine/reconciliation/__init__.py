"""Reconciliation: resolve the entity references of staged rows against master tables.

Each distinct tuple of source values is resolved once, not each row, in this order:

1. **exact**: the values equal a master row's fields as written (a dict lookup);
2. **alias**: a reviewer accepted this normalized input for the entity before;
3. **normalized**: equal after normalisation (Unicode NFKC, case-fold, spaces trimmed and
   collapsed, accents removed where a field says so);
4. **fuzzy**: only for what is left, against candidates found by blocking.

Blocking is a sorted neighbourhood over several keys at once (the value, the value read
backwards, its words sorted, and for a rule of several fields each field followed by the
others), so a typo in the first letter still finds its master row through the other keys,
and cost grows with ``n log n`` instead of ``n x m``.

Scores are 0-100. A rule of one field scores a candidate by the field's similarity (the
rapidfuzz scorer it names). A rule of several fields scores it by evidence, the
Fellegi-Sunter way: each field that agrees adds evidence in proportion to how rare the
agreeing value is in the master table, a similar value (a typo) adds a fixed amount, a
different one subtracts a little, and a missing one counts for nothing; the score is the
estimated probability, in percent, that the candidate is the right one among those found.

Decisions: the best candidate at or above the rule's ``threshold`` is accepted, unless a
second one is within ``margin`` (ambiguous: review). In a rule of several fields a second
candidate whose score on its own reaches the review band also makes a best one below the
threshold ambiguous. Between ``review_threshold`` and
``threshold`` the value goes to review. Below, it is unmatched and the reference's
``on_unmatched`` policy applies: ``review``, ``reject`` (a failed row of category
reconciliation), ``null`` (loaded without an id) or ``create`` (a new master row).

Every decision is stored in ``import_reconciliation_matches``; accepting one in review stores
an alias in ``reconciliation_aliases`` so the same input matches exactly next time.

Modules: ``rules`` (settings, text normalisation, input keys, scorers), ``master`` (master
data, aliases), ``blocking`` (candidate generation), ``evidence`` (multi-field evidence),
``values`` (each field's distinct values coded once, candidate pairs scored in bulk),
``fuzzy`` (the fuzzy stage), ``matching`` (the matcher, :func:`resolve_values`), ``apply``
(:func:`reconcile_staged`), ``created`` (master rows created by policy) and ``review`` (the
review cycle). The stage's public names are re-exported here: import them from
``histimport_pipeline.engine.reconciliation``, whatever module of the stage they live in.
"""

from histimport_pipeline.engine.reconciliation.apply import (
    ENGINE_ACTOR,
    ReconcileOutcome,
    reconcile_staged,
)
from histimport_pipeline.engine.reconciliation.created import (
    drop_created_masters,
    imports_using_created_masters,
    master_row_counts,
)
from histimport_pipeline.engine.reconciliation.master import (
    MasterData,
    read_aliases,
    read_master,
    reflect_master,
)
from histimport_pipeline.engine.reconciliation.matching import resolve_values
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
    "master_row_counts",
    "normalize",
    "read_aliases",
    "read_master",
    "reconcile_staged",
    "reflect_master",
    "resolve_values",
]
