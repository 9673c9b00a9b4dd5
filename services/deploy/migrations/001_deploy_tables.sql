-- Deploy's platform tables (schema launchpad on PostgreSQL, platform.sqlite otherwise). One file for both
-- dialects: times are epoch milliseconds.
CREATE TABLE IF NOT EXISTS deploy_artifacts (
    artifact_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    storage_path TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    signature TEXT,
    key_id TEXT,
    key_source TEXT,
    signed_by TEXT,
    signed_at BIGINT,
    -- Packing is idempotent per tenant: the same bytes are one artifact.
    UNIQUE (tenant, sha256)
);

CREATE INDEX IF NOT EXISTS deploy_artifacts_tenant ON deploy_artifacts (tenant, created_at);

-- The workflow registry: a version, once deployed, always names the same digest.
CREATE TABLE IF NOT EXISTS deploy_workflows (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE IF NOT EXISTS deploy_deployments (
    deployment_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS deploy_deployments_tenant ON deploy_deployments (tenant, created_at);

-- What the embedded runtime agent has been asked to execute.
CREATE TABLE IF NOT EXISTS deploy_executions (
    execution_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
