"""google.protobuf.Struct <-> plain JSON values, as policies, subjects and records travel between services."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values; whole numbers come back as ints (Struct stores every number as a double)."""
    return whole_numbers(json_format.MessageToDict(struct))


def dict_to_struct(document: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(document)
    return struct


def whole_numbers(value: Any) -> Any:
    """JSON values with every integral float as an int, so 3 and 3.0 (a Struct's only number) compare equal."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value
