"""Chooses the tenant SQL backend that matches the platform database: PostgreSQL roles or SQLite files."""

from __future__ import annotations

import secrets

from services.core.config import Settings
from services.core.db import PgPlatformDb, PlatformDb
from services.core.files import create_once
from services.data.model import TenantSql
from services.data.pg_backend import PgTenants
from services.data.sqlite_backend import SqliteTenants

SECRET_FILE = "tenant_db.secret"


def open_tenant_sql(settings: Settings, db: PlatformDb) -> TenantSql:
    """Tenants live where the platform tables live: the mode choice is made once, by open_platform_db."""
    if isinstance(db, PgPlatformDb):
        return PgTenants(db, tenant_secret(settings), settings.query.timeout_ms)
    return SqliteTenants(settings.process.data_dir / "tenants", db)


def tenant_secret(settings: Settings) -> bytes:
    """The key tenant role passwords derive from: LAUNCHPAD_TENANT_DB_SECRET, else a file made once in the
    data dir. Replicas with separate data dirs must share the variable (else each resets the passwords)."""
    if settings.postgres.tenant_secret:
        return settings.postgres.tenant_secret.reveal().encode()
    return create_once(
        settings.process.data_dir / SECRET_FILE, lambda: secrets.token_hex(32).encode()
    ).strip()
