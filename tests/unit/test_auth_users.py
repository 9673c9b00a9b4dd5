"""User field validation and the platform-admin predicate (the gRPC tests cover the rules end to end)."""

from __future__ import annotations

import pytest

from services.auth.store import UserRecord
from services.auth.users import (
    is_active_platform_admin,
    validate_password,
    validate_roles,
    validate_tenant,
    validate_username,
)
from services.core.errors import InvalidArgument


@pytest.mark.parametrize("name", ["ab", "a" * 63, "alice", "a.b-c_d", "0day", "x1"])
def test_valid_usernames(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["", "a", "a" * 64, "Alice", "_a", ".a", "a b", "a/b", "ä1", "a\n"])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_username(name)
    assert caught.value.details == {"field": "username"}


def test_password_length_bounds() -> None:
    assert validate_password("x" * 8) == "x" * 8
    assert validate_password("x" * 1024)
    for bad in ("", "x" * 7, "x" * 1025):
        with pytest.raises(InvalidArgument, match="password must be 8 to 1024 characters"):
            validate_password(bad)


def test_roles_are_deduplicated_in_order_and_checked() -> None:
    assert validate_roles(["viewer", "admin", "viewer"]) == ("viewer", "admin")
    with pytest.raises(InvalidArgument, match="non-empty subset"):
        validate_roles([])
    with pytest.raises(InvalidArgument, match="unknown: root, Admin"):
        validate_roles(["admin", "root", "Admin"])


@pytest.mark.parametrize("tenant", ["a", "acme", "acme_2", "a" * 40])
def test_valid_tenants(tenant: str) -> None:
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize(
    "tenant",
    ["", "Acme", "1acme", "_acme", "ac-me", "a" * 41, "pg_x", "public", "launchpad", "information_schema"],
)
def test_invalid_or_reserved_tenants(tenant: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_tenant(tenant)
    assert caught.value.details == {"field": "tenant"}


def test_platform_admin_is_an_active_admin_of_the_default_tenant() -> None:
    base = UserRecord(
        "root", "default", ("admin",), False, 1, 1, "system", password_hash="$argon2id$v=19$secret"
    )
    assert is_active_platform_admin(base)
    assert not is_active_platform_admin(UserRecord("root", "acme", ("admin",), False, 1, 1, "x"))
    assert not is_active_platform_admin(UserRecord("root", "default", ("developer",), False, 1, 1, "x"))
    assert not is_active_platform_admin(UserRecord("root", "default", ("admin",), True, 1, 1, "x"))
    assert "argon2" not in repr(base)  # the hash is kept out of repr (and so out of logs)
