"""Dataset specs: one YAML file per dataset, validated on load.

A spec says where a dataset's files come from, how their headers map to typed columns, which
rules a value must meet, and how rows are written to the target table. Errors name the file,
the key and the problem.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from histimport_pipeline.engine.errors import DatasetNotFoundError, SpecError

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
SYSTEM_COLUMNS = ("_import_id", "_source_row", "_loaded_at", "_business_date")


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


class Strategy(StrEnum):
    """How rows are written to the target table."""

    APPEND = "append"
    UPSERT = "upsert"
    REPLACE_DATE = "replace_date"


class Partitioning(StrEnum):
    """How files map to partitions: one per file, or one per business date."""

    FILE = "file"
    DAILY = "daily"


DEFAULT_TRUE = ("true", "t", "yes", "y", "1")
DEFAULT_FALSE = ("false", "f", "no", "n", "0")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnUnmatched(StrEnum):
    """What happens to a row whose reference value matches no master row."""

    REVIEW = "review"
    REJECT = "reject"
    CREATE = "create"
    NULL = "null"


class ColumnSpec(_Strict):
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


class ReferenceSpec(_Strict):
    """An entity reference: a column written to the target, resolved against a master table.

    The output column (the key of ``references``) holds the matched master row's id.
    """

    entity: str = Field(pattern=_IDENT)
    id_column: str = Field(default="id", pattern=_IDENT)
    id_type: Literal["integer", "string"] = "integer"
    match: tuple[dict[str, Any], ...] = Field(min_length=1)
    on_unmatched: OnUnmatched = OnUnmatched.REVIEW


class DateFromName(_Strict):
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


class DatasetSpec(_Strict):
    """A dataset: where its files come from and how they are loaded."""

    name: str = Field(pattern=_IDENT)
    target_table: str = Field(pattern=_IDENT)
    description: str | None = None
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
    columns: dict[str, ColumnSpec]
    references: dict[str, ReferenceSpec] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        if not value:
            raise ValueError("a dataset needs at least one column")
        folded: dict[str, str] = {}
        for name, col in value.items():
            if not re.match(_IDENT, name):
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
        for output in self.references:
            if not re.match(_IDENT, output) or output.startswith("_"):
                raise ValueError(f"reference column {output!r} must be a plain identifier")
            if output in self.columns:
                raise ValueError(
                    f"reference column {output!r} is also a column; the reference writes it"
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


def load_spec(path: Path) -> DatasetSpec:
    """Read and validate one dataset spec.

    Raises:
        SpecError: the YAML is malformed or a key is invalid; names the file and key.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(path, "(yaml)", f"not valid YAML: {exc}") from None
    except OSError as exc:
        raise SpecError(path, "(file)", f"cannot read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise SpecError(path, "(top)", "expected a mapping of keys such as name, columns")
    raw.setdefault("name", path.stem)
    raw.setdefault("target_table", raw["name"])
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top)"
        problem = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            problem = "unknown key (check its spelling)"
        if len(exc.errors()) > 1:
            problem += f" (and {len(exc.errors()) - 1} more problem(s))"
        raise SpecError(path, key, problem) from None


def load_specs(folder: Path) -> dict[str, DatasetSpec]:
    """Read every ``*.yaml`` / ``*.yml`` spec in ``folder``, keyed by dataset name.

    Raises:
        SpecError: a spec is invalid, or two specs share a name.
    """
    specs: dict[str, DatasetSpec] = {}
    if not folder.is_dir():
        return specs
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        spec = load_spec(path)
        if spec.name in specs:
            raise SpecError(path, "name", f"dataset {spec.name!r} is declared twice")
        specs[spec.name] = spec
    return specs


def route_file(path: Path, specs: dict[str, DatasetSpec], inbox: Path | None = None) -> DatasetSpec:
    """Pick the dataset for a file: the inbox sub-folder named after it, else a ``files`` glob.

    Raises:
        DatasetNotFoundError: no dataset, or more than one, fits the file.
    """
    if inbox is not None:
        try:
            parts = path.resolve().relative_to(inbox.resolve()).parts
        except ValueError:
            parts = ()
        if len(parts) > 1 and parts[0] in specs:
            return specs[parts[0]]
    hits = [s for s in specs.values() if s.matches_file(path.name)]
    if len(hits) == 1:
        return hits[0]
    what = f"file {path.name!r}"
    if hits:
        what += f" (it fits several: {', '.join(s.name for s in hits)}; pass --dataset)"
    raise DatasetNotFoundError(what, list(specs))


