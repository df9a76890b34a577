"""Column specs: a column's type, the headers that find it, and the rules its values meet."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from histimport_pipeline.engine.spec.base import StrictModel


class ColumnType(StrEnum):
    """Types a column can be declared with."""

    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    EMAIL = "email"
    ENUM = "enum"


DEFAULT_TRUE = ("true", "t", "yes", "y", "1")
DEFAULT_FALSE = ("false", "f", "no", "n", "0")


class ColumnSpec(StrictModel):
    """One column of a dataset: its type, how headers find it, and its rules."""

    type: ColumnType = ColumnType.STRING
    required: bool = False
    aliases: tuple[str, ...] = ()
    description: str | None = None
    #: Texts that mean "no value". Only the empty string by default: "NA" and "null" stay text.
    null_values: tuple[str, ...] = ("",)
    min: float | str | None = None
    max: float | str | None = None
    regex: str | None = None
    allowed: tuple[str, ...] | None = None
    max_length: int | None = Field(default=None, gt=0)
    formats: tuple[str, ...] | None = None
    true_values: tuple[str, ...] = DEFAULT_TRUE
    false_values: tuple[str, ...] = DEFAULT_FALSE
    #: Digits after the decimal point for ``decimal`` (the table column is NUMERIC(38, scale)).
    scale: int = Field(default=6, ge=0, le=30)
    #: Strip surrounding whitespace before validating (the original text is kept for errors).
    strip: bool = True

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _type_rules(self) -> ColumnSpec:
        if self.type is ColumnType.ENUM and not self.allowed:
            raise ValueError("an enum column needs `allowed` values")
        if self.formats and self.type not in (ColumnType.DATE, ColumnType.TIMESTAMP):
            raise ValueError("`formats` applies only to date and timestamp columns")
        for bound in (self.min, self.max):
            if bound is None:
                continue
            if self.type in (ColumnType.INTEGER, ColumnType.DECIMAL) and not isinstance(
                bound, int | float
            ):
                raise ValueError(f"min/max of a {self.type} column must be a number")
            if self.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
                try:
                    datetime.fromisoformat(str(bound))
                except ValueError:
                    raise ValueError(
                        f"min/max of a {self.type} column must be an ISO date, got {bound!r}"
                    ) from None
        return self
