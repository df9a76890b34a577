"""The columnar reader gives exactly the Python reader's outcome, or steps aside.

Each file is imported twice into the same PostgreSQL database, once as it normally would be
(the columnar reader takes delimited UTF-8 files) and once with the columnar reader switched
off, and everything a user can see is compared: the target rows, the failed rows with their
messages, the counts and statuses.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histimport_pipeline.engine import pipeline
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import FileChangedError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportOptions, ImportResult, run_import
from histimport_pipeline.engine.reading import columnar, open_file
from histimport_pipeline.engine.reading.columnar import arrays, blocks, encoders
from histimport_pipeline.engine.spec import ColumnSpec, DatasetSpec
from histimport_pipeline.engine.validation import Validator, column_coercer
from histimport_pipeline_tests.helpers import assert_accounting, history, rows

pytestmark = pytest.mark.postgres

COLUMNS: dict[str, Any] = {
    "code": {"type": "string", "required": True, "aliases": ["Code"]},
    "qty": {"type": "integer", "null_values": ["", "NA"]},
    "price": {"type": "decimal", "scale": 2, "min": 0},
    "day": {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
    "seen": {"type": "timestamp"},
    "ok": {"type": "boolean"},
    "email": {"type": "email"},
    "size": {"type": "enum", "allowed": ["S", "M", "L"]},
    "note": {"type": "string"},
    "tag": {"type": "string", "max_length": 5, "regex": "[a-z]*"},
}
HEADER = "Code,qty,price,day,seen,ok,email,size,note,tag"
#: Every kind of value each column type meets in exports, good and bad.
MESSY = "\n".join(
    [
        HEADER,
        "007,12,1.50,2024-01-31,2024-01-31T10:00:00Z,yes,a@example.com,S,plain,abc",
        '008,NA,0,31/01/2024,2024-01-31 10:00:00,n,b@example.org,M,"multi\nline, comma",',
        "009,+5,2.5,2024-02-30,2024-01-31T10:00:00+02:00,true,not-an-email,XL,NA,ABC",
        " 010 ,12.0,-1,,,,,,  padded  ,toolongtag",
        '011,"1,000",2024-01-01,,,,,,,',
        "012,0x10,1e3,2024-01-01,yesterday,maybe,,,null,",
        "013,99999999999999999999,3.141,2024-01-01,,,,,é ü 中文,",
        ",,,,,,,,,",
        "014,-0,.5,2024-01-01,2024-01-01,0,c@example.com,L,\u00a0nbsp\u00a0,x",
        "015, 7,10,2024-01-01,,1,,S,\x0bvt,",
        "   ",
        "016,-9223372036854775808,0.00,2024-12-31,2024-12-31T23:59:59.999999,F,,M,,",
        "",
    ]
)


def short(*rows: tuple[str, str]) -> str:
    """A file of (code, qty) rows, the other columns empty."""
    return HEADER + "\n" + "".join(f"{code},{qty},,,,,,,,\n" for code, qty in rows)


def spec_for(name: str, **overrides: Any) -> DatasetSpec:
    raw: dict[str, Any] = {
        "name": name,
        "target_table": name,
        "strategy": "append",
        "max_error_ratio": 1.0,
        "columns": COLUMNS,
        **overrides,
    }
    return DatasetSpec.model_validate(raw)


def failed_rows(db: Database, import_id: int) -> list[dict[str, Any]]:
    t = db.tables.import_failed_rows
    with db.engine.connect() as conn:
        found = conn.execute(
            sa.select(t.c.source_row, t.c.column_name, t.c.category, t.c.message, t.c.raw_value)
            .where(t.c.import_id == import_id)
            .order_by(t.c.source_row, t.c.failed_row_id)
        ).mappings()
        return [dict(r) for r in found]


def without_system(loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("_import_id", "_loaded_at")} for r in loaded]


def import_both(
    db: Database,
    tmp_path: Path,
    data: bytes,
    suffix: str = ".csv",
    options: ImportOptions | None = None,
    **overrides: Any,
) -> tuple[ImportResult, ImportResult]:
    """Import ``data`` with the columnar reader allowed and with it off; assert equal outcomes."""
    base = options or ImportOptions()
    results = []
    for reader in ("auto", "python"):
        spec = spec_for(f"t_{reader}", **overrides)
        folder = tmp_path / reader
        folder.mkdir(exist_ok=True)
        path = folder / f"data{suffix}"
        path.write_bytes(data)
        result = run_import(db, spec, path, replace(base, columnar=reader == "auto"))
        # Messages name the file (the same name in another folder) and the import.
        message = (result.error_message or "").replace(str(folder), "<folder>")
        message = message.replace(f"errors {result.import_id} ", "errors <id> ")
        results.append(replace(result, error_message=message or None))
    auto, python = results
    if python.status is not ImportStatus.FAILED:
        assert history(db, python.import_id)["file_metadata"]["reader"] == "python"
    fields = ("status", "rows_read", "rows_created", "rows_updated", "rows_unchanged")
    fields += ("rows_failed", "rows_duplicate", "error_message", "warnings")
    assert {f: getattr(auto, f) for f in fields} == {f: getattr(python, f) for f in fields}
    assert auto.error_summary == python.error_summary
    assert failed_rows(db, auto.import_id) == failed_rows(db, python.import_id)
    if auto.status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL):
        assert_accounting(auto)
        got = without_system(rows(db, "t_auto"))
        want = without_system(rows(db, "t_python"))
        assert got == want
    return auto, python


def reader_of(db: Database, result: ImportResult) -> str:
    return str(history(db, result.import_id)["file_metadata"]["reader"])


def test_messy_file_same_outcome_as_the_python_reader(pg_db: Database, tmp_path: Path) -> None:
    auto, _ = import_both(pg_db, tmp_path, MESSY.encode())
    assert reader_of(pg_db, auto) == "columnar"
    assert auto.status is ImportStatus.PARTIAL
    assert auto.rows_read == 10  # the blank record and the whitespace-only line are not rows
    loaded = {r["code"]: r for r in rows(pg_db, "t_auto")}
    assert loaded["007"]["qty"] == 12 and loaded["007"]["price"] == Decimal("1.50")
    assert loaded["008"]["qty"] is None and loaded["008"]["note"] == "multi\nline, comma"
    assert loaded["008"]["day"] == dt.date(2024, 1, 31)
    assert loaded["014"]["note"] == "nbsp" and loaded["014"]["qty"] == 0
    assert loaded["016"]["qty"] == -(2**63)
    assert loaded["016"]["seen"] == dt.datetime(2024, 12, 31, 23, 59, 59, 999999)
    failed = {f["source_row"] for f in failed_rows(pg_db, auto.import_id)}
    assert {4, 5, 6, 7, 8} <= failed


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("bom and crlf", "\ufeff" + MESSY.replace("\n", "\r\n")),
        ("lone cr", MESSY.replace('"multi\nline, comma"', "one line").replace("\n", "\r")),
        ("tsv", MESSY.replace('"multi\nline, comma"', "x").replace(",", "\t")),
        ("semicolons", MESSY.replace('"multi\nline, comma"', "x").replace(",", ";")),
        ("no trailing newline", MESSY.rstrip("\n")),
        ("extra and missing columns", "Code,extra,qty\n1,a,2\n2,b,NA\n3,c,x\n"),
        ("quoted everything", '"Code","qty","note"\n"001","5","a ""quoted"" word"\n'),
        ("header only", HEADER + "\n"),
        ("blank lines", "\n\n" + short(("007", "1"), ("008", "2")).replace("\n", "\n\n")),
    ],
)
def test_layouts_same_outcome(pg_db: Database, tmp_path: Path, name: str, data: str) -> None:
    auto, _ = import_both(pg_db, tmp_path, data.encode("utf-8"))
    assert reader_of(pg_db, auto) == "columnar", name


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("text after a closing quote", 'Code,qty\n"007"x,1\n', "quot"),
        ("quote inside an unquoted field", "Code,note\n007,5'11\"\n", "quot"),
        ("ragged row", "Code,qty\n007,1\n008,2,3\n009,4\n", "fields"),
        ("unclosed quote", 'Code,note\n007,"open\n008,x\n', "quot"),
        ("NUL byte", "Code,note\n007,a\x00b\n", "NUL"),
    ],
)
def test_files_the_columnar_reader_declines_take_the_python_path(
    pg_db: Database, tmp_path: Path, name: str, data: str, reason: str
) -> None:
    auto, _ = import_both(pg_db, tmp_path, data.encode("utf-8"))
    if auto.status is not ImportStatus.FAILED:
        assert reader_of(pg_db, auto) == "python", name
        with pg_db.engine.connect() as conn:
            trail = pg_db.tables.import_audit_trail
            note = conn.execute(
                sa.select(trail.c.details).where(
                    trail.c.import_id == auto.import_id, trail.c.action == "validated"
                )
            ).scalar_one()["reader_note"]
        assert reason in note


def test_a_nul_byte_fails_its_row_alike_on_both_readers(pg_db: Database, tmp_path: Path) -> None:
    auto, _ = import_both(pg_db, tmp_path, b"Code,qty,note\n007,1,a\x00b\n008,2,c\n")
    assert (auto.status, auto.rows_created, auto.rows_failed) == (ImportStatus.PARTIAL, 1, 1)
    (failed,) = failed_rows(pg_db, auto.import_id)
    assert "NUL byte" in str(failed)


def test_a_long_field_is_read_by_the_columnar_reader_exactly(
    pg_db: Database, tmp_path: Path
) -> None:
    long = "é" * 800_000  # 1.6 MB of UTF-8, over the csv module's default 131,072 limit
    auto, _ = import_both(pg_db, tmp_path, f'Code,qty,note\n007,1,"{long}"\n008,2,x\n'.encode())
    assert reader_of(pg_db, auto) == "columnar"
    assert [r["note"] for r in rows(pg_db, "t_auto")] == [long, "x"]


def test_a_field_over_the_limit_is_the_same_row_error_on_both_readers(
    pg_db: Database, tmp_path: Path
) -> None:
    data = f"Code,qty,note\n007,1,{'y' * 600}\n008,2,{'z' * 400}\n".encode()
    auto, _ = import_both(pg_db, tmp_path, data, options=ImportOptions(max_field_bytes=500))
    assert (auto.status, auto.rows_created, auto.rows_failed) == (ImportStatus.PARTIAL, 1, 1)
    assert reader_of(pg_db, auto) == "python"  # the columnar reader declined
    (failed,) = failed_rows(pg_db, auto.import_id)
    assert "over the limit of 500 bytes" in str(failed)


def test_invalid_utf8_late_in_the_file_fails_like_the_python_path(
    pg_db: Database, tmp_path: Path
) -> None:
    """The first 64 KiB decide the encoding; a bad byte after them is the same clear error."""
    good = "".join(f"{i:06d},{i}\n" for i in range(20_000))
    data = ("Code,qty\n" + good).encode() + b"999999,\xff\xfe\n"
    auto, _ = import_both(pg_db, tmp_path, data)
    assert auto.status is ImportStatus.FAILED
    assert "byte offset" in (auto.error_message or "")


def test_cp1252_file_is_read_by_the_python_reader(pg_db: Database, tmp_path: Path) -> None:
    auto, _ = import_both(pg_db, tmp_path, "Code,note\n007,café crème\n".encode("cp1252"))
    assert reader_of(pg_db, auto) == "python"
    assert rows(pg_db, "t_auto")[0]["note"] == "café crème"


def test_upsert_with_in_file_duplicates_same_outcome(pg_db: Database, tmp_path: Path) -> None:
    data = short(("007", "1"), ("008", "2"), ("007", "3"), ("009", "4"), ("008", "5"))
    first = import_both(pg_db, tmp_path, data.encode(), strategy="upsert", key=["code"])[0]
    assert (first.rows_created, first.rows_duplicate) == (3, 2)
    changed = short(("007", "1"), ("008", "20"), ("010", "4"))
    second = import_both(
        pg_db, tmp_path, changed.encode(), suffix="_2.csv", strategy="upsert", key=["code"]
    )[0]
    assert (second.rows_created, second.rows_updated, second.rows_unchanged) == (1, 1, 1)


def test_many_small_blocks_cut_only_between_records(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 64 bytes: every quoted line break and doubled quote sits near a cut."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64)
    pieces: list[bytes] = []
    cut = blocks._pieces

    def counted(*args: Any) -> Any:
        for piece in cut(*args):
            pieces.append(piece)
            yield piece

    monkeypatch.setattr(blocks, "_pieces", counted)
    lines = [HEADER]
    for i in range(300):
        note = f'"line {i}\nnext ""{i}"", more\r\nend"' if i % 3 == 0 else f"plain {i}"
        lines.append(f"{i:04d},{i},{i}.25,2024-01-01,,,,,{note},")
    auto, _ = import_both(pg_db, tmp_path, ("\n".join(lines) + "\n").encode())
    assert reader_of(pg_db, auto) == "columnar"
    assert auto.rows_created == 300
    assert rows(pg_db, "t_auto")[3]["note"] == 'line 3\nnext "3", more\r\nend'
    assert len(pieces) > 200  # most records are longer than a block
    assert any(piece.count(b'"') % 2 == 0 and b'"line' in piece for piece in pieces)


def test_direct_load_refuses_a_file_changed_after_validation(
    pg_db: Database, tmp_path: Path
) -> None:
    spec = spec_for("t_direct")
    path = tmp_path / "direct.csv"
    path.write_text(short(("007", "1"), ("008", "2")))
    handle = pipeline.start_import(pg_db, spec, path)
    staged = pipeline.stage_file(pg_db, spec, handle)
    assert staged.rows_staged == 2
    assert history(pg_db, handle.import_id)["file_metadata"]["staged"] is False
    path.write_text(short(("007", "1"), ("008", "2"), ("009", "3")))
    pipeline.reconcile_import(pg_db, spec, handle)
    with pytest.raises(FileChangedError, match="content changed"):
        pipeline.load_import(pg_db, spec, handle)
    assert not sa.inspect(pg_db.engine).has_table("t_direct") or rows(pg_db, "t_direct") == []


def test_over_the_gate_nothing_is_loaded_and_the_failures_are_kept(
    pg_db: Database, tmp_path: Path
) -> None:
    auto, _ = import_both(pg_db, tmp_path, MESSY.encode(), max_error_ratio=0.1)
    assert auto.status is ImportStatus.REJECTED
    assert not sa.inspect(pg_db.engine).has_table("t_auto")
    assert len(failed_rows(pg_db, auto.import_id)) == auto.rows_failed > 0


def test_step_by_step_and_one_pass_direct_loads_agree(pg_db: Database, tmp_path: Path) -> None:
    """Dagster runs the steps as separate ops (the load reads the file again); run_import
    checks and writes in one pass. Same rows, same tracking."""
    path = tmp_path / "data.csv"
    path.write_bytes(MESSY.encode())
    spec = spec_for("t_steps", max_error_ratio=0.9)
    handle = pipeline.start_import(pg_db, spec, path)
    pipeline.stage_file(pg_db, spec, handle)
    pipeline.reconcile_import(pg_db, spec, handle)
    assert pipeline.confirm_import(pg_db, spec, handle) is None
    steps = pipeline.load_import(pg_db, spec, handle)
    one = run_import(pg_db, spec_for("t_one", max_error_ratio=0.9), path)
    for field in ("status", "rows_read", "rows_created", "rows_failed", "error_summary"):
        assert getattr(steps, field) == getattr(one, field), field
    assert without_system(rows(pg_db, "t_steps")) == without_system(rows(pg_db, "t_one"))
    assert failed_rows(pg_db, steps.import_id) == failed_rows(pg_db, one.import_id)
    audits = [history(pg_db, i)["file_metadata"] for i in (steps.import_id, one.import_id)]
    assert audits[0] == audits[1]


def test_dry_run_of_a_direct_load_keeps_nothing(pg_db: Database, tmp_path: Path) -> None:
    spec = spec_for("t_dry")
    path = tmp_path / "dry.csv"
    path.write_bytes(MESSY.encode())
    result = run_import(pg_db, spec, path, ImportOptions(dry_run=True))
    assert result.dry_run and result.status is ImportStatus.PARTIAL
    assert result.rows_created == result.rows_read - result.rows_failed
    assert not sa.inspect(pg_db.engine).has_table("t_dry")


# Column level: the vectorised paths against the coercer they stand in for ---------------------

_INTEGER_TEXTS = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.from_regex(r"\A[-+ 0x]{0,3}[0-9]{0,21}[ .0]{0,3}\Z", fullmatch=True),
    st.sampled_from(
        ["", "NA", "-", "--5", "0x1F", "1_000", "\u0663", "\uff11\uff12", "12.0", "+0"]
    ),
)
_TEXTS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.sampled_from(["", "NA", " a ", "\u00a0b\u2003", "\x1cc\x1f", "\u3000"]),
)


def _codec_outcome(
    name: str, col: ColumnSpec, texts: list[str]
) -> tuple[list[bytes | None], list[int]]:
    """What the columnar codec makes of ``texts``: each row's field bytes and failing rows."""
    codec = encoders._ColumnCodec(name, col, required=False)
    array = arrays._string_array(texts)
    column, bad = codec.process(array, len(texts), encode=True)
    assert column is not None
    fields = column.as_fields().to_pylist()
    failing = [] if bad is None else [i for i, b in enumerate(bad) if b]
    return fields, failing


def _coercer_outcome(
    name: str, col: ColumnSpec, texts: list[str]
) -> tuple[list[bytes | None], list[int]]:
    """The same through the Validator's coercer and psycopg's binary dumpers."""
    values, failing = column_coercer(name, col, required=False)(list(texts))
    kinds = {"integer": encoders._int8_column, "string": encoders._str_column}
    encode = kinds[col.type.value]
    column = encode(values, list(range(len(values))))  # type: ignore[arg-type]
    return column.as_fields().to_pylist(), sorted(failing)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_INTEGER_TEXTS, min_size=1, max_size=40))
def test_integer_column_matches_the_coercer(texts: list[str]) -> None:
    col = ColumnSpec.model_validate({"type": "integer", "null_values": ["", "NA"]})
    assert _codec_outcome("n", col, texts) == _coercer_outcome("n", col, texts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXTS, min_size=1, max_size=40), st.booleans())
def test_plain_text_column_matches_the_coercer(texts: list[str], strip: bool) -> None:
    col = ColumnSpec.model_validate({"type": "string", "strip": strip, "null_values": ["", "NA"]})
    assert _codec_outcome("s", col, texts) == _coercer_outcome("s", col, texts)


def test_whitespace_is_what_str_strip_removes() -> None:
    spaces = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    assert set(encoders.PY_WHITESPACE) == spaces
    col = ColumnSpec.model_validate({"type": "string"})
    texts = [f"{ch}a b{ch}" for ch in sorted(spaces)] + [ch for ch in sorted(spaces)]
    assert _codec_outcome("s", col, texts) == _coercer_outcome("s", col, texts)


def test_blocks_validate_exactly_like_the_python_parser(tmp_path: Path) -> None:
    """Record numbers and raw values of failed rows, block by block, without a database."""
    spec = spec_for("t_blocks")
    path = tmp_path / "blocks.csv"
    path.write_bytes(MESSY.encode())
    with open_file(path, spec) as parsed:
        info = parsed.info
        python_failed = []
        validator = Validator(spec, detect_duplicates=False)
        for batch in parsed.batches():
            python_failed += validator.validate_batch(batch).failed
    quoting = columnar.quoting_is_plain(path, ",", '"')
    reader = columnar.ColumnarFile(
        path, spec, info, Validator(spec), has_quotes=quoting.has_quotes, encode=False
    )
    failed = [f for block in reader.blocks() for f in block.failed]
    assert [(raw.source_row, raw.raw, err) for raw, err in failed] == [
        (raw.source_row, raw.raw, err) for raw, err in python_failed
    ]


def test_a_keyless_table_made_by_an_earlier_version_still_loads_and_rolls_back(
    pg_db: Database, tmp_path: Path
) -> None:
    """Earlier versions gave keyless targets an identity ``_row_id`` primary key and a B-tree
    on ``_import_id``; such a table keeps them, and direct loads and rollbacks still work."""
    from histimport_pipeline.engine.rollback import rollback_import

    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE t_old (_row_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "code TEXT, qty BIGINT, price NUMERIC(38, 2), day DATE, seen TIMESTAMP, ok BOOLEAN, "
            "email TEXT, size TEXT, note TEXT, tag VARCHAR(5), _import_id BIGINT NOT NULL, "
            "_source_row BIGINT, _loaded_at TIMESTAMP NOT NULL DEFAULT now())"
        )
        conn.exec_driver_sql("CREATE INDEX ix_t_old__import_id ON t_old (_import_id)")
    spec = spec_for("t_old")
    first = tmp_path / "first.csv"
    first.write_text(short(("007", "1"), ("008", "2")))
    second = tmp_path / "second.csv"
    second.write_text(short(("009", "3")))
    one = run_import(pg_db, spec, first)
    two = run_import(pg_db, spec, second)
    assert (one.rows_created, two.rows_created) == (2, 1)
    loaded = rows(pg_db, "t_old", order="_row_id")
    assert [r["_row_id"] for r in loaded] == [1, 2, 3]
    assert [r["code"] for r in loaded] == ["007", "008", "009"]
    rollback_import(pg_db, two.import_id)
    assert [r["code"] for r in rows(pg_db, "t_old", order="_row_id")] == ["007", "008"]


def test_replace_date_on_a_table_with_row_ids_restores_them(
    pg_db: Database, tmp_path: Path
) -> None:
    from histimport_pipeline.engine.rollback import rollback_import

    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE t_days (_row_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "code TEXT, qty BIGINT, price NUMERIC(38, 2), day DATE, seen TIMESTAMP, ok BOOLEAN, "
            "email TEXT, size TEXT, note TEXT, tag VARCHAR(5), _import_id BIGINT NOT NULL, "
            "_source_row BIGINT, _loaded_at TIMESTAMP NOT NULL DEFAULT now(), "
            "_business_date DATE)"
        )
    spec = spec_for("t_days", strategy="replace_date", partitioning="daily", files="d_*.csv")
    day = tmp_path / "d_2024-01-01.csv"
    day.write_text(short(("007", "1"), ("008", "2")))
    fixed = tmp_path / "d_2024-01-01_fixed.csv"
    fixed.write_text(short(("007", "10")))
    run_import(pg_db, spec, day)
    before = rows(pg_db, "t_days", order="_row_id")
    redo = run_import(pg_db, spec, fixed)
    assert (redo.rows_created, redo.rows_deleted) == (1, 2)
    rollback_import(pg_db, redo.import_id)
    assert rows(pg_db, "t_days", order="_row_id") == before
