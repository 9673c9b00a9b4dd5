"""JSON body, path and query text -> proto: proto or lowerCamel names, strict types; errors name the field.

JSON decoders are compiled once per message type; path and query parameters are set through text setters
that accept the spellings grpc-gateway accepts.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from edge.codec.common import (
    FLOATS,
    INT_RANGES,
    INTEGERS,
    NULL_ENUM,
    STRING_WKT,
    WRAPPERS,
    CodecError,
    Decoder,
    F,
    TextSetter,
    compiled_once,
    is_json_unwrap,
    join,
    json_type,
    type_error,
)


def _int_in(field: FieldDescriptor) -> Callable[[Any, str], int]:
    low, high = INT_RANGES[field.type]

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
            raise type_error(path, "an integer", value)
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
    raise type_error(path, "a number", value)


def _str_in(value: Any, path: str) -> str:
    if type(value) is str:
        return value
    raise type_error(path, "a string", value)


def _bool_in(value: Any, path: str) -> bool:
    if type(value) is bool:
        return value
    raise type_error(path, "true or false", value)


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
        if enum.full_name == NULL_ENUM and value is None:
            return 0
        raise CodecError(path, f"expected one of {sorted(numbers)}, got {value!r}")

    return convert


def _scalar_in(field: FieldDescriptor) -> Callable[[Any, str], Any]:
    if field.type in INTEGERS:
        return _int_in(field)
    if field.type in FLOATS:
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
        raise type_error(path, "a JSON value", value)


def struct_in(target: Any, value: Any, path: str) -> None:
    if type(value) is not dict:
        raise type_error(path, "an object", value)
    target.SetInParent()
    for key, item in value.items():
        value_in(target.fields[key], item, join(path, key))


def list_in(target: Any, value: Any, path: str) -> None:
    if type(value) is not list:
        raise type_error(path, "an array", value)
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
    if name in STRING_WKT:
        return _string_wkt_in
    if name in WRAPPERS:
        return _wrapper_in(desc)
    if name == "google.protobuf.Any":
        return _any_in
    return None


def _accepts_null(field: FieldDescriptor) -> bool:
    """Whether JSON null is a value of this field rather than "leave it unset"."""
    if field.type == F.TYPE_ENUM:
        return field.enum_type.full_name == NULL_ENUM
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
            raise type_error(path, "an object", value)
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
                raise type_error(path, "an array", value)
            target = getattr(m, name)
            for index, item in enumerate(value):
                sub(target.add(), item, f"{path}[{index}]")

        return set_messages
    convert = _scalar_in(field)

    def set_scalars(m: Any, value: Any, path: str) -> None:
        if type(value) is not list:
            raise type_error(path, "an array", value)
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
            raise type_error(path, "an object", value)
        seen: set[str] = set()
        for key, item in value.items():
            found = setters.get(key)
            if found is None:
                raise CodecError.unknown_field(join(path, key), type_name)
            name, setter, group = found
            if group in seen and item is not None:
                raise CodecError(join(path, name), f"{group!r} is given more than once")
            if item is not None:
                seen.add(group)
            setter(m, item, join(path, name))

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
        elif field.type in FLOATS:
            by_type.setdefault(float, field)
        elif field.type == F.TYPE_STRING:
            by_type.setdefault(str, field)
        elif field.type in INTEGERS:
            integers.append((*INT_RANGES[field.type], field))
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
            raise CodecError(path, f"cannot hold {json_type(value)} {value!r}"[:200])
        setters[field.name](m, value, path)

    return decode


_decoders: dict[str, Decoder] = {}


def decoder(desc: Descriptor) -> Decoder:
    """(message, JSON value, path) -> fills the message in place; compiled once per message type."""
    return compiled_once(_decoders, desc, _compile)


def _compile(desc: Descriptor) -> Decoder:
    compiled = _wkt_decoder(desc)
    if compiled is None:
        compiled = _compile_unwrap_decoder(desc) if is_json_unwrap(desc) else _compile_object_decoder(desc)
    return compiled


def parse_json(body: bytes) -> Any:
    """Bytes -> JSON value; CodecError on malformed input."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError("", f"not valid JSON: {exc}") from None


# -------------------------------------------------------------- text values (path and query parameters)

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _text_in(field: FieldDescriptor) -> Callable[[str, str], Any]:
    """str -> field value for URL parameters (grpc-gateway accepts the same spellings)."""
    if field.type == F.TYPE_BOOL:
        return _bool_text
    if field.type in FLOATS:
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
        if sub is None or sub.full_name in STRING_WKT or sub.full_name in WRAPPERS:
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
