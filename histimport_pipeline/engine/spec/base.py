"""The base of every spec model, and the rule for a plain identifier."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: A plain SQL identifier: letters, digits and underscores, not starting with a digit.
IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class StrictModel(BaseModel):
    """A spec model: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
