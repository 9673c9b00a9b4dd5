"""Policies on PostgreSQL: row-level security on governed tables, claims no tenant SQL can forge.

One module, over 550 lines: about 300 of them are the SQL every tenant database holds (SETUP), kept beside
the Python that calls its functions and relies on its tables.

Who runs what. Developers' SQL runs as the tenant's _rw role, viewers' as _ro, admins' as _admin (a member of
_rw, so it still owns what developers own). A governed table is owned by _admin, with ROW LEVEL SECURITY
enabled and forced; _rw has SELECT/INSERT/UPDATE/DELETE on it (never TRUNCATE, REFERENCES or TRIGGER: they
bypass or observe rows), _ro SELECT. _rw is a member of no role, so it can neither switch RLS off, drop a
policy, nor take the table back: all of that needs ownership. Every other table is owned by _rw, as before.

The policies, per command (SELECT, INSERT, UPDATE, DELETE), `TO _rw, _ro`: a permissive one from the rules'
`allow` (USING, and WITH CHECK for INSERT/UPDATE: the new row must pass the update rule too), a restrictive
one from `NOT deny`; plus `lp_admin`, permissive `TO _admin`, which holds only when the verified claims say
admin. So a view without security_invoker, or a SECURITY DEFINER function, owned by an admin, runs with the
admin role but the caller's claims: a developer gets what the developer's rules give, never the admin's rows.
Restrictive policies also pass verified admin claims (_admin is a member of _rw, so they apply to it).

Claims. Each call's first round trip runs `launchpad.enter(claims, call proof)`, the call proof being
`<expiry>.<HMAC-SHA256(key, "call".pid.expiry.claims)>` (the key is the tenant's, in launchpad_private, which
tenant roles cannot read). enter() (SECURITY DEFINER) checks it against this backend and the clock, then sets
`request.jwt.claims` (the subject's JSON, as PostgREST does) and `launchpad.claims_proof` = HMAC(key,
"txn".pid.transaction start.claims), transaction-local; the call proof itself is kept nowhere. Tenant SQL
can set both settings, but cannot compute a proof, and a proof it reads (say a trigger of one developer
fired by another's write) holds in that transaction only. The call proof is in the query text alone, which
the tenant database hides from tenants (pg_stat_get_activity, current_query()). `launchpad.claims()` returns
the claims when the transaction proof holds, else NULL, which no rule allows. Policies call it as
`(select launchpad.claims())`: an InitPlan, evaluated once per statement.

Tables created later. An event trigger (ddl_command_end) takes a table whose name a rule matches (or a child
of a governed table) into governance in the statement that creates or renames it (a developer's view may take
such a name only WITH (security_invoker); a materialized view or foreign table never): ownership to _admin,
RLS enabled and forced, no policy but lp_admin (default deny). Any DDL on a governed table, its admin
owner's too (RLS switched off, a policy altered or dropped), puts it back the same way. The data service then
renders the real policies right after the statement (`launchpad.pending()`, asked in the call's last round
trip; a set change re-renders only tables whose policies change). A governed table must not run code a
developer can change (triggers, rules, defaults, checks, generated columns, index expressions or domains
calling a developer's function), nor be reachable through an ungoverned parent or changed by a cascading
foreign key to a table developers write: that is refused.

Ungoverning. A table no rule names any more goes back to how every ungoverned table is (owned by _rw, RLS
off): the contract says ungoverned tables behave as today, and only an admin's policy change (audited, and
one transaction with the stored set) gets there. A rename out of a pattern is the same admin decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions as ext
from psycopg2 import sql as pgsql

from services.core.db import pg_unavailable
from services.core.errors import Aborted, FailedPrecondition, InvalidArgument, ServiceError
from services.core.policy import PolicySet, compile_set
from services.core.policy.lang import kind_of
from services.core.policy.sql import render_table

CLAIMS_SLACK_S = 60  # clock skew allowed between this service and the database server
EVENT_TRIGGER = "launchpad_govern"
SYNC_LOCK = (0x4C50, 0x524C)  # pg_advisory_xact_lock(int, int) in the tenant database: one sync at a time
LOCK_TIMEOUT = "5s"  # a sync waits this long for a table a query holds, then says so
# Rule action -> the command its policies are for, and whether they test the old row (USING) / new row.
COMMANDS = {
    "read": ("SELECT", True, False),
    "insert": ("INSERT", False, True),
    "update": ("UPDATE", True, True),
    "delete": ("DELETE", True, False),
}
ADMIN = "(SELECT launchpad.is_admin())"


@dataclass(frozen=True, slots=True)
class Roles:
    """What the SQL functions need to know of a tenant (stored in launchpad_private.tenant)."""

    schema: str
    rw: str
    ro: str
    admin: str


# --- Claims ---------------------------------------------------------------------------------------------


def claims_key(secret: bytes, tenant_database: str) -> bytes:
    """The tenant's claims key, derived from the service secret (every replica derives the same)."""
    return hmac.new(secret, f"launchpad-claims-key:{tenant_database}".encode(), hashlib.sha256).digest()


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer keys (RFC 2104), so SQL computes HMAC-SHA256 with two plain sha256() calls."""
    block = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def claims_text(subject: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(subject), option=orjson.OPT_SORT_KEYS).decode()


def claims_proof(key: bytes, pid: int, claims: str, expires: int) -> str:
    """The call proof enter() checks: for this backend, until `expires` (Unix seconds)."""
    mac = hmac.new(key, f"call.{pid}.{expires}.{claims}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def set_claims(cur: ext.cursor, key: bytes, claims: str, timeout_ms: int) -> str:
    """The statement that hands this transaction its verified claims (client-side quoting: no round trip)."""
    expires = int(time.time()) + timeout_ms // 1000 + 1 + CLAIMS_SLACK_S
    proof = claims_proof(key, cur.connection.info.backend_pid, claims, expires)
    return cur.mogrify("SELECT launchpad.enter(%s, %s)", (claims, proof)).decode()


# --- What every tenant database holds (created by the platform user) -------------------------------------

SETUP = r"""
CREATE SCHEMA IF NOT EXISTS launchpad;
REVOKE ALL ON SCHEMA launchpad FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS launchpad_private;
REVOKE ALL ON SCHEMA launchpad_private FROM PUBLIC;

CREATE TABLE IF NOT EXISTS launchpad_private.tenant (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    schema_name text NOT NULL, rw text NOT NULL, ro text NOT NULL, admin text NOT NULL
);
CREATE TABLE IF NOT EXISTS launchpad_private.claims_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    inner_pad bytea NOT NULL, outer_pad bytea NOT NULL
);
-- The tenant's policy set as last applied (the event trigger matches patterns; a re-render compiles documents).
CREATE TABLE IF NOT EXISTS launchpad_private.policy_set (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision bigint NOT NULL, documents jsonb NOT NULL, patterns text[] NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- Tables the event trigger governed or changed: their rule policies are rendered right after the statement.
CREATE TABLE IF NOT EXISTS launchpad_private.pending (rel oid PRIMARY KEY);
-- What each governed table's policies were rendered from: a set change that leaves them alone locks nothing.
CREATE TABLE IF NOT EXISTS launchpad_private.rendered (rel oid PRIMARY KEY, digest text NOT NULL);

-- HMAC-SHA256 with the tenant's key (RFC 2104: the pads are stored, so two sha256() calls do it).
CREATE OR REPLACE FUNCTION launchpad_private.mac(message text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT encode(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(message, 'UTF8'))), 'hex')
    FROM launchpad_private.claims_key k
$f$;
-- What the transaction proof is made of: this backend, this transaction's start (microseconds), the claims.
CREATE OR REPLACE FUNCTION launchpad_private.transaction_proof(claims text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT launchpad_private.mac('txn.' || pg_backend_pid()::text || '.'
        || (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text || '.' || claims)
$f$;
-- The call's first statement: a valid call proof turns into claims for this transaction; whether it did.
CREATE OR REPLACE FUNCTION launchpad.enter(claims text, proof text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    valid boolean := proof ~ '^[0-9]{1,15}\.[0-9a-f]{64}$'
        AND split_part(proof, '.', 1)::bigint > extract(epoch FROM clock_timestamp())
        AND split_part(proof, '.', 2) = launchpad_private.mac(
            'call.' || pg_backend_pid()::text || '.' || split_part(proof, '.', 1) || '.' || claims);
BEGIN
    PERFORM set_config('request.jwt.claims', claims, true);
    PERFORM set_config('launchpad.claims_proof',
                       CASE WHEN valid THEN launchpad_private.transaction_proof(claims) ELSE '' END, true);
    RETURN valid;
END
$f$;
-- The verified claims of this transaction, NULL unless its transaction proof holds.
CREATE OR REPLACE FUNCTION launchpad.claims() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
    SELECT CASE WHEN p.proof <> '' AND p.proof = launchpad_private.transaction_proof(p.claims)
           THEN p.claims::jsonb END
    FROM (SELECT coalesce(current_setting('request.jwt.claims', true), '') AS claims,
                 coalesce(current_setting('launchpad.claims_proof', true), '') AS proof) p
$f$;
CREATE OR REPLACE FUNCTION launchpad.sub() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$ SELECT launchpad.claims() ->> 'sub' $f$;
CREATE OR REPLACE FUNCTION launchpad.is_admin() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT coalesce(jsonb_typeof(c -> 'roles') = 'array' AND (c -> 'roles') ? 'admin', false)
    FROM (SELECT launchpad.claims()) AS x(c)
$f$;
CREATE OR REPLACE FUNCTION launchpad.pending() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
    SELECT EXISTS (SELECT 1 FROM launchpad_private.pending)
$f$;

CREATE OR REPLACE FUNCTION launchpad_private.named(name text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT EXISTS (
        SELECT 1 FROM launchpad_private.policy_set s, unnest(s.patterns) AS p(pattern)
        WHERE CASE WHEN right(p.pattern, 1) = '*' THEN starts_with(name, left(p.pattern, -1))
                   ELSE name = p.pattern END)
$f$;
CREATE OR REPLACE FUNCTION launchpad_private.is_governed(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT coalesce(bool_and(c.relforcerowsecurity AND c.relowner = t.admin::regrole), false)
    FROM pg_class c, launchpad_private.tenant t WHERE c.oid = rel
$f$;
CREATE OR REPLACE FUNCTION launchpad_private.should_govern(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT coalesce(bool_and(c.relkind IN ('r', 'p') AND (launchpad_private.named(c.relname::text) OR EXISTS (
        SELECT 1 FROM pg_inherits i WHERE i.inhrelid = rel AND launchpad_private.is_governed(i.inhparent)))), false)
    FROM pg_class c WHERE c.oid = rel
$f$;

-- Why a table cannot be governed (NULL when it can): an ungoverned parent its rows could be read through,
-- or code a developer can change that runs with its rows, or a cascading foreign key to a table developers write.
CREATE OR REPLACE FUNCTION launchpad_private.ungovernable(rel oid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    t launchpad_private.tenant;
    found text;
BEGIN
    SELECT * INTO t FROM launchpad_private.tenant;
    -- (a parent about to be governed in the same sync counts as governed)
    SELECT format('it inherits from %s, which no policy governs', i.inhparent::regclass) INTO found
    FROM pg_inherits i WHERE i.inhrelid = rel
    AND NOT (launchpad_private.is_governed(i.inhparent) OR launchpad_private.should_govern(i.inhparent)) LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    -- A cascading foreign key writes this table's rows, bypassing RLS, when a row of the other table changes.
    SELECT format('its foreign key %I changes its rows when rows of %s change, which no policy governs',
                  k.conname, k.confrelid::regclass) INTO found
    FROM pg_constraint k WHERE k.conrelid = rel AND k.contype = 'f'
    AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
    AND NOT (launchpad_private.is_governed(k.confrelid) OR launchpad_private.should_govern(k.confrelid)) LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    SELECT format('it has rule %I', r.rulename) INTO found FROM pg_rewrite r WHERE r.ev_class = rel LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    WITH RECURSIVE types(oid) AS (
        SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0
        UNION SELECT x FROM types JOIN pg_type y ON y.oid = types.oid,
                            LATERAL (VALUES (y.typbasetype), (y.typelem)) AS v(x) WHERE x <> 0
    ), parts(classid, objid) AS (
        SELECT 'pg_class'::regclass, rel
        UNION ALL SELECT 'pg_class'::regclass, indexrelid FROM pg_index WHERE indrelid = rel
        UNION ALL SELECT 'pg_attrdef'::regclass, oid FROM pg_attrdef WHERE adrelid = rel
        UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint WHERE conrelid = rel
        UNION ALL SELECT 'pg_trigger'::regclass, oid FROM pg_trigger WHERE tgrelid = rel
        UNION ALL SELECT 'pg_constraint'::regclass, k.oid FROM pg_constraint k JOIN types ON k.contypid = types.oid
    ), code(owner, what) AS (
        SELECT p.proowner, format('function %s', p.oid::regprocedure)
        FROM parts JOIN pg_depend d ON d.classid = parts.classid AND d.objid = parts.objid
        JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
        UNION ALL
        SELECT o.oprowner, format('operator %s', o.oid::regoperator)
        FROM parts JOIN pg_depend d ON d.classid = parts.classid AND d.objid = parts.objid
        JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid
    )
    SELECT format('it runs %s, which a developer can change', what) INTO found FROM code
    WHERE owner::regrole::text IN (t.rw, t.ro) LIMIT 1;
    RETURN found;
END
$f$;

CREATE OR REPLACE FUNCTION launchpad_private.drop_policies(rel oid, including_admin boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT polname FROM pg_policy WHERE polrelid = rel AND (including_admin OR polname <> 'lp_admin')
    LOOP
        EXECUTE format('DROP POLICY %I ON %s', name, rel::regclass);
    END LOOP;
END
$f$;

-- Into governance: owned by the admin role, exact grants, RLS enabled and forced, only lp_admin (default deny).
CREATE OR REPLACE FUNCTION launchpad_private.govern(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    t launchpad_private.tenant;
    why text;
    seq oid;
BEGIN
    SELECT * INTO t FROM launchpad_private.tenant;
    why := launchpad_private.ungovernable(rel);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'table % is governed by a policy, so it cannot be used like this: %', rel::regclass, why
            USING ERRCODE = '42501',
                  HINT = 'an admin can remove that (or make it the admin''s), or change the policy';
    END IF;
    EXECUTE format('ALTER TABLE %s OWNER TO %I', rel::regclass, t.admin);
    EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC, %I, %I', rel::regclass, t.rw, t.ro);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO %I', rel::regclass, t.rw);
    EXECUTE format('GRANT SELECT ON TABLE %s TO %I', rel::regclass, t.ro);
    FOR seq IN SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
               WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = rel AND d.deptype IN ('a', 'i')
    LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, %I, %I', seq::regclass, t.rw, t.ro);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', seq::regclass, t.rw);
        EXECUTE format('GRANT SELECT ON SEQUENCE %s TO %I', seq::regclass, t.ro);
    END LOOP;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', rel::regclass);
    PERFORM launchpad_private.drop_policies(rel, true);
    EXECUTE format('CREATE POLICY lp_admin ON %s AS PERMISSIVE FOR ALL TO %I USING (%s) WITH CHECK (%s)',
                   rel::regclass, t.admin, '(SELECT launchpad.is_admin())', '(SELECT launchpad.is_admin())');
END
$f$;

-- Back to how every ungoverned table is: owned by the developers' role, no RLS, readable by viewers.
CREATE OR REPLACE FUNCTION launchpad_private.ungovern(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    t launchpad_private.tenant;
BEGIN
    SELECT * INTO t FROM launchpad_private.tenant;
    PERFORM launchpad_private.drop_policies(rel, true);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY', rel::regclass);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', rel::regclass, t.rw);
    EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC, %I', rel::regclass, t.ro);
    EXECUTE format('GRANT SELECT ON TABLE %s TO %I', rel::regclass, t.ro);
END
$f$;

-- The event trigger's work, after every DDL command of a tenant session. SECURITY DEFINER; it does nothing
-- outside an event trigger (pg_event_trigger_ddl_commands raises there), so calling it achieves nothing.
CREATE OR REPLACE FUNCTION launchpad.after_ddl() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    t launchpad_private.tenant;
    r record;
BEGIN
    SELECT * INTO t FROM launchpad_private.tenant;
    FOR r IN
        SELECT DISTINCT c.oid, c.relname, c.relkind, c.relowner::regrole::text AS owner
        FROM pg_event_trigger_ddl_commands() d
        CROSS JOIN LATERAL (SELECT CASE d.classid
            WHEN 'pg_class'::regclass
                THEN coalesce((SELECT indrelid FROM pg_index WHERE indexrelid = d.objid), d.objid)
            WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid)
            WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
            WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid)
            WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
            WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
            END AS rel) m
        JOIN pg_class c ON c.oid = m.rel
        WHERE c.relnamespace = t.schema_name::regnamespace
    LOOP
        IF launchpad_private.is_governed(r.oid) OR launchpad_private.should_govern(r.oid) THEN
            -- new, renamed, or changed (even by its admin owner: RLS off, a policy altered): governed again,
            -- default deny until the data service renders the rules right after the statement
            PERFORM launchpad_private.govern(r.oid);
            INSERT INTO launchpad_private.pending (rel) VALUES (r.oid) ON CONFLICT DO NOTHING;
        ELSIF r.relkind IN ('v', 'm', 'f') AND launchpad_private.named(r.relname::text)
              AND session_user::text <> t.admin AND NOT (r.relkind = 'v' AND EXISTS (
                  SELECT 1 FROM pg_class v, unnest(v.reloptions) AS o(option) WHERE v.oid = r.oid
                  AND lower(o.option) IN ('security_invoker=true', 'security_invoker=on', 'security_invoker=1',
                                          'security_invoker=yes'))) THEN
            RAISE EXCEPTION '"%" is a name a policy governs: only a table, or a view WITH (security_invoker), '
                'may have it', r.relname
                USING ERRCODE = '42501', HINT = 'choose another name, or ask an admin';
        ELSIF r.relkind IN ('r', 'p') AND r.owner = t.admin THEN
            -- an admin's new ungoverned table is the developers', as tables always were
            EXECUTE format('ALTER TABLE %s OWNER TO %I', r.oid::regclass, t.rw);
        END IF;
    END LOOP;
END
$f$;
-- A policy dropped by hand (an admin owns governed tables): every governed table is rendered again.
CREATE OR REPLACE FUNCTION launchpad.after_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE object_type = 'policy') THEN
        INSERT INTO launchpad_private.pending (rel)
        SELECT c.oid FROM pg_class c, launchpad_private.tenant t
        WHERE c.relnamespace = t.schema_name::regnamespace AND launchpad_private.is_governed(c.oid)
        ON CONFLICT DO NOTHING;
    END IF;
END
$f$;
-- The trigger's function runs as the invoker: the platform's own DDL (a sync, and what after_ddl itself
-- runs, which fires the trigger again) is told apart by current_user, the owner of the database.
CREATE OR REPLACE FUNCTION launchpad.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF current_user <> (SELECT datdba::regrole::name FROM pg_database WHERE datname = current_database()) THEN
        PERFORM launchpad.after_ddl();
    END IF;
END
$f$;
CREATE OR REPLACE FUNCTION launchpad.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF current_user <> (SELECT datdba::regrole::name FROM pg_database WHERE datname = current_database()) THEN
        PERFORM launchpad.after_drop();
    END IF;
END
$f$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA launchpad FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA launchpad_private FROM PUBLIC;
-- Query texts carry call proofs (and other developers' SQL): not for tenants, not even their own session's.
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer),
    pg_catalog.pg_stat_get_backend_activity(integer), pg_catalog.current_query() FROM PUBLIC;
"""

_EVENT_TRIGGER = f"""
DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER};
CREATE EVENT TRIGGER {EVENT_TRIGGER} ON ddl_command_end EXECUTE FUNCTION launchpad.on_ddl();
ALTER EVENT TRIGGER {EVENT_TRIGGER} ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER}_drop;
CREATE EVENT TRIGGER {EVENT_TRIGGER}_drop ON sql_drop EXECUTE FUNCTION launchpad.on_drop();
ALTER EVENT TRIGGER {EVENT_TRIGGER}_drop ENABLE ALWAYS;
"""

_GRANTS = [
    "GRANT USAGE ON SCHEMA launchpad TO {rw}, {ro}, {admin}",
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA launchpad TO {rw}, {ro}, {admin}",
    # What an admin makes is the developers' to use, as when admins ran as the developers' role.
    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE "
    "ON TABLES TO {rw}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {ro}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {rw}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT SELECT ON SEQUENCES TO {ro}",
]
_TENANT_ROW = """
INSERT INTO launchpad_private.tenant (schema_name, rw, ro, admin) VALUES (%s, %s, %s, %s)
ON CONFLICT (singleton) DO UPDATE SET schema_name = excluded.schema_name, rw = excluded.rw, ro = excluded.ro,
    admin = excluded.admin
"""
_KEY_ROW = """
INSERT INTO launchpad_private.claims_key (inner_pad, outer_pad) VALUES (%s, %s)
ON CONFLICT (singleton) DO UPDATE SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad
"""


def provision(cur: ext.cursor, roles: Roles, key: bytes) -> None:
    """Inside the tenant database, as the platform user, in the caller's transaction; idempotent.

    Event triggers need a superuser: without one there is none, and applying policies is refused (a table
    created later would not be governed).
    """
    cur.execute(SETUP)
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cur.fetchone()
    if row and row[0]:
        cur.execute(_EVENT_TRIGGER)
    idents = {name: pgsql.Identifier(getattr(roles, name)) for name in ("schema", "rw", "ro", "admin")}
    for statement in _GRANTS:
        cur.execute(pgsql.SQL(statement).format(**idents))
    cur.execute(_TENANT_ROW, (roles.schema, roles.rw, roles.ro, roles.admin))
    cur.execute(_KEY_ROW, hmac_pads(key))


# --- Applying a policy set (as the platform user, in the tenant database) --------------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    oid: int
    name: str
    governed: bool  # as it is now
    parents: tuple[int, ...]


def apply(
    dsn: str, documents: Sequence[Mapping[str, Any]], revision: int, *, behind_only: bool = False
) -> list[str]:
    """Stores the tenant's whole set and makes every table match it, in one transaction; governed tables.

    InvalidArgument (nothing applied) when a rule cannot be compiled for a table's column, or a table to be
    governed cannot be (developers' code on it). behind_only (reconciling a tenant's database with what
    auth stored): nothing happens unless the database's applied revision is older.
    """
    policies = compile_set(documents, revision)
    try:
        with _transaction(dsn) as cur:
            _lock(cur)
            # Revisions only grow: a newer set applied meanwhile (auth's change in flight) is never undone.
            if behind_only and _applied_revision(cur) >= revision:
                return []
            if not _has_event_trigger(cur):
                raise FailedPrecondition(
                    "policies on PostgreSQL need the platform's database user to be a superuser (an event "
                    "trigger governs tables created later); nothing was applied"
                )
            cur.execute(_STORE, (revision, orjson.dumps(list(documents)).decode(), table_patterns(policies)))
            governed = _sync(cur, policies, strict=True)
            cur.execute("DELETE FROM launchpad_private.pending")
    except psycopg2.Error as exc:
        error = _sync_error(exc)
        if error is None:
            raise  # our own SQL is wrong: an internal error, logged with its stack
        raise error from exc
    return governed


def _applied_revision(cur: ext.cursor) -> int:
    cur.execute("SELECT revision FROM launchpad_private.policy_set")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def resync(dsn: str) -> None:
    """Renders the policies of the tables the event trigger marked (created, renamed or altered)."""
    with _transaction(dsn) as cur:
        _lock(cur)
        cur.execute("SELECT rel FROM launchpad_private.pending")
        pending = {int(rel) for (rel,) in cur.fetchall()}
        if not pending:
            return
        cur.execute("SELECT documents, revision FROM launchpad_private.policy_set")
        row = cur.fetchone()
        policies = compile_set(row[0], row[1]) if row else PolicySet()
        # Not strict: the statement is committed; a rule that cannot hold for a column just matches nothing.
        _sync(cur, policies, strict=False, only=pending)
        cur.execute("DELETE FROM launchpad_private.pending WHERE rel = ANY(%s::oid[])", (list(pending),))


_STORE = """
INSERT INTO launchpad_private.policy_set (revision, documents, patterns) VALUES (%s, %s, %s)
ON CONFLICT (singleton) DO UPDATE SET revision = excluded.revision, documents = excluded.documents,
    patterns = excluded.patterns, applied_at = now()
"""


def table_patterns(policies: PolicySet) -> list[str]:
    return sorted({s.rule.resource for s in policies.scoped if kind_of(s.rule.resource) == "table"})


@contextlib.contextmanager
def _transaction(dsn: str) -> Iterator[ext.cursor]:
    """One transaction on a connection of its own (committed, or rolled back on any error), then closed."""
    conn = psycopg2.connect(dsn, connect_timeout=3, application_name="launchpad-data")
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def _lock(cur: ext.cursor) -> None:
    cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")  # operators and functions: the built-in ones
    cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", SYNC_LOCK)
    # Before anything else: live dry runs (pg_probe) hold `rendered` in SHARE mode from before their snapshot,
    # so a sync waits for running probes and they for it, and no lock is ever taken in the other order.
    cur.execute("LOCK TABLE launchpad_private.rendered IN EXCLUSIVE MODE")


def _has_event_trigger(cur: ext.cursor) -> bool:
    names = [EVENT_TRIGGER, f"{EVENT_TRIGGER}_drop"]
    cur.execute(
        "SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY(%s) AND evtenabled = 'A'", (names,)
    )
    row = cur.fetchone()
    return bool(row and row[0] == len(names))


def _sync_error(exc: psycopg2.Error) -> ServiceError | None:
    message = exc.diag.message_primary or str(exc).strip()
    if exc.pgcode == "55P03":
        return Aborted(
            f"a running query holds a table the policies change; nothing was applied, retry: {message}"
        )
    if exc.pgcode == "42501":  # govern() refused a table
        return InvalidArgument(f"{message}; nothing was applied", hint=exc.diag.message_hint or "")
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return pg_unavailable("PostgreSQL could not apply the policies; nothing was applied", exc)
    return None


def _tables(cur: ext.cursor) -> list[_Table]:
    cur.execute(
        "SELECT c.oid, c.relname, launchpad_private.is_governed(c.oid), "
        "ARRAY(SELECT i.inhparent::bigint FROM pg_inherits i WHERE i.inhrelid = c.oid) "
        "FROM pg_class c, launchpad_private.tenant t "
        "WHERE c.relnamespace = t.schema_name::regnamespace AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    )
    return [
        _Table(int(oid), name, governed, tuple(parents)) for oid, name, governed, parents in cur.fetchall()
    ]


def _columns(cur: ext.cursor, oids: Iterable[int]) -> dict[int, dict[str, str]]:
    cur.execute(
        "SELECT attrelid::bigint, attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = ANY(%s::oid[]) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
        (list(oids),),
    )
    columns: dict[int, dict[str, str]] = {}
    for oid, name, type_name in cur.fetchall():
        columns.setdefault(int(oid), {})[name] = type_name
    return columns


def governing(tables: Sequence[_Table], policies: PolicySet) -> dict[int, str]:
    """Table oid -> the resource whose rules govern it: its own name when a rule names it, else (children of
    a governed table, which its rows are read through too) the nearest governed ancestor's."""
    resources = {t.oid: t.name for t in tables if policies.governs(t.name, kind="table")}
    changed = True
    while changed:  # inheritance is shallow; each pass settles one more level
        changed = False
        for table in tables:
            if table.oid in resources:
                continue
            parent = next((p for p in table.parents if p in resources), None)
            if parent is not None:
                resources[table.oid] = resources[parent]
                changed = True
    return resources


def _sync(cur: ext.cursor, policies: PolicySet, *, strict: bool, only: set[int] | None = None) -> list[str]:
    """Governs the tables the set names (rendering every one: strict refusals cover all), ungoverns the rest.
    A governed table whose policies would come out the same, and that no DDL touched, is left alone."""
    cur.execute("SELECT schema_name, rw, ro FROM launchpad_private.tenant")
    schema, rw, ro = cur.fetchone()
    tables = _tables(cur)
    resources = governing(tables, policies)
    selected = [t for t in tables if only is None or t.oid in only]
    columns = _columns(cur, [t.oid for t in selected if t.oid in resources])
    cur.execute("SELECT rel::bigint, digest FROM launchpad_private.rendered")
    rendered = dict(cur.fetchall())
    cur.execute("SELECT rel::bigint FROM launchpad_private.pending")
    touched = {int(rel) for (rel,) in cur.fetchall()}
    roles = _roles(cur, rw, ro)
    for table in selected:
        if table.oid not in resources:
            if table.governed:
                cur.execute("SELECT launchpad_private.ungovern(%s)", (table.oid,))
            continue
        name = pgsql.Identifier(schema, table.name).as_string(cur)
        statements, digest = _rendering(
            policies, resources[table.oid], columns.get(table.oid, {}), name, roles, strict=strict
        )
        if table.governed and table.oid not in touched and rendered.get(table.oid) == digest:
            continue
        cur.execute("SELECT launchpad_private.govern(%s)", (table.oid,))
        for text in statements:
            cur.execute(text)
        cur.execute(_RENDERED, (table.oid, digest))
    governed = [t.oid for t in tables if t.oid in resources]
    cur.execute("DELETE FROM launchpad_private.rendered WHERE NOT rel = ANY(%s::oid[])", (governed,))
    return sorted(t.name for t in tables if t.oid in resources)


def _rendering(
    policies: PolicySet, resource: str, columns: Mapping[str, str], name: str, roles: str, *, strict: bool
) -> tuple[list[str], str]:
    """One table's CREATE POLICY statements, filled in, and their digest (what `rendered` records)."""
    statements = [
        text.format(table=name, roles=roles)
        for text in policy_statements(policies, resource, columns, strict=strict)
    ]
    return statements, hashlib.sha256("\n".join(statements).encode()).hexdigest()


def stage(cur: ext.cursor, policies: PolicySet, rel: int) -> bool:
    """Makes one table's row-level security what `policies` says, in the caller's transaction, and records
    nothing of it (the live dry run rolls it back); whether the set governs the table. Rendered strictly, as
    apply() does: InvalidArgument names the table and column a rule cannot be compiled for. A governed table
    already rendered from the same rules is left alone, so probing the stored set locks nothing."""
    cur.execute("SELECT schema_name, rw, ro FROM launchpad_private.tenant")
    schema, rw, ro = cur.fetchone()
    patterns = table_patterns(policies)
    cur.execute("SELECT patterns FROM launchpad_private.policy_set")
    stored = cur.fetchone()
    if stored is None or sorted(stored[0]) != patterns:
        # govern() asks the stored patterns whether a parent (or a foreign key's table) is to be governed too
        cur.execute(_STORE, (0, "[]", patterns))
    tables = _tables(cur)
    resources = governing(tables, policies)
    table = next(t for t in tables if t.oid == rel)
    if rel not in resources:
        if table.governed:
            cur.execute("SELECT launchpad_private.ungovern(%s)", (rel,))
        return False
    name = pgsql.Identifier(schema, table.name).as_string(cur)
    columns = _columns(cur, [rel]).get(rel, {})
    statements, digest = _rendering(policies, resources[rel], columns, name, _roles(cur, rw, ro), strict=True)
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM launchpad_private.rendered WHERE rel = %s AND digest = %s) "
        "AND NOT EXISTS (SELECT 1 FROM launchpad_private.pending WHERE rel = %s)",
        (rel, digest, rel),
    )
    if table.governed and cur.fetchone()[0]:
        return True
    cur.execute("SELECT launchpad_private.govern(%s)", (rel,))
    for text in statements:
        cur.execute(text)
    return True


_RENDERED = """
INSERT INTO launchpad_private.rendered (rel, digest) VALUES (%s, %s)
ON CONFLICT (rel) DO UPDATE SET digest = excluded.digest
"""


def _roles(cur: ext.cursor, *names: str) -> str:
    return ", ".join(pgsql.Identifier(name).as_string(cur) for name in names)


def policy_statements(
    policies: PolicySet, resource: str, columns: Mapping[str, str], *, strict: bool
) -> list[str]:
    """CREATE POLICY statements of one table ({table} and {roles} left to fill): per command a permissive
    policy from `allow` (none: nothing allowed) and a restrictive one from `NOT deny` (none when no rule
    denies). Restrictive ones pass verified admins: the admin role is a member of the developers' role."""
    statements = []
    for action, (command, old_row, new_row) in COMMANDS.items():
        predicate = render_table(policies, resource, columns, action, "postgresql", strict=strict)
        if predicate.allow != "false":
            statements.append(
                _policy(f"lp_{action}", "PERMISSIVE", command, predicate.allow, old_row, new_row)
            )
        if predicate.deny != "false":
            passes = f"{ADMIN} OR NOT coalesce({predicate.deny}, false)"  # unknown does not deny
            statements.append(_policy(f"lp_{action}_deny", "RESTRICTIVE", command, passes, old_row, new_row))
    return statements


def _policy(name: str, kind: str, command: str, condition: str, old_row: bool, new_row: bool) -> str:
    # Braces in the condition (jsonb paths '{}') survive str.format only doubled.
    condition = condition.replace("{", "{{").replace("}", "}}")
    using = f" USING ({condition})" if old_row else ""
    check = f" WITH CHECK ({condition})" if new_row else ""
    return f"CREATE POLICY {name} ON {{table}} AS {kind} FOR {command} TO {{roles}}{using}{check}"
