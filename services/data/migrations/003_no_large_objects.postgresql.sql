-- Tenant roles get nothing PUBLIC can do that outlives their transaction or reaches another tenant.
-- Large objects: a READ ONLY transaction does not stop lo_from_bytea/lo_put (viewers could write), and an
-- owner may GRANT on its large objects to another tenant's role. Nobody but superusers creates or writes them.
-- Advisory locks: the platform's migrations and provisioning take advisory locks; tenant SQL must not be able
-- to hold (or wait on) them. The service's own role keeps them: a superuser ignores function privileges, and
-- a role that is not one cannot revoke what the bootstrap superuser granted (PostgreSQL warns, changes nothing).
-- Function privileges are per database: this covers the database the tenants' schemas live in.
REVOKE EXECUTE ON FUNCTION
    pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer), pg_catalog.lo_from_bytea(oid, bytea),
    pg_catalog.lo_put(oid, bigint, bytea), pg_catalog.lo_import(text), pg_catalog.lo_import(text, oid),
    pg_catalog.lowrite(integer, bytea)
FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    pg_catalog.pg_advisory_lock(bigint), pg_catalog.pg_advisory_lock(integer, integer),
    pg_catalog.pg_advisory_lock_shared(bigint), pg_catalog.pg_advisory_lock_shared(integer, integer),
    pg_catalog.pg_advisory_xact_lock(bigint), pg_catalog.pg_advisory_xact_lock(integer, integer),
    pg_catalog.pg_advisory_xact_lock_shared(bigint), pg_catalog.pg_advisory_xact_lock_shared(integer, integer),
    pg_catalog.pg_try_advisory_lock(bigint), pg_catalog.pg_try_advisory_lock(integer, integer),
    pg_catalog.pg_try_advisory_lock_shared(bigint), pg_catalog.pg_try_advisory_lock_shared(integer, integer),
    pg_catalog.pg_try_advisory_xact_lock(bigint), pg_catalog.pg_try_advisory_xact_lock(integer, integer),
    pg_catalog.pg_try_advisory_xact_lock_shared(bigint), pg_catalog.pg_try_advisory_xact_lock_shared(integer, integer)
FROM PUBLIC;
