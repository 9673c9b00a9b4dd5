"""WPK schema validation and the reproducible tarball (pure functions)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from services.core.errors import InvalidArgument
from services.deploy import wpk

VALID: dict[str, Any] = {
    "name": "etl.v2_nightly-1",
    "version": "1.2.3-rc.1+build.5",
    "description": "x",
    "env": {"REGION": "eu"},
    "triggers": [{"type": "schedule", "cron": "0 3 * * *"}],
    "steps": [
        {"name": "a", "run": "echo a", "env": {"A": "1"}, "timeout_s": 30},
        {"name": "b", "uses": "x@v1"},
    ],
}


def test_a_valid_package_has_no_violations() -> None:
    assert wpk.validate(VALID) == []


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        ({"name": None}, "wpk.name is required"),
        ({"name": "-x"}, "wpk.name must match ^[a-z0-9][a-z0-9._-]{0,63}$"),
        ({"name": "a" * 65}, "wpk.name must match ^[a-z0-9][a-z0-9._-]{0,63}$"),
        ({"version": "01.2.3"}, "wpk.version must be a semantic version such as 1.0.0"),
        ({"version": None}, "wpk.version is required"),
        ({"steps": None}, "wpk.steps is required"),
        ({"steps": {"name": "a"}}, "wpk.steps must be a non-empty list"),
        ({"steps": ["run"]}, "wpk.steps[0] must be an object"),
        ({"steps": [{"name": "a", "run": ""}]}, "wpk.steps[0].run must be a non-empty string"),
        ({"steps": [{"name": "a", "run": "x", "shell": "sh"}]}, "wpk.steps[0].shell is not a known field"),
        (
            {"steps": [{"name": "a", "run": "x", "timeout_s": 1.5}]},
            "wpk.steps[0].timeout_s must be a positive integer",
        ),
        ({"steps": [{"name": "a", "uses": "x", "with": []}]}, "wpk.steps[0].with must be an object"),
        ({"env": {"1BAD": "x"}}, "wpk.env.1BAD: the name must match ^[A-Za-z_][A-Za-z0-9_]*$"),
        ({"env": {"N": 1}}, "wpk.env.N must be a string"),
        ({"triggers": [{}]}, "wpk.triggers[0].type is required (a non-empty string)"),
        ({"description": "x" * 1025}, "wpk.description must be a string of at most 1024 characters"),
        ({"extra": 1}, "wpk.extra is not a known field"),
    ],
)
def test_each_violation_is_named(change: dict[str, Any], violation: str) -> None:
    document = {**VALID, **change}
    document = {k: v for k, v in document.items() if v is not None}
    assert wpk.validate(document) == [violation]
    with pytest.raises(InvalidArgument) as caught:
        wpk.pack(document)
    assert violation in caught.value.message and caught.value.details["violations"] == [violation]


def test_the_tarball_is_byte_for_byte_reproducible_and_canonical() -> None:
    first, second = wpk.pack(VALID), wpk.pack(json.loads(json.dumps(VALID)))
    assert first.data == second.data and first.sha256 == hashlib.sha256(first.data).hexdigest()
    # gzip header: no file name flag, mtime 0.
    assert first.data[3] & 0x08 == 0 and first.data[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first.data))) as tar:
        [member] = tar.getmembers()
        assert (member.name, member.mtime, member.mode, member.uid, member.gid) == (
            "wpk.json",
            0,
            0o644,
            0,
            0,
        )
        assert (member.uname, member.gname) == ("", "")
        document = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert document == json.dumps(VALID, sort_keys=True, separators=(",", ":")).encode()


def test_struct_floats_pack_like_ints() -> None:
    as_floats = json.loads(json.dumps(VALID))
    as_floats["steps"][0]["timeout_s"] = 30.0
    assert wpk.pack(as_floats).sha256 == wpk.pack(VALID).sha256
    changed = json.loads(json.dumps(VALID))
    changed["steps"][0]["run"] = "echo b"
    assert wpk.pack(changed).sha256 != wpk.pack(VALID).sha256
