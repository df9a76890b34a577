"""The dataset spec: where a dataset's files come from, their columns and references, and how
rows are written to the target table.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import date, datetime
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from histimport_pipeline.engine.spec.base import IDENT, StrictModel
from histimport_pipeline.engine.spec.columns import ColumnSpec
from histimport_pipeline.engine.spec.freshness import FreshnessSpec
from histimport_pipeline.engine.spec.references import ReferenceSpec

SYSTEM_COLUMNS = ("_import_id", "_source_row", "_loaded_at", "_business_date")


class Strategy(StrEnum):
    """How rows are written to the target table."""

    APPEND = "append"
    UPSERT = "upsert"
    REPLACE_DATE = "replace_date"


class Partitioning(StrEnum):
    """How files map to partitions: one per file, or one per business date."""

    FILE = "file"
    DAILY = "daily"


class DateFromName(StrictModel):
    """How the business date is read from a file name."""

    regex: str = r"(\d{4}-\d{2}-\d{2})"
    format: str = "%Y-%m-%d"

    @field_validator("regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from None
        if compiled.groups < 1:
            raise ValueError("regex needs one capturing group around the date")
        return value


class DatasetSpec(StrictModel):
    """A dataset: where its files come from and how they are loaded."""

    name: str = Field(pattern=IDENT)
    target_table: str = Field(pattern=IDENT)
    description: str | None = None
    #: The domain the dataset belongs to (the Dagster asset group); default ``datasets``.
    group: str = Field(default="datasets", pattern=IDENT)
    #: Who answers for the dataset: e-mail addresses or ``team:NAME``.
    owners: tuple[str, ...] = ()
    #: Glob on the file name (``signups_*.csv``); files in the inbox sub-folder named after the
    #: dataset are routed to it as well.
    files: str | None = None
    partitioning: Partitioning = Partitioning.FILE
    date_from_name: DateFromName = DateFromName()
    start_date: date | None = None
    strategy: Strategy = Strategy.APPEND
    key: tuple[str, ...] = ()
    max_error_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    sheet: str | None = None
    encoding: str | None = None
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    #: ``False``: the files have no header row; delimited text and sheets are read by
    #: position, in the order of ``columns`` (JSON records always name their fields).
    header: bool = True
    columns: dict[str, ColumnSpec]
    references: dict[str, ReferenceSpec] = Field(default_factory=dict)
    #: When the dataset counts as stale (``null``: never).
    freshness: FreshnessSpec | None = FreshnessSpec()

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for owner in value:
            team = owner.startswith("team:") and re.fullmatch(r"team:[\w.-]+", owner)
            if not (team or re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", owner)):
                raise ValueError(f"owner {owner!r} must be an e-mail address or team:NAME")
        return value

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        if not value:
            raise ValueError("a dataset needs at least one column")
        folded: dict[str, str] = {}
        for name, col in value.items():
            if not re.match(IDENT, name):
                raise ValueError(
                    f"column name {name!r} must be letters, digits and underscores "
                    "(use `aliases` for the header text in the files)"
                )
            if name.startswith("_"):
                raise ValueError(f"column name {name!r}: names starting with _ are reserved")
            for label in (name, *col.aliases):
                key = fold_header(label)
                if key in folded and folded[key] != name:
                    raise ValueError(
                        f"header {label!r} of column {name!r} also names column {folded[key]!r}"
                    )
                folded[key] = name
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        for k in self.key:
            if k not in self.columns:
                raise ValueError(f"key column {k!r} is not among the columns")
        if self.strategy is Strategy.UPSERT and not self.key:
            raise ValueError("strategy upsert needs a `key`")
        if self.strategy is Strategy.REPLACE_DATE and self.partitioning is not Partitioning.DAILY:
            raise ValueError("strategy replace_date needs `partitioning: daily`")
        if (
            self.freshness is not None
            and self.freshness.deadline_hour is not None
            and self.partitioning is not Partitioning.DAILY
        ):
            raise ValueError(
                "freshness.deadline_hour needs `partitioning: daily`; use "
                "freshness.max_lag_hours for a dataset of dropped files"
            )
        for output in self.references:
            if not re.match(IDENT, output) or output.startswith("_"):
                raise ValueError(f"reference column {output!r} must be a plain identifier")
            if output in self.columns:
                raise ValueError(
                    f"reference column {output!r} is also a column; the reference writes it"
                )
            ref = self.references[output]
            for i, rule in enumerate(ref.match):
                for source in rule.sources:
                    if source not in self.columns:
                        raise ValueError(
                            f"references.{output}.match[{i}]: source {source!r} is not a column "
                            f"of the dataset (columns: {', '.join(self.columns)})"
                        )
        return self

    @property
    def required_columns(self) -> list[str]:
        """Columns that must be present in every file and non-empty in every row."""
        return [n for n, c in self.columns.items() if c.required or n in self.key]

    def matches_file(self, file_name: str) -> bool:
        """Whether a file name fits this dataset's ``files`` glob."""
        return self.files is not None and fnmatch.fnmatch(file_name, self.files)

    def business_date(self, file_name: str) -> date | None:
        """The business date in ``file_name`` by ``date_from_name``; ``None`` if absent."""
        found = re.search(self.date_from_name.regex, file_name)
        if not found:
            return None
        try:
            return datetime.strptime(found.group(1), self.date_from_name.format).date()
        except ValueError:
            return None


def fold_header(text: str) -> str:
    """Header text folded for matching: case, spaces, underscores, dashes and dots ignored."""
    return re.sub(r"[\s_\-.]+", "", text.strip().casefold())
