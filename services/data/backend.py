"""Chooses the tenant SQL backend that matches the platform database: PostgreSQL roles or SQLite files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.core.config import Settings
from services.core.db import PgPlatformDb, PlatformDb
from services.data.model import TenantSql
from services.data.pg_backend import PgTenants
from services.data.sqlite_backend import SqliteTenants

SECRET_ENV = "LAUNCHPAD_TENANT_DB_SECRET"
SECRET_FILE = "tenant_db.secret"


def open_tenant_sql(settings: Settings, db: PlatformDb) -> TenantSql:
    """Tenants live where the platform tables live: the mode choice is made once, by open_platform_db."""
    if isinstance(db, PgPlatformDb):
        return PgTenants(db, tenant_secret(settings.data_dir), settings.query_timeout_ms)
    return SqliteTenants(settings.data_dir / "tenants", db)


def tenant_secret(data_dir: Path) -> bytes:
    """The key tenant role passwords derive from: the environment, else a file made once in the data dir.

    Replicas with separate data dirs must share LAUNCHPAD_TENANT_DB_SECRET (else each resets the passwords).
    """
    configured = os.environ.get(SECRET_ENV, "").strip()
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{SECRET_FILE}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:  # link, not rename: the first replica to get there wins, nobody overwrites a secret in use
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()
