"""Rules and scores: the matcher's settings, how values are compared as text (normalisation,
input keys) and the rapidfuzz scorers that score a pair of values."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process
from rapidfuzz.distance import DamerauLevenshtein, Jaro, JaroWinkler, Levenshtein

from histimport_pipeline.engine.models import MatchType
from histimport_pipeline.engine.spec import ReferenceSpec, Scorer

#: Candidates kept with each decision.
TOP_CANDIDATES = 3
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ReconcileSettings:
    """Engine tuning of the matcher. The defaults fit names, dates, codes and e-mails.

    Attributes:
        window: master rows taken on each side of an input in every blocking key's sort
            order. Candidates per input are at most ``2 * window`` per key.
        m_equal, m_similar, m_different: how often a field of a true match is equal, similar
            (a typo) or different; the evidence of a multi-field rule rests on them.
        u_sample: random master pairs drawn to learn how often two different rows look
            similar by chance (drawn from the rows in id order, see :func:`read_master`).
        prior_rows, u_equal_prior, u_similar_prior: the chance rates learned from the master
            table are blended with these, as if ``prior_rows`` more rows had been seen, so a
            small master table does not make every agreement look like chance.
        seed: seed of that draw, so that a re-run decides the same way.
        workers: threads rapidfuzz scores with (-1: all cores).
    """

    window: int = 8
    m_equal: float = 0.80
    m_similar: float = 0.12
    m_different: float = 0.08
    u_sample: int = 2_000
    prior_rows: int = 100
    u_equal_prior: float = 0.001
    u_similar_prior: float = 0.01
    seed: int = 20_240_101
    workers: int = -1


DEFAULT_SETTINGS = ReconcileSettings()


@dataclass
class Resolution:
    """How one distinct input was resolved, before the policy for unmatched values."""

    match_type: MatchType
    matched_id: str | None = None
    score: float | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    accepted: bool = False
    reason: str = ""
    #: The normalized input key (:func:`input_key`), set by :func:`resolve_values`.
    key: str = ""


def as_text(value: Any) -> str | None:
    """A staged or master value as the text it is compared by (``None`` stays ``None``)."""
    if value is None:
        return None
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return text if text != "-0" else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalize(text: str | None, strip_accents: bool = False) -> str | None:
    """Text for comparison: NFKC, case-folded, spaces trimmed and collapsed.

    Args:
        strip_accents: also remove combining marks (``Zoë`` -> ``zoe``).

    Returns:
        The normalized text, or ``None`` for a missing or blank value.
    """
    if text is None:
        return None
    if text.isascii():
        # NFKC and removing accents leave ASCII as it is, and casefold() is lower() there;
        # split() and \s+ split at the same (isspace) characters.
        return " ".join(text.lower().split()) or None
    folded = unicodedata.normalize("NFKC", text).casefold()
    if strip_accents:
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = unicodedata.normalize(
            "NFC", "".join(c for c in decomposed if not unicodedata.combining(c))
        )
    folded = _SPACES.sub(" ", folded).strip()
    return folded or None


def key_labels(ref: ReferenceSpec) -> list[str]:
    """The labels of an input key: the master field each source is compared with."""
    fields = ref.field_of_source
    return [fields[source] for source in ref.sources]


def input_key(
    ref: ReferenceSpec, values: Sequence[str | None], labels: Sequence[str] | None = None
) -> str:
    """The normalized key of an input tuple: what an alias is stored and found by.

    Values are labelled by the master field each source is compared with, so datasets that
    name their columns differently share the entity's aliases.

    Args:
        labels: :func:`key_labels` of ``ref``, when the caller has them at hand.
    """
    names = labels if labels is not None else key_labels(ref)
    return "\x1f".join(
        f"{name}={normalize(value) or ''}" for name, value in zip(names, values, strict=True)
    )


#: The rapidfuzz function of each scorer, and the factor that puts its result on 0-100.
SCORERS: dict[Scorer, tuple[Any, float]] = {
    Scorer.RATIO: (fuzz.ratio, 1.0),
    Scorer.PARTIAL_RATIO: (fuzz.partial_ratio, 1.0),
    # token_sort_ratio is ratio() of the words sorted: sorted once per value, not per pair.
    Scorer.TOKEN_SORT_RATIO: (fuzz.ratio, 1.0),
    Scorer.TOKEN_SET_RATIO: (fuzz.token_set_ratio, 1.0),
    Scorer.WRATIO: (fuzz.WRatio, 1.0),
    Scorer.JARO: (Jaro.normalized_similarity, 100.0),
    Scorer.JARO_WINKLER: (JaroWinkler.normalized_similarity, 100.0),
    Scorer.LEVENSHTEIN: (Levenshtein.normalized_similarity, 100.0),
    Scorer.DAMERAU_LEVENSHTEIN: (DamerauLevenshtein.normalized_similarity, 100.0),
}


ObjArray = npt.NDArray[np.object_]


IntArray = npt.NDArray[np.int64]


FloatArray = npt.NDArray[np.float64]


BoolArray = npt.NDArray[np.bool_]


UIntArray = npt.NDArray[np.uint64]


def prepared(values: Iterable[str | None], scorer: Scorer) -> list[str | None]:
    """Texts as the scorer compares them: for ``token_sort_ratio`` the words sorted."""
    if scorer is not Scorer.TOKEN_SORT_RATIO:
        return list(values)
    return [None if v is None else " ".join(sorted(v.split(" "))) for v in values]


def pair_scores(left: ObjArray, right: ObjArray, scorer: Scorer, workers: int) -> FloatArray:
    """Similarity (0-100) of ``left[i]`` and ``right[i]``; 0 where either is missing."""
    if len(left) == 0:
        return np.zeros(0)
    function, scale = SCORERS[scorer]
    present = (left != None) & (right != None)  # noqa: E711 - elementwise on object arrays
    result = np.zeros(len(left))
    if present.any():
        scores = process.cpdist(
            left[present], right[present], scorer=function, workers=workers
        ).astype(np.float64)
        result[present] = scores * scale
    return result
