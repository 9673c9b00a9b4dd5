"""Storage's names: a tenant's bucket as the object store names it, and object paths.

Tenants see only their own buckets: the tenant's bucket "photos" is the physical bucket "<tenant>.photos"
(underscores of the tenant name become hyphens). A dot separates them because neither a tenant slug nor a
tenant's bucket name can contain one, so no (tenant, name) pair can land on another tenant's physical bucket
-- "<tenant>-photos" would let tenant "a" bucket "b-c" collide with tenant "a_b" bucket "c".
"""

from __future__ import annotations

import re

from services.core.context import TENANT_NAME
from services.core.errors import InvalidArgument, PermissionDenied
from services.core.objects import BucketInfo, check_bucket, check_key

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def tenant_slug(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise PermissionDenied(f"invalid tenant {tenant[:40]!r}")
    return tenant.replace("_", "-")


def physical_bucket(tenant: str, name: str) -> str:
    """The tenant's bucket `name` as the store names it; InvalidArgument for names S3 would reject."""
    if not _NAME.fullmatch(name) or not 3 <= len(name) <= 63:
        raise InvalidArgument(
            f"invalid bucket name {name[:70]!r}: 3-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit",
            field="bucket",
        )
    return check_bucket(f"{tenant_slug(tenant)}.{name}")


def tenant_buckets(tenant: str, buckets: list[BucketInfo]) -> list[BucketInfo]:
    prefix = f"{tenant_slug(tenant)}."
    return [
        BucketInfo(b.name[len(prefix) :], b.created_at)
        for b in buckets
        if b.name.startswith(prefix) and "." not in b.name[len(prefix) :]
    ]


def split_path(path: str) -> tuple[str, str]:
    bucket, sep, key = path.partition("/")
    if not sep or not bucket:
        raise InvalidArgument(f"path {path[:80]!r} must be 'bucket/key'", field="path")
    return bucket, key


def key_prefix(value: str) -> str:
    """A listing or deletion prefix: any key start, but nothing check_key would refuse in a key."""
    return check_key(value + "x")[:-1] if value else ""
