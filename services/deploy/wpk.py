"""Workflow packages (WPK): the schema, its validation, and the reproducible tarball.

Schema (every violation is reported, each named by its JSON path, e.g. "wpk.steps[2].name is required"):

    name         required  string matching ^[a-z0-9][a-z0-9._-]{0,63}$
    version      required  semantic version 2.0.0 (1.2.3, 1.2.3-rc.1, 1.2.3+build.5)
    steps        required  non-empty list of step objects; step names unique
      .name      required  non-empty string, at most 64 characters
      .run       exactly one of run (shell command) or uses (action reference): a non-empty string
      .uses
      .with      optional  object of parameters for `uses`
      .env       optional  object of NAME -> string
      .timeout_s optional  positive integer
    description  optional  string, at most 1024 characters
    env          optional  object of NAME -> string (NAME matches ^[A-Za-z_][A-Za-z0-9_]*$)
    triggers     optional  list of objects, each with a non-empty string "type"

Unknown fields, at the top level and in a step, are refused.

The tarball holds one member, `wpk.json`: the canonical JSON of the package (sorted keys, no whitespace,
UTF-8, integral numbers written as integers) with mtime 0, uid/gid 0, empty owner names and mode 0644, in a
ustar archive gzipped with mtime 0 and no file name. Same WPK -> same bytes -> same sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from typing import Any

from services.core.errors import InvalidArgument

# A Struct has only floats: integral ones become ints, so 3 and 3.0 pack the same.
from services.core.structs import whole_numbers as canonical

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# The regular expression suggested by semver.org.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_FIELDS = frozenset({"name", "version", "steps", "description", "env", "triggers"})
STEP_FIELDS = frozenset({"name", "run", "uses", "with", "env", "timeout_s"})
MAX_STEP_NAME = 64
MAX_DESCRIPTION = 1024
MAX_WPK_BYTES = 1024 * 1024
MEMBER = "wpk.json"


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    data: bytes  # the .tar.gz
    sha256: str


def canonical_json(wpk: dict[str, Any]) -> bytes:
    return json.dumps(
        canonical(wpk), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def validate(wpk: dict[str, Any]) -> list[str]:
    """Every schema violation of `wpk`, in a stable order; empty when it is valid."""
    errors: list[str] = []
    for field in sorted(set(wpk) - TOP_FIELDS):
        errors.append(f"wpk.{field} is not a known field")
    _pattern(errors, wpk, "name", NAME, "must match ^[a-z0-9][a-z0-9._-]{0,63}$")
    _pattern(errors, wpk, "version", SEMVER, "must be a semantic version such as 1.0.0")
    _steps(errors, wpk.get("steps"))
    if "description" in wpk:
        text = wpk["description"]
        if not isinstance(text, str) or len(text) > MAX_DESCRIPTION:
            errors.append(f"wpk.description must be a string of at most {MAX_DESCRIPTION} characters")
    if "env" in wpk:
        _env(errors, "wpk.env", wpk["env"])
    if "triggers" in wpk:
        _triggers(errors, wpk["triggers"])
    return errors


def _pattern(errors: list[str], wpk: dict[str, Any], field: str, pattern: re.Pattern[str], rule: str) -> None:
    if field not in wpk:
        errors.append(f"wpk.{field} is required")
    elif not isinstance(wpk[field], str) or not pattern.match(wpk[field]):
        errors.append(f"wpk.{field} {rule}")


def _steps(errors: list[str], steps: Any) -> None:
    if steps is None:
        errors.append("wpk.steps is required")
        return
    if not isinstance(steps, list) or not steps:
        errors.append("wpk.steps must be a non-empty list")
        return
    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        where = f"wpk.steps[{index}]"
        if not isinstance(step, dict):
            errors.append(f"{where} must be an object")
            continue
        _step(errors, where, step)
        name = step.get("name")
        if isinstance(name, str) and name:
            if name in seen:
                errors.append(f"{where}.name {name!r} duplicates wpk.steps[{seen[name]}].name")
            seen.setdefault(name, index)


def _step(errors: list[str], where: str, step: dict[str, Any]) -> None:
    for field in sorted(set(step) - STEP_FIELDS):
        errors.append(f"{where}.{field} is not a known field")
    name = step.get("name")
    if name is None:
        errors.append(f"{where}.name is required")
    elif not isinstance(name, str) or not name.strip() or len(name) > MAX_STEP_NAME:
        errors.append(f"{where}.name must be a non-empty string of at most {MAX_STEP_NAME} characters")
    actions = [field for field in ("run", "uses") if field in step]
    if len(actions) != 1:
        errors.append(f"{where} must have exactly one of run or uses")
    for field in actions:
        if not isinstance(step[field], str) or not step[field].strip():
            errors.append(f"{where}.{field} must be a non-empty string")
    if "with" in step and not isinstance(step["with"], dict):
        errors.append(f"{where}.with must be an object")
    if "env" in step:
        _env(errors, f"{where}.env", step["env"])
    if "timeout_s" in step:
        timeout = canonical(step["timeout_s"])
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            errors.append(f"{where}.timeout_s must be a positive integer")


def _env(errors: list[str], where: str, env: Any) -> None:
    if not isinstance(env, dict):
        errors.append(f"{where} must be an object of NAME -> string")
        return
    for key, value in env.items():
        if not ENV_NAME.match(key):
            errors.append(f"{where}.{key}: the name must match ^[A-Za-z_][A-Za-z0-9_]*$")
        elif not isinstance(value, str):
            errors.append(f"{where}.{key} must be a string")


def _triggers(errors: list[str], triggers: Any) -> None:
    if not isinstance(triggers, list):
        errors.append("wpk.triggers must be a list")
        return
    for index, trigger in enumerate(triggers):
        kind = trigger.get("type") if isinstance(trigger, dict) else None
        if not isinstance(kind, str) or not kind.strip():
            errors.append(f"wpk.triggers[{index}].type is required (a non-empty string)")


def pack(wpk: dict[str, Any]) -> Package:
    """Validates `wpk` (InvalidArgument listing every violation) and builds its reproducible tarball."""
    errors = validate(wpk)
    if errors:
        raise InvalidArgument("invalid WPK: " + "; ".join(errors), violations=errors)
    document = canonical_json(wpk)
    if len(document) > MAX_WPK_BYTES:
        raise InvalidArgument(f"wpk is {len(document)} bytes; the limit is {MAX_WPK_BYTES}")
    data = tarball(document)
    return Package(wpk["name"], wpk["version"], data, hashlib.sha256(data).hexdigest())


def tarball(document: bytes) -> bytes:
    """wpk.json in a ustar archive, gzipped; every header field that could vary is fixed."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(MEMBER)
        info.size, info.mtime, info.mode = len(document), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(document))
    out = io.BytesIO()
    # filename="" and mtime=0: the gzip header then carries neither a name nor a time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
