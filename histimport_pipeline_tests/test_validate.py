"""Validate: typed values, per-column rules, readable errors and duplicate keys within a file."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from histimport_pipeline.engine.cells import neutralise, restore
from histimport_pipeline.engine.models import ErrorCategory, RawRow, Value
from histimport_pipeline.engine.spec import ColumnSpec, DatasetSpec
from histimport_pipeline.engine.validation import CoercionError, Validator, coerce_value


def column(**fields: Any) -> ColumnSpec:
    return ColumnSpec.model_validate(fields)


def dataset(columns: dict[str, dict[str, Any]], **extra: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"name": "signups", "target_table": "signups", "columns": columns, **extra}
    )


def raw(source_row: int, error: str | None = None, **values: str | None) -> RawRow:
    return RawRow(source_row, dict(values), tuple(values.values()), error)


def fails(spec: ColumnSpec, text: str | None, name: str = "col") -> CoercionError:
    with pytest.raises(CoercionError) as info:
        coerce_value(name, spec, text)
    return info.value


SIGNUPS = {
    "signup_id": {"type": "string", "required": True},
    "email": {"type": "email", "required": True},
    "signed_up": {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
    "amount": {"type": "decimal", "min": 0, "scale": 2},
}


# --- types: good values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "text", "expected"),
    [
        ({"type": "string"}, "007", "007"),
        ({"type": "string"}, "  00042 ", "00042"),
        ({"type": "string", "strip": False}, "  00042 ", "  00042 "),
        ({"type": "string"}, "NA", "NA"),
        ({"type": "string"}, "null", "null"),
        ({"type": "string"}, "1e5", "1e5"),
        ({"type": "integer"}, "12", 12),
        ({"type": "integer"}, "+12", 12),
        ({"type": "integer"}, "-3", -3),
        ({"type": "integer"}, " 42 ", 42),
        ({"type": "integer"}, "007", 7),
        ({"type": "integer"}, "12.0", 12),
        ({"type": "integer"}, "-12.00", -12),
        ({"type": "integer"}, "9223372036854775807", 2**63 - 1),
        ({"type": "integer"}, "-9223372036854775808", -(2**63)),
        ({"type": "decimal"}, "1.50", Decimal("1.50")),
        ({"type": "decimal"}, "-0.5", Decimal("-0.5")),
        ({"type": "decimal"}, ".5", Decimal("0.5")),
        ({"type": "decimal"}, "+3", Decimal("3")),
        ({"type": "decimal", "scale": 2}, "1.2300", Decimal("1.23")),
        ({"type": "decimal", "scale": 0}, "12", Decimal("12")),
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "YES", True),
        ({"type": "boolean"}, "1", True),
        ({"type": "boolean"}, "False", False),
        ({"type": "boolean"}, "n", False),
        ({"type": "boolean", "true_values": ["ja"], "false_values": ["nein"]}, "Ja", True),
        ({"type": "boolean", "true_values": ["ja"], "false_values": ["nein"]}, "NEIN", False),
        ({"type": "date"}, "2024-02-29", date(2024, 2, 29)),
        ({"type": "date"}, "2024-02-29 00:00:00", date(2024, 2, 29)),
        ({"type": "date", "formats": ["%d/%m/%Y"]}, "31/01/2024", date(2024, 1, 31)),
        ({"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]}, "03/04/2024", date(2024, 4, 3)),
        ({"type": "date", "formats": ["%d.%m.%Y"]}, "5.1.2024", date(2024, 1, 5)),
        ({"type": "timestamp"}, "2024-01-31T10:20:30", datetime(2024, 1, 31, 10, 20, 30)),
        ({"type": "timestamp"}, "2024-01-31 10:20:30", datetime(2024, 1, 31, 10, 20, 30)),
        ({"type": "timestamp"}, "2024-01-31", datetime(2024, 1, 31)),
        ({"type": "timestamp"}, "2024-01-31T10:00:00Z", datetime(2024, 1, 31, 10)),
        ({"type": "timestamp"}, "2024-01-31T10:00:00+02:00", datetime(2024, 1, 31, 8)),
        ({"type": "timestamp"}, "2024-01-01T01:00:00+02:00", datetime(2023, 12, 31, 23)),
        (
            {"type": "timestamp", "formats": ["%d/%m/%Y %H:%M"]},
            "31/01/2024 10:20",
            datetime(2024, 1, 31, 10, 20),
        ),
        ({"type": "email"}, "ann@example.com", "ann@example.com"),
        ({"type": "email"}, " Ann.Lee+news@mail.example.co.uk ", "Ann.Lee+news@mail.example.co.uk"),
        ({"type": "email"}, "josé@exämple.de", "josé@exämple.de"),
        ({"type": "enum", "allowed": ["bronze", "silver", "gold"]}, " gold ", "gold"),
    ],
)
def test_good_values_become_typed(fields: dict[str, Any], text: str, expected: Value) -> None:
    value = coerce_value("col", column(**fields), text)
    assert value == expected
    assert type(value) is type(expected)


# --- types: bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "text", "category", "phrase"),
    [
        ({"type": "integer"}, "NA", ErrorCategory.TYPE, "'NA' is not a whole number"),
        ({"type": "integer"}, "abc", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "1.5", ErrorCategory.TYPE, "'1.5' is not a whole number"),
        ({"type": "integer"}, "12.", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "1,234", ErrorCategory.TYPE, "remove the thousands separators"),
        ({"type": "integer"}, "1_000", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "1e3", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "--3", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "-", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer"}, "١٢", ErrorCategory.TYPE, "is not a whole number"),
        ({"type": "integer", "strip": False}, " 12", ErrorCategory.TYPE, "not a whole number"),
        ({"type": "integer"}, "9223372036854775808", ErrorCategory.RANGE, "64-bit"),
        ({"type": "integer"}, "1" * 5000, ErrorCategory.RANGE, "64-bit"),
        ({"type": "decimal"}, "abc", ErrorCategory.TYPE, "'abc' is not a decimal number"),
        ({"type": "decimal"}, "NaN", ErrorCategory.TYPE, "is not a decimal number"),
        ({"type": "decimal"}, "Infinity", ErrorCategory.TYPE, "is not a decimal number"),
        ({"type": "decimal"}, "-inf", ErrorCategory.TYPE, "is not a decimal number"),
        ({"type": "decimal"}, "1e3", ErrorCategory.TYPE, "scientific notation"),
        ({"type": "decimal"}, "1.5E+06", ErrorCategory.TYPE, "scientific notation"),
        ({"type": "decimal"}, "1,5", ErrorCategory.TYPE, "use '.' for the decimal point"),
        ({"type": "decimal"}, "1,234.50", ErrorCategory.TYPE, "no thousands separators"),
        ({"type": "decimal"}, ".", ErrorCategory.TYPE, "is not a decimal number"),
        ({"type": "decimal"}, "1.2.3", ErrorCategory.TYPE, "is not a decimal number"),
        (
            {"type": "decimal", "scale": 2},
            "1.234",
            ErrorCategory.TYPE,
            "'1.234' has 3 digits after the decimal point; at most 2 allowed",
        ),
        ({"type": "decimal", "scale": 0}, "1.5", ErrorCategory.TYPE, "at most 0 allowed"),
        ({"type": "decimal", "scale": 30}, "123456789", ErrorCategory.RANGE, "more than 8 digits"),
        ({"type": "boolean"}, "maybe", ErrorCategory.TYPE, "'maybe' is not a boolean"),
        ({"type": "boolean"}, "2", ErrorCategory.TYPE, "true: true, t, yes, y, 1"),
        ({"type": "date"}, "2024-02-30", ErrorCategory.FORMAT, "not a date in format YYYY-MM-DD"),
        (
            {"type": "date"},
            "2024-13-01",
            ErrorCategory.FORMAT,
            "col: '2024-13-01' is not a date in format YYYY-MM-DD",
        ),
        ({"type": "date"}, "03/04/2024", ErrorCategory.FORMAT, "in format YYYY-MM-DD"),
        ({"type": "date"}, "2024-W01-1", ErrorCategory.FORMAT, "in format YYYY-MM-DD"),
        ({"type": "date"}, "2024-01-31 10:00:00", ErrorCategory.FORMAT, "not a date"),
        (
            {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
            "31/02/2024",
            ErrorCategory.FORMAT,
            "'31/02/2024' is not a date in format YYYY-MM-DD or DD/MM/YYYY",
        ),
        ({"type": "timestamp"}, "yesterday", ErrorCategory.FORMAT, "ISO 8601"),
        ({"type": "timestamp"}, "2024-02-30 10:00:00", ErrorCategory.FORMAT, "not a timestamp"),
        (
            {"type": "timestamp", "formats": ["%d/%m/%Y %H:%M"]},
            "2024-01-31T10:00:00",
            ErrorCategory.FORMAT,
            "is not a timestamp in format DD/MM/YYYY hh:mm",
        ),
        ({"type": "email"}, "ann", ErrorCategory.FORMAT, "'ann' is not a valid e-mail address"),
        ({"type": "email"}, "ann@example", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "ann lee@example.com", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "ann@@example.com", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "ann..lee@example.com", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "@example.com", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "ann@-example.com", ErrorCategory.FORMAT, "not a valid e-mail"),
        ({"type": "email"}, "ann@example.c", ErrorCategory.FORMAT, "not a valid e-mail"),
        (
            {"type": "enum", "allowed": ["bronze", "silver", "gold"]},
            "Gold",
            ErrorCategory.RANGE,
            "'Gold' is not one of the allowed values: bronze, silver, gold",
        ),
    ],
)
def test_bad_values_fail_with_category_and_message(
    fields: dict[str, Any], text: str, category: ErrorCategory, phrase: str
) -> None:
    error = fails(column(**fields), text)
    assert error.category is category
    assert phrase in error.message
    assert error.message.startswith("col: ")


def test_long_values_are_shortened_in_messages() -> None:
    error = fails(column(type="integer"), "x" * 500)
    assert len(error.message) < 120
    assert "..." in error.message


def test_long_allowed_lists_are_shortened_in_messages() -> None:
    allowed = [f"v{i}" for i in range(40)]
    error = fails(column(type="enum", allowed=allowed), "nope")
    assert "v9, ... (40 in all)" in error.message
    assert "v10" not in error.message


# --- missing values ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   "])
def test_missing_optional_is_none(text: str | None) -> None:
    assert coerce_value("amount", column(type="integer"), text) is None


@pytest.mark.parametrize("text", [None, "", "  "])
def test_missing_required_is_a_required_error(text: str | None) -> None:
    error = fails(column(type="string", required=True), text, name="signup_id")
    assert error.category is ErrorCategory.REQUIRED
    assert error.message == "signup_id is required but empty"


def test_whitespace_is_a_value_when_not_stripped() -> None:
    assert coerce_value("note", column(strip=False), "  ") == "  "


@pytest.mark.parametrize("text", ["NA", "null", "None", "n/a"])
def test_na_like_texts_are_not_missing_by_default(text: str) -> None:
    assert coerce_value("code", column(type="string"), text) == text
    assert fails(column(type="integer"), text).category is ErrorCategory.TYPE


@pytest.mark.parametrize("text", ["NA", " n/a ", ""])
def test_null_values_customization(text: str) -> None:
    spec = column(type="integer", null_values=["", "NA", "n/a"])
    assert coerce_value("amount", spec, text) is None
    required = column(type="integer", required=True, null_values=["", "NA", "n/a"])
    assert fails(required, text, name="amount").category is ErrorCategory.REQUIRED


def test_null_values_are_exact_text() -> None:
    spec = column(type="string", null_values=["NA"])
    assert coerce_value("code", spec, "na") == "na"
    assert coerce_value("code", spec, "") == ""


# --- rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "text", "category", "message"),
    [
        (
            {"type": "decimal", "min": 0},
            "-5",
            ErrorCategory.RANGE,
            "col: '-5' is below the minimum 0",
        ),
        ({"type": "decimal", "max": 9.5}, "9.51", ErrorCategory.RANGE, "is above the maximum 9.5"),
        ({"type": "integer", "min": 1, "max": 10}, "0", ErrorCategory.RANGE, "below the minimum 1"),
        (
            {"type": "integer", "min": 1, "max": 10},
            "11",
            ErrorCategory.RANGE,
            "above the maximum 10",
        ),
        ({"type": "decimal", "min": 0.1}, "0.09", ErrorCategory.RANGE, "below the minimum 0.1"),
        (
            {"type": "date", "min": "2020-01-01"},
            "2019-12-31",
            ErrorCategory.RANGE,
            "'2019-12-31' is earlier than the minimum 2020-01-01",
        ),
        (
            {"type": "timestamp", "max": "2024-01-01T00:00:00"},
            "2024-01-01T00:00:01",
            ErrorCategory.RANGE,
            "is later than the maximum 2024-01-01T00:00:00",
        ),
        (
            {"type": "string", "regex": "[A-Z]{3}-\\d+"},
            "AB-1",
            ErrorCategory.FORMAT,
            "'AB-1' does not match the pattern [A-Z]{3}-\\d+",
        ),
        ({"type": "string", "regex": "\\d+"}, "12x", ErrorCategory.FORMAT, "does not match"),
        (
            {"type": "string", "allowed": ["A", "B"]},
            "C",
            ErrorCategory.RANGE,
            "'C' is not one of the allowed values: A, B",
        ),
        ({"type": "integer", "allowed": ["1", "2"]}, "3", ErrorCategory.RANGE, "allowed values"),
        (
            {"type": "string", "max_length": 5},
            "abcdef",
            ErrorCategory.RANGE,
            "'abcdef' is 6 characters long; at most 5 allowed",
        ),
    ],
)
def test_rules_fail(
    fields: dict[str, Any], text: str, category: ErrorCategory, message: str
) -> None:
    error = fails(column(**fields), text)
    assert error.category is category
    assert message in error.message


@pytest.mark.parametrize(
    ("fields", "text", "expected"),
    [
        ({"type": "decimal", "min": 0}, "0", Decimal("0")),
        ({"type": "decimal", "min": 0.1}, "0.1", Decimal("0.1")),
        ({"type": "integer", "min": 1, "max": 10}, "10", 10),
        ({"type": "integer", "min": -5}, "-5.0", -5),
        (
            {"type": "date", "min": "2020-01-01", "max": "2020-12-31"},
            "2020-12-31",
            date(2020, 12, 31),
        ),
        (
            {"type": "timestamp", "max": "2024-01-01T00:00:00+00:00"},
            "2024-01-01T01:00+01:00",
            datetime(2024, 1, 1),
        ),
        ({"type": "string", "min": 3}, "a", "a"),
        ({"type": "string", "regex": "[A-Z]{3}"}, " ABC ", "ABC"),
        ({"type": "string", "allowed": ["A", "B"]}, "B ", "B"),
        ({"type": "string", "max_length": 3}, " abc ", "abc"),
        ({"type": "string", "max_length": 3}, "äöü", "äöü"),
    ],
)
def test_rules_pass(fields: dict[str, Any], text: str, expected: Value) -> None:
    assert coerce_value("col", column(**fields), text) == expected


def test_rules_are_skipped_for_missing_values() -> None:
    spec = column(type="integer", min=1, regex="\\d+", max_length=2)
    assert coerce_value("col", spec, "") is None


# --- Validator: rows ---------------------------------------------------------------------------


def test_valid_row_has_typed_values_for_every_column() -> None:
    validator = Validator(dataset(SIGNUPS))
    batch = validator.validate_batch(
        [raw(2, signup_id="0042", email="a@example.com", signed_up="31/01/2024", amount="1.50")]
    )
    assert not batch.failed and not batch.duplicates
    [row] = batch.valid
    assert row.source_row == 2
    assert row.values == {
        "signup_id": "0042",
        "email": "a@example.com",
        "signed_up": date(2024, 1, 31),
        "amount": Decimal("1.50"),
    }


def test_absent_optional_columns_are_none() -> None:
    validator = Validator(dataset(SIGNUPS))
    batch = validator.validate_batch([raw(2, signup_id="1", email="a@example.com")])
    [row] = batch.valid
    assert row.values == {
        "signup_id": "1",
        "email": "a@example.com",
        "signed_up": None,
        "amount": None,
    }


def test_key_columns_are_required_even_if_not_flagged() -> None:
    spec = dataset({"code": {"type": "string"}, "n": {"type": "integer"}}, key=["code"])
    batch = Validator(spec).validate_batch([raw(2, code=" ", n="1")])
    [(_, error)] = batch.failed
    assert error.category is ErrorCategory.REQUIRED
    assert error.message == "code is required but empty"


def test_row_fails_on_first_column_and_lists_the_others() -> None:
    validator = Validator(dataset(SIGNUPS))
    row = raw(7, signup_id="", email="nope", signed_up="2024-01-01", amount="-5")
    batch = validator.validate_batch([row])
    [(failed_row, error)] = batch.failed
    assert failed_row is row
    assert error.source_row == 7
    assert error.column == "signup_id"
    assert error.category is ErrorCategory.REQUIRED
    assert error.message == "signup_id is required but empty (and 2 more problems: email, amount)"
    assert error.raw_value == ""


def test_row_error_keeps_the_original_text() -> None:
    validator = Validator(dataset(SIGNUPS))
    batch = validator.validate_batch(
        [raw(3, signup_id="1", email="a@example.com", signed_up=" 2024-13-01 ", amount="abc")]
    )
    [(_, error)] = batch.failed
    assert error.column == "signed_up"
    assert error.category is ErrorCategory.FORMAT
    assert error.raw_value == " 2024-13-01 "
    assert error.message == (
        "signed_up: '2024-13-01' is not a date in format YYYY-MM-DD or DD/MM/YYYY"
        " (and 1 more problem: amount)"
    )


def test_parse_error_passes_through() -> None:
    validator = Validator(dataset(SIGNUPS))
    row = raw(5, "expected 4 fields, found 6", signup_id="1", email="a@example.com")
    batch = validator.validate_batch([row])
    assert not batch.valid
    [(failed_row, error)] = batch.failed
    assert failed_row is row
    assert error.category is ErrorCategory.PARSE
    assert error.message == "expected 4 fields, found 6"
    assert error.source_row == 5
    assert error.column is None


# --- Validator: duplicates ---------------------------------------------------------------------


def test_duplicate_keys_across_batches() -> None:
    validator = Validator(dataset(SIGNUPS, key=["signup_id"]))
    first = validator.validate_batch(
        [
            raw(7, signup_id="42", email="a@example.com"),
            raw(8, signup_id="042", email="b@example.com"),
        ]
    )
    assert [r.source_row for r in first.valid] == [7, 8]
    second = validator.validate_batch(
        [
            raw(9, signup_id="43", email="c@example.com"),
            raw(10, signup_id=" 42 ", email="d@example.com"),
        ]
    )
    assert [r.source_row for r in second.valid] == [9]
    [(dup_row, error)] = second.duplicates
    assert dup_row.source_row == 10
    assert error.category is ErrorCategory.DUPLICATE
    assert error.column == "signup_id"
    assert error.message == "duplicate key signup_id='42' (first seen in row 7)"
    assert error.raw_value == " 42 "


def test_failed_rows_do_not_claim_a_key() -> None:
    validator = Validator(dataset(SIGNUPS, key=["signup_id"]))
    batch = validator.validate_batch(
        [
            raw(2, signup_id="1", email="broken"),
            raw(3, signup_id="1", email="a@example.com"),
            raw(4, signup_id="1", email="still broken"),
        ]
    )
    assert [r.source_row for r in batch.valid] == [3]
    assert [r.source_row for r, _ in batch.failed] == [2, 4]
    assert not batch.duplicates


def test_duplicates_compare_typed_keys() -> None:
    spec = dataset(
        {
            "day": {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
            "price": {"type": "decimal"},
        },
        key=["day", "price"],
    )
    validator = Validator(spec)
    batch = validator.validate_batch(
        [
            raw(2, day="2024-01-31", price="1.5"),
            raw(3, day="31/01/2024", price="1.50"),
            raw(4, day="2024-01-31", price="1.6"),
        ]
    )
    assert [r.source_row for r in batch.valid] == [2, 4]
    [(_, error)] = batch.duplicates
    assert error.message == "duplicate key day='31/01/2024', price='1.50' (first seen in row 2)"


def test_no_key_means_no_duplicates() -> None:
    validator = Validator(dataset(SIGNUPS))
    rows = [raw(n, signup_id="1", email="a@example.com") for n in range(2, 5)]
    assert len(validator.validate_batch(rows).valid) == 3


def test_new_validator_starts_fresh() -> None:
    spec = dataset(SIGNUPS, key=["signup_id"])
    rows = [raw(2, signup_id="1", email="a@example.com")]
    assert Validator(spec).validate_batch(rows).valid
    assert Validator(spec).validate_batch(rows).valid


# --- accounting --------------------------------------------------------------------------------


def test_every_row_lands_in_exactly_one_list() -> None:
    validator = Validator(dataset(SIGNUPS, key=["signup_id"]))
    rows = []
    for n in range(2, 302):
        rows.append(
            raw(
                n,
                "too many fields" if n % 17 == 0 else None,
                signup_id=str(n % 97),
                email="bad" if n % 5 == 0 else f"u{n}@example.com",
                amount="-1" if n % 11 == 0 else "1.00",
            )
        )
    batches = [validator.validate_batch(rows[i : i + 64]) for i in range(0, len(rows), 64)]
    valid = [r.source_row for b in batches for r in b.valid]
    failed = [r.source_row for b in batches for r, _ in b.failed]
    duplicates = [r.source_row for b in batches for r, _ in b.duplicates]
    assert len(valid) + len(failed) + len(duplicates) == len(rows)
    assert sorted(valid + failed + duplicates) == [r.source_row for r in rows]
    assert valid and failed and duplicates
    assert len({r.values["signup_id"] for b in batches for r in b.valid}) == len(valid)


def test_empty_batch() -> None:
    batch = Validator(dataset(SIGNUPS)).validate_batch([])
    assert (batch.valid, batch.failed, batch.duplicates) == ([], [], [])


def test_duplicate_detection_can_be_left_to_the_caller() -> None:
    validator = Validator(dataset(SIGNUPS, key=["signup_id"]), detect_duplicates=False)
    rows = [raw(n, signup_id="1", email="a@example.com") for n in range(2, 5)]
    first, second = validator.validate_batch(rows), validator.validate_batch(rows)
    assert [r.source_row for r in first.valid + second.valid] == [2, 3, 4, 2, 3, 4]
    assert not first.duplicates and not second.duplicates


# --- a batch gives each value what coerce_value gives it ---------------------------------------

# Clean values (converted in bulk) mixed with ones only the value-by-value rules settle.
BATCH_COLUMNS: list[tuple[dict[str, Any], list[str | None]]] = [
    (
        {"type": "integer", "null_values": ["", "NA"]},
        [
            "12",
            "+12",
            "-3",
            "007",
            "NA",
            "",
            None,
            "12.0",
            " 42 ",
            "1,000",
            "١٢",
            "1_000",
            "999999999999999999",
            "9223372036854775807",
            "9223372036854775808",
            "1\n2",
        ],
    ),
    ({"type": "integer", "min": 0, "max": 100}, ["0", "100", "50", "-1", "101"]),
    (
        {"type": "decimal", "scale": 2},
        ["1.50", "-0.5", ".5", "+.5", "1.", ".", "1.500", "1.505", "1e3", "NaN", " 2.25 "],
    ),
    ({"type": "decimal", "scale": 0}, ["1", "1.", "1.0", "1.5", "-7"]),
    (
        {"type": "date"},
        ["2024-01-31", "2024-02-30", "2024-01-31 00:00:00", "20240131", " 2024-01-31"],
    ),
    (
        {"type": "timestamp", "null_values": ["", "NA"]},
        ["2013-01-01T10:00:00Z", "2013-01-01 05:00:00", "2013-01-01T12:00:00+02:00", "NA", "x"],
    ),
    ({"type": "string", "max_length": 3}, ["abc", " ab ", "abcd", "", "NA"]),
    (
        {"type": "string", "regex": "[a-z]+", "null_values": ["", "  NA  "]},
        ["ab", "AB", " NA ", "NA"],
    ),
    ({"type": "string", "strip": False}, [" a ", "a", " ", ""]),
    ({"type": "string", "allowed": ["red", "blue"]}, ["red", " blue ", "green"]),
]


@pytest.mark.parametrize(("fields", "texts"), BATCH_COLUMNS)
@pytest.mark.parametrize("mixed", [True, False])
def test_batch_values_and_errors_are_those_of_coerce_value(
    fields: dict[str, Any], texts: list[str | None], mixed: bool
) -> None:
    spec = column(**fields)
    expected: list[Value | CoercionError] = []
    for text in texts:
        try:
            expected.append(coerce_value("col", spec, text))
        except CoercionError as exc:
            expected.append(exc)
    if not mixed:  # only the values that pass, so the whole column is clean
        texts = [t for t, e in zip(texts, expected, strict=True) if not isinstance(e, Exception)]
        expected = [e for e in expected if not isinstance(e, Exception)]
    rows = [raw(n, col=text) for n, text in enumerate(texts * 3, start=2)]
    batch = Validator(dataset({"col": fields})).validate_batch(rows)
    valid = {r.source_row: r.values["col"] for r in batch.valid}
    failed = {r.source_row: e for r, e in batch.failed}
    assert len(valid) + len(failed) == len(rows)
    for row, want in zip(rows, expected * 3, strict=True):
        if isinstance(want, CoercionError):
            error = failed[row.source_row]
            assert (error.category, error.message) == (want.category, want.message)
        else:
            got = valid[row.source_row]
            assert (type(got), repr(got)) == (type(want), repr(want))


def test_bulk_batch_keeps_first_failing_column_and_later_problems() -> None:
    columns = {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
        "c": {"type": "integer", "max": 9},
    }
    rows = [raw(n, a=str(n), b=str(n), c="1") for n in range(2, 40)]
    rows[5] = raw(7, a="1", b="x", c="10")
    rows[9] = raw(11, "ragged", a="1", b="1", c="1")
    batch = Validator(dataset(columns)).validate_batch(rows)
    assert [(r.source_row, e.column, e.message) for r, e in batch.failed] == [
        (7, "b", "b: 'x' is not a whole number (and 1 more problem: c)"),
        (11, None, "ragged"),
    ]
    assert len(batch.valid) == len(rows) - 2
    assert batch.valid[0].values == {"a": 2, "b": 2, "c": 1}


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("-5", "-5"),
        ("-3.00", "-3.00"),
        ("+1", "+1"),
        ("=SUM(A1)", "'=SUM(A1)"),
        ("@x", "'@x"),
        ("-cmd", "'-cmd"),
        ("\tx", "'\tx"),
        ("'=x", "''=x"),  # a value that really starts with a quote survives too
        ("'plain", "'plain"),
    ],
)
def test_neutralised_cells_are_read_back_as_the_original(value: str, written: str) -> None:
    assert neutralise(value) == written
    assert coerce_value("note", column(type="string"), written) == value
    assert restore(written) == value
