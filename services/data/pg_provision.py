"""A tenant's PostgreSQL database, roles, schema and grants: their names, provisioned as the platform's user.

Each tenant gets its own database, lp_<db>_<tenant>, holding a schema t_<tenant>, and three LOGIN roles,
lp_<db>_<tenant>_rw (developers), _ro (viewers) and _admin (admins; a member of _rw and of no other role;
_rw and _ro are members of none) (<db>: 6 hex digits of the platform database name's SHA-256, as
role and database names are server-wide). A database of its own
is what hides other tenants: the catalogs (pg_class, pg_proc, pg_namespace) are readable by everyone but only
describe the database they are in. Only the tenant's roles may connect to its database (PUBLIC may not);
pg_database and pg_roles are cluster-wide, so other tenants' database and role *names* stay visible.
This service connects AS the tenant role (its password is an HMAC of a service secret), so SET ROLE,
RESET ROLE, set_config('role', ...) and SET SESSION AUTHORIZATION cannot raise privileges, and superuser-only
functions (pg_read_file, COPY ... PROGRAM, lo_import) fail with permission errors. Migrations 002 and 003 (no
CREATE on public; no large objects or advisory locks for PUBLIC) are applied inside every tenant database too,
as those privileges are per database. Viewers use the read-only role, in READ ONLY transactions.
Policies are row-level security on governed tables, with claims set per transaction: see pg_rls.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
from psycopg2 import sql as pgsql

from services.data import pg_rls
from services.data.pg_query import BACKEND

# Bump when provisioning changes: tenants recorded with an older layout are provisioned again. A schema that a
# layout before 3 made for a tenant in the platform database is left where it was (no data is moved).
LAYOUT = 4
PROVISION_LOCK = 0x4C50  # first key of pg_advisory_lock(int, int); the second is hashtext(tenant)
# What the platform database's migrations revoke from PUBLIC, applied in each tenant database as well.
_MIGRATIONS = Path(__file__).parent / "migrations"
_TENANT_DATABASE_SETUP = [
    (_MIGRATIONS / name).read_text()
    for name in ("002_public_schema.postgresql.sql", "003_no_large_objects.postgresql.sql")
]
KINDS = ("rw", "ro", "admin")


@dataclass(frozen=True, slots=True)
class TenantNames:
    """Object names of one tenant; safe because the tenant name matched TENANT_NAME (at most 40 chars)."""

    tenant: str
    database: str  # the platform database (POSTGRES_DSN): names derive from it, so deployments never collide

    @property
    def schema(self) -> str:
        return f"t_{self.tenant}"

    @property
    def tenant_database(self) -> str:
        return f"{tenant_database_prefix(self.database)}{self.tenant}"

    def role(self, writable: bool) -> str:
        return self.role_of("rw" if writable else "ro")

    def role_of(self, kind: str) -> str:
        """kind: "rw" (developers), "ro" (viewers) or "admin"."""
        return f"{tenant_database_prefix(self.database)}{self.tenant}_{kind}"

    @property
    def roles(self) -> pg_rls.Roles:
        return pg_rls.Roles(self.schema, self.role_of("rw"), self.role_of("ro"), self.role_of("admin"))


def tenant_database_prefix(platform_database: str) -> str:
    """lp_<6 hex of the platform database name>_: what every tenant database and role name starts with."""
    return f"lp_{hashlib.sha256(platform_database.encode()).hexdigest()[:6]}_"


def role_password(secret: bytes, role: str) -> str:
    return hmac.new(secret, f"launchpad-tenant-role:{role}".encode(), hashlib.sha256).hexdigest()


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677), computed here so the password
    itself never appears in a CREATE/ALTER ROLE statement (and so never in the server's statement log)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def provision(
    cur: ext.cursor, dsn: str, names: TenantNames, passwords: dict[str, str], timeout_ms: int, key: bytes
) -> None:
    """Creates or repairs the tenant's database, roles and schema, idempotently, one replica at a time.

    `cur` is an autocommit platform connection: CREATE DATABASE cannot run inside a transaction, so the lock
    is a session advisory lock, released at the end (or with the connection, should it die).
    """
    lock = (PROVISION_LOCK, names.tenant)
    cur.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", lock)
    try:
        _create_database(cur, names.tenant_database)
        _in_transaction(cur, _provision_roles, names, passwords, timeout_ms)
        _provision_tenant_database(dsn, names, key)  # conn.dsn hides the password
        cur.execute(_RECORD, (names.tenant, BACKEND, LAYOUT))
    finally:
        if not cur.connection.closed:
            cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", lock)


def _in_transaction(cur: ext.cursor, fn: Callable[..., None], *args: Any) -> None:
    conn = cur.connection
    conn.autocommit = False
    try:
        fn(cur, *args)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True


def _create_database(cur: ext.cursor, database: str) -> None:
    """The tenant's own database, owned by the platform's user (so a tenant cannot grant on it).

    template0: nobody connects to it, so concurrent creations never fail on "source database is being accessed
    by other users", and nothing an administrator added to template1 reaches a tenant.
    """
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
    if cur.fetchone():
        return
    # Replicas are serialized by the advisory lock; should the name be taken meanwhile anyway, it is ours.
    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
        cur.execute(pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(pgsql.Identifier(database)))


_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {inherit} NOREPLICATION NOBYPASSRLS"


def _provision_roles(cur: ext.cursor, names: TenantNames, passwords: dict[str, str], timeout_ms: int) -> None:
    own, platform = pgsql.Identifier(names.tenant_database), pgsql.Identifier(names.database)
    for kind in KINDS:
        _provision_role(cur, names, kind, passwords[kind], timeout_ms)
    rw, ro, admin = (pgsql.Identifier(names.role_of(kind)) for kind in KINDS)
    for statement in (
        "REVOKE ALL ON DATABASE {own} FROM PUBLIC",  # CONNECT and TEMPORARY by default
        "GRANT CONNECT, TEMPORARY ON DATABASE {own} TO {rw}, {admin}",
        "GRANT CONNECT ON DATABASE {own} TO {ro}",
        # Tenant roles never connect to the platform database (PUBLIC may still have CONNECT there).
        "REVOKE ALL ON DATABASE {platform} FROM {rw}, {ro}, {admin}",
    ):
        cur.execute(pgsql.SQL(statement).format(own=own, platform=platform, rw=rw, ro=ro, admin=admin))


def _provision_role(cur: ext.cursor, names: TenantNames, kind: str, password: str, timeout_ms: int) -> None:
    role, schema = names.role_of(kind), pgsql.Identifier(names.schema)
    ident = pgsql.Identifier(role)
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    # The admin role inherits the developers' role (it owns what they own); the others inherit nothing.
    attributes = _ROLE_ATTRIBUTES.format(inherit="INHERIT" if kind == "admin" else "NOINHERIT")
    statement = pgsql.SQL(f"{verb} ROLE {{}} {attributes} PASSWORD %s").format(ident)
    cur.execute(statement, (scram_verifier(password),))
    # No membership in any other role (the admin role: only in _rw): whatever else was granted is taken back.
    # The developers' role must never be a member of the admin role, which owns the governed tables.
    keep = names.role_of("rw") if kind == "admin" else ""
    cur.execute(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %s) AND r.rolname <> %s",
        (role, keep),
    )
    for (granted,) in cur.fetchall():
        cur.execute(pgsql.SQL("REVOKE {} FROM {} CASCADE").format(pgsql.Identifier(granted), ident))
    if keep:
        cur.execute(pgsql.SQL("GRANT {} TO {}").format(pgsql.Identifier(keep), ident))
    # A tenant can ALTER ROLE CURRENT_USER SET ...: only our defaults survive provisioning (and every call
    # sets its own statement_timeout with SET LOCAL, which wins over any default).
    cur.execute(pgsql.SQL("ALTER ROLE {} RESET ALL").format(ident))
    for database in (names.database, names.tenant_database):
        cur.execute(
            pgsql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(ident, pgsql.Identifier(database))
        )
    cur.execute(pgsql.SQL("ALTER ROLE {} SET search_path = {}").format(ident, schema))
    cur.execute(pgsql.SQL("ALTER ROLE {} SET statement_timeout = %s").format(ident), (str(timeout_ms),))


def _provision_tenant_database(platform_dsn: str, names: TenantNames, key: bytes) -> None:
    """Inside the tenant's database, as the platform's user: PUBLIC's revokes, the tenant's schema, then what
    policies need (pg_rls: claims, the event trigger)."""
    dsn = ext.make_dsn(platform_dsn, dbname=names.tenant_database)
    conn = psycopg2.connect(dsn, connect_timeout=3, application_name="launchpad-data")
    try:
        with conn, conn.cursor() as cur:  # one transaction
            for script in _TENANT_DATABASE_SETUP:
                cur.execute(script)
            _provision_schema(cur, names)
            pg_rls.provision(cur, names.roles, key)
    finally:
        conn.close()


def _provision_schema(cur: ext.cursor, names: TenantNames) -> None:
    schema = pgsql.Identifier(names.schema)
    rw, ro, admin = (pgsql.Identifier(names.role_of(kind)) for kind in KINDS)
    for statement in (
        "CREATE SCHEMA IF NOT EXISTS {schema}",  # owned by the platform user: tenants cannot re-grant it
        "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {rw}, {admin}",
        "GRANT USAGE ON SCHEMA {schema} TO {ro}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {ro}",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {ro}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {rw} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {ro}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {rw} IN SCHEMA {schema} GRANT SELECT ON SEQUENCES TO {ro}",
    ):
        cur.execute(pgsql.SQL(statement).format(schema=schema, rw=rw, ro=ro, admin=admin))


_RECORD = """
INSERT INTO data_tenants (tenant, backend, layout) VALUES (%s, %s, %s)
ON CONFLICT (tenant) DO UPDATE SET backend = excluded.backend, layout = excluded.layout
"""
