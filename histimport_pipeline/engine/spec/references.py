"""Reference specs: a column resolved against a master table by match rules (exact or fuzzy
fields, thresholds), and what happens to a value that matches nothing.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from histimport_pipeline.engine.spec.base import IDENT, StrictModel


class OnUnmatched(StrEnum):
    """What happens to a row whose reference value matches no master row."""

    REVIEW = "review"
    REJECT = "reject"
    CREATE = "create"
    NULL = "null"


class MatchMethod(StrEnum):
    """How a reference field is compared with the master table."""

    #: Equal as written, else equal after normalisation (NFKC, case-fold, spaces collapsed).
    EXACT = "exact"
    #: Scored 0-100 by a rapidfuzz scorer.
    FUZZY = "fuzzy"


class Scorer(StrEnum):
    """rapidfuzz similarity scorers a fuzzy field can use (all on a 0-100 scale)."""

    RATIO = "ratio"
    PARTIAL_RATIO = "partial_ratio"
    TOKEN_SORT_RATIO = "token_sort_ratio"
    TOKEN_SET_RATIO = "token_set_ratio"
    WRATIO = "wratio"
    JARO = "jaro"
    JARO_WINKLER = "jaro_winkler"
    LEVENSHTEIN = "levenshtein"
    DAMERAU_LEVENSHTEIN = "damerau_levenshtein"


class MatchField(StrictModel):
    """One comparison of a rule: source column(s) of the file against master field(s).

    ``source`` and ``field`` are a column name or a list of names of the same length; a list
    compares the parts together (e.g. first and last name against given name and surname).
    """

    source: tuple[str, ...] = Field(min_length=1)
    field: tuple[str, ...] = Field(min_length=1)
    method: MatchMethod = MatchMethod.EXACT
    scorer: Scorer = Scorer.TOKEN_SORT_RATIO
    #: How much this field's evidence counts in a rule of several fields.
    weight: float = Field(default=1.0, gt=0, le=100)
    #: Candidates must agree on this field: equal (exact) or scored at least ``similar_at``.
    required: bool = False
    #: A fuzzy score at or above this counts as "similar" (a typo) rather than different.
    similar_at: float = Field(default=75.0, ge=0, le=100)
    #: Compare with accents removed (``é`` = ``e``).
    strip_accents: bool = False

    @field_validator("source", "field", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _parts(self) -> MatchField:
        if len(self.source) != len(self.field):
            raise ValueError(
                f"source {list(self.source)} and field {list(self.field)} need the same "
                "number of names"
            )
        for name in self.field:
            if not re.match(IDENT, name):
                raise ValueError(f"field {name!r} must be a plain column name of the master table")
        if "scorer" in self.model_fields_set and self.method is MatchMethod.EXACT:
            raise ValueError("`scorer` applies only to `method: fuzzy`")
        return self


_FIELD_KEYS = set(MatchField.model_fields)


class MatchRule(StrictModel):
    """One rule of a reference: fields compared together, and when a candidate is accepted.

    The short form ``{source: a, field: b, method: fuzzy, threshold: 90}`` is a rule of one
    field. A rule of one field scores a candidate by that field's similarity; a rule of
    several fields scores it by the evidence of all its fields (see ``engine.reconciliation``).
    """

    fields: tuple[MatchField, ...] = Field(min_length=1)
    #: Accept the best candidate at or above this score (0-100).
    threshold: float = Field(default=90.0, ge=0, le=100)
    #: Below ``threshold`` but at or above this: send to review. Default: threshold - 15.
    review_threshold: float | None = Field(default=None, ge=0, le=100)
    #: Two candidates whose scores are this close are ambiguous and go to review. In a rule
    #: of several fields the candidates share one probability, so the best one reaches the
    #: threshold only far ahead of the second (by 2 * threshold - 100 points or more): a
    #: margin counts there only when it is wider than that.
    margin: float = Field(default=2.0, ge=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "fields" not in data
            and ("source" in data or "field" in data)
        ):
            one = {k: v for k, v in data.items() if k in _FIELD_KEYS}
            rest = {k: v for k, v in data.items() if k not in _FIELD_KEYS}
            return {**rest, "fields": [one]}
        return data

    @model_validator(mode="after")
    def _thresholds(self) -> MatchRule:
        if self.review_threshold is not None and self.review_threshold > self.threshold:
            raise ValueError(
                f"review_threshold {self.review_threshold} is above threshold {self.threshold}"
            )
        return self

    @property
    def review_at(self) -> float:
        """The lowest score that still goes to review."""
        if self.review_threshold is not None:
            return self.review_threshold
        return max(self.threshold - 15.0, 0.0)

    @property
    def is_exact(self) -> bool:
        """Whether every field is compared by equality (no scoring needed)."""
        return all(f.method is MatchMethod.EXACT for f in self.fields)

    @property
    def sources(self) -> list[str]:
        """The source columns the rule reads, in order, each once."""
        return list(dict.fromkeys(s for f in self.fields for s in f.source))


class ReferenceSpec(StrictModel):
    """An entity reference: a column written to the target, resolved against a master table.

    The output column (the key of ``references``) holds the matched master row's id. Rules
    are tried in order; the first that accepts a candidate decides.
    """

    entity: str = Field(pattern=IDENT)
    id_column: str = Field(default="id", pattern=IDENT)
    id_type: Literal["integer", "string"] = "integer"
    match: tuple[MatchRule, ...] = Field(min_length=1)
    on_unmatched: OnUnmatched = OnUnmatched.REVIEW

    @field_validator("on_unmatched", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        # `on_unmatched: null` in YAML is a null, not the text "null".
        return OnUnmatched.NULL if value is None else value

    @property
    def sources(self) -> list[str]:
        """Every source column the rules read, in order of first use."""
        return list(dict.fromkeys(s for rule in self.match for s in rule.sources))

    @property
    def field_of_source(self) -> dict[str, str]:
        """Source column -> the master field it is first compared with (used by ``create``)."""
        pairs: dict[str, str] = {}
        for rule in self.match:
            for f in rule.fields:
                for source, name in zip(f.source, f.field, strict=True):
                    pairs.setdefault(source, name)
        return pairs
