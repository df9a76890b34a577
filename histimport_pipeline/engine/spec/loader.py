"""Reading specs from YAML (a key given twice is refused), and routing a file to its dataset.
Errors name the file, the key and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from histimport_pipeline.engine.errors import DatasetNotFoundError, SpecError
from histimport_pipeline.engine.spec.dataset import DatasetSpec


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
