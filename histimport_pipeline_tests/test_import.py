"""End-to-end imports through the engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.digest import DigestAhead, file_digest
from histimport_pipeline.engine.errors import RollbackConflictError
from histimport_pipeline.engine.loading import memory
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, run_import
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline_tests.helpers import (
    assert_accounting,
    audit_entries,
    history,
    make_spec,
    rows,
    table_checksum,
    write,
)

GOOD = (
    "ID,email,signed_up,amount,note\n"
    "007,a@example.com,2024-01-31,10.50,NA\n"
    '008,b@example.com,31/01/2024,0,"multi\nline, with comma"\n'
    "009,c@example.com,,3,null\n"
)


def test_append_records_lineage_and_tracking(db: Database, tmp_path: Path) -> None:
    spec = make_spec(strategy="append", key=[])
    path = write(tmp_path / "signups_1.csv", GOOD)
    options = ImportOptions(user_id="tester", user_email="tester@example.com")
    before = dt.datetime.now(dt.UTC).date()
    result = run_import(db, spec, path, options)

    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert (result.rows_read, result.rows_created, result.rows_failed) == (3, 3, 0)
    assert_accounting(result)
    loaded = rows(db, "signups")
    assert [r["signup_id"] for r in loaded] == ["007", "008", "009"]  # zeros kept
    assert loaded[0]["note"] == "NA"  # "NA" is text, not missing
    assert loaded[2]["note"] == "null"
    assert loaded[1]["note"] == "multi\nline, with comma"
    assert loaded[1]["signed_up"] == dt.date(2024, 1, 31)
    assert loaded[0]["amount"] == Decimal("10.50")
    assert loaded[2]["signed_up"] is None
    assert {r["_import_id"] for r in loaded} == {result.import_id}
    assert [r["_source_row"] for r in loaded] == [2, 3, 4]  # records, not lines

    h = history(db, result.import_id)
    assert h["status"] == "success" and h["phase"] == "COMPLETE"
    assert h["rows_in_file"] == 3 and h["rows_created"] == 3
    assert h["file_sha256"] == result.sha256 and h["file_type"] == "csv"
    assert h["file_metadata"]["encoding"] and h["file_metadata"]["delimiter"] == ","
    assert h["column_mapping"]["ID"] == "signup_id"
    assert h["strategy"] == "append" and h["triggered_by"] == "tester"
    assert (h["user_id"], h["user_email"]) == ("tester", "tester@example.com")
    assert h["master_rows_created"] is None  # nothing to reconcile
    assert set(h["phase_seconds"]) >= {"parse", "validate", "load"}
    assert h["total_seconds"] > 0 and h["finished_at"] is not None
    trail = audit_entries(db, result.import_id)
    assert [e["action"] for e in trail] == [
        "file_received",
        "started",
        "parsed",
        "validation_started",
        "validated",
        "confirmed",
        "loaded",
        "completed",
    ]
    # Every entry carries who imported, a severity and a one-line summary.
    assert {e["actor"] for e in trail} == {"tester"}
    assert {e["severity"] for e in trail} == {"info"}
    summaries = {e["action"]: e["summary"] for e in trail}
    assert summaries["file_received"].startswith("received signups_1.csv (")
    assert summaries["started"] == "import of signups_1.csv started by tester"
    assert summaries["validated"] == "validated 3 rows: 3 valid, 0 failed, 0 duplicate"
    assert summaries["loaded"] == "loaded (append): 3 created, 0 updated, 0 unchanged"
    assert summaries["completed"] == "completed: success"
    assert all("\n" not in e["summary"] for e in trail)
    with db.engine.connect() as conn:
        pf = conn.execute(sa.select(db.tables.processed_files)).mappings().one()
        ps = conn.execute(sa.select(db.tables.processing_status)).mappings().one()
    assert pf["status"] == "imported" and pf["last_import_id"] == result.import_id
    assert (pf["file_type"], pf["records_count"]) == ("csv", 3)
    assert before <= pf["process_date"] <= dt.datetime.now(dt.UTC).date()
    assert ps["process_name"] == "dataset:signups" and ps["last_import_id"] == result.import_id
    assert ps["consecutive_errors"] == 0 and ps["last_success_at"] is not None


def test_an_import_leaves_the_garbage_collector_as_it_found_it(
    db: Database, tmp_path: Path
) -> None:
    """Staging raises the young-GC threshold for speed; callers must not see that after."""
    seen: list[tuple[int, int, int]] = []
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        spec = make_spec(strategy="append", key=[])
        path = write(tmp_path / "signups_1.csv", GOOD)
        result = run_import(db, spec, path, progress=lambda _read: seen.append(gc.get_threshold()))
        assert result.status is ImportStatus.SUCCESS
        assert seen and seen[0][0] == memory.BULK_GC_THRESHOLD  # raised while streaming
        assert gc.get_threshold() == (700, 10, 10)  # and put back
    finally:
        gc.set_threshold(*before)


def test_bad_rows_are_recorded_and_the_rest_loads(db: Database, tmp_path: Path) -> None:
    text = (
        "ID,email,signed_up,amount,note\n"
        "1,a@example.com,2024-02-30,1,x\n"  # no Feb 30
        "2,not-an-email,2024-01-01,1,x\n"
        "3,c@example.com,2024-01-01,-4,x\n"  # below min
        "4,d@example.com,2024-01-01,2\n"  # ragged: 4 fields
        "5,e@example.com,2024-01-01,2,ok\n"
        "5,e@example.com,2024-01-01,2,dup\n"  # duplicate key in file
    )
    result = run_import(db, make_spec(max_error_ratio=0.9), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.PARTIAL
    assert (result.rows_created, result.rows_failed, result.rows_duplicate) == (1, 4, 1)
    assert_accounting(result)
    with db.engine.connect() as conn:
        failed = (
            conn.execute(
                sa.select(db.tables.import_failed_rows).order_by(
                    db.tables.import_failed_rows.c.source_row
                )
            )
            .mappings()
            .all()
        )
    got = [(f["source_row"], f["column_name"], f["category"]) for f in failed]
    assert got[0][:2] == (2, "signed_up")
    assert got[1] == (3, "email", "format")
    assert got[2] == (4, "amount", "range")
    assert got[3][0] == 5 and got[3][2] == "parse"
    assert got[4] == (7, "signup_id", "duplicate")
    assert failed[0]["raw_values"]["signed_up"] == "2024-02-30"
    assert "2024-02-30" in failed[0]["message"]
    summary = history(db, result.import_id)["error_summary"]
    assert summary["by_category"]["format"] >= 1 and len(summary["top_errors"]) <= 5


def test_error_gate_rejects_and_loads_nothing(db: Database, tmp_path: Path) -> None:
    text = "ID,email\n1,bad\n2,bad\n3,c@example.com\n"
    result = run_import(db, make_spec(max_error_ratio=0.5), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.REJECTED
    assert "2 of 3 rows failed" in (result.error_message or "")
    assert not sa.inspect(db.engine).has_table("signups") or rows(db, "signups") == []
    assert history(db, result.import_id)["phase"] == "CONFIRM"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("email,amount\nx@y.org,1\n", "signup_id"),  # missing required column
        ("ID,ID,email\n1,2,a@b.org\n", "duplicate"),
        ("ID,,email\n1,2,a@b.org\n", "empty"),
    ],
)
def test_header_problems_fail_the_file(
    db: Database, tmp_path: Path, text: str, needle: str
) -> None:
    result = run_import(db, make_spec(), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.FAILED
    assert needle in (result.error_message or "")
    assert "s.csv" in (result.error_message or "")
    assert not sa.inspect(db.engine).has_table("signups")
    assert history(db, result.import_id)["status"] == "failed"


def test_same_content_under_another_name_is_a_duplicate(db: Database, tmp_path: Path) -> None:
    spec = make_spec()
    first = run_import(db, spec, write(tmp_path / "a.csv", GOOD))
    second = run_import(db, spec, write(tmp_path / "renamed.csv", GOOD))
    assert second.status is ImportStatus.DUPLICATE
    assert second.duplicate_of == first.import_id
    assert len(rows(db, "signups")) == 3
    forced = run_import(db, spec, tmp_path / "renamed.csv", ImportOptions(force=True))
    assert forced.status is ImportStatus.SUCCESS
    assert (forced.rows_created, forced.rows_unchanged) == (0, 3)
    with db.engine.connect() as conn:
        pf = conn.execute(sa.select(db.tables.processed_files)).mappings().one()
    assert pf["times_seen"] == 3 and pf["last_import_id"] == forced.import_id


def test_upsert_counts_and_leaves_unchanged_rows_alone(db: Database, tmp_path: Path) -> None:
    spec = make_spec()
    first = run_import(db, spec, write(tmp_path / "a.csv", GOOD))
    changed = GOOD.replace("10.50", "11.00") + "010,d@example.com,2024-03-01,1,new\n"
    second = run_import(db, spec, write(tmp_path / "b.csv", changed))
    assert (second.rows_created, second.rows_updated, second.rows_unchanged) == (1, 1, 2)
    assert_accounting(second)
    by_id = {r["signup_id"]: r for r in rows(db, "signups")}
    assert by_id["007"]["amount"] == Decimal("11.00")
    assert by_id["007"]["_import_id"] == second.import_id
    assert by_id["008"]["_import_id"] == first.import_id  # not rewritten
    assert by_id["010"]["_import_id"] == second.import_id


def test_rollback_after_upsert_restores_the_table_exactly(db: Database, tmp_path: Path) -> None:
    spec = make_spec()
    run_import(db, spec, write(tmp_path / "a.csv", GOOD))
    before = table_checksum(db, "signups")
    changed = GOOD.replace("10.50", "99.99").replace("NA", "changed") + "011,e@x.org,,1,n\n"
    second = run_import(db, spec, write(tmp_path / "b.csv", changed), ImportOptions(user_id="al"))
    assert second.rows_updated == 1 and second.rows_created == 1
    assert table_checksum(db, "signups") != before

    result = rollback_import(db, second.import_id, actor="tester")
    assert result.undone[0].rows_deleted == 2 and result.undone[0].rows_restored == 1
    assert table_checksum(db, "signups") == before
    assert history(db, second.import_id)["status"] == "rolled_back"
    # The rollback's entries name who rolled back, not who imported.
    started, done = audit_entries(db, second.import_id)[-2:]
    assert (started["action"], started["actor"]) == ("rollback_started", "tester")
    assert started["summary"] == "rollback started by tester"
    assert (done["action"], done["actor"], done["severity"]) == ("rolled_back", "tester", "warning")
    assert done["summary"] == "rolled back: 2 row(s) deleted, 1 restored"
    assert audit_entries(db, second.import_id)[0]["actor"] == "al"
    with db.engine.connect() as conn:
        pf = (
            conn.execute(
                sa.select(db.tables.processed_files).where(
                    db.tables.processed_files.c.last_import_id == second.import_id
                )
            )
            .mappings()
            .one()
        )
    # What the import found in the file stays on record when it is rolled back.
    assert (pf["status"], pf["file_type"], pf["records_count"]) == ("rolled_back", "csv", 4)

    again = rollback_import(db, second.import_id)
    assert again.already and table_checksum(db, "signups") == before

    # Rolled-back content can be imported again without --force.
    third = run_import(db, spec, tmp_path / "b.csv")
    assert third.status is ImportStatus.SUCCESS and third.rows_updated == 1


def test_rollback_refuses_when_a_later_import_changed_rows(db: Database, tmp_path: Path) -> None:
    spec = make_spec()
    empty = table_checksum(db, "signups") if sa.inspect(db.engine).has_table("signups") else None
    first = run_import(db, spec, write(tmp_path / "a.csv", GOOD))
    second = run_import(db, spec, write(tmp_path / "b.csv", GOOD.replace("10.50", "1.00")))
    third = run_import(db, spec, write(tmp_path / "c.csv", GOOD.replace("10.50", "2.00")))
    with pytest.raises(RollbackConflictError) as info:
        rollback_import(db, first.import_id)
    assert info.value.later_imports == [second.import_id, third.import_id]
    assert str(second.import_id) in str(info.value) and "--cascade" in str(info.value)

    result = rollback_import(db, first.import_id, cascade=True)
    assert [u.import_id for u in result.undone] == [
        third.import_id,
        second.import_id,
        first.import_id,
    ]
    assert rows(db, "signups") == []
    assert empty is None


def test_daily_upsert_stamps_the_business_date_on_updated_and_new_rows(
    db: Database, tmp_path: Path
) -> None:
    """A daily dataset's upsert: the rows it updates and the rows it creates carry its
    business date; unchanged rows keep the date of the import that wrote them, and a
    rollback puts the table back as it was."""
    spec = make_spec(
        name="daily_upserts", target_table="daily_upserts", partitioning="daily", files="du_*.csv"
    )
    first = run_import(db, spec, write(tmp_path / "du_2024-01-01.csv", GOOD))
    before = table_checksum(db, "daily_upserts")
    changed = GOOD.replace("10.50", "12.00") + "010,d@example.com,2024-03-01,1,new\n"
    second = run_import(db, spec, write(tmp_path / "du_2024-01-02.csv", changed))
    assert (first.status, second.status) == (ImportStatus.SUCCESS, ImportStatus.SUCCESS)
    assert (second.rows_created, second.rows_updated, second.rows_unchanged) == (1, 1, 2)
    by_id = {r["signup_id"]: r for r in rows(db, "daily_upserts")}
    assert {k: (r["_business_date"], r["_import_id"]) for k, r in by_id.items()} == {
        "007": (dt.date(2024, 1, 2), second.import_id),
        "008": (dt.date(2024, 1, 1), first.import_id),
        "009": (dt.date(2024, 1, 1), first.import_id),
        "010": (dt.date(2024, 1, 2), second.import_id),
    }
    assert by_id["007"]["amount"] == Decimal("12.00")
    assert by_id["010"]["_source_row"] == 5  # the record number (row 008 spans two lines)
    rollback_import(db, second.import_id)
    assert table_checksum(db, "daily_upserts") == before


def test_replace_date_swaps_one_business_day(db: Database, tmp_path: Path) -> None:
    spec = make_spec(
        name="daily_signups",
        target_table="daily_signups",
        partitioning="daily",
        strategy="replace_date",
        key=[],
        files="daily_*.csv",
    )
    day1 = run_import(db, spec, write(tmp_path / "daily_2024-01-01.csv", GOOD))
    day2 = run_import(
        db, spec, write(tmp_path / "daily_2024-01-02.csv", GOOD.replace("NA", "day 2"))
    )
    fixed = GOOD.splitlines()[0] + "\n007,a@example.com,2024-01-31,1,fixed\n"
    redo = run_import(db, spec, write(tmp_path / "daily_2024-01-01_v2.csv", fixed))
    assert redo.status is ImportStatus.SUCCESS
    assert (redo.rows_created, redo.rows_deleted) == (1, 3)
    loaded = rows(db, "daily_signups")
    by_day: dict[dt.date, int] = {}
    for r in loaded:
        by_day[r["_business_date"]] = by_day.get(r["_business_date"], 0) + 1
    assert by_day == {dt.date(2024, 1, 1): 1, dt.date(2024, 1, 2): 3}
    assert day1.import_id < day2.import_id
    rollback_import(db, redo.import_id)
    assert len(rows(db, "daily_signups")) == 6


def test_new_optional_column_is_added_and_a_type_change_refused(
    db: Database, tmp_path: Path
) -> None:
    run_import(db, make_spec(), write(tmp_path / "a.csv", GOOD))
    columns = {**make_spec().model_dump()["columns"], "channel": {"type": "string"}}
    grown = make_spec(columns=columns)
    result = run_import(db, grown, write(tmp_path / "b.csv", "ID,email,channel\n100,z@x.org,web\n"))
    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert rows(db, "signups", order="signup_id")[-1]["channel"] == "web"

    retyped = {**columns, "amount": {"type": "date"}}
    bad = run_import(
        db, make_spec(columns=retyped), write(tmp_path / "c.csv", "ID,email\n101,y@x.org\n")
    )
    assert bad.status is ImportStatus.FAILED
    assert "amount" in (bad.error_message or "") and "numeric" in (bad.error_message or "")


def test_dry_run_reports_and_keeps_nothing(db: Database, tmp_path: Path) -> None:
    result = run_import(
        db, make_spec(), write(tmp_path / "a.csv", GOOD), ImportOptions(dry_run=True)
    )
    assert result.dry_run and result.status is ImportStatus.SUCCESS
    assert result.rows_created == 3
    assert not sa.inspect(db.engine).has_table("signups")
    with db.engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(db.tables.import_history))
        assert n.scalar_one() == 0


@pytest.mark.parametrize(
    ("name", "payload", "encoding"),
    [
        ("bom.csv", "\ufeffID;email;note\n1;a@b.org;café\n", "utf-8"),
        ("utf16.csv", "ID\temail\tnote\n1\ta@b.org\tcafé\n", "utf-16"),
        ("legacy.csv", "ID,email,note\n1,a@b.org,café\n", "cp1252"),
        ("rows.json", '[{"ID": "1", "email": "a@b.org", "note": "café"}]', "utf-8"),
        ("rows.ndjson", '{"ID": "1", "email": "a@b.org", "note": "café"}\n', "utf-8"),
    ],
)
def test_encodings_and_formats_end_to_end(
    db: Database, tmp_path: Path, name: str, payload: str, encoding: str
) -> None:
    path = write(tmp_path / name, payload, encoding)
    result = run_import(db, make_spec(), path)
    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert rows(db, "signups")[0]["note"] == "café"


def test_xlsx_with_formula_loads_cached_values(db: Database, tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    path = tmp_path / "book.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["ID", "email", "amount"])
    ws.append(["007", "a@b.org", 2])
    ws.append(["008", "c@d.org", 3])
    ws["C3"] = "=C2*2"
    wb.save(path)
    # openpyxl does not compute formulas: write the cached value Excel would have stored.
    patched = tmp_path / "cached.xlsx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"<f>C2*2</f><v></v>", b"<f>C2*2</f><v>4</v>")
                data = data.replace(b"<f>C2*2</f><v />", b"<f>C2*2</f><v>4</v>")
            dst.writestr(item, data)
    result = run_import(db, make_spec(), patched)
    assert result.status is ImportStatus.SUCCESS, result.error_message
    loaded = rows(db, "signups")
    assert [r["signup_id"] for r in loaded] == ["007", "008"]
    assert loaded[1]["amount"] == Decimal("4")


def test_a_digest_worked_out_ahead_is_the_files_and_its_errors_come_through(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "a.csv", GOOD * 5000)  # several 1 MiB chunks
    content = path.read_bytes()
    expected = (hashlib.sha256(content).hexdigest(), len(content))
    assert DigestAhead(path).result() == file_digest(path) == expected
    with pytest.raises(FileNotFoundError):
        DigestAhead(tmp_path / "gone.csv").result()


def test_an_import_given_a_digest_ahead_records_that_hash_and_checks_the_read(
    db: Database, tmp_path: Path
) -> None:
    """The hash given ahead is the one recorded; a file that changed after it was hashed
    is caught where its rows are read, and nothing is loaded."""
    path = write(tmp_path / "a.csv", GOOD)
    ahead = DigestAhead(path)
    done = run_import(db, make_spec(), path, digest=ahead.result)
    assert done.status is ImportStatus.SUCCESS and done.sha256 == file_digest(path)[0]
    stale = DigestAhead(path)
    stale.result()
    write(path, GOOD.replace("10.50", "10.75"))
    changed = run_import(
        db, make_spec(name="other", target_table="other"), path, digest=stale.result
    )
    assert changed.status is ImportStatus.FAILED
    assert "changed" in (changed.error_message or "")
    assert not sa.inspect(db.engine).has_table("other") or rows(db, "other") == []


def test_a_stale_running_import_is_failed_before_a_new_attempt(
    db: Database, tmp_path: Path
) -> None:
    spec = make_spec()
    path = write(tmp_path / "a.csv", GOOD)
    sha, size = file_digest(path)
    with db.engine.begin() as conn:
        dead = tracking.create_import(
            conn,
            db,
            dataset="signups",
            target_table="signups",
            import_type="MANUAL",
            source="cli",
            status="running",
            file_sha256=sha,
            worker="nowhere:1",
            heartbeat_at=tracking.utcnow() - dt.timedelta(hours=1),
        )
        tracking.claim_file(
            conn,
            db,
            dataset="signups",
            sha256=sha,
            file_name="a.csv",
            file_size=size,
            import_id=dead,
            force=False,
        )
    result = run_import(db, spec, path)
    assert result.status is ImportStatus.SUCCESS
    assert history(db, dead)["status"] == "failed"
    assert "died" in history(db, dead)["error_message"]


# Issue 10: Windows-1252 exports, NUL bytes, long fields, ragged rows


def _failed_rows(db: Database, import_id: int) -> list[dict[str, object]]:
    t = db.tables.import_failed_rows
    with db.engine.connect() as conn:
        query = sa.select(t).where(t.c.import_id == import_id).order_by(t.c.source_row)
        return [dict(r) for r in conn.execute(query).mappings()]


def test_windows_1252_export_loads_exactly_with_the_encoding_recorded(
    db: Database, tmp_path: Path
) -> None:
    notes = [
        "Café “quoted” €",
        "Élodie à la crème brûlée \u2013 déjà vu",
        "Straße Müller Größe Weiß",
        "Søren Ødegård Blåbær",
        "Niño España señor ¿qué? ¡olé!",
        "\u2018single\u2019 — „low“ … \u201alow\u2018",
    ]
    body = "".join(f'{i},u{i}@example.com,,1,"{n}"\n' for i, n in enumerate(notes, start=1))
    path = write(tmp_path / "s.csv", "ID,email,signed_up,amount,note\n" + body, "cp1252")
    result = run_import(db, make_spec(), path)
    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert [r["note"] for r in rows(db, "signups")] == notes
    h = history(db, result.import_id)
    assert h["file_metadata"]["encoding"] == "cp1252"
    assert "0x80-0x9f are present" in h["file_metadata"]["encoding_decided_by"]
    assert any("read as cp1252" in w for w in h["warnings"])


def test_a_file_in_no_candidate_encoding_is_refused_and_loads_nothing(
    db: Database, tmp_path: Path
) -> None:
    text = "ID,email,note\n1,a@example.com,Привет мир как дела\n"
    result = run_import(db, make_spec(), write(tmp_path / "s.csv", text, "cp1251"))
    assert result.status is ImportStatus.FAILED
    assert "`encoding:`" in (result.error_message or "")
    assert "Windows-1252" in (result.error_message or "")
    with db.engine.connect() as conn:
        assert not sa.inspect(conn).has_table("signups") or rows(db, "signups") == []


def test_a_nul_byte_fails_its_row_only(db: Database, tmp_path: Path) -> None:
    text = (
        "ID,email,note\n"
        "1,a@example.com,fine\n"
        "2,b@example.com,bad\x00note\n"
        "3,c@example.com,fine too\n"
    )
    result = run_import(db, make_spec(), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.PARTIAL, result.error_message
    assert (result.rows_created, result.rows_failed) == (2, 1)
    assert [r["signup_id"] for r in rows(db, "signups")] == ["1", "3"]
    (failed,) = _failed_rows(db, result.import_id)
    assert (failed["source_row"], failed["column_name"], failed["category"]) == (3, "note", "parse")
    assert "NUL byte" in str(failed["message"])
    assert failed["raw_values"] == {"ID": "2", "email": "b@example.com", "note": "bad\u2400note"}


def test_a_field_of_one_and_a_half_mib_loads_exactly(db: Database, tmp_path: Path) -> None:
    long = ("é“" + "x" * 98) * 15_000
    text = f'ID,email,note\n1,a@example.com,"{long}"\n2,b@example.com,short\n'
    result = run_import(db, make_spec(), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.SUCCESS, result.error_message
    assert [r["note"] for r in rows(db, "signups")] == [long, "short"]
    # PostgreSQL reads it with the columnar reader, SQLite with the Python one: both exact.
    reader = history(db, result.import_id)["file_metadata"]["reader"]
    assert reader == ("columnar" if db.dialect == "postgresql" else "python")


def test_a_field_over_the_configured_limit_fails_its_row_only(db: Database, tmp_path: Path) -> None:
    text = f"ID,email,note\n1,a@example.com,{'y' * 2000}\n2,b@example.com,{'z' * 900}\n"
    options = ImportOptions(max_field_bytes=1000)
    result = run_import(db, make_spec(), write(tmp_path / "s.csv", text), options)
    assert result.status is ImportStatus.PARTIAL, result.error_message
    assert [r["note"] for r in rows(db, "signups")] == ["z" * 900]
    (failed,) = _failed_rows(db, result.import_id)
    assert (failed["source_row"], failed["column_name"], failed["category"]) == (2, "note", "parse")
    assert "2,000 bytes, over the limit of 1,000 bytes" in str(failed["message"])


def test_ragged_rows_keep_every_value_and_their_own_message(db: Database, tmp_path: Path) -> None:
    text = (
        "ID,email,note\n"
        "1,a@example.com,ok\n"
        "2,b@example.com,x,extra one,extra two,extra three\n"
        "3,c@example.com,y,more\n"
        "4,d@example.com\n"
        "5,e@example.com,ok\n"
    )
    result = run_import(db, make_spec(max_error_ratio=0.9), write(tmp_path / "s.csv", text))
    assert result.status is ImportStatus.PARTIAL, result.error_message
    failed = _failed_rows(db, result.import_id)
    assert [(f["source_row"], f["category"], f["message"]) for f in failed] == [
        (3, "parse", "row has 6 fields, header has 3"),
        (4, "parse", "row has 4 fields, header has 3"),
        (5, "parse", "row has 2 fields, header has 3"),
    ]
    assert failed[0]["raw_values"] == {
        "ID": "2",
        "email": "b@example.com",
        "note": "x",
        "_extra_1": "extra one",
        "_extra_2": "extra two",
        "_extra_3": "extra three",
    }
    assert failed[1]["raw_values"] == {
        "ID": "3",
        "email": "c@example.com",
        "note": "y",
        "_extra_1": "more",
    }
    assert failed[2]["raw_values"] == {"ID": "4", "email": "d@example.com"}
    top = history(db, result.import_id)["error_summary"]["top_errors"]
    assert sorted((e["example"], e["count"]) for e in top) == [
        ("row has 2 fields, header has 3", 1),
        ("row has 4 fields, header has 3", 1),
        ("row has 6 fields, header has 3", 1),
    ]


def test_keyed_append_into_a_new_table_gives_it_its_key(db: Database, tmp_path: Path) -> None:
    """The first keyed append makes the target (on PostgreSQL its primary key is added once
    the rows are in): the table ends with the declared key, in-file duplicates are failed
    rows, a later import's existing keys are skipped, and rollback takes the rows out."""
    spec = make_spec(strategy="append", key=["email", "signup_id"])
    first = write(
        tmp_path / "first.csv",
        "ID,email,amount\n007,a@example.com,1\n008,b@example.com,2\n007,a@example.com,3\n",
    )
    result = run_import(db, spec, first)
    assert (result.status, result.rows_created, result.rows_duplicate) == (
        ImportStatus.PARTIAL,
        2,
        1,
    )
    inspector = sa.inspect(db.engine)
    pk = inspector.get_pk_constraint("signups")
    # The columns' order, as target_table declares them (columns first, whatever the key says).
    assert pk["constrained_columns"] == ["signup_id", "email"]
    if db.dialect == "postgresql":
        assert pk["name"] == "signups_pkey"
    with db.engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO signups (signup_id, email, _import_id, _loaded_at) "
                "VALUES ('007', 'a@example.com', 99, CURRENT_TIMESTAMP)"
            )
        )
    assert [(r["signup_id"], r["amount"]) for r in rows(db, "signups")] == [
        ("007", Decimal("1.00")),
        ("008", Decimal("2.00")),
    ]
    second = write(tmp_path / "second.csv", "ID,email,amount\n008,b@example.com,5\n009,c@x.org,6\n")
    later = run_import(db, spec, second)
    assert (later.rows_created, later.rows_duplicate) == (1, 1)
    rollback_import(db, result.import_id)
    assert [r["signup_id"] for r in rows(db, "signups")] == ["009"]
