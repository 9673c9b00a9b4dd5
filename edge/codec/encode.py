"""proto -> JSON with grpc-gateway's output defaults, compiled once per message type.

Proto field names, every unpopulated field (scalars with their defaults, repeated as [], unset messages as
null; unset oneof members and proto3 `optional` fields are left out, as protojson does), enums as names, 64-bit
integers as exact JSON numbers, bytes as base64, Timestamp/Duration as strings, Struct/Value as plain JSON, and
messages with the `json_unwrap` option as the bare value of their one set field.

Encoders are generated Python functions (one per message type, built on first use and cached), so encoding a
message is one call with attribute reads and no per-field dispatch -- several times faster than
json_format.MessageToDict, which reflects over the descriptor on every call.
"""

from __future__ import annotations

import base64
import keyword
import math
import struct
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from edge.codec.common import NULL_ENUM, STRING_WKT, WRAPPERS, Encoder, F, compiled_once, is_json_unwrap


def _float_out(value: float) -> float | str:
    # JSON has no NaN/Infinity: protojson writes them as strings.
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _float32_out(value: float) -> float | str:
    """The shortest decimal that round-trips through float32 (0.1f -> 0.1, not 0.10000000149011612)."""
    if not math.isfinite(value):
        return _float_out(value)
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == value:
            return short
    return value


def _bytes_out(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _enum_out(enum: EnumDescriptor) -> Encoder:
    if enum.full_name == NULL_ENUM:
        return lambda _value: None
    names = {v.number: v.name for v in enum.values}
    return lambda value: names.get(value, value)


def _number_out(value: float) -> int | float | str:
    # Value.number_value is a double; print integral values as integers, as protojson does.
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return _float_out(value)


def value_out(value: Any) -> Any:
    """google.protobuf.Value -> plain JSON value."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _number_out(value.number_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_out(value.struct_value)
    if kind == "list_value":
        return list_out(value.list_value)
    return None


def struct_out(value: Any) -> dict[str, Any]:
    return {key: value_out(item) for key, item in value.fields.items()}


def list_out(value: Any) -> list[Any]:
    return [value_out(item) for item in value.values]


def _scalar_out(field: FieldDescriptor) -> Encoder | None:
    """Converter for one scalar/enum value, None when the Python value is already the JSON value."""
    if field.type == F.TYPE_ENUM:
        return _enum_out(field.enum_type)
    if field.type == F.TYPE_BYTES:
        return _bytes_out
    if field.type == F.TYPE_DOUBLE:
        return _float_out
    if field.type == F.TYPE_FLOAT:
        return _float32_out
    return None


def _value_out(field: FieldDescriptor) -> Encoder | None:
    if field.type == F.TYPE_MESSAGE:
        return encoder(field.message_type)
    return _scalar_out(field)


def _map_key_out(field: FieldDescriptor) -> Encoder | None:
    if field.type == F.TYPE_BOOL:
        return lambda key: "true" if key else "false"
    return None if field.type == F.TYPE_STRING else str


class _Source:
    """Builds the source of one generated encoder; converters are bound as c0, c1, ... in its namespace."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}

    def bind(self, obj: Any) -> str:
        name = f"c{len(self.namespace)}"
        self.namespace[name] = obj
        return name

    def attr(self, field: FieldDescriptor) -> str:
        if keyword.iskeyword(field.name):
            return f"getattr(m, {field.name!r})"
        return f"m.{field.name}"

    def expression(self, field: FieldDescriptor) -> str:
        get, conv = self.attr(field), _value_out(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_conv = _map_key_out(field.message_type.fields_by_name["key"])
            item = _value_out(field.message_type.fields_by_name["value"])
            key = f"{self.bind(key_conv)}(k)" if key_conv else "k"
            value = f"{self.bind(item)}(v)" if item else "v"
            return f"{{{key}: {value} for k, v in {get}.items()}}"
        if field.is_repeated:
            return f"list(map({self.bind(conv)}, {get}))" if conv else f"list({get})"
        if field.type == F.TYPE_MESSAGE:
            return f"({self.bind(conv)}({get}) if m.HasField({field.name!r}) else None)"
        return f"{self.bind(conv)}({get})" if conv else get


def _has_presence_only(field: FieldDescriptor) -> bool:
    """Fields protojson leaves out when unset: oneof members, including proto3 `optional` ones."""
    return field.containing_oneof is not None


def _compile_message(desc: Descriptor) -> Encoder:
    src = _Source()
    always = [f for f in desc.fields if not _has_presence_only(f)]
    optional = [f for f in desc.fields if _has_presence_only(f)]
    lines = ["def encode(m):"]
    items = ", ".join(f"{f.name!r}: {src.expression(f)}" for f in always)
    lines.append(f"    d = {{{items}}}")
    for f in optional:
        lines.append(f"    if m.HasField({f.name!r}): d[{f.name!r}] = {src.expression(f)}")
    lines.append("    return d")
    exec("\n".join(lines), src.namespace)  # generated from descriptor names only, never from input
    return src.namespace["encode"]


def _compile_unwrap(desc: Descriptor) -> Encoder:
    """json_unwrap: the bare value of the one set field (a oneof member, or the message's only field)."""
    if len(desc.fields) == 1 and desc.fields[0].containing_oneof is None:
        src = _Source()
        exec(f"def encode(m):\n    return {src.expression(desc.fields[0])}", src.namespace)
        return src.namespace["encode"]
    if len(desc.oneofs) != 1 or len(desc.oneofs[0].fields) != len(desc.fields):
        raise ValueError(f"{desc.full_name}: json_unwrap needs one field or one oneof holding every field")
    members = {field.name: (field.name, _value_out(field)) for field in desc.fields}
    oneof = desc.oneofs[0].name

    def encode(m: Any) -> Any:
        which = m.WhichOneof(oneof)
        if which is None:
            return None
        name, conv = members[which]
        value = getattr(m, name)
        return conv(value) if conv else value

    return encode


def _wkt_encoder(desc: Descriptor) -> Encoder | None:
    name = desc.full_name
    if name == "google.protobuf.Struct":
        return struct_out
    if name == "google.protobuf.Value":
        return value_out
    if name == "google.protobuf.ListValue":
        return list_out
    if name in STRING_WKT:
        return lambda m: m.ToJsonString()
    if name in WRAPPERS:
        conv = _scalar_out(desc.fields_by_name["value"])
        return (lambda m: conv(m.value)) if conv else (lambda m: m.value)
    if name == "google.protobuf.Any":
        return lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
    return None


_encoders: dict[str, Encoder] = {}


def encoder(desc: Descriptor) -> Encoder:
    """message -> plain JSON-able Python value, compiled once per message type."""
    return compiled_once(_encoders, desc, _compile)


def _compile(desc: Descriptor) -> Encoder:
    compiled = _wkt_encoder(desc)
    if compiled is None:
        compiled = _compile_unwrap(desc) if is_json_unwrap(desc) else _compile_message(desc)
    return compiled


def field_encoder(field: FieldDescriptor) -> Encoder:
    """message -> JSON value of one of its fields (for an HttpRule's response_body)."""
    src = _Source()
    exec(f"def encode(m):\n    return {src.expression(field)}", src.namespace)
    return src.namespace["encode"]
