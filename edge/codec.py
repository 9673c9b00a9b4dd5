"""JSON <-> protobuf with grpc-gateway's defaults, compiled once per message type.

Output: proto field names, every unpopulated field (scalars with their defaults, repeated as [], unset
messages as null; unset oneof members and proto3 `optional` fields are left out, as protojson does), enums as
names, 64-bit integers as exact JSON numbers, bytes as base64, Timestamp/Duration as strings, Struct/Value as
plain JSON, and messages with the `json_unwrap` option as the bare value of their one set field.
Input: proto or lowerCamel names, strict types; errors name the field.

Encoders are generated Python functions (one per message type, built on first use and cached), so encoding a
message is one call with attribute reads and no per-field dispatch -- several times faster than
json_format.MessageToDict, which reflects over the descriptor on every call.
"""

from __future__ import annotations

import base64
import binascii
import keyword
import math
import struct
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from launchpad.api.v1 import options_pb2

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, Any, str], None]  # (message or container, JSON value, field path for errors)
TextSetter = Callable[[Message, list[str]], None]

F = FieldDescriptor
_INT32 = (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32)
_UINT32 = (F.TYPE_UINT32, F.TYPE_FIXED32)
_INT64 = (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64)
_UINT64 = (F.TYPE_UINT64, F.TYPE_FIXED64)
_INTEGERS = _INT32 + _UINT32 + _INT64 + _UINT64
_FLOATS = (F.TYPE_DOUBLE, F.TYPE_FLOAT)
WRAPPERS = frozenset(
    f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool")
) | {"google.protobuf.StringValue", "google.protobuf.BytesValue"}
_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_NULL_ENUM = "google.protobuf.NullValue"
_INT_RANGES = {
    **dict.fromkeys(_INT32, (-(2**31), 2**31 - 1)),
    **dict.fromkeys(_UINT32, (0, 2**32 - 1)),
    **dict.fromkeys(_INT64, (-(2**63), 2**63 - 1)),
    **dict.fromkeys(_UINT64, (0, 2**64 - 1)),
}


class CodecError(ValueError):
    """Input that does not fit the message: names the field (a dotted path, "" for the whole body)."""

    def __init__(self, field: str, message: str, *, text: str = "") -> None:
        where = f'invalid value for field "{field}"' if field else "invalid request body"
        super().__init__(text or f"{where}: {message}")
        self.field = field
        self.description = message

    @classmethod
    def unknown_field(cls, field: str, type_name: str) -> CodecError:
        return cls(field, f"unknown field in {type_name}", text=f'unknown field "{field}" in {type_name}')


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _type_error(path: str, expected: str, value: Any) -> CodecError:
    return CodecError(path, f"expected {expected}, got {_json_type(value)}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_json_unwrap(desc: Descriptor) -> bool:
    return bool(desc.GetOptions().Extensions[options_pb2.json_unwrap])


def message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


# ----------------------------------------------------------------------------------------------- output


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
    if enum.full_name == _NULL_ENUM:
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
    if name in _STRING_WKT:
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
    found = _encoders.get(desc.full_name)
    if found is not None:
        return found
    # A placeholder that resolves later breaks recursion through self-referencing message types.
    _encoders[desc.full_name] = lambda m: _encoders[desc.full_name](m)
    try:
        compiled = _wkt_encoder(desc)
        if compiled is None:
            compiled = _compile_unwrap(desc) if is_json_unwrap(desc) else _compile_message(desc)
    except BaseException:
        del _encoders[desc.full_name]
        raise
    _encoders[desc.full_name] = compiled
    return compiled


def field_encoder(field: FieldDescriptor) -> Encoder:
    """message -> JSON value of one of its fields (for an HttpRule's response_body)."""
    src = _Source()
    exec(f"def encode(m):\n    return {src.expression(field)}", src.namespace)
    return src.namespace["encode"]


def to_json(message: Message) -> bytes:
    return orjson.dumps(encoder(message.DESCRIPTOR)(message))


# ------------------------------------------------------------------------------------------------ input


def _int_in(field: FieldDescriptor) -> Callable[[Any, str], int]:
    low, high = _INT_RANGES[field.type]

    def convert(value: Any, path: str) -> int:
        kind = type(value)
        if kind is int:
            number = value
        elif kind is float and value.is_integer():
            number = int(value)
        elif kind is str:  # protojson accepts 64-bit integers as strings too
            try:
                number = int(value.strip())
            except ValueError:
                raise CodecError(path, f"{value!r} is not an integer") from None
        else:
            raise _type_error(path, "an integer", value)
        if not low <= number <= high:
            raise CodecError(path, f"{number} is out of range [{low}, {high}]")
        return number

    return convert


def _float_in(value: Any, path: str) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str and value in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    raise _type_error(path, "a number", value)


def _str_in(value: Any, path: str) -> str:
    if type(value) is str:
        return value
    raise _type_error(path, "a string", value)


def _bool_in(value: Any, path: str) -> bool:
    if type(value) is bool:
        return value
    raise _type_error(path, "true or false", value)


def _bytes_in(value: Any, path: str) -> bytes:
    text = _str_in(value, path)
    padded = text + "=" * (-len(text) % 4)
    try:  # standard or URL-safe alphabet, padding optional, as protojson accepts
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(path, "expected base64") from None


def _enum_in(enum: EnumDescriptor) -> Callable[[Any, str], int]:
    numbers = {v.name: v.number for v in enum.values}
    known = set(numbers.values())

    def convert(value: Any, path: str) -> int:
        if type(value) is str and value in numbers:
            return numbers[value]
        if type(value) is int and value in known:
            return value
        if enum.full_name == _NULL_ENUM and value is None:
            return 0
        raise CodecError(path, f"expected one of {sorted(numbers)}, got {value!r}")

    return convert


def _scalar_in(field: FieldDescriptor) -> Callable[[Any, str], Any]:
    if field.type in _INTEGERS:
        return _int_in(field)
    if field.type in _FLOATS:
        return _float_in
    if field.type == F.TYPE_BOOL:
        return _bool_in
    if field.type == F.TYPE_STRING:
        return _str_in
    if field.type == F.TYPE_BYTES:
        return _bytes_in
    return _enum_in(field.enum_type)


def value_in(target: Any, value: Any, path: str) -> None:
    """Plain JSON -> google.protobuf.Value (in place)."""
    kind = type(value)
    if value is None:
        target.null_value = 0
    elif kind is bool:
        target.bool_value = value
    elif kind is int or kind is float:
        target.number_value = value
    elif kind is str:
        target.string_value = value
    elif kind is dict:
        struct_in(target.struct_value, value, path)
    elif kind is list:
        list_in(target.list_value, value, path)
    else:
        raise _type_error(path, "a JSON value", value)


def struct_in(target: Any, value: Any, path: str) -> None:
    if type(value) is not dict:
        raise _type_error(path, "an object", value)
    target.SetInParent()
    for key, item in value.items():
        value_in(target.fields[key], item, _join(path, key))


def list_in(target: Any, value: Any, path: str) -> None:
    if type(value) is not list:
        raise _type_error(path, "an array", value)
    target.SetInParent()
    for index, item in enumerate(value):
        value_in(target.values.add(), item, f"{path}[{index}]")


def _string_wkt_in(target: Any, value: Any, path: str) -> None:
    try:
        target.FromJsonString(_str_in(value, path))
    except ValueError as exc:
        raise CodecError(path, str(exc)) from None


def _wrapper_in(desc: Descriptor) -> Decoder:
    convert = _scalar_in(desc.fields_by_name["value"])

    def decode(target: Any, value: Any, path: str) -> None:
        target.value = convert(value, path)

    return decode


def _any_in(target: Any, value: Any, path: str) -> None:
    try:
        json_format.ParseDict(value, target)
    except json_format.ParseError as exc:
        raise CodecError(path, str(exc)) from None


def _wkt_decoder(desc: Descriptor) -> Decoder | None:
    name = desc.full_name
    if name == "google.protobuf.Struct":
        return struct_in
    if name == "google.protobuf.Value":
        return value_in
    if name == "google.protobuf.ListValue":
        return list_in
    if name in _STRING_WKT:
        return _string_wkt_in
    if name in WRAPPERS:
        return _wrapper_in(desc)
    if name == "google.protobuf.Any":
        return _any_in
    return None


def _accepts_null(field: FieldDescriptor) -> bool:
    """Whether JSON null is a value of this field rather than "leave it unset"."""
    if field.type == F.TYPE_ENUM:
        return field.enum_type.full_name == _NULL_ENUM
    if field.type == F.TYPE_MESSAGE:
        return field.message_type.full_name == "google.protobuf.Value" or is_json_unwrap(field.message_type)
    return False


def _map_setter(field: FieldDescriptor) -> Decoder:
    entry = field.message_type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    key_in = _map_bool_key if key_field.type == F.TYPE_BOOL else _scalar_in(key_field)
    sub = decoder(value_field.message_type) if value_field.type == F.TYPE_MESSAGE else None
    item_in = None if sub else _scalar_in(value_field)
    name = field.name

    def set_map(m: Any, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise _type_error(path, "an object", value)
        target = getattr(m, name)
        for raw_key, item in value.items():
            where = f"{path}[{raw_key!r}]"
            key = key_in(raw_key, where)  # JSON object keys are strings; integer keys parse from them
            if sub is not None:
                sub(target[key], item, where)
            else:
                target[key] = item_in(item, where)

    return set_map


def _map_bool_key(value: str, path: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise CodecError(path, "map key must be true or false")


def _repeated_setter(field: FieldDescriptor) -> Decoder:
    name = field.name
    if field.type == F.TYPE_MESSAGE:
        sub = decoder(field.message_type)

        def set_messages(m: Any, value: Any, path: str) -> None:
            if type(value) is not list:
                raise _type_error(path, "an array", value)
            target = getattr(m, name)
            for index, item in enumerate(value):
                sub(target.add(), item, f"{path}[{index}]")

        return set_messages
    convert = _scalar_in(field)

    def set_scalars(m: Any, value: Any, path: str) -> None:
        if type(value) is not list:
            raise _type_error(path, "an array", value)
        getattr(m, name).extend([convert(item, f"{path}[{i}]") for i, item in enumerate(value)])

    return set_scalars


def _field_setter(field: FieldDescriptor) -> Decoder:
    """(message, JSON value, path) -> sets the field; JSON null leaves it unset unless null is a value."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        setter = _map_setter(field)
    elif field.is_repeated:
        setter = _repeated_setter(field)
    elif field.type == F.TYPE_MESSAGE:
        setter = _message_setter(field)
    else:
        setter = _scalar_setter(field)
    if _accepts_null(field):
        return setter

    def skip_null(m: Any, value: Any, path: str) -> None:
        if value is not None:
            setter(m, value, path)

    return skip_null


def field_setter(field: FieldDescriptor) -> Decoder:
    """(parent message, JSON value, path) -> sets one field (for an HttpRule's field body)."""
    return _field_setter(field)


def _message_setter(field: FieldDescriptor) -> Decoder:
    sub, name = decoder(field.message_type), field.name

    def set_message(m: Any, value: Any, path: str) -> None:
        target = getattr(m, name)
        target.SetInParent()
        sub(target, value, path)

    return set_message


def _scalar_setter(field: FieldDescriptor) -> Decoder:
    convert, name = _scalar_in(field), field.name

    def set_scalar(m: Any, value: Any, path: str) -> None:
        setattr(m, name, convert(value, path))

    return set_scalar


def _compile_object_decoder(desc: Descriptor) -> Decoder:
    setters: dict[str, tuple[str, Decoder, str]] = {}  # JSON key -> (proto name, setter, exclusion group)
    for field in desc.fields:
        oneof = field.containing_oneof
        group = oneof.name if oneof is not None and len(oneof.fields) > 1 else field.name
        entry = (field.name, _field_setter(field), group)
        setters[field.name] = setters[field.json_name] = entry
    type_name = desc.full_name

    def decode(m: Any, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise _type_error(path, "an object", value)
        seen: set[str] = set()
        for key, item in value.items():
            found = setters.get(key)
            if found is None:
                raise CodecError.unknown_field(_join(path, key), type_name)
            name, setter, group = found
            if group in seen and item is not None:
                raise CodecError(_join(path, name), f"{group!r} is given more than once")
            if item is not None:
                seen.add(group)
            setter(m, item, _join(path, name))

    return decode


def _member_chooser(desc: Descriptor) -> Callable[[Any], FieldDescriptor | None]:
    """For a json_unwrap message: JSON value -> the oneof member that holds it, chosen by its JSON type
    (null, bool, int, float, str; objects and arrays go to a google.protobuf.Value member)."""
    by_type: dict[type, FieldDescriptor] = {}
    integers: list[tuple[int, int, FieldDescriptor]] = []
    for field in desc.fields:
        if field.type == F.TYPE_ENUM and _accepts_null(field):
            by_type.setdefault(type(None), field)
        elif field.type == F.TYPE_BOOL:
            by_type.setdefault(bool, field)
        elif field.type in _FLOATS:
            by_type.setdefault(float, field)
        elif field.type == F.TYPE_STRING:
            by_type.setdefault(str, field)
        elif field.type in _INTEGERS:
            integers.append((*_INT_RANGES[field.type], field))
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Value":
            by_type.setdefault(dict, field)
            by_type.setdefault(list, field)

    def choose(value: Any) -> FieldDescriptor | None:
        if type(value) is int:  # the first integer member it fits; never rounded into a double
            return next((field for low, high, field in integers if low <= value <= high), None)
        return by_type.get(type(value))

    return choose


def _compile_unwrap_decoder(desc: Descriptor) -> Decoder:
    if len(desc.fields) == 1 and desc.fields[0].containing_oneof is None:
        return _field_setter(desc.fields[0])
    setters = {field.name: _field_setter(field) for field in desc.fields}
    choose = _member_chooser(desc)

    def decode(m: Any, value: Any, path: str) -> None:
        field = choose(value)
        if field is None:
            raise CodecError(path, f"cannot hold {_json_type(value)} {value!r}"[:200])
        setters[field.name](m, value, path)

    return decode


_decoders: dict[str, Decoder] = {}


def decoder(desc: Descriptor) -> Decoder:
    """(message, JSON value, path) -> fills the message in place; compiled once per message type."""
    found = _decoders.get(desc.full_name)
    if found is not None:
        return found
    _decoders[desc.full_name] = lambda m, v, p: _decoders[desc.full_name](m, v, p)
    try:
        compiled = _wkt_decoder(desc)
        if compiled is None:
            compiled = (
                _compile_unwrap_decoder(desc) if is_json_unwrap(desc) else _compile_object_decoder(desc)
            )
    except BaseException:
        del _decoders[desc.full_name]
        raise
    _decoders[desc.full_name] = compiled
    return compiled


def parse_json(body: bytes) -> Any:
    """Bytes -> JSON value; CodecError on malformed input."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError("", f"not valid JSON: {exc}") from None


def from_json(cls: type[Message], body: bytes) -> Message:
    message = cls()
    decoder(cls.DESCRIPTOR)(message, parse_json(body), "")
    return message


# -------------------------------------------------------------- text values (path and query parameters)

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _text_in(field: FieldDescriptor) -> Callable[[str, str], Any]:
    """str -> field value for URL parameters (grpc-gateway accepts the same spellings)."""
    if field.type == F.TYPE_BOOL:
        return _bool_text
    if field.type in _FLOATS:
        return _float_text
    if field.type == F.TYPE_ENUM:
        enum_in = _enum_in(field.enum_type)
        return lambda text, path: enum_in(int(text) if text.lstrip("-").isdigit() else text, path)
    return _scalar_in(field)  # strings, bytes (base64) and integers accept their text form already


def _bool_text(text: str, path: str) -> bool:
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise CodecError(path, f"{text!r} is not a boolean")


def _float_text(text: str, path: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CodecError(path, f"{text!r} is not a number") from None


def text_leaves(desc: Descriptor, max_depth: int = 3) -> dict[str, tuple[FieldDescriptor, ...]]:
    """Every field path a URL parameter may name ("a.b", proto or json names) -> the fields along it."""
    leaves: dict[str, tuple[FieldDescriptor, ...]] = {}
    _walk_leaves(desc, (), leaves, max_depth, {desc.full_name})
    return leaves


def _walk_leaves(desc, trail, leaves, depth, seen) -> None:
    for field in desc.fields:
        path = (*trail, field)
        sub = field.message_type
        is_map = sub is not None and sub.GetOptions().map_entry
        if sub is None or sub.full_name in _STRING_WKT or sub.full_name in WRAPPERS:
            for names in _name_variants(path):
                leaves[names] = path
        elif not is_map and not field.is_repeated and depth > 1 and sub.full_name not in seen:
            _walk_leaves(sub, path, leaves, depth - 1, seen | {sub.full_name})


def _name_variants(path: tuple[FieldDescriptor, ...]) -> set[str]:
    return {".".join(f.name for f in path), ".".join(f.json_name for f in path)}


def text_setter(path: tuple[FieldDescriptor, ...]) -> TextSetter:
    """(message, [texts]) -> sets the field at `path` from URL parameter values."""
    *parents, leaf = path
    dotted = ".".join(f.name for f in path)
    repeated = leaf.is_repeated
    fill = _message_text(leaf.message_type) if leaf.message_type is not None else None
    convert = _text_in(leaf) if fill is None else None

    def set_text(message: Message, texts: list[str]) -> None:
        target = message
        for parent in parents:
            target = getattr(target, parent.name)
        if not repeated and len(texts) > 1:
            raise CodecError(dotted, "given more than once")
        if fill is not None:
            for text in texts:
                fill(
                    getattr(target, leaf.name).add() if repeated else getattr(target, leaf.name), text, dotted
                )
        elif repeated:
            getattr(target, leaf.name).extend([convert(text, dotted) for text in texts])
        else:
            setattr(target, leaf.name, convert(texts[0], dotted))

    return set_text


def _message_text(desc: Descriptor) -> Callable[[Any, str, str], None]:
    """Fills a Timestamp / Duration / FieldMask (their JSON strings) or a wrapper (its scalar) from text."""
    if desc.full_name not in WRAPPERS:
        return _string_wkt_in
    convert = _text_in(desc.fields_by_name["value"])

    def fill(target: Any, text: str, path: str) -> None:
        target.value = convert(text, path)

    return fill
