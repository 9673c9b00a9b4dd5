"""The first admin: user `admin`, role admin, tenant `default`, created once.

Its password comes from LAUNCHPAD_ADMIN_PASSWORD, or is generated, stored hashed, printed once to stderr and
written to `<data_dir>/auth/initial-admin-password` (0600) for `make up` users. Two replicas starting at once
both try an insert-if-absent; only the one whose insert lands announces a generated password. The variable is
read only at creation: changing it later does not reset the password (use UpdateUser).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

from services.auth.passwords import Passwords
from services.auth.store import AuthStore, UserRecord
from services.auth.users import MAX_PASSWORD, MIN_PASSWORD, now_ms
from services.core.config import ConfigError
from services.core.context import PLATFORM_TENANT
from services.core.errors import AlreadyExists

ADMIN_USERNAME = "admin"
PASSWORD_FILE = "initial-admin-password"


async def ensure_admin(
    store: AuthStore, passwords: Passwords, auth_dir: Path, configured_password: str, log: logging.Logger
) -> bool:
    """Creates the first admin when absent. True when this call created it."""
    if await store.get_user(ADMIN_USERNAME) is not None:
        return False
    generated = not configured_password
    if configured_password and not MIN_PASSWORD <= len(configured_password) <= MAX_PASSWORD:
        raise ConfigError(f"LAUNCHPAD_ADMIN_PASSWORD must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    password = configured_password or secrets.token_urlsafe(18)
    now = now_ms()
    await store.ensure_tenant(PLATFORM_TENANT, "system", now)
    admin = UserRecord(
        ADMIN_USERNAME, PLATFORM_TENANT, ("admin",), False, now, now, "system",
        password_hash=await passwords.hash(password),
    )  # fmt: skip
    try:
        await store.insert_user(admin)
    except AlreadyExists:
        return False  # another replica created it first
    if generated:
        _announce(auth_dir / PASSWORD_FILE, password, log)
    else:
        log.info("created the first admin 'admin' with the password from LAUNCHPAD_ADMIN_PASSWORD")
    return True


def _announce(path: Path, password: str, log: logging.Logger) -> None:
    """Shows a generated password exactly once: stderr and a 0600 file; the log only says where."""
    _write_private(path, f"{password}\n".encode())
    print(f"launchpad auth: initial password for user 'admin': {password}", file=sys.stderr, flush=True)
    log.warning(
        "created the first admin 'admin' with a generated password; it was printed to stderr and "
        "written to %s (set LAUNCHPAD_ADMIN_PASSWORD to choose it)",
        path,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Replaces path with data, readable by the owner only (a stale file from an older database goes)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temp, path)
