"""Matching: resolve the distinct inputs of a reference against its master data, exact, by
alias, normalized, then fuzzy (:mod:`.fuzzy`) over blocked candidates (:mod:`.blocking`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from histimport_pipeline.engine.models import MatchType
from histimport_pipeline.engine.reconciliation.blocking import InputColumns
from histimport_pipeline.engine.reconciliation.fuzzy import FuzzyStage
from histimport_pipeline.engine.reconciliation.master import MasterData
from histimport_pipeline.engine.reconciliation.rules import (
    DEFAULT_SETTINGS,
    TOP_CANDIDATES,
    ReconcileSettings,
    Resolution,
    input_key,
    key_labels,
)
from histimport_pipeline.engine.spec import MatchRule, ReferenceSpec


class _Matcher:
    """Resolves the distinct inputs of one reference against its master data."""

    def __init__(
        self,
        ref: ReferenceSpec,
        master: MasterData,
        aliases: Mapping[str, str],
        settings: ReconcileSettings,
    ) -> None:
        self.ref = ref
        self.master = master
        self.aliases = aliases
        self.settings = settings
        self._id_set = set(master.ids)
        self._key_labels = key_labels(ref)
        self._columns = InputColumns(())
        self._fuzzy = FuzzyStage(ref, master, settings)

    @property
    def comparisons(self) -> int:
        """Fuzzy candidate pairs scored so far."""
        return self._fuzzy.comparisons

    def _rule_values(
        self, rule: MatchRule, todo: Sequence[int], normalized: bool
    ) -> tuple[list[tuple[str | None, ...]], list[tuple[str | None, ...]]]:
        position = {s: i for i, s in enumerate(self.ref.sources)}
        have: list[list[str | None]] = []
        asked: list[list[str | None]] = []
        for f in rule.fields:
            for source, name in zip(f.source, f.field, strict=True):
                have.append(
                    self.master.normalized(name, f.strip_accents)
                    if normalized
                    else self.master.raw[name]
                )
                column = self._columns.column(position[source], f.strip_accents, normalized)
                asked.append([column[i] for i in todo])
        return list(zip(*asked, strict=True)), list(zip(*have, strict=True))

    def _equal_stage(
        self,
        rules: Sequence[MatchRule],
        inputs: Sequence[Sequence[str | None]],
        todo: list[int],
        out: list[Resolution | None],
        pending: list[Resolution | None],
        normalized: bool,
    ) -> list[int]:
        match_type = MatchType.NORMALIZED if normalized else MatchType.EXACT
        for rule in rules:
            if not todo:
                break
            asked, have = self._rule_values(rule, todo, normalized)
            index: dict[tuple[str | None, ...], list[int]] = {}
            for row, key in enumerate(have):
                if None not in key:
                    index.setdefault(key, []).append(row)
            left = []
            for i, key in zip(todo, asked, strict=True):
                hits = index.get(key) if None not in key else None
                if not hits:
                    left.append(i)
                elif len(hits) == 1:
                    out[i] = Resolution(
                        match_type,
                        self.master.ids[hits[0]],
                        100.0,
                        [(self.master.ids[hits[0]], 100.0)],
                        accepted=True,
                    )
                else:
                    ids = [self.master.ids[h] for h in hits[:TOP_CANDIDATES]]
                    if pending[i] is None:
                        pending[i] = Resolution(
                            MatchType.AMBIGUOUS,
                            None,
                            100.0,
                            [(x, 100.0) for x in ids],
                            reason=f"{len(hits)} master rows are equal to it",
                        )
                    left.append(i)
            todo = left
        return todo

    def _alias_stage(
        self, inputs: Sequence[Sequence[str | None]], todo: list[int], out: list[Resolution | None]
    ) -> list[int]:
        if not self.aliases:
            return todo
        left = []
        for i in todo:
            entity_id = self.aliases.get(input_key(self.ref, inputs[i], self._key_labels))
            if entity_id is not None and entity_id in self._id_set:
                out[i] = Resolution(
                    MatchType.ALIAS, entity_id, 100.0, [(entity_id, 100.0)], accepted=True
                )
            else:
                left.append(i)
        return left

    def resolve(self, inputs: Sequence[Sequence[str | None]]) -> list[Resolution]:
        """Resolve each distinct input (text values in the order of ``ref.sources``)."""
        self._columns = InputColumns(inputs)
        out: list[Resolution | None] = [None] * len(inputs)
        pending: list[Resolution | None] = [None] * len(inputs)
        todo = [i for i, values in enumerate(inputs) if any(v is not None for v in values)]
        rules = list(self.ref.match)
        todo = self._equal_stage(rules, inputs, todo, out, pending, normalized=False)
        todo = self._alias_stage(inputs, todo, out)
        todo = self._equal_stage(rules, inputs, todo, out, pending, normalized=True)
        for rule in rules:
            if todo and not rule.is_exact:
                todo = self._fuzzy.run(rule, inputs, todo, out, pending, self._columns)
        results = []
        for i, values in enumerate(inputs):
            found = out[i] or pending[i]
            if found is None:
                reason = (
                    "the value is empty"
                    if all(v is None for v in values)
                    else f"no {self.ref.entity} row is equal or similar to it"
                )
                found = Resolution(MatchType.UNMATCHED, reason=reason)
            elif found.match_type is MatchType.UNMATCHED and not found.reason:
                found.reason = f"no {self.ref.entity} row is similar enough"
            results.append(found)
        columns = [self._columns.column(i, False, True) for i in range(len(self.ref.sources))]
        prefixes = [f"{label}=" for label in self._key_labels]
        for i, found in enumerate(results):
            found.key = "\x1f".join(
                p + (c[i] or "") for p, c in zip(prefixes, columns, strict=True)
            )
        return results


def resolve_values(
    ref: ReferenceSpec,
    master: MasterData,
    inputs: Sequence[Sequence[str | None]],
    aliases: Mapping[str, str] | None = None,
    settings: ReconcileSettings = DEFAULT_SETTINGS,
) -> tuple[list[Resolution], int]:
    """Resolve distinct input tuples against master data, without touching the database.

    Args:
        ref: the reference (its rules).
        master: the master table's columns (:func:`read_master`).
        inputs: text values in the order of ``ref.sources``.
        aliases: learned aliases of the entity (:func:`read_aliases`).

    Returns:
        One resolution per input, and the number of fuzzy comparisons made.
    """
    matcher = _Matcher(ref, master, aliases or {}, settings)
    return matcher.resolve(inputs), matcher.comparisons
