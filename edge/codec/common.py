"""What both directions of the codec share: converter types, well-known type names, the input error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from launchpad.api.v1 import options_pb2

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, Any, str], None]  # (message or container, JSON value, field path for errors)
TextSetter = Callable[[Message, list[str]], None]
C = TypeVar("C", bound=Callable[..., Any])

F = FieldDescriptor
INT32 = (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32)
UINT32 = (F.TYPE_UINT32, F.TYPE_FIXED32)
INT64 = (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64)
UINT64 = (F.TYPE_UINT64, F.TYPE_FIXED64)
INTEGERS = INT32 + UINT32 + INT64 + UINT64
FLOATS = (F.TYPE_DOUBLE, F.TYPE_FLOAT)
WRAPPERS = frozenset(
    f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool")
) | {"google.protobuf.StringValue", "google.protobuf.BytesValue"}
STRING_WKT = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"})
NULL_ENUM = "google.protobuf.NullValue"
INT_RANGES = {
    **dict.fromkeys(INT32, (-(2**31), 2**31 - 1)),
    **dict.fromkeys(UINT32, (0, 2**32 - 1)),
    **dict.fromkeys(INT64, (-(2**63), 2**63 - 1)),
    **dict.fromkeys(UINT64, (0, 2**64 - 1)),
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


def json_type(value: Any) -> str:
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


def type_error(path: str, expected: str, value: Any) -> CodecError:
    return CodecError(path, f"expected {expected}, got {json_type(value)}")


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_json_unwrap(desc: Descriptor) -> bool:
    return bool(desc.GetOptions().Extensions[options_pb2.json_unwrap])


def compiled_once(cache: dict[str, C], desc: Descriptor, build: Callable[[Descriptor], C]) -> C:
    """cache[desc] built on first use. While it is built, a placeholder that resolves later stands in for it, so
    self-referencing message types do not recurse forever."""
    name = desc.full_name
    found = cache.get(name)
    if found is not None:
        return found
    cache[name] = cast(C, lambda *args: cache[name](*args))
    try:
        built = build(desc)
    except BaseException:
        del cache[name]
        raise
    cache[name] = built
    return built


def message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)
