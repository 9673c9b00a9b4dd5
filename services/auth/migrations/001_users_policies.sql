-- Auth's platform tables (schema launchpad on PostgreSQL, platform.sqlite otherwise). One file for both
-- dialects: times are epoch milliseconds, roles a comma-separated list, policies canonical JSON text.
CREATE TABLE IF NOT EXISTS auth_tenants (
    name TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS auth_users (
    username TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES auth_tenants (name),
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS auth_users_tenant ON auth_users (tenant);

CREATE TABLE IF NOT EXISTS auth_policies (
    tenant TEXT NOT NULL REFERENCES auth_tenants (name),
    name TEXT NOT NULL,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
