-- Policy changes (issue 11). One file for both dialects. Who replaced a policy last, and a per-tenant
-- revision that every create, replace and delete bumps in the same transaction as the change: the services
-- that enforce policies (services/core/policy/book.py) read it on every call and re-read a tenant's
-- policies only when it moved. The bump is an upsert of the tenant's row, which also serializes concurrent
-- changes of one tenant (PostgreSQL row lock; SQLite BEGIN IMMEDIATE).
ALTER TABLE auth_policies ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;

ALTER TABLE auth_policies ADD COLUMN updated_by TEXT NOT NULL DEFAULT '';

UPDATE auth_policies SET updated_at = created_at, updated_by = created_by;

CREATE TABLE IF NOT EXISTS auth_policy_revisions (
    tenant TEXT PRIMARY KEY REFERENCES auth_tenants (name),
    revision BIGINT NOT NULL
);

INSERT INTO auth_policy_revisions (tenant, revision) SELECT DISTINCT tenant, 1 FROM auth_policies;
