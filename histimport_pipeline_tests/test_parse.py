"""Parse stage: formats by content, encodings, dialects, headers, XLSX safety, JSON, streaming."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from histimport_pipeline.engine.errors import (
    EncodingError,
    FileError,
    HeaderError,
    UnsupportedFormatError,
)
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.reading import detect, encoding, open_file, sniff_format
from histimport_pipeline.engine.spec import DatasetSpec


def make_spec(columns: dict[str, Any] | None = None, **extra: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "people",
            "target_table": "people",
            "columns": columns or {"id": {"required": True}, "name": {}},
            **extra,
        }
    )


def read_all(
    path: Path, spec: DatasetSpec | None = None, **kw: Any
) -> tuple[FileInfo, list[RawRow]]:
    with open_file(path, spec or make_spec(), **kw) as parsed:
        rows = [row for batch in parsed.batches() for row in batch]
        assert parsed.rows_read == len(rows)
        return parsed.info, rows


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


# Encodings


@pytest.mark.parametrize(
    ("codec", "bom", "reported"),
    [
        ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
        ("utf-16-le", b"\xff\xfe", "utf-16-le"),
        ("utf-16-be", b"\xfe\xff", "utf-16-be"),
        ("utf-32-le", b"\xff\xfe\x00\x00", "utf-32-le"),
    ],
)
def test_bom_decides_the_encoding_and_is_not_part_of_the_header(
    tmp_path: Path, codec: str, bom: bytes, reported: str
) -> None:
    path = write(tmp_path, "f.csv", bom + "id,name\r\n1,café\r\n2,Zoë\r\n".encode(codec))
    info, rows = read_all(path)
    assert info.encoding == reported
    assert info.headers == ("id", "name")
    assert [r.values for r in rows] == [{"id": "1", "name": "café"}, {"id": "2", "name": "Zoë"}]


def test_cp1252_is_detected_when_the_file_is_not_utf8(tmp_path: Path) -> None:
    dash_quoted = "na\u00efve \u2013 \u201cquoted\u201d"  # bytes 0x96, 0x93, 0x94 in cp1252
    path = write(tmp_path, "f.csv", f"id,name\n1,café\n2,{dash_quoted}\n".encode("cp1252"))
    info, rows = read_all(path)
    assert info.encoding == "cp1252"
    assert rows[0].values["name"] == "café"
    assert rows[1].values["name"] == dash_quoted
    assert any("not UTF-8" in w for w in info.warnings)


def test_spec_encoding_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "id,name\n1,Łódź\n".encode("cp1250"))
    _, rows = read_all(path, make_spec(encoding="cp1250"))
    assert rows[0].values["name"] == "Łódź"


@pytest.mark.parametrize("declared", ["utf-16-le", "utf-16", "UTF16"])
def test_declared_encoding_still_drops_a_matching_bom(tmp_path: Path, declared: str) -> None:
    path = write(tmp_path, "f.csv", b"\xff\xfe" + "id,name\n1,a\n".encode("utf-16-le"))
    info, rows = read_all(path, make_spec(encoding=declared))
    assert info.headers == ("id", "name")
    assert rows[0].values == {"id": "1", "name": "a"}


def test_invalid_utf8_in_a_declared_utf8_file_names_the_byte_offset(tmp_path: Path) -> None:
    data = b"id,name\n1,caf\xe9\n"
    path = write(tmp_path, "f.csv", data)
    with pytest.raises(EncodingError) as caught:
        open_file(path, make_spec(encoding="utf-8"))
    assert caught.value.offset == data.index(b"\xe9") == 13
    assert "byte offset 13" in str(caught.value)
    assert str(path) in str(caught.value)


def test_invalid_utf8_after_the_sample_fails_while_streaming_at_the_right_offset(
    tmp_path: Path,
) -> None:
    # Row 1 "id,name\n" is 8 bytes, each data row "00001,name\n" 11 bytes; the bad byte is a
    # lead byte at the very end of a decode chunk, so its offset must count the pending byte.
    body = b"id,name\n" + b"".join(b"%05d,name\n" % i for i in range(1, 20000))
    bad_at = encoding.CHUNK_BYTES * 2 - 1
    data = body[:bad_at] + b"\xc3(" + body[bad_at + 2 :]
    path = write(tmp_path, "f.csv", data)
    with open_file(path, make_spec()) as parsed:
        assert parsed.info.encoding == "utf-8"
        with pytest.raises(EncodingError) as caught:
            for _ in parsed.batches():
                pass
    assert caught.value.offset == bad_at


def test_multibyte_characters_split_across_decode_chunks_are_fine(tmp_path: Path) -> None:
    head = b"id,name\n1,"
    filler = b"x" * (encoding.CHUNK_BYTES - len(head) - 1)
    path = write(tmp_path, "f.csv", head + filler + "é\n2,b\n".encode())
    _, rows = read_all(path)
    assert rows[0].values["name"] == filler.decode() + "é"
    assert rows[1].values == {"id": "2", "name": "b"}


# Dialect and records


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ("id,name\n1,Ann\n2,Bob\n", ","),
        ("id\tname\n1\tAnn, Jr\n2\tBob\n", "\t"),
        ("id|name\n1|Ann, Jr\n2|Bob\n", "|"),
        ("id;name;amount\n1;Ann;1,50\n2;Bob;2,75\n", ";"),
        ('id,name\n1,"Ann; Bo | b"\n2,Bob\n', ","),
    ],
)
def test_delimiter_is_detected(tmp_path: Path, text: str, delimiter: str) -> None:
    path = write(tmp_path, "f.txt", text)
    info, rows = read_all(path, make_spec({"id": {}, "name": {}, "amount": {}}))
    assert info.delimiter == delimiter
    assert info.format == "csv"
    assert all(r.error is None for r in rows)
    assert rows[1].values["name"] == "Bob"


def test_spec_delimiter_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "id,name|x\n1,a|b\n")
    columns = {"pair": {"aliases": ["id,name"]}, "x": {}}
    assert read_all(path, make_spec(columns))[0].delimiter == ","
    info, rows = read_all(path, make_spec(columns, delimiter="|"))
    assert info.delimiter == "|"
    assert rows[0].values == {"pair": "1,a", "x": "b"}


def test_single_quote_is_detected_when_it_protects_delimiters(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "id,name\n1,'Smith, Ann'\n2,'Doe, Bob'\n")
    info, rows = read_all(path)
    assert info.quotechar == "'"
    assert rows[0].values["name"] == "Smith, Ann"


def test_quoted_newlines_are_one_record_and_rows_count_records(tmp_path: Path) -> None:
    text = 'id,name\r\n1,"line one\r\nline two\nline three"\r\n2,plain\r\n3,"x"\r\n'
    path = write(tmp_path, "f.csv", text)
    _, rows = read_all(path)
    assert [r.source_row for r in rows] == [2, 3, 4]
    assert rows[0].values["name"] == "line one\r\nline two\nline three"
    assert rows[1].values["name"] == "plain"


def test_embedded_delimiters_and_doubled_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'id,name\n1,"Smith, Ann ""Annie"""\n2,"a""b"\n')
    _, rows = read_all(path)
    assert rows[0].values["name"] == 'Smith, Ann "Annie"'
    assert rows[1].values["name"] == 'a"b'


def test_blank_records_are_skipped_and_not_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "\nid,name\n1,a\n\n , \n2,\n\n\n,\n")
    info, rows = read_all(path)
    assert info.header_row == 1
    assert [(r.source_row, r.values) for r in rows] == [
        (2, {"id": "1", "name": "a"}),
        (3, {"id": "2", "name": ""}),
    ]


def test_ragged_rows_are_row_errors_not_exceptions(tmp_path: Path) -> None:
    spec = make_spec({"id": {}, "name": {}, "city": {}, "zip": {}})
    path = write(tmp_path, "f.csv", "id,name,city,zip\n1,a,b,c,d\n2,a\n3,a,b,c\n")
    _, rows = read_all(path, spec)
    assert rows[0].error == "row has 5 fields, header has 4"
    assert rows[0].raw == ("1", "a", "b", "c", "d")
    assert rows[1].error == "row has 2 fields, header has 4"
    assert rows[1].values == {"id": "2", "name": "a", "city": None, "zip": None}
    assert rows[2].error is None


@pytest.mark.parametrize(
    ("header", "record", "expected"),
    [
        ("extra,id,name", "x,1,a", {"id": "1", "name": "a"}),
        ("name,extra,id", "a,x,1", {"name": "a", "id": "1"}),
        ("extra,id,more", "x,1,y", {"id": "1"}),
        ("extra,more", "x,y", {}),
    ],
)
def test_values_are_picked_from_their_header_positions(
    tmp_path: Path, header: str, record: str, expected: dict[str, str]
) -> None:
    path = write(tmp_path, "f.csv", f"{header}\n{record}\n{record},z\n")
    _, rows = read_all(path, make_spec({"id": {}, "name": {}}))
    assert rows[0].values == expected
    assert rows[0].raw == tuple(record.split(","))
    assert rows[0].error is None
    assert rows[1].error is not None


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"])
def test_only_cr_and_lf_end_lines(tmp_path: Path, char: str) -> None:
    # str.splitlines would also break at these characters.
    path = write(tmp_path, "f.csv", f"id,name\r\n1,a{char}b\r\n2,c\rz,\n")
    _, rows = read_all(path)
    assert [(r.source_row, r.values) for r in rows] == [
        (2, {"id": "1", "name": f"a{char}b"}),
        (3, {"id": "2", "name": "c"}),
        (4, {"id": "z", "name": ""}),
    ]


def test_line_breaks_across_decode_chunks(tmp_path: Path) -> None:
    # The first chunk ends in the "\r" of a "\r\n" and the next one in the middle of a record.
    head = "id,name\r\n1,"
    filler = "x" * (encoding.CHUNK_BYTES - len(head) - 1)
    tail = '\r\n2,"two\r\nlines"\r\n' + "".join(f"{n},n\n" for n in range(3, 20000))
    path = write(tmp_path, "f.csv", head + filler + tail)
    _, rows = read_all(path)
    assert rows[0].values == {"id": "1", "name": filler}
    assert rows[1].values == {"id": "2", "name": "two\r\nlines"}
    assert [r.source_row for r in rows] == list(range(2, 20001))
    assert rows[-1].values == {"id": "19999", "name": "n"}


def test_malformed_quote_is_a_row_error_and_parsing_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'id,name\n1,"a"b\n2,c\n')
    _, rows = read_all(path)
    assert rows[0].source_row == 2
    assert rows[0].error is not None and "malformed quoting" in rows[0].error
    assert (rows[1].source_row, rows[1].values["name"]) == (3, "c")


def test_unclosed_quote_at_the_end_is_a_file_error_naming_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'id,name\n1,a\n2,"never closed\n3,b\n')
    with open_file(path, make_spec()) as parsed, pytest.raises(FileError) as caught:
        list(parsed.batches())
    assert caught.value.row == 3
    assert "quote" in str(caught.value)


@pytest.mark.parametrize("value", ["007", "NA", "null", "None", "n/a", "  padded  ", "-"])
def test_values_stay_verbatim_text(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "f.csv", f"id,name\n{value},{value}\n")
    _, rows = read_all(path, make_spec({"id": {}, "name": {}}))
    assert rows[0].values == {"id": value, "name": value}


def test_batches_stream_in_batch_size_and_iterate_once(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "id,name\n" + "".join(f"{i},n{i}\n" for i in range(5)))
    parsed = open_file(path, make_spec(), batch_size=2)
    batches = parsed.batches()
    assert [len(b) for b in batches] == [2, 2, 1]
    assert parsed.rows_read == 5
    with pytest.raises(RuntimeError):
        parsed.batches()
    parsed.close()


def test_empty_file_is_a_header_error(tmp_path: Path) -> None:
    with pytest.raises(HeaderError, match="empty"):
        open_file(write(tmp_path, "f.csv", ""), make_spec())


def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="not found"):
        open_file(tmp_path / "nope.csv", make_spec())


# Headers


SIGNUPS = {
    "signup_id": {"required": True, "aliases": ["ID", "Signup No"]},
    "email": {"required": True},
    "amount": {},
    "signed_up": {"type": "date"},
}


def test_headers_match_exactly_folded_and_by_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "Signup-No,E-Mail,AMOUNT,signed up\n7,a@x.org,1,2024-01-01\n")
    info, rows = read_all(path, make_spec(SIGNUPS))
    assert info.mapping == {
        "Signup-No": "signup_id",
        "E-Mail": "email",
        "AMOUNT": "amount",
        "signed up": "signed_up",
    }
    assert rows[0].values == {
        "signup_id": "7",
        "email": "a@x.org",
        "amount": "1",
        "signed_up": "2024-01-01",
    }
    assert info.warnings == ()


def test_extra_headers_are_left_out_and_warned_absent_optional_ones_warned(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "f.csv", "ID,email,Notes\n7,a@x.org,hello\n")
    info, rows = read_all(path, make_spec(SIGNUPS))
    assert info.extra_headers == ("Notes",)
    assert rows[0].values == {"signup_id": "7", "email": "a@x.org"}
    assert rows[0].raw == ("7", "a@x.org", "hello")
    assert any("'Notes'" in w and "ignored" in w for w in info.warnings)
    assert any("amount, signed_up" in w for w in info.warnings)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("ID,email,id2,ID", "duplicate header(s): 'ID' (columns 1 and 4)"),
        (
            "ID,email,Signup_ID",
            "duplicate header(s): 'ID' (column 1) and 'Signup_ID' (column 3) all name column "
            "signup_id",
        ),
        ("ID,,email", "empty header in column(s) 2"),
        ("ID,amount", "missing required column(s): email"),
    ],
)
def test_header_problems_are_file_errors(tmp_path: Path, header: str, expected: str) -> None:
    path = write(tmp_path, "f.csv", header + "\n1,2,3,4\n")
    with pytest.raises(HeaderError) as caught:
        open_file(path, make_spec(SIGNUPS))
    assert expected in str(caught.value)
    assert caught.value.row == 1


def test_all_header_problems_are_named_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "amount,,Notes,Notes\n")
    with pytest.raises(HeaderError) as caught:
        open_file(path, make_spec(SIGNUPS))
    message = str(caught.value)
    assert "empty header in column(s) 2" in message
    assert "'Notes' (columns 3 and 4)" in message
    assert "missing required column(s): signup_id, email" in message
    assert "aliases" in message


# Format detection by content


def test_format_is_detected_by_content_not_suffix(tmp_path: Path) -> None:
    csv_txt = write(tmp_path, "data.txt", "id,name\n1,a\n")
    json_dat = write(tmp_path, "data.dat", '[{"id": 1, "name": "a"}]')
    ndjson_log = write(tmp_path, "data.log", '{"id": 1}\n{"id": 2}\n')
    csv_json = write(tmp_path, "lies.json", "id,name\n1,a\n")
    assert [sniff_format(p) for p in (csv_txt, json_dat, ndjson_log, csv_json)] == [
        "csv",
        "json",
        "ndjson",
        "csv",
    ]
    info, rows = read_all(json_dat)
    assert (info.format, rows[0].values) == ("json", {"id": "1", "name": "a"})
    info, _ = read_all(csv_json)
    assert info.format == "csv"
    assert any("ends in .json but its content is csv" in w for w in info.warnings)


def test_csv_with_a_bracketed_header_is_still_csv(tmp_path: Path) -> None:
    assert sniff_format(write(tmp_path, "f", "[id],name\n1,a\n")) == "csv"


def test_binary_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="binary"):
        open_file(write(tmp_path, "f.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00"), make_spec())


def test_html_saved_as_xls_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "report.xls", "<html><table><tr><td>id</td></tr></table></html>")
    with pytest.raises(UnsupportedFormatError, match="HTML"):
        sniff_format(path)


# JSON and NDJSON


def test_json_array_values_become_text(tmp_path: Path) -> None:
    records = (
        '[{"id": 7, "name": "Ann", "score": 1.10, "ok": true, "gone": null, '
        '"tags": ["a", 2], "meta": {"k": 1e5}},\n {"id": "007", "name": "NA"}]'
    )
    spec = make_spec({"id": {}, "name": {}, "score": {}, "ok": {}, "gone": {}, "tags": {}})
    info, rows = read_all(write(tmp_path, "f.json", records), spec)
    assert info.format == "json"
    assert info.headers == ("id", "name", "score", "ok", "gone", "tags", "meta")
    assert info.extra_headers == ("meta",)
    assert rows[0].values == {
        "id": "7",
        "name": "Ann",
        "score": "1.10",
        "ok": "true",
        "gone": None,
        "tags": '["a",2]',
    }
    assert rows[0].raw[-1] == '{"k":1e5}'
    assert rows[1].values["id"] == "007"
    assert rows[1].values["name"] == "NA"
    assert rows[1].values["score"] is None
    assert [r.source_row for r in rows] == [1, 2]


def test_json_later_key_naming_a_column_is_a_row_error(tmp_path: Path) -> None:
    data = '[{"id": 1}, {"id": 2, "name": "b", "other": 1}, 3]'
    _, rows = read_all(write(tmp_path, "f.json", data))
    assert rows[0].error is None
    assert rows[1].error is not None and "'name'" in rows[1].error
    assert rows[2].error == "record is a number, not an object"


def test_large_json_array_streams_across_chunks(tmp_path: Path) -> None:
    count = 5000
    records = [{"id": i, "name": "x" * 30 + str(i)} for i in range(count)]
    path = write(tmp_path, "f.json", json.dumps(records, indent=1))
    assert path.stat().st_size > 3 * encoding.CHUNK_BYTES
    _, rows = read_all(path, batch_size=999)
    assert len(rows) == count
    assert rows[-1].values == {"id": str(count - 1), "name": "x" * 30 + str(count - 1)}
    assert rows[-1].source_row == count


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('[{"id": 1}, {"id": 2', "cut off"),
        ('[{"id": 1}, {"id": 2}', "not closed"),
        ('[{"id": 1} {"id": 2}]', "expected ',' or ']'"),
        ('[{"id": 1}] trailing', "after the closing"),
    ],
)
def test_broken_json_is_a_file_error(tmp_path: Path, data: str, problem: str) -> None:
    path = write(tmp_path, "f.json", data)
    with pytest.raises(FileError, match=problem), open_file(path, make_spec()) as parsed:
        list(parsed.batches())


def test_top_level_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="expected a JSON array"):
        open_file(write(tmp_path, "f.json", '{\n  "id": 1\n}\n'), make_spec())


def test_ndjson_rows_are_line_numbers_and_bad_lines_are_row_errors(tmp_path: Path) -> None:
    data = '{"id": 1, "name": "a"}\n\n{"id": 2, "name": null}\nnot json\n[1]\n'
    info, rows = read_all(write(tmp_path, "f.ndjson", data))
    assert info.format == "ndjson"
    assert [r.source_row for r in rows] == [1, 3, 4, 5]
    assert rows[1].values == {"id": "2", "name": None}
    assert rows[2].error is not None and rows[2].error.startswith("line is not valid JSON")
    assert rows[3].error == "record is an array, not an object"


# XLSX


def save_workbook(path: Path, build: Callable[[Any], None]) -> Path:
    wb = openpyxl.Workbook()
    build(wb)
    wb.save(path)
    return path


def patch_member(path: Path, member: str, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(path) as zf:
        parts = {info.filename: zf.read(info) for info in zf.infolist()}
    assert old in parts[member]
    parts[member] = parts[member].replace(old, new)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)


def test_xlsx_values_are_rendered_as_text_and_formulas_give_cached_values(
    tmp_path: Path,
) -> None:
    def build(wb: Any) -> None:
        ws = wb.active
        ws.append(["id", "amount", "doubled", "day", "at", "flag", "empty", "code"])
        ws.append([12.0, 1.5, "=B2*2", date(2024, 1, 31), datetime(2024, 1, 31, 10), True])
        ws["G2"] = None
        ws["H2"] = "007"

    path = save_workbook(tmp_path / "f.xlsx", build)
    patch_member(path, "xl/worksheets/sheet1.xml", b"<f>B2*2</f><v />", b"<f>B2*2</f><v>3</v>")
    columns = ("id", "amount", "doubled", "day", "at", "flag", "empty", "code")
    info, rows = read_all(path, make_spec({c: {} for c in columns}))
    assert (info.format, info.sheet, info.header_row, info.encoding) == ("xlsx", "Sheet", 1, None)
    assert rows[0].source_row == 2
    assert rows[0].values == {
        "id": "12",
        "amount": "1.5",
        "doubled": "3",
        "day": "2024-01-31",
        "at": "2024-01-31T10:00:00",
        "flag": "true",
        "empty": "",
        "code": "007",
    }


def hidden_first(wb: Any) -> None:
    old = wb.active
    old.title = "Old"
    old.append(["nothing", "here"])
    old.sheet_state = "hidden"
    data = wb.create_sheet("Data")
    data.append(["id", "name"])
    data.append([1, "from data"])
    other = wb.create_sheet("Other")
    other.append(["id", "name"])
    other.append([2, "from other"])


def test_xlsx_first_visible_sheet_skips_hidden_ones(tmp_path: Path) -> None:
    info, rows = read_all(save_workbook(tmp_path / "f.xlsx", hidden_first))
    assert info.sheet == "Data"
    assert rows[0].values == {"id": "1", "name": "from data"}
    assert any("hidden sheet(s) 'Old' skipped" in w for w in info.warnings)


def test_xlsx_sheet_named_in_spec_is_read_even_if_hidden(tmp_path: Path) -> None:
    path = save_workbook(tmp_path / "f.xlsx", hidden_first)
    info, rows = read_all(path, make_spec(sheet="other"))
    assert (info.sheet, rows[0].values["name"]) == ("Other", "from other")
    with pytest.raises(HeaderError, match="missing required column"):
        open_file(path, make_spec(sheet="Old"))
    with pytest.raises(FileError, match="no sheet named 'Nope'"):
        open_file(path, make_spec(sheet="Nope"))


def test_xlsx_hidden_sheet_named_in_spec_gives_a_warning(tmp_path: Path) -> None:
    def build(wb: Any) -> None:
        hidden_first(wb)
        wb["Old"]["A1"] = "id"
        wb["Old"]["B1"] = "name"

    info, _ = read_all(save_workbook(tmp_path / "f.xlsx", build), make_spec(sheet="Old"))
    assert info.sheet == "Old"
    assert any("'Old' is hidden" in w for w in info.warnings)


def test_xlsx_merged_cells_warn_and_are_not_filled(tmp_path: Path) -> None:
    def build(wb: Any) -> None:
        ws = wb.active
        ws.append(["id", "name"])
        ws.append([1, "shared"])
        ws.append([2, None])
        ws.merge_cells("B2:B3")

    info, rows = read_all(save_workbook(tmp_path / "f.xlsx", build))
    assert any("merged cells B2:B3" in w for w in info.warnings)
    assert [r.values["name"] for r in rows] == ["shared", ""]


def test_xlsx_blank_rows_keep_sheet_numbers_and_wide_rows_are_errors(tmp_path: Path) -> None:
    def build(wb: Any) -> None:
        ws = wb.active
        ws["A2"] = "id"
        ws["B2"] = "name"
        ws.append([1, "a"])
        ws.append([])
        ws.append([2])
        ws.append([3, "c", None, "stray"])

    info, rows = read_all(save_workbook(tmp_path / "f.xlsx", build))
    assert info.header_row == 2
    assert [r.source_row for r in rows] == [3, 5, 6]
    assert rows[1].values == {"id": "2", "name": ""}
    assert rows[1].error is None
    assert rows[2].error == "row has values in 4 columns, header has 2"


def test_xlsx_is_detected_by_content(tmp_path: Path) -> None:
    def build(wb: Any) -> None:
        wb.active.append(["id", "name"])

    path = save_workbook(tmp_path / "f.xlsx", build)
    renamed = path.rename(tmp_path / "export.dat")
    assert sniff_format(renamed) == "xlsx"
    info, rows = read_all(renamed)
    assert (info.format, rows) == ("xlsx", [])


@pytest.mark.parametrize("name", ["old.xls", "renamed.xlsx"])
def test_ole2_excel_files_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, detect._OLE2_MAGIC + b"\x00" * 600)
    with pytest.raises(UnsupportedFormatError) as caught:
        open_file(path, make_spec())
    assert ".xls" in str(caught.value) and "save it as .xlsx or as CSV" in str(caught.value)


def test_encrypted_workbook_is_refused(tmp_path: Path) -> None:
    data = detect._OLE2_MAGIC + b"\x00" * 2000 + "EncryptionInfo".encode("utf-16-le") + b"\0" * 9
    with pytest.raises(UnsupportedFormatError, match="encrypted"):
        open_file(write(tmp_path, "secret.xlsx", data), make_spec())


def test_macro_workbooks_are_refused(tmp_path: Path) -> None:
    def build(wb: Any) -> None:
        wb.active.append(["id", "name"])

    path = save_workbook(tmp_path / "f.xlsx", build)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("xl/vbaProject.bin", b"\x00" * 16)
    with pytest.raises(UnsupportedFormatError, match="macro"):
        open_file(path, make_spec())
    plain = save_workbook(tmp_path / "g.xlsm", build)
    with pytest.raises(UnsupportedFormatError, match="macro"):
        sniff_format(plain)


def test_zip_bomb_is_refused_without_decompressing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("xl/workbook.xml", b"<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", b"\x00" * (20 * 1024 * 1024))
    assert path.stat().st_size < 100_000
    with pytest.raises(UnsupportedFormatError, match="zip bomb"):
        open_file(path, make_spec())


def test_workbook_over_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(wb: Any) -> None:
        wb.active.append(["id", "name"])

    path = save_workbook(tmp_path / "f.xlsx", build)
    monkeypatch.setattr(detect, "MAX_XLSX_UNCOMPRESSED_BYTES", 1000)
    with pytest.raises(UnsupportedFormatError, match="over the limit of 1000"):
        open_file(path, make_spec())


def test_other_zip_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.csv", "id,name\n")
    with pytest.raises(UnsupportedFormatError, match="not an Excel workbook"):
        sniff_format(path)


# Issue 10: Western single-byte files, NUL bytes, long fields

#: Western-European text as exported in Windows-1252: accents, ß, ø, curly quotes, €, dashes.
WESTERN_SAMPLES = {
    "french": "Café “quoted” €",
    "french_accents": "Élodie à la crème brûlée, déjà vu \u2013 ça va",
    "german": "Straße Müller Größe Jürgen Weiß",
    "danish_norwegian": "Søren Ødegård Blåbærsyltetøy",
    "spanish": "Niño, España, señor ¿qué? ¡olé!",
    "quotes_and_dashes": "\u2018single\u2019 “double” — em \u2013 en … „low“ \u201alow\u2018",
    "money": "€ 1.234,56 £ 7 ¥ 8 ¢",
}


@pytest.mark.parametrize("name", sorted(WESTERN_SAMPLES))
def test_windows_1252_samples_read_exactly_and_say_how_the_encoding_was_chosen(
    tmp_path: Path, name: str
) -> None:
    text = WESTERN_SAMPLES[name]
    data = f'id,name\n1,"{text}"\n2,plain\n'.encode("cp1252")
    info, rows = read_all(write(tmp_path, "f.csv", data))
    assert info.encoding == "cp1252"
    assert rows[0].values["name"] == text
    assert info.as_metadata()["encoding_decided_by"] == info.encoding_decided_by
    if any(0x80 <= b <= 0x9F for b in data):
        assert "0x80-0x9f are present" in (info.encoding_decided_by or "")
    else:
        assert "read it alike" in (info.encoding_decided_by or "")
    assert any("read as cp1252" in w and "encoding:" in w for w in info.warnings)


@pytest.mark.parametrize(
    "text",
    [
        "ÉTÉ À L'ÎLE D'OLÉRON; CRÈME BRÛLÉE",
        "GROßE STRAßE MÜNCHEN ÄÖÜ",
        "Réf. n°5 \u2013 5 µm ± 0,1 ° ½ ¼ ¾ \u00d7 ÷ © ® ™ §",
        "São João, Conceição; AÇÃO",
        "Þórður Ðóra Ýmir Ægir",
        "O\u2019Brien col·lecció ¿AÑO? ¡SEÑOR!",
    ],
)
def test_accent_and_symbol_heavy_western_text_is_still_windows_1252(
    tmp_path: Path, text: str
) -> None:
    body = "".join(f'{i},"{text}"\n' for i in range(200))
    info, rows = read_all(write(tmp_path, "f.csv", ("id,name\n" + body).encode("cp1252")))
    assert info.encoding == "cp1252"
    assert {r.values["name"] for r in rows} == {text}


def test_every_western_sample_in_one_file_is_not_taken_for_another_code_page(
    tmp_path: Path,
) -> None:
    body = "".join(f'{i},"{t}"\n' for i, t in enumerate(WESTERN_SAMPLES.values(), start=1))
    info, rows = read_all(write(tmp_path, "f.csv", ("id,name\n" + body).encode("cp1252")))
    assert info.encoding == "cp1252"
    assert [r.values["name"] for r in rows] == list(WESTERN_SAMPLES.values())


@pytest.mark.parametrize(
    ("data", "decided_by"),
    [
        ("id,name\n1,café\n".encode(), "valid UTF-8"),
        (b"\xef\xbb\xbf" + "id,name\n1,café\n".encode(), "byte order mark"),
        ("id,name\n1,café\n".encode("utf-16-le"), "UTF-16 without BOM"),
    ],
)
def test_the_way_the_encoding_was_decided_is_recorded(
    tmp_path: Path, data: bytes, decided_by: str
) -> None:
    info, rows = read_all(write(tmp_path, "f.csv", data))
    assert rows[0].values["name"] == "café"
    assert decided_by in str(info.as_metadata()["encoding_decided_by"])
    assert not any("encoding" in w for w in info.warnings)


def test_a_declared_encoding_overrides_detection_and_is_recorded(tmp_path: Path) -> None:
    # Valid UTF-8 bytes, declared Latin-1: the declaration wins.
    path = write(tmp_path, "f.csv", "id,name\n1,café\n".encode())
    info, rows = read_all(path, make_spec(encoding="latin-1"))
    assert info.encoding == "iso8859-1" and rows[0].values["name"] == "cafÃ©"
    assert info.encoding_decided_by == "declared in the dataset spec (encoding: latin-1)"


def test_a_byte_undefined_in_cp1252_is_refused_naming_the_candidates(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", b"id,name\n1,caf\xe9 \x81\n")
    with pytest.raises(EncodingError) as caught:
        open_file(path, make_spec())
    message = str(caught.value)
    assert "0x81" in message and "Windows-1252" in message and "Latin-1" in message
    assert "`encoding:`" in message and caught.value.offset == 15


@pytest.mark.parametrize(
    ("codec", "text"),
    [
        ("cp1251", "Привет мир, как дела; Москва и Санкт-Петербург"),
        ("cp1251", "Привет мир"),
        ("cp1253", "Καλημέρα κόσμε, τι κάνεις σήμερα"),
        ("cp1250", "Zażółć gęślą jaźń, Łódź i Kraków"),
    ],
)
def test_another_code_page_is_refused_rather_than_read_garbled(
    tmp_path: Path, codec: str, text: str
) -> None:
    path = write(tmp_path, "f.csv", f'id,name\n1,"{text}"\n'.encode(codec))
    with pytest.raises(EncodingError, match="probably in another encoding") as caught:
        open_file(path, make_spec())
    assert "`encoding:`" in str(caught.value)
    _, rows = read_all(path, make_spec(encoding=codec))
    assert rows[0].values["name"] == text


def test_a_nul_byte_in_one_field_is_a_row_error_and_the_file_reads_on(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", b"id,name,other\n1,a,x\n2,b\x00c,y\n3,c,z\x00\n")
    spec = make_spec({"id": {"required": True}, "name": {}})  # "other" is not loaded
    info, rows = read_all(path, spec)
    assert info.encoding == "utf-8"
    assert [(r.source_row, r.error_column) for r in rows] == [(2, None), (3, "name"), (4, None)]
    assert rows[0].error is None and rows[2].error is None
    assert "NUL byte" in (rows[1].error or "") and "'name'" in (rows[1].error or "")
    assert rows[1].raw == ("2", "b\x00c", "y")


def test_a_nul_byte_in_a_json_value_is_a_row_error(tmp_path: Path) -> None:
    path = write(tmp_path, "f.json", '[{"id": "1", "name": "a\\u0000b"}, {"id": "2"}]')
    _, rows = read_all(path)
    assert rows[0].error_column == "name" and "NUL byte" in (rows[0].error or "")
    assert rows[1].error is None


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 16,
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200 + b"text" * 10,
    ],
)
def test_binary_is_told_by_its_share_of_control_bytes(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="binary"):
        open_file(write(tmp_path, "f.csv", data), make_spec())


def test_a_field_of_one_and_a_half_mib_reads_exactly(tmp_path: Path) -> None:
    long = ("é" + "x" * 99) * 15_000  # 1.5 M characters, over the csv module's default limit
    path = write(tmp_path, "f.csv", f'id,name\n1,"{long}"\n2,b\n'.encode())
    _, rows = read_all(path)
    assert rows[0].error is None and rows[0].values["name"] == long
    assert rows[1].values == {"id": "2", "name": "b"}


def test_a_field_over_the_configured_limit_is_a_row_error_naming_column_and_limit(
    tmp_path: Path,
) -> None:
    # 300 characters but 600 bytes: the limit counts UTF-8 bytes.
    path = write(tmp_path, "f.csv", f"id,name\n1,{'é' * 300}\n2,{'é' * 250}\n3,c\n".encode())
    _, rows = read_all(path, max_field_bytes=500)
    assert rows[0].error_column == "name" and rows[0].source_row == 2
    assert "600 bytes, over the limit of 500 bytes" in (rows[0].error or "")
    assert "HISTIMPORT_MAX_FIELD_BYTES" in (rows[0].error or "")
    assert [r.error for r in rows[1:]] == [None, None]
    assert rows[1].values["name"] == "é" * 250


def test_an_unclosed_quote_still_fails_the_file_with_the_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'id,name\n1,"never closed\n' + "2,x\n" * 2000)
    # The wording depends on whether an earlier test already raised the csv module's limit.
    with pytest.raises(FileError, match="never closed"):
        read_all(path, max_field_bytes=1000)


@pytest.mark.parametrize(
    ("name", "data"),
    [("f.csv", b"id,na\x00me\n1,a\n"), ("f.json", b'[{"id": "1", "na\\u0000me": "a"}]')],
)
def test_a_nul_byte_in_a_header_fails_the_file_naming_the_column(
    tmp_path: Path, name: str, data: bytes
) -> None:
    with pytest.raises(HeaderError, match=r"NUL byte \(0x00\) in the header of column\(s\) 2"):
        open_file(write(tmp_path, name, data), make_spec())
