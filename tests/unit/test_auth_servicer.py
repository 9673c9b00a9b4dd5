"""The servicer's conversions: client address, Struct numbers, policy round trip, users without secrets."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from launchpad.auth.v1 import auth_pb2
from services.auth.servicer import client_of, policy_document, policy_message, struct_to_dict, user_message
from services.auth.store import PolicyRecord, UserRecord


class FakeContext:
    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize(
    ("peer", "metadata", "client"),
    [
        ("ipv4:127.0.0.1:5123", (), "127.0.0.1"),
        ("ipv6:[::1]:5123", (), "[::1]"),
        ("unix:/tmp/sock", (), "/tmp/sock"),
        ("ipv4:10.0.0.2:1", (("x-forwarded-for", "203.0.113.7, 10.0.0.1"),), "203.0.113.7"),
    ],
)
def test_client_address(peer: str, metadata: Any, client: str) -> None:
    assert client_of(FakeContext(peer, metadata)) == client  # type: ignore[arg-type]


def test_struct_numbers_come_back_as_json_numbers() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": 3, "f": 2.5, "big": 2**40, "nested": {"list": [1, 2.0, "x", None, True]}})
    value = struct_to_dict(struct)
    assert value == {"n": 3, "f": 2.5, "big": 2**40, "nested": {"list": [1, 2, "x", None, True]}}
    assert type(value["n"]) is int and type(value["nested"]["list"][4]) is bool


def test_policy_round_trip() -> None:
    document = {
        "name": "p",
        "rules": [
            {"effect": "allow", "actions": ["read"], "resource": "a/*", "condition": {"record.n": {"gt": 1}}},
            {"effect": "deny", "actions": ["*"], "resource": "*"},
        ],
    }
    message = json_format.ParseDict(document, auth_pb2.Policy())
    assert policy_document(message) == document
    back = policy_message(PolicyRecord("acme", "p", document, 1_700_000_000_123, "alice"))
    assert (back.tenant, back.created_by, back.created_at.ToMilliseconds()) == (
        "acme",
        "alice",
        1_700_000_000_123,
    )
    assert policy_document(back) == document


def test_user_message_has_no_secret_and_omits_unknown_times() -> None:
    user = UserRecord("u1", "acme", ("viewer",), False, 0, 0, "", password_hash="$argon2id$secret")
    message = user_message(user)
    assert "argon2" not in str(message)
    assert not message.HasField("created_at") and not message.HasField("updated_at")
