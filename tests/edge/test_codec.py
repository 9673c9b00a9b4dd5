"""JSON <-> proto: grpc-gateway's output defaults, strict input, json_unwrap, URL parameter text."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from google.api import http_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2, type_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2

from edge import codec
from launchpad.auth.v1 import auth_pb2
from launchpad.data.v1 import data_pb2
from launchpad.logs.v1 import logs_pb2
from launchpad.realtime.v1 import realtime_pb2
from launchpad.storage.v1 import storage_pb2


def to_json(message: Any) -> bytes:
    """What an endpoint writes for a response message."""
    return orjson.dumps(codec.encoder(message.DESCRIPTOR)(message))


def from_json(cls: Any, body: bytes) -> Any:
    """What an endpoint with body "*" does with a request body."""
    message = cls()
    codec.decoder(cls.DESCRIPTOR)(message, codec.parse_json(body), "")
    return message


def out(message: Any) -> Any:
    return orjson.loads(to_json(message))


def parse(cls: Any, value: Any) -> Any:
    return from_json(cls, orjson.dumps(value))


def reject(cls: Any, value: Any) -> codec.CodecError:
    with pytest.raises(codec.CodecError) as caught:
        parse(cls, value)
    return caught.value


# ---------------------------------------------------------------------------------------------- output


def test_unpopulated_fields_are_emitted_with_their_defaults() -> None:
    assert out(auth_pb2.LoginResponse()) == {
        "token": "",
        "token_type": "",
        "expires_at": None,
        "expires_in": 0,
        "user": None,
    }
    assert out(data_pb2.ForeignKey()) == {"columns": [], "references_table": "", "references_columns": []}


def test_proto_field_names_not_lower_camel() -> None:
    body = out(data_pb2.TableColumn(name="id", primary_key=True))
    assert "primary_key" in body and "primaryKey" not in body


def test_64_bit_integers_are_exact_json_numbers() -> None:
    body = to_json(data_pb2.QueryResponse(row_count=2**64 - 1, affected_rows=-(2**63)))
    assert b'"row_count":18446744073709551615' in body
    assert b'"affected_rows":-9223372036854775808' in body


def test_select_one_rows_are_bare_arrays_of_bare_values() -> None:
    response = data_pb2.QueryResponse(rows=[data_pb2.Row(values=[data_pb2.Cell(int=1)])])
    assert out(response)["rows"] == [[1]]


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (data_pb2.Cell(int=-7), -7),
        (data_pb2.Cell(float=1.5), 1.5),
        (data_pb2.Cell(text="a"), "a"),
        (data_pb2.Cell(bool=False), False),
        (data_pb2.Cell(null=struct_pb2.NULL_VALUE), None),
        (data_pb2.Cell(), None),
        (data_pb2.Cell(decimal="123456789012345678901234567890.5"), "123456789012345678901234567890.5"),
        (data_pb2.Cell(bytes=b"\x00\x01\xff"), "AAH/"),
        (data_pb2.Cell(json=struct_pb2.Value(string_value="x")), "x"),
    ],
)
def test_json_unwrap_cells(cell: data_pb2.Cell, expected: Any) -> None:
    assert out(cell) == expected


def test_json_cell_holds_nested_json_with_integral_numbers_as_integers() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"a": [1, 2.5, None, True, {"b": "c"}]})
    assert to_json(data_pb2.Cell(json=value)) == b'{"a":[1,2.5,null,true,{"b":"c"}]}'


def test_enums_are_names_and_unknown_numbers_stay_numbers() -> None:
    assert out(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)) == {
        "status": "SERVING"
    }
    field = type_pb2.Field(kind=type_pb2.Field.TYPE_STRING, cardinality=type_pb2.Field.CARDINALITY_REPEATED)
    body = out(field)
    assert (body["kind"], body["cardinality"]) == ("TYPE_STRING", "CARDINALITY_REPEATED")
    assert out(health_pb2.HealthCheckResponse(status=99)) == {"status": 99}


def test_well_known_types() -> None:
    user = auth_pb2.User(
        username="u", created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5_000_000)
    )
    assert out(user)["created_at"] == "2023-11-14T22:13:20.005Z"
    rule = auth_pb2.Rule(effect="allow")
    rule.condition.update({"record.owner": {"eq": "$subject.sub"}, "record.size": {"lt": 10}})
    assert out(rule)["condition"] == {"record.owner": {"eq": "$subject.sub"}, "record.size": {"lt": 10}}
    assert out(realtime_pb2.PublishRequest(topic="t"))["msg"] is None  # an unset Value message is null


def test_maps_are_objects() -> None:
    entry = logs_pb2.LogEntry(labels={"pod": "a", "zone": "b"})
    assert out(entry)["labels"] == {"pod": "a", "zone": "b"}
    assert out(storage_pb2.CreateSignedUrlResponse())["headers"] == {}


def test_non_finite_doubles_are_strings() -> None:
    assert out(data_pb2.QueryResponse(elapsed_ms=math.inf))["elapsed_ms"] == "Infinity"
    assert out(data_pb2.QueryResponse(elapsed_ms=math.nan))["elapsed_ms"] == "NaN"


def test_float32_prints_its_shortest_form() -> None:
    assert out(wrappers_pb2.FloatValue(value=0.1)) == 0.1


def test_unset_oneof_and_optional_fields_are_left_out() -> None:
    assert "password" not in out(auth_pb2.UpdateUserRequest(username="u"))
    assert out(auth_pb2.UpdateUserRequest(username="u", password=""))["password"] == ""
    assert "offset" not in out(realtime_pb2.ConnectRequest(subscribe="t"))
    assert out(http_pb2.HttpRule(get="/x")) == {
        "selector": "",
        "get": "/x",
        "body": "",
        "response_body": "",
        "additional_bindings": [],
    }


def test_response_body_field_encoder() -> None:
    field = data_pb2.QueryResponse.DESCRIPTOR.fields_by_name["rows"]
    encode = codec.field_encoder(field)
    assert encode(data_pb2.QueryResponse(rows=[data_pb2.Row(values=[data_pb2.Cell(text="a")])])) == [["a"]]


@pytest.mark.parametrize(
    "message",
    [
        auth_pb2.User(username="u", roles=["a", "b"], created_at=timestamp_pb2.Timestamp(seconds=1)),
        storage_pb2.CreateSignedUrlResponse(url="u", headers={"content-type": "x"}),
        realtime_pb2.ConnectResponse(type="message", topic="t", offset=3),
        health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING),
    ],
)
def test_same_json_as_protojson_with_grpc_gateway_options(message: Any) -> None:
    """Matches json_format (the reference) where grpc-gateway's numbers-as-numbers choice does not apply."""
    reference = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    reference = {k: (int(v) if k == "offset" else v) for k, v in reference.items()}
    ours = out(message)
    assert {k: v for k, v in ours.items() if v is not None} == reference


# ----------------------------------------------------------------------------------------------- input


def test_both_proto_and_lower_camel_names_are_accepted() -> None:
    proto = parse(data_pb2.QueryRequest, {"sql": "x", "max_rows": 5, "timeout_ms": 7})
    camel = parse(data_pb2.QueryRequest, {"sql": "x", "maxRows": 5, "timeoutMs": 7})
    assert proto == camel == data_pb2.QueryRequest(sql="x", max_rows=5, timeout_ms=7)


def test_the_same_field_twice_under_both_names_is_rejected() -> None:
    error = reject(data_pb2.QueryRequest, {"max_rows": 1, "maxRows": 2})
    assert error.field == "max_rows"


def test_two_members_of_a_oneof_are_rejected() -> None:
    error = reject(http_pb2.HttpRule, {"get": "/a", "post": "/b"})
    assert "more than once" in str(error)


def test_unknown_fields_are_named_with_their_path() -> None:
    error = reject(auth_pb2.DryRunPolicyRequest, {"policy": {"rules": [{}, {"efect": "allow"}]}})
    assert error.field == "policy.rules[1].efect"
    assert str(error) == 'unknown field "policy.rules[1].efect" in launchpad.auth.v1.Rule'


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"sql": 1}, "sql", "expected a string, got number"),
        ({"sql": None, "max_rows": True}, "max_rows", "expected an integer, got boolean"),
        ({"max_rows": 1.5}, "max_rows", "expected an integer"),
        ({"max_rows": 2**32}, "max_rows", "out of range"),
        ({"params": "x"}, "params", "expected an array"),
        ({"params": [{"a": 1}, 2**64 - 1]}, "params[1]", "cannot hold"),
    ],
)
def test_wrong_types_name_the_field(value: Any, field: str, words: str) -> None:
    error = reject(data_pb2.QueryRequest, value)
    assert error.field == field
    assert words in str(error)


def test_null_means_unset_except_where_null_is_a_value() -> None:
    assert parse(auth_pb2.LoginRequest, {"username": None}) == auth_pb2.LoginRequest()
    assert not parse(auth_pb2.CreatePolicyRequest, {"policy": None}).HasField("policy")
    request = parse(realtime_pb2.PublishRequest, {"msg": None})
    assert request.msg.WhichOneof("kind") == "null_value"
    cells = parse(data_pb2.QueryRequest, {"params": [None]}).params
    assert cells[0].WhichOneof("kind") == "null"


def test_integers_accept_their_string_form() -> None:
    response = parse(auth_pb2.LoginResponse, {"expires_in": "9223372036854775807"})
    assert response.expires_in == 2**63 - 1
    assert reject(auth_pb2.LoginResponse, {"expires_in": "12abc"}).field == "expires_in"


def test_cells_pick_their_member_by_json_type() -> None:
    values = [1, -(2**63), 2.5, "s", True, None, {"k": [1]}, [1, "a"]]
    cells = parse(data_pb2.QueryRequest, {"params": values}).params
    kinds = [cell.WhichOneof("kind") for cell in cells]
    assert kinds == ["int", "int", "float", "text", "bool", "null", "json", "json"]
    assert cells[1].int == -(2**63)
    assert out(data_pb2.Row(values=cells)) == values


def test_rows_parse_from_bare_arrays() -> None:
    response = parse(data_pb2.QueryResponse, {"rows": [[1, "a"], []]})
    assert [len(row.values) for row in response.rows] == [2, 0]


def test_well_known_types_parse_from_their_json() -> None:
    user = parse(auth_pb2.User, {"username": "u", "createdAt": "2024-01-02T03:04:05.123456789+01:00"})
    assert (user.created_at.seconds, user.created_at.nanos) == (1704161045, 123456789)
    assert reject(auth_pb2.User, {"created_at": "yesterday"}).field == "created_at"
    assert reject(auth_pb2.User, {"created_at": 5}).field == "created_at"
    rule = parse(auth_pb2.Rule, {"condition": {"record.n": {"in": [1, 2]}}})
    assert out(rule)["condition"] == {"record.n": {"in": [1, 2]}}
    assert reject(auth_pb2.Rule, {"condition": [1]}).field == "condition"


def test_maps_and_bytes_and_enums_parse() -> None:
    entry = parse(logs_pb2.LogEntry, {"labels": {"a": "b"}})
    assert dict(entry.labels) == {"a": "b"}
    assert reject(logs_pb2.LogEntry, {"labels": {"a": 1}}).field == "labels['a']"
    chunk = parse(storage_pb2.ReadObjectResponse, {"data": "AAH_"})  # URL-safe, unpadded
    assert chunk.data == b"\x00\x01\xff"
    assert reject(storage_pb2.ReadObjectResponse, {"data": "not base64!"}).field == "data"
    assert parse(type_pb2.Field, {"kind": "TYPE_BOOL"}).kind == type_pb2.Field.TYPE_BOOL
    assert parse(type_pb2.Field, {"kind": 8}).kind == type_pb2.Field.TYPE_BOOL
    assert "TYPE_BOOL" in str(reject(type_pb2.Field, {"kind": "BOOLEAN"}))


def test_round_trip_of_a_nested_request() -> None:
    request = {
        "policy": {
            "name": "p",
            "rules": [{"effect": "deny", "actions": ["write"], "resource": "t/*", "condition": {"a": None}}],
            "tenant": "",
            "created_at": None,
            "created_by": "",
            "updated_at": None,
            "updated_by": "",
        },
        "records": [{"owner": "bob", "n": 3}],
        "action": "write",
        "resource": "t/1",
        "subject": None,
        "live": None,
    }
    assert out(parse(auth_pb2.DryRunPolicyRequest, request)) == request


def test_invalid_json_and_non_objects() -> None:
    with pytest.raises(codec.CodecError, match="not valid JSON"):
        from_json(data_pb2.QueryRequest, b'{"sql": ')
    error = reject(data_pb2.QueryRequest, ["sql"])
    assert error.field == "" and "expected an object" in str(error)


# ---------------------------------------------------------------------------------- URL parameter text


def _set(cls: Any, name: str, *texts: str) -> Any:
    message = cls()
    codec.text_setter(codec.text_leaves(cls.DESCRIPTOR)[name])(message, list(texts))
    return message


def test_url_text_converts_to_the_field_type() -> None:
    assert _set(storage_pb2.ListObjectsRequest, "pageSize", "25").page_size == 25
    assert _set(auth_pb2.UpdateUserRequest, "disabled", "true").disabled is True
    assert _set(auth_pb2.UpdateUserRequest, "roles", "a", "b").roles == ["a", "b"]
    assert _set(type_pb2.Field, "kind", "TYPE_STRING").kind == type_pb2.Field.TYPE_STRING
    assert _set(auth_pb2.User, "created_at", "1970-01-01T00:00:10Z").created_at.seconds == 10
    assert _set(wrappers_pb2.Int64Value, "value", "-5").value == -5


def test_url_text_nested_paths_and_errors() -> None:
    leaves = codec.text_leaves(auth_pb2.GetCurrentUserResponse.DESCRIPTOR)
    assert {"user.username", "user.createdAt", "user.created_at"} <= set(leaves)
    assert "user.roles" in leaves  # repeated scalars are leaves; repeated messages and maps are not
    assert "policy.rules" not in codec.text_leaves(auth_pb2.CreatePolicyRequest.DESCRIPTOR)
    with pytest.raises(codec.CodecError, match="more than once"):
        _set(storage_pb2.ListObjectsRequest, "prefix", "a", "b")
    with pytest.raises(codec.CodecError, match="not an integer"):
        _set(storage_pb2.ListObjectsRequest, "page_size", "ten")
    with pytest.raises(codec.CodecError, match="not a boolean"):
        _set(auth_pb2.UpdateUserRequest, "disabled", "maybe")
