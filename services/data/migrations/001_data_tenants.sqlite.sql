-- Tenants whose SQL space (schema and roles, or file) this service has provisioned, and with which layout.
CREATE TABLE data_tenants (
    tenant TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    layout INTEGER NOT NULL,
    provisioned_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
