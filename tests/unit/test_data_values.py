"""Value mapping of the data service: database values -> Cells, Cells -> parameters, limits, tenant names."""

from __future__ import annotations

import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2
from services.core.config import load_settings
from services.core.errors import InvalidArgument
from services.data.model import CELL_OVERHEAD, FIRST_BATCH, Json, Limits, checked_tenant, collect, value_size
from services.data.pg_provision import role_password
from services.data.pg_query import _bytea, _json, _timestamp
from services.data.servicer import from_cell, to_cell


def kind(cell: data_pb2.Cell) -> tuple[str | None, object]:
    which = cell.WhichOneof("kind")
    value = getattr(cell, which) if which else None
    if which == "json":
        value = json_format.MessageToDict(value)
    return which, value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, ("int", 1)),
        (9007199254740993, ("int", 9007199254740993)),  # beyond a double's precision: still exact
        (-(2**63), ("int", -(2**63))),
        (2**64, ("decimal", str(2**64))),  # beyond 64 bits: exact text
        (1.5, ("float", 1.5)),
        (True, ("bool", True)),  # not int 1: bool is checked by exact type
        ("text", ("text", "text")),
        (Decimal("1.50"), ("decimal", "1.50")),
        (Decimal("0.00000001"), ("decimal", "0.00000001")),  # never scientific notation
        (Decimal("NaN"), ("decimal", "NaN")),
        (b"\x00\x01", ("bytes", b"\x00\x01")),
        (memoryview(b"ab"), ("bytes", b"ab")),
        (None, ("null", 0)),
        (Json({"k": [1, "s", None]}), ("json", {"k": [1, "s", None]})),
        (Json("a json string"), ("json", "a json string")),
        ([1, 2, None], ("json", [1, 2, None])),
        ([Decimal("1.10"), b"\x01", Json({"a": 1})], ("json", ["1.10", "\\x01", {"a": 1}])),
        (datetime.date(2024, 1, 2), ("text", "2024-01-02")),
        (datetime.timedelta(seconds=5), ("text", "0:00:05")),
    ],
)
def test_database_values_map_to_exact_cells(value: object, expected: tuple[str, object]) -> None:
    assert kind(to_cell(value)) == expected


def test_select_1_cell_is_an_integer_not_a_float() -> None:
    cell = to_cell(1)
    assert cell.WhichOneof("kind") == "int" and not cell.HasField("float")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (data_pb2.Cell(int=-7), -7),
        (data_pb2.Cell(float=2.5), 2.5),
        (data_pb2.Cell(text="x"), "x"),
        (data_pb2.Cell(bool=False), False),
        (data_pb2.Cell(decimal="12.340"), Decimal("12.340")),
        (data_pb2.Cell(bytes=b"\xff"), b"\xff"),
        (data_pb2.Cell(null=struct_pb2.NULL_VALUE), None),
        (data_pb2.Cell(), None),
    ],
)
def test_cells_map_to_parameters(cell: data_pb2.Cell, expected: object) -> None:
    assert from_cell(cell) == expected and type(from_cell(cell)) is type(expected)


def test_json_cells_become_json_parameters() -> None:
    value = struct_pb2.Value()
    json_format.ParseDict({"a": [1, "b"]}, value)
    assert from_cell(data_pb2.Cell(json=value)) == Json({"a": [1, "b"]})


def test_a_bad_decimal_parameter_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="decimal"):
        from_cell(data_pb2.Cell(decimal="1,5"))


def test_postgres_text_values_become_iso_8601_json_and_bytes() -> None:
    assert _timestamp("2024-01-02 03:04:05.5+00", None) == "2024-01-02T03:04:05.5+00:00"
    assert _timestamp("2024-01-02 03:04:05-03", None) == "2024-01-02T03:04:05-03:00"
    assert _timestamp("2024-01-02 03:04:05+05:30", None) == "2024-01-02T03:04:05+05:30"
    assert _timestamp("0044-03-15 12:00:00+00 BC", None) == "0044-03-15T12:00:00+00:00 BC"
    assert _timestamp("2024-01-02 03:04:05", None) == "2024-01-02T03:04:05"  # timestamp without time zone
    assert _timestamp("infinity", None) == "infinity"
    assert _timestamp(None, None) is None
    assert _json('{"n": 12345678901234567890}', None) == Json({"n": 12345678901234567890})
    assert _bytea("\\x0102", None) == b"\x01\x02"


def test_limits_never_exceed_the_server_maximum(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUNCHPAD_QUERY_TIMEOUT_MS", "1000")
    monkeypatch.setenv("LAUNCHPAD_QUERY_MAX_ROWS", "50")
    monkeypatch.setenv("LAUNCHPAD_QUERY_MAX_BYTES", "2048")
    settings = load_settings("data")
    assert Limits.of(settings) == Limits(1000, 50, 2048)
    assert Limits.of(settings, 200, 5) == Limits(200, 5, 2048)
    assert Limits.of(settings, 99999, 99999) == Limits(1000, 50, 2048)
    assert Limits.of(settings, 0, 0, remaining_s=0.3) == Limits(
        300, 50, 2048
    )  # the caller's deadline is lower
    assert Limits.of(settings, remaining_s=0.0).timeout_ms == 1


@pytest.mark.parametrize("name", ["acme", "a", "default", "t2_x", "a" * 40])
def test_valid_tenant_names(name: str) -> None:
    assert checked_tenant(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "1acme", "a-b", "a" * 41, 'x"; DROP ROLE postgres; --', "ä"])
def test_tenant_names_unsafe_for_roles_and_files_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        checked_tenant(name)


def test_role_passwords_depend_on_secret_and_role() -> None:
    assert role_password(b"s", "lp_a_rw") == role_password(b"s", "lp_a_rw")
    assert role_password(b"s", "lp_a_rw") != role_password(b"s", "lp_a_ro")
    assert role_password(b"s", "lp_a_rw") != role_password(b"t", "lp_a_rw")


def test_the_result_byte_budget_defaults_to_4_mib(settings_env: Path) -> None:
    assert load_settings("data").query.max_bytes == 4 * 1024 * 1024


def test_rows_stop_at_the_byte_budget_and_read_little_beyond_it() -> None:
    big = ("x" * 1000,)
    asked: list[int] = []

    def fetch(size: int) -> list[tuple[object, ...]]:
        asked.append(size)
        return [big] * size  # an endless result

    rows = collect(fetch, Limits(1000, 10_000, 10_000))
    assert len(rows.rows) == 9 and rows.truncated and rows.size <= 10_000
    assert sum(asked) <= FIRST_BATCH  # never more than a first batch read before sizes are known


def test_rows_read_in_batches_sized_to_the_room_left() -> None:
    asked: list[int] = []

    def fetch(size: int) -> list[tuple[object, ...]]:
        asked.append(size)
        return [(b"y" * 100,)] * size  # 108 bytes a row, endless

    rows = collect(fetch, Limits(1000, 10_000, 5_000))
    assert rows.truncated and len(rows.rows) == 5_000 // 108
    assert asked[0] == FIRST_BATCH and sum(asked) <= len(rows.rows) + 2  # read about what fits, no more


def test_a_result_that_ends_within_the_limits_is_complete() -> None:
    rows = collect(lambda size: [(1, "a", None)] * min(size, 3), Limits(1000, 10, 1000))
    assert len(rows.rows) == 3 and not rows.truncated


def test_the_row_cap_still_applies_within_the_byte_budget() -> None:
    rows = collect(lambda size: [(1,)] * size, Limits(1000, 5, 1_000_000))
    assert len(rows.rows) == 5 and rows.truncated


def test_a_single_row_above_the_budget_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="single row"):
        collect(lambda size: [("x" * 2000,)], Limits(1000, 10, 1000))


@pytest.mark.parametrize(
    ("value", "size"),
    [("é", 2), (b"abc", 3), (Json({"k": "v"}), 2), ([1, "ab"], 2), (Decimal("1.25"), 4), (None, 0), (7, 0)],
)
def test_value_sizes_count_encoded_bytes(value: object, size: int) -> None:
    assert value_size(value) - size >= CELL_OVERHEAD
    assert value_size(value) - size <= 4 * CELL_OVERHEAD


def test_json_parameters_keep_whole_numbers_whole() -> None:
    value = struct_pb2.Value()
    json_format.ParseDict({"n": 1, "list": [2, 2.5, -3], "big": 2**60, "nested": {"m": 0}}, value)
    param = from_cell(data_pb2.Cell(json=value)).value
    assert param["n"] == 1 and type(param["n"]) is int
    assert param["list"] == [2, 2.5, -3] and [type(x) for x in param["list"]] == [int, float, int]
    assert type(param["nested"]["m"]) is int
    assert type(param["big"]) is float  # beyond 2**53 a double is not exact: left as what it is
