"""Reconciliation: match types, policies, ambiguity, review with aliases, blocking recall."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from histimport_pipeline.engine import loading, pipeline
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import RollbackConflictError, SpecError
from histimport_pipeline.engine.models import ImportStatus, MatchDecision
from histimport_pipeline.engine.pipeline import ImportResult, run_import
from histimport_pipeline.engine.reconciliation import (
    ReviewError,
    apply_review,
    as_text,
    decide_match,
    list_matches,
    normalize,
)
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.spec import DatasetSpec, load_spec
from histimport_pipeline_tests.helpers import (
    assert_accounting,
    audit_entries,
    history,
    rows,
    write,
)

AMBASSADORS = [
    (1, "ann.lee@example.com", "Ann Lee"),
    (2, "bob.stone@example.com", "Robert Stone"),
    (3, "cara.diaz@example.com", "Cara Díaz"),
    (4, "dan.oconnor@example.com", "Daniel O'Connor"),
    (5, "maria.garcia@example.com", "Maria Garcia"),
    (6, "mario.garcia@example.com", "Mario Garcia"),
    (7, "eve.twin1@example.com", "Eve Twin"),
    (8, "eve.twin2@example.com", "Eve Twin"),
]


def make_master(db: Database, people: list[tuple[int, str, str]] = AMBASSADORS) -> sa.Table:
    table = sa.Table(
        "ambassadors",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("email", sa.Text),
        sa.Column("full_name", sa.Text),
        sa.Column("region", sa.Text),
    )
    with db.engine.begin() as conn:
        table.create(conn)
        if people:
            # Ids come from the database (1, 2, ... in order) so that `create` can add rows.
            for expected, email, name in people:
                new_id = conn.execute(
                    sa.insert(table).values(email=email, full_name=name).returning(table.c.id)
                ).scalar_one()
                assert new_id == expected
    return table


def signup_spec(on_unmatched: str = "review", **reference: Any) -> DatasetSpec:
    ref = {
        "entity": "ambassadors",
        "match": [
            {"source": "ambassador_email", "field": "email", "method": "exact"},
            {"source": "ambassador_name", "field": "full_name", "method": "fuzzy", "threshold": 90},
        ],
        "on_unmatched": on_unmatched,
        **reference,
    }
    return DatasetSpec.model_validate(
        {
            "name": "signups",
            "target_table": "signups",
            "strategy": "upsert",
            "key": ["signup_id"],
            "max_error_ratio": 1.0,
            "columns": {
                "signup_id": {"type": "string", "required": True},
                "ambassador_email": {"type": "string"},
                "ambassador_name": {"type": "string"},
            },
            "references": {"ambassador_id": ref},
        }
    )


def csv_of(lines: list[tuple[str, str, str]]) -> str:
    body = "".join(f"{a},{b},{c}\n" for a, b, c in lines)
    return "signup_id,ambassador_email,ambassador_name\n" + body


def do_import(db: Database, spec: DatasetSpec, path: Path) -> ImportResult:
    """Run an import as a user would."""
    return run_import(db, spec, path)


def matches_of(db: Database, import_id: int) -> dict[str, dict[str, Any]]:
    """Match rows of an import keyed by the name (or e-mail) they were made for."""
    t = db.tables.import_reconciliation_matches
    with db.engine.connect() as conn:
        found = conn.execute(sa.select(t).where(t.c.import_id == import_id)).mappings().all()
    keyed = {}
    for m in found:
        values = m["input_values"]
        keyed[values.get("ambassador_name") or values.get("ambassador_email") or ""] = dict(m)
    return keyed


def loaded(db: Database) -> dict[str, Any]:
    return {r["signup_id"]: r["ambassador_id"] for r in rows(db, "signups")}


def failed_rows(db: Database, import_id: int) -> list[dict[str, Any]]:
    t = db.tables.import_failed_rows
    with db.engine.connect() as conn:
        query = sa.select(t).where(t.c.import_id == import_id).order_by(t.c.source_row)
        return [dict(r) for r in conn.execute(query).mappings()]


# Pure helpers --------------------------------------------------------------------------------


def test_normalize_folds_unicode_case_and_spaces() -> None:
    assert normalize("  \uff2a\uff4f\uff48\uff4e   SMITH ") == "john smith"  # full-width
    assert normalize("Zoë  Straße") == "zoë strasse"
    assert normalize("Zoë", strip_accents=True) == "zoe"
    assert normalize("   ") is None
    from datetime import date
    from decimal import Decimal

    assert as_text(date(2024, 1, 2)) == "2024-01-02"
    assert as_text(Decimal("1.500000")) == "1.5"
    assert as_text(None) is None


def test_rule_schema_short_and_weighted_forms() -> None:
    spec = DatasetSpec.model_validate(
        {
            "name": "visits",
            "target_table": "visits",
            "columns": {"first": {}, "last": {}, "born": {"type": "date"}, "zip": {}},
            "references": {
                "person_id": {
                    "entity": "people",
                    "match": [
                        {
                            "fields": [
                                {
                                    "source": ["first", "last"],
                                    "field": ["given", "surname"],
                                    "method": "fuzzy",
                                    "scorer": "jaro_winkler",
                                    "weight": 2,
                                },
                                {"source": "born", "field": "dob", "required": True},
                                {"source": "zip", "field": "postcode", "method": "fuzzy"},
                            ],
                            "threshold": 95,
                            "review_threshold": 70,
                        }
                    ],
                }
            },
        }
    )
    rule = spec.references["person_id"].match[0]
    assert rule.fields[0].source == ("first", "last")
    assert rule.review_at == 70
    assert spec.references["person_id"].sources == ["first", "last", "born", "zip"]
    short = signup_spec().references["ambassador_id"].match[1]
    assert short.fields[0].field == ("full_name",) and short.threshold == 90
    assert short.review_at == 75


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ([{"source": "nope", "field": "email"}], "ambassador_id.match[0]: source 'nope'"),
        ([{"source": "a", "field": "email", "scorer": "ratio"}], "applies only to `method: fuzzy`"),
        ([{"source": ["a", "b"], "field": "email"}], "same number of names"),
        ([{"source": "a", "field": "x", "threshold": 80, "review_threshold": 85}], "is above"),
    ],
)
def test_rule_errors_name_the_key(tmp_path: Path, match: list[Any], problem: str) -> None:
    path = write(
        tmp_path / "signups.yaml",
        "columns: {a: {}, b: {}}\n"
        "references:\n"
        "  ambassador_id:\n"
        "    entity: ambassadors\n"
        f"    match: {match!r}\n".replace("'", '"'),
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert problem.replace("'", '"') in str(caught.value).replace("'", '"')


# Match types -------------------------------------------------------------------------------


def test_each_match_type_is_recorded_and_loaded(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec(on_unmatched="review")
    path = write(
        tmp_path / "signups_1.csv",
        csv_of(
            [
                ("s1", "ann.lee@example.com", "whoever"),  # exact (e-mail)
                ("s2", "", "robert   STONE"),  # normalized (name)
                ("s3", "", "Carra Díaz"),  # fuzzy: a typo
                ("s4", "", "Daniel OConnor"),  # fuzzy
                ("s5", "", "Mari Garcia"),  # ambiguous: Maria / Mario
                ("s6", "", "Eve Twin"),  # ambiguous: two equal master rows
                ("s7", "", "Zed Unknown"),  # unmatched -> review
                ("s8", "", "Carra Díaz"),  # same value again: matched once
            ]
        ),
    )
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.PARTIAL
    assert result.rows_review == 3
    assert_accounting(result)
    found = matches_of(db, result.import_id)
    assert len(found) == 7  # distinct inputs, not rows
    assert found["whoever"]["match_type"] == "exact"
    assert found["robert   STONE"]["match_type"] == "normalized"
    assert found["Carra Díaz"]["match_type"] == "fuzzy"
    assert found["Carra Díaz"]["rows_affected"] == 2
    assert found["Carra Díaz"]["decision"] == "auto_accepted"
    assert found["Daniel OConnor"]["matched_id"] == "4"
    ambiguous = found["Mari Garcia"]
    assert ambiguous["match_type"] == "ambiguous"
    assert ambiguous["decision"] == "needs_review"
    assert {c["id"] for c in ambiguous["candidates"][:2]} == {"5", "6"}
    assert found["Eve Twin"]["match_type"] == "ambiguous"
    assert found["Zed Unknown"]["match_type"] == "unmatched"
    assert found["Zed Unknown"]["decision"] == "needs_review"
    for m in found.values():
        assert len(m["candidates"] or []) <= 3
        assert m["input_key"]
    assert loaded(db) == {"s1": 1, "s2": 2, "s3": 3, "s4": 4, "s8": 3}


def test_review_band_goes_to_review_with_a_suggestion(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec()
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "", "Robrt Stn")]))
    result = do_import(db, spec, path)
    match = matches_of(db, result.import_id)["Robrt Stn"]
    assert match["match_type"] == "fuzzy"
    assert match["decision"] == "needs_review"
    assert match["matched_id"] == "2"
    assert 75 <= match["score"] < 90
    assert result.rows_review == 1


# Policies ----------------------------------------------------------------------------------


def test_policy_reject_fails_the_rows_with_the_reason(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec(on_unmatched="reject")
    path = write(
        tmp_path / "signups_1.csv",
        csv_of([("s1", "", "Ann Lee"), ("s2", "", "Zed Unknown"), ("s3", "", "Zed Unknown")]),
    )
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.PARTIAL
    assert result.rows_failed == 2
    assert_accounting(result)
    assert loaded(db) == {"s1": 1}
    failed = failed_rows(db, result.import_id)
    assert [f["source_row"] for f in failed] == [3, 4]
    assert failed[0]["category"] == "reconciliation"
    assert failed[0]["column_name"] == "ambassador_id"
    assert "Zed Unknown" in failed[0]["message"]
    assert "on_unmatched: reject" in failed[0]["message"]
    assert failed[0]["raw_values"]["ambassador_name"] == "Zed Unknown"
    match = matches_of(db, result.import_id)["Zed Unknown"]
    assert (match["match_type"], match["decision"]) == ("unmatched", "rejected")


def test_policy_null_loads_without_an_id(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec(on_unmatched="null")
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "", "Zed Unknown"), ("s2", "", "")]))
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS
    assert loaded(db) == {"s1": None, "s2": None}


def test_policy_create_inserts_one_master_row_per_value(db: Database, tmp_path: Path) -> None:
    master = make_master(db)
    spec = signup_spec(on_unmatched="create")
    path = write(
        tmp_path / "signups_1.csv",
        csv_of(
            [
                ("s1", "zed@example.com", "Zed Unknown"),
                ("s2", "zed@example.com", "Zed Unknown"),
                ("s3", "ann.lee@example.com", "Ann Lee"),
            ]
        ),
    )
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS
    with db.engine.connect() as conn:
        new = (
            conn.execute(sa.select(master).where(master.c.email == "zed@example.com"))
            .mappings()
            .all()
        )
    assert len(new) == 1
    assert new[0]["full_name"] == "Zed Unknown"
    assert loaded(db) == {"s1": new[0]["id"], "s2": new[0]["id"], "s3": 1}
    match = matches_of(db, result.import_id)["Zed Unknown"]
    assert (match["match_type"], match["decision"]) == ("created", "created")
    assert match["matched_id"] == str(new[0]["id"])


@pytest.mark.parametrize("policy", ["review", "reject", "null", "create"])
def test_row_with_every_match_field_empty_follows_the_policy_and_is_counted(
    db: Database, tmp_path: Path, policy: str
) -> None:
    master = make_master(db)
    before = master_rows(db, master)
    spec = signup_spec(on_unmatched=policy)
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "", "Ann Lee"), ("s2", "", "")]))
    result = do_import(db, spec, path)
    assert_accounting(result)
    empty = matches_of(db, result.import_id)[""]
    assert empty["rows_affected"] == 1
    if policy == "review":
        assert result.status is ImportStatus.PARTIAL and result.rows_review == 1
        assert loaded(db) == {"s1": 1}
        assert empty["decision"] == "needs_review"
        assert history(db, result.import_id)["rows_review"] == 1
    elif policy == "reject":
        assert result.status is ImportStatus.PARTIAL and result.rows_failed == 1
        assert loaded(db) == {"s1": 1}
        (failed,) = failed_rows(db, result.import_id)
        assert failed["source_row"] == 3 and failed["category"] == "reconciliation"
        assert "empty" in failed["message"]
    else:
        # Nothing to match or to create a master row from: loaded without an id, and said so.
        assert result.status is ImportStatus.SUCCESS
        assert loaded(db) == {"s1": 1, "s2": None}
        assert master_rows(db, master) == before
        notes = [w for w in result.warnings if "without ambassador_id" in w]
        assert notes and notes[0].startswith("1 row")
        assert notes == [
            w for w in history(db, result.import_id)["warnings"] if "without ambassador_id" in w
        ]


def master_rows(db: Database, master: sa.Table) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(master).order_by(master.c.id))]


def test_rollback_removes_created_master_rows_and_guards_later_users(
    db: Database, tmp_path: Path
) -> None:
    master = make_master(db)
    before = master_rows(db, master)
    spec = signup_spec(on_unmatched="create")
    first = do_import(
        db, spec, write(tmp_path / "signups_1.csv", csv_of([("s1", "zed@example.com", "Zed")]))
    )
    # A later file names the same new person: it matches the row the first import created.
    second = do_import(
        db, spec, write(tmp_path / "signups_2.csv", csv_of([("s2", "zed@example.com", "Zed")]))
    )
    zed = matches_of(db, first.import_id)["Zed"]["matched_id"]
    assert matches_of(db, second.import_id)["Zed"]["matched_id"] == zed
    assert len(master_rows(db, master)) == len(before) + 1

    with pytest.raises(RollbackConflictError) as conflict:
        rollback_import(db, first.import_id)
    assert conflict.value.later_imports == [second.import_id]
    assert len(master_rows(db, master)) == len(before) + 1  # refused: nothing changed

    result = rollback_import(db, first.import_id, cascade=True)
    assert [u.import_id for u in result.undone] == [second.import_id, first.import_id]
    assert [u.master_rows_deleted for u in result.undone] == [0, 1]
    assert master_rows(db, master) == before
    assert loaded(db) == {}


def test_rejected_import_keeps_no_created_master_rows(db: Database, tmp_path: Path) -> None:
    master = make_master(db)
    before = master_rows(db, master)
    spec = signup_spec(on_unmatched="create").model_copy(update={"max_error_ratio": 0.1})
    # One new ambassador, then three rows without the required signup_id: 75% fail.
    lines = [("s1", "zed@example.com", "Zed"), *[("", "x@example.com", "X")] * 3]
    result = do_import(db, spec, write(tmp_path / "signups_1.csv", csv_of(lines)))
    assert result.status is ImportStatus.REJECTED
    assert master_rows(db, master) == before
    h = history(db, result.import_id)
    assert (h["master_rows_created"], h["master_rows_linked"]) == (0, 0)


def test_reconcile_step_run_twice_still_rolls_back_exactly(db: Database, tmp_path: Path) -> None:
    master = make_master(db)
    before = master_rows(db, master)
    spec = signup_spec(on_unmatched="create")
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "zed@example.com", "Zed")]))
    handle = pipeline.start_import(db, spec, path)
    pipeline.stage_file(db, spec, handle)
    pipeline.reconcile_import(db, spec, handle)
    pipeline.reconcile_import(db, spec, handle)  # e.g. the step re-executed in Dagster
    result = pipeline.load_import(db, spec, handle)
    assert result.status is ImportStatus.SUCCESS
    zeds = [r for r in master_rows(db, master) if r[1] == "zed@example.com"]
    assert len(zeds) == 1
    assert loaded(db) == {"s1": zeds[0][0]}
    # The re-run still records the row as created by this import, so rollback removes it.
    assert matches_of(db, handle.import_id)["Zed"]["decision"] == "created"
    rollback_import(db, handle.import_id)
    assert master_rows(db, master) == before


# Review cycle with aliases -------------------------------------------------------------------


def test_review_cycle_accept_alias_and_apply(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec()
    first = write(
        tmp_path / "signups_1.csv",
        csv_of(
            [
                ("s1", "", "Ann Lee"),
                ("s2", "", "Bobby S."),
                ("s3", "", "Mari Garcia"),
                ("s4", "", "Bobby S."),
                ("s5", "", "Zed Unknown"),
            ]
        ),
    )
    result = do_import(db, spec, first)
    assert result.status is ImportStatus.PARTIAL and result.rows_review == 4
    before = rows(db, "signups")
    assert [r["signup_id"] for r in before] == ["s1"]

    waiting = {m["input_values"]["ambassador_name"]: m for m in list_matches(db, result.import_id)}
    assert set(waiting) == {"Bobby S.", "Mari Garcia", "Zed Unknown"}
    with pytest.raises(ReviewError, match="pass --entity"):
        decide_match(db, waiting["Mari Garcia"]["match_id"], accept=True, actor="alice")
    with pytest.raises(ReviewError, match="no row"):
        decide_match(
            db, waiting["Bobby S."]["match_id"], accept=True, entity_id="999", actor="alice"
        )
    accepted = decide_match(
        db, waiting["Bobby S."]["match_id"], accept=True, entity_id="2", actor="alice"
    )
    assert accepted["decision"] == MatchDecision.ACCEPTED.value
    assert accepted["decided_by"] == "alice"
    decide_match(db, waiting["Mari Garcia"]["match_id"], accept=True, entity_id="5", actor="bo")
    with pytest.raises(ReviewError, match="already accepted"):
        decide_match(db, waiting["Bobby S."]["match_id"], accept=False, actor="bo")

    applied = apply_review(db, spec, result.import_id, actor="alice")
    assert applied["rows_loaded"] == 3
    assert applied["rows_still_held"] == 1
    after = rows(db, "signups")
    assert after[0] == before[0]  # the row loaded by the import is untouched
    assert {r["signup_id"]: r["ambassador_id"] for r in after} == {
        "s1": 1,
        "s2": 2,
        "s3": 5,
        "s4": 2,
    }
    assert {r["_import_id"] for r in after} == {result.import_id}
    h = history(db, result.import_id)
    assert h["status"] == "partial" and h["rows_review"] == 1 and h["rows_created"] == 4

    # The last one: rejected in review, so (policy review) it fails with a reason.
    decide_match(db, waiting["Zed Unknown"]["match_id"], accept=False, actor="bo")
    final = apply_review(db, spec, result.import_id, actor="bo")
    assert final["rows_rejected"] == 1 and final["rows_still_held"] == 0
    h = history(db, result.import_id)
    assert h["rows_review"] == 0 and h["rows_failed"] == 1
    assert "rejected in review by bo" in failed_rows(db, result.import_id)[0]["message"]
    assert not sa.inspect(db.engine).has_table(loading.staging_name(result.import_id), db.schema)
    actions = [a for a in _audit(db, result.import_id) if a.startswith("review_")]
    assert actions == [
        "review_accepted",
        "review_accepted",
        "review_applied",
        "review_rejected",
        "review_applied",
    ]
    with pytest.raises(ReviewError, match="no rows waiting"):
        apply_review(db, spec, result.import_id)

    # A new file with the same name, spelled differently: matched as an alias at once.
    second = write(tmp_path / "signups_2.csv", csv_of([("s9", "", "BOBBY  s.")]))
    again = do_import(db, spec, second)
    assert again.status is ImportStatus.SUCCESS
    match = matches_of(db, again.import_id)["BOBBY  s."]
    assert (match["match_type"], match["decision"], match["matched_id"]) == (
        "alias",
        "auto_accepted",
        "2",
    )
    assert loaded(db)["s9"] == 2


def test_rejected_in_review_under_null_policy_loads_null(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec(on_unmatched="null")
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "", "Mari Garcia")]))
    result = do_import(db, spec, path)
    assert result.rows_review == 1  # ambiguous goes to review whatever the policy
    match = list_matches(db, result.import_id)[0]
    decide_match(db, match["match_id"], accept=False, actor="bo")
    applied = apply_review(db, spec, result.import_id)
    assert applied["status"] == "success" and applied["rows_loaded"] == 1
    assert loaded(db) == {"s1": None}


def test_one_decision_per_value_settles_every_import_waiting_on_it(
    db: Database, tmp_path: Path
) -> None:
    make_master(db)
    spec = signup_spec()
    imports = []
    for n, lines in enumerate(
        [
            [("a1", "", "Zed Unknown"), ("a2", "", "Zed Unknown"), ("a3", "", "Mari Garcia")],
            [("b1", "", "Zed Unknown")],
            [("c1", "", "ZED  unknown"), ("c2", "", "Ann Lee")],  # the same value, normalized
        ]
    ):
        result = do_import(db, spec, write(tmp_path / f"signups_{n}.csv", csv_of(lines)))
        assert result.status is ImportStatus.PARTIAL
        imports.append(result.import_id)

    waiting = list_matches(db)
    assert len(waiting) == 2  # Zed Unknown (three imports) and Mari Garcia
    zed = next(m for m in waiting if m["input_values"]["ambassador_name"] == "Zed Unknown")
    assert zed["import_ids"] == imports and zed["rows_waiting"] == 4
    assert len(zed["match_ids"]) == 3 and zed["match_id"] == min(zed["match_ids"])
    # Listed for one import, the item still names every import that waits on the value.
    (only,) = [m for m in list_matches(db, imports[1])]
    assert only["match_id"] == zed["match_id"] and only["import_ids"] == imports

    decided = decide_match(db, zed["match_id"], accept=True, entity_id="2", actor="alice")
    assert decided["import_ids"] == imports
    remaining = list_matches(db)
    assert [m["input_values"]["ambassador_name"] for m in remaining] == ["Mari Garcia"]
    with pytest.raises(ReviewError, match="already accepted"):
        decide_match(db, zed["match_ids"][2], accept=False, actor="bo")
    for import_id in imports:
        assert "review_accepted" in _audit(db, import_id)
        apply_review(db, spec, import_id, actor="alice")
    assert loaded(db) == {"a1": 2, "a2": 2, "b1": 2, "c1": 2, "c2": 1}
    assert [history(db, i)["status"] for i in imports] == ["partial", "success", "success"]


def _audit(db: Database, import_id: int) -> list[str]:
    t = db.tables.import_audit_trail
    with db.engine.connect() as conn:
        query = sa.select(t.c.action).where(t.c.import_id == import_id).order_by(t.c.audit_id)
        return list(conn.execute(query).scalars())


# Multi-field rules and blocking ------------------------------------------------------------


def _random_name(rng: random.Random, length: int) -> str:
    return rng.choice(string.ascii_uppercase) + "".join(
        rng.choice("aeioulnrstmkdbg") for _ in range(length - 1)
    )


def person_spec(**rule: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "visits",
            "target_table": "visits",
            "columns": {
                "visit_id": {"type": "string", "required": True},
                "first_name": {},
                "last_name": {},
                "born": {"type": "date"},
                "zip": {},
            },
            "references": {
                "person_id": {
                    "entity": "people",
                    "match": [
                        {
                            "fields": [
                                {
                                    "source": ["first_name", "last_name"],
                                    "field": ["given_name", "surname"],
                                    "method": "fuzzy",
                                },
                                {"source": "born", "field": "date_of_birth", "method": "fuzzy"},
                                {"source": "zip", "field": "postcode", "method": "fuzzy"},
                            ],
                            **rule,
                        }
                    ],
                    "on_unmatched": "review",
                }
            },
        }
    )


def test_misspelled_first_letter_is_still_found(db: Database, tmp_path: Path) -> None:
    rng = random.Random(5)
    people = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("given_name", sa.Text),
        sa.Column("surname", sa.Text),
        sa.Column("date_of_birth", sa.Date),
        sa.Column("postcode", sa.Text),
    )
    from datetime import date, timedelta

    records = []
    for i in range(1, 3001):
        records.append(
            {
                "id": i,
                "given_name": _random_name(rng, rng.randint(4, 7)),
                # Many surnames share their first letters, so the first key alone would not
                # reach a name whose first letter is wrong.
                "surname": "S" + _random_name(rng, rng.randint(5, 8)).lower(),
                "date_of_birth": date(1950, 1, 1) + timedelta(days=rng.randint(0, 20000)),
                "postcode": str(rng.randint(1000, 9999)),
            }
        )
    with db.engine.begin() as conn:
        people.create(conn)
        conn.execute(sa.insert(people), records)
    target = records[1234]
    wrong = "X" + target["surname"][1:]
    path = write(
        tmp_path / "visits.csv",
        "visit_id,first_name,last_name,born,zip\n"
        f"v1,{target['given_name']},{wrong},{target['date_of_birth']},{target['postcode']}\n"
        # surname misspelled in its first letter AND the date of birth missing
        f"v2,{target['given_name']},{wrong},,{target['postcode']}\n",
    )
    spec = person_spec()
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS, matches_of(db, result.import_id)
    assert {r["visit_id"]: r["person_id"] for r in rows(db, "visits")} == {
        "v1": target["id"],
        "v2": target["id"],
    }
    t = db.tables.import_reconciliation_matches
    with db.engine.connect() as conn:
        kinds = set(conn.execute(sa.select(t.c.match_type)).scalars())
    assert kinds == {"fuzzy"}


def _people_table(name: str) -> sa.Table:
    # No primary key: SQLite, too, then returns the rows in the order they were inserted.
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer),
        sa.Column("given_name", sa.Text),
        sa.Column("surname", sa.Text),
        sa.Column("date_of_birth", sa.Date),
        sa.Column("postcode", sa.Text),
    )


def test_learned_rates_do_not_depend_on_the_master_tables_row_order(
    db: Database, tmp_path: Path
) -> None:
    from datetime import date, timedelta

    from histimport_pipeline.engine.reconciliation import MasterData, as_text, resolve_values

    rng = random.Random(11)
    records = [
        {
            "id": i,
            "given_name": _random_name(rng, rng.randint(4, 6)),
            "surname": _random_name(rng, rng.randint(5, 7)),
            "date_of_birth": date(1960, 1, 1) + timedelta(days=rng.randint(0, 9000)),
            "postcode": str(rng.randint(1000, 1400)),
        }
        for i in range(1, 401)
    ]
    shuffled = records[:]
    rng.shuffle(shuffled)
    with db.engine.begin() as conn:
        for name, order in (("people_a", records), ("people_b", shuffled)):
            table = _people_table(name)
            table.create(conn)
            conn.execute(sa.insert(table), order)
    lines = ["visit_id,first_name,last_name,born,zip"]

    def typo(text: str) -> str:
        cut = rng.randrange(1, len(text))
        return text[:cut] + text[cut + 1 :]

    for n, person in enumerate(rng.sample(records, 40)):
        # Typos in both names, no date and a similar postcode: weak evidence, scores in the
        # middle of the range, where the learned chance rate of a similar value decides.
        lines.append(
            f"v{n},{typo(person['given_name'])},{typo(person['surname'])},,"
            f"{str(person['postcode'])[:3]}9"
        )
    path = write(tmp_path / "visits.csv", "\n".join(lines) + "\n")
    decided: dict[str, list[tuple[Any, ...]]] = {}
    t = db.tables.import_reconciliation_matches
    for entity in ("people_a", "people_b"):
        raw = person_spec().model_dump()
        raw["references"]["person_id"]["entity"] = entity
        spec = DatasetSpec.model_validate(raw | {"name": entity, "target_table": f"v_{entity}"})
        result = do_import(db, spec, path)
        with db.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.input_key, t.c.match_type, t.c.matched_id, t.c.score, t.c.decision)
                .where(t.c.import_id == result.import_id)
                .order_by(t.c.input_key)
            )
            decided[entity] = [tuple(r) for r in found]
    assert decided["people_a"] == decided["people_b"]
    # ... and equal to the matcher run on the rows in id order, whatever the backend.
    spec = person_spec()
    ref = spec.references["person_id"]
    fields = ["given_name", "surname", "date_of_birth", "postcode"]
    master = MasterData(
        table=_people_table("people"),
        ids=[str(r["id"]) for r in records],
        raw={f: [as_text(r[f]) for r in records] for f in fields},
    )
    inputs = [tuple(line.split(",")[1:]) for line in lines[1:]]
    resolutions, _ = resolve_values(ref, master, inputs)
    by_key = {r.key: (r.match_type.value, r.matched_id, r.score) for r in resolutions}
    assert {k: (m, i, s) for k, m, i, s, _ in decided["people_a"]} == by_key


def test_margin_makes_close_candidates_of_a_multi_field_rule_ambiguous(
    db: Database, tmp_path: Path
) -> None:
    from datetime import date

    people = _people_table("people")
    with db.engine.begin() as conn:
        people.create(conn)
        conn.execute(
            sa.insert(people),
            [
                {"id": 1, "given_name": "Ann", "surname": "Lee", "date_of_birth": None},
                {"id": 2, "given_name": "Ann", "surname": "Leigh", "date_of_birth": None},
                {"id": 3, "given_name": "Bo", "surname": "Dahl", "date_of_birth": date(1970, 1, 1)},
            ],
        )
    path = write(tmp_path / "visits.csv", "visit_id,first_name,last_name,born,zip\nv1,Ann,Lee,,\n")

    def run(name: str, margin: float) -> dict[str, Any]:
        raw = person_spec(threshold=1, review_threshold=0, margin=margin).model_dump()
        spec = DatasetSpec.model_validate(raw | {"name": name, "target_table": name})
        result = do_import(db, spec, path)
        (match,) = list_matches(db, result.import_id, decision=None)
        return match

    # Without a margin the better of the two Ann Lees is accepted, if by a thin lead.
    free = run("visits_free", 0)
    assert (free["match_type"], free["decision"], free["matched_id"]) == (
        "fuzzy",
        "auto_accepted",
        "1",
    )
    (first, second, *_) = free["candidates"]
    assert first["id"] == "1" and second["id"] == "2"
    lead = first["score"] - second["score"]
    assert 0 < lead < 99
    close = run("visits_close", lead + 0.5)
    assert (close["match_type"], close["decision"], close["matched_id"]) == (
        "ambiguous",
        "needs_review",
        None,
    )
    assert {c["id"] for c in close["candidates"][:2]} == {"1", "2"}
    wide = run("visits_wide", lead - 0.5)
    assert (wide["decision"], wide["matched_id"]) == ("auto_accepted", "1")


def test_required_equal_field_excludes_other_dates(db: Database, tmp_path: Path) -> None:
    events = sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("day", sa.Date),
    )
    from datetime import date

    with db.engine.begin() as conn:
        events.create(conn)
        conn.execute(
            sa.insert(events),
            [
                {"event_id": "E1", "name": "Spring Fair", "day": date(2024, 3, 1)},
                {"event_id": "E2", "name": "Spring Fair", "day": date(2024, 4, 1)},
            ],
        )
    spec = DatasetSpec.model_validate(
        {
            "name": "tickets",
            "target_table": "tickets",
            "columns": {"ticket": {"required": True}, "event": {}, "on": {"type": "date"}},
            "references": {
                "event_id": {
                    "entity": "events",
                    "id_column": "event_id",
                    "id_type": "string",
                    "match": [
                        {
                            "fields": [
                                {
                                    "source": "event",
                                    "field": "name",
                                    "method": "fuzzy",
                                    "similar_at": 90,
                                    "required": True,
                                },
                                {"source": "on", "field": "day", "required": True},
                            ]
                        }
                    ],
                    "on_unmatched": "null",
                }
            },
        }
    )
    path = write(
        tmp_path / "tickets.csv",
        "ticket,event,on\nt1,Sprng Fair,2024-04-01\nt2,Spring Fair,2024-05-01\n"
        "t3,Autumn Fair,2024-03-01\n",
    )
    result = do_import(db, spec, path)
    assert {r["ticket"]: r["event_id"] for r in rows(db, "tickets")} == {
        "t1": "E2",
        "t2": None,
        "t3": None,
    }
    assert result.status is ImportStatus.SUCCESS


def test_missing_master_column_is_a_clear_error(db: Database, tmp_path: Path) -> None:
    make_master(db)
    spec = signup_spec(
        match=[{"source": "ambassador_name", "field": "nickname", "method": "fuzzy"}]
    )
    path = write(tmp_path / "signups_1.csv", csv_of([("s1", "", "Ann Lee")]))
    result = do_import(db, spec, path)
    assert result.status is ImportStatus.FAILED
    assert "nickname" in (result.error_message or "")


# CLI -----------------------------------------------------------------------------------------


def _cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Database, DatasetSpec]:
    """A histimport home on SQLite with the ambassadors master and the signups dataset."""
    home = tmp_path / "home"
    datasets = home / "datasets"
    datasets.mkdir(parents=True)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for name, value in {
        "HISTIMPORT_HOME": str(home),
        "HISTIMPORT_DATABASE_URL": url,
        "HISTIMPORT_DATASETS": str(datasets),
    }.items():
        monkeypatch.setenv(name, value)
    db = Database.connect(url)
    pipeline.ensure_schema(db)
    make_master(db)
    write(
        datasets / "signups.yaml",
        "name: signups\nstrategy: upsert\nkey: [signup_id]\n"
        "columns: {signup_id: {required: true}, ambassador_email: {}, ambassador_name: {}}\n"
        "references:\n  ambassador_id:\n    entity: ambassadors\n    match:\n"
        "      - {source: ambassador_email, field: email, method: exact}\n"
        "      - {source: ambassador_name, field: full_name, method: fuzzy, threshold: 90}\n",
    )
    return db, load_spec(datasets / "signups.yaml")


def test_review_cli_list_accept_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from histimport_pipeline.cli.review import review_app

    db, spec = _cli_home(tmp_path, monkeypatch)
    result = do_import(db, spec, write(tmp_path / "s.csv", csv_of([("s1", "", "Bobby S.")])))
    runner = CliRunner()
    listed = runner.invoke(review_app, ["list", "--import", str(result.import_id), "--json"])
    assert listed.exit_code == 0, listed.output
    import json

    match_id = json.loads(listed.stdout)[0]["match_id"]
    bad = runner.invoke(review_app, ["accept", str(match_id)])
    assert bad.exit_code == 2
    ok = runner.invoke(review_app, ["accept", str(match_id), "--entity", "2"])
    assert ok.exit_code == 0, ok.output
    applied = runner.invoke(review_app, ["apply", str(result.import_id)])
    assert applied.exit_code == 0, applied.output
    assert "success" in applied.stdout
    assert loaded(db) == {"s1": 2}
    assert runner.invoke(review_app, ["reject", "99999"]).exit_code == 2
    db.dispose()


def test_master_rows_created_and_linked_and_a_reviewers_override(
    db: Database, tmp_path: Path
) -> None:
    make_master(db)
    spec = signup_spec(on_unmatched="create")
    lines = [
        ("s1", "ann.lee@example.com", "whoever"),  # exact: links Ann (1)
        ("s2", "", "robert   STONE"),  # normalized: links Robert (2)
        ("s3", "", "Robert Stone"),  # Robert again: one master row, linked once
        ("s4", "zed@example.com", "Zed Unknown"),  # no such ambassador: created
        ("s5", "", "Robrt Stn"),  # the review band: Robert suggested
    ]
    options = pipeline.ImportOptions(user_id="importer", user_email="imp@example.com")
    result = run_import(db, spec, write(tmp_path / "signups_1.csv", csv_of(lines)), options)
    assert result.status is ImportStatus.PARTIAL and result.rows_review == 1
    h = history(db, result.import_id)
    assert (h["master_rows_created"], h["master_rows_linked"]) == (1, 2)
    trail = audit_entries(db, result.import_id)
    actions = [e["action"] for e in trail]
    assert actions.index("reconciliation_started") + 1 == actions.index("reconciled")
    reconciled = trail[actions.index("reconciled")]
    assert "master rows created 1, linked 2" in reconciled["summary"]
    assert reconciled["actor"] == "importer"

    suggested = matches_of(db, result.import_id)["Robrt Stn"]
    assert suggested["matched_id"] == "2"
    decide_match(db, suggested["match_id"], accept=True, entity_id="3", actor="rev")
    override = audit_entries(db, result.import_id)[-1]
    assert (override["action"], override["severity"], override["actor"]) == (
        "user_override",
        "warning",
        "rev",
    )
    assert "rev matched" in override["summary"]
    assert "ambassador_name='Robrt Stn'" in override["summary"]
    assert override["summary"].endswith(" to 3 instead of the suggested 2")
    assert override["details"]["suggested_id"] == "2"

    apply_review(db, spec, result.import_id, actor="rev")
    h = history(db, result.import_id)
    assert (h["master_rows_created"], h["master_rows_linked"]) == (1, 3)  # and Cara (3)
    applied = audit_entries(db, result.import_id)[-1]
    assert (applied["action"], applied["actor"]) == ("review_applied", "rev")


def test_review_cli_records_the_reviewer_and_show_prints_the_trail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histimport_pipeline.cli import app

    db, _spec = _cli_home(tmp_path, monkeypatch)
    monkeypatch.setenv("HISTIMPORT_USER", "carol")
    path = write(tmp_path / "s.csv", csv_of([("s1", "", "Robrt Stn"), ("s2", "", "Ann Lee")]))
    runner = CliRunner()
    imported = runner.invoke(app, ["import", str(path), "--dataset", "signups"])
    assert imported.exit_code == 0, imported.output
    import json

    (item,) = json.loads(runner.invoke(app, ["review", "list", "--json"]).stdout)
    # Accepting the suggestion itself is no override.
    ok = runner.invoke(app, ["review", "accept", str(item["match_id"])])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["review", "apply", "1", "--user", "dave"])
    assert ok.exit_code == 0, ok.output

    shown = runner.invoke(app, ["show", "1"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "master rows" in text and "created 0 | linked 2" in text
    cells = [[c.strip() for c in line.split("│")] for line in text.splitlines()]
    rows_of = {c[3]: " ".join(c) for c in cells if len(c) == 7}
    assert "info" in rows_of["review_accepted"] and "carol" in rows_of["review_accepted"]
    assert "accepted as 2" in rows_of["review_accepted"]
    assert "dave" in rows_of["review_applied"] and "review applied: success" in text
    assert "warning" in rows_of["completed"] and "completed: partial" in text
    assert "carol" in rows_of["reconciliation_started"]
    detail = json.loads(runner.invoke(app, ["show", "1", "--json"]).stdout)
    assert {e["actor"] for e in detail["audit_trail"]} == {"carol", "dave"}
    assert "user_override" not in {e["action"] for e in detail["audit_trail"]}
    assert all(e["summary"] and e["severity"] for e in detail["audit_trail"])
    db.dispose()


# Spec YAML -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (
            "columns: {a: {}}\n"
            "references:\n  x_id: {entity: e, match: [{source: a, field: b}]}\n"
            "references:\n  y_id: {entity: e, match: [{source: a, field: c}]}\n",
            "references",
            4,
        ),
        ("columns:\n  a: {}\n  b: {type: integer}\n  a: {type: date}\n", "columns.a", 4),
        (
            "columns:\n  a: {}\n"
            "references:\n  x_id:\n    entity: e\n    match:\n"
            "      - {source: a, field: b, threshold: 80, threshold: 90}\n",
            "references.x_id.match[0].threshold",
            7,
        ),
    ],
    ids=["references-twice", "column-twice", "nested-key-twice"],
)
def test_duplicate_yaml_key_is_refused_with_file_line_and_key(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    path = write(tmp_path / "signups.yaml", text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message
    assert caught.value.key == key
    assert f"line {line}" in message and "twice" in message


def test_review_cli_lists_a_value_once_for_all_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histimport_pipeline.cli.review import review_app

    db, spec = _cli_home(tmp_path, monkeypatch)
    imports = [
        do_import(db, spec, write(tmp_path / f"s{n}.csv", csv_of([(f"s{n}", "", "Zed Unknown")])))
        for n in range(3)
    ]
    runner = CliRunner()
    listed = runner.invoke(review_app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.count("'Zed") == 1 and listed.stdout.count("needs_review") == 1
    ids = ", ".join(str(r.import_id) for r in imports)
    assert ids in listed.stdout
    import json

    (item,) = json.loads(runner.invoke(review_app, ["list", "--json"]).stdout)
    ok = runner.invoke(review_app, ["accept", str(item["match_id"]), "--entity", "2"])
    assert ok.exit_code == 0, ok.output
    command = "histimport review apply " + " ".join(str(r.import_id) for r in imports)
    assert command in " ".join(ok.stdout.split())
    applied = runner.invoke(review_app, ["apply", *(str(r.import_id) for r in imports)])
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.count("success") == 3
    assert loaded(db) == {"s0": 2, "s1": 2, "s2": 2}
    assert "nothing waits" in runner.invoke(review_app, ["list"]).stdout
    db.dispose()
