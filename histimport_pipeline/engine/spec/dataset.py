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


class MatchField(_Strict):
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
            if not re.match(_IDENT, name):
                raise ValueError(f"field {name!r} must be a plain column name of the master table")
        if "scorer" in self.model_fields_set and self.method is MatchMethod.EXACT:
            raise ValueError("`scorer` applies only to `method: fuzzy`")
        return self


_FIELD_KEYS = set(MatchField.model_fields)


class MatchRule(_Strict):
    """One rule of a reference: fields compared together, and when a candidate is accepted.

    The short form ``{source: a, field: b, method: fuzzy, threshold: 90}`` is a rule of one
    field. A rule of one field scores a candidate by that field's similarity; a rule of
    several fields scores it by the evidence of all its fields (see ``engine.reconcile``).
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


class ReferenceSpec(_Strict):
    """An entity reference: a column written to the target, resolved against a master table.

    The output column (the key of ``references``) holds the matched master row's id. Rules
    are tried in order; the first that accepts a candidate decides.
    """

    entity: str = Field(pattern=_IDENT)
    id_column: str = Field(default="id", pattern=_IDENT)
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


class _DuplicateKeyError(Exception):
    """A mapping of a spec's YAML names a key twice."""

    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping at any depth.

    Plain YAML keeps the last one silently, so a second ``references:`` would drop the first.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "")
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{where}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                # `<<` merges another mapping in; its keys may be overridden on purpose.
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                # Compared as constructed, so `yes` and `true` are the same key, as in YAML.
                key = self.construct_object(key_node)
                path = f"{where}.{key}" if where else str(key)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKeyError(path, line, seen[key])
                seen[key] = line
                self._check_unique(value_node, path)


def load_spec(path: Path) -> DatasetSpec:
    """Read and validate one dataset spec.

    Raises:
        SpecError: the YAML is malformed or a key is invalid; names the file and key.
    """
    try:
        # A SafeLoader subclass: no arbitrary objects are built.
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except _DuplicateKeyError as dup:
        raise SpecError(
            path,
            dup.key,
            f"line {dup.line}: the key is given twice (first on line {dup.first_line}); YAML "
            "would keep only the last one: merge the two or remove one",
        ) from None
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
