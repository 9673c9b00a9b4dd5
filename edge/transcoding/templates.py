"""google.api.http path templates -> Starlette paths (with convertors for multi-segment variables)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from starlette.convertors import Convertor, register_url_convertor

from edge import codec

_VARIABLE = re.compile(
    r"\{(?P<field>[A-Za-z_][\w.]*)(?:=(?P<pattern>[^}]+))?\}|(?P<wild>\*\*|\*)|(?P<lit>[^{}*]+)"
)


class _PatternConvertor(Convertor[str]):
    """A path variable with a pattern such as {name=shelves/*/books/*}: several segments, one value."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _segments_regex(pattern: str) -> str:
    parts = {"*": "[^/]+", "**": ".+"}
    return "/".join(parts.get(seg, re.escape(seg)) for seg in pattern.split("/"))


def _convertor_for(pattern: str) -> str:
    """The Starlette convertor name for a variable's pattern ("" for one segment, "path" for **)."""
    if pattern == "*":
        return ""
    if pattern == "**":
        return ":path"
    regex = _segments_regex(pattern)
    name = "lp" + hashlib.sha256(regex.encode()).hexdigest()[:12]
    register_url_convertor(name, _PatternConvertor(regex))
    return f":{name}"


@dataclass(frozen=True, slots=True)
class PathVar:
    param: str  # the Starlette parameter name (p0, p1, ...): field paths contain dots
    field: str  # dotted request field, as written in the template
    fields: tuple[FieldDescriptor, ...]


def field_path(desc: Descriptor, dotted: str) -> tuple[FieldDescriptor, ...]:
    """ "a.b" -> the fields along it; ValueError naming the contract's mistake otherwise."""
    fields, current = [], desc
    for name in dotted.split("."):
        found = current.fields_by_name.get(name) if current is not None else None
        if found is None:
            raise ValueError(f"{desc.full_name} has no field {dotted!r}")
        fields.append(found)
        current = found.message_type
    leaf = fields[-1]
    if leaf.is_repeated or (
        leaf.message_type is not None and leaf.message_type.full_name not in codec.WRAPPERS
    ):
        raise ValueError(f"{desc.full_name}.{dotted} cannot be a path variable: it must be a singular scalar")
    return tuple(fields)


def compile_template(template: str, request: Descriptor) -> tuple[str, str, tuple[PathVar, ...]]:
    """google.api.http path template -> (Starlette path, OpenAPI path, variables)."""
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    path, openapi, variables = "", "", []
    for n, match in enumerate(_VARIABLE.finditer(template)):
        if match.group("lit") is not None:
            path += match.group("lit")
            openapi += match.group("lit")
        elif match.group("wild") is not None:  # an anonymous wildcard segment, matched but not bound
            path += f"{{w{n}{_convertor_for(match.group('wild'))}}}"
            openapi += f"{{w{n}}}"
        else:
            name, param = match.group("field"), f"p{len(variables)}"
            path += f"{{{param}{_convertor_for(match.group('pattern') or '*')}}}"
            openapi += f"{{{name}}}"
            variables.append(PathVar(param, name, field_path(request, name)))
    if "".join(m.group(0) for m in _VARIABLE.finditer(template)) != template:
        raise ValueError(f"cannot parse path template {template!r}")
    return path, openapi, tuple(variables)
