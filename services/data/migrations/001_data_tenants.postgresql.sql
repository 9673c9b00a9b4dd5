-- Tenants whose SQL space (schema and roles, or file) this service has provisioned, and with which layout.
CREATE TABLE data_tenants (
    tenant text PRIMARY KEY,
    backend text NOT NULL,
    layout integer NOT NULL,
    provisioned_at timestamptz NOT NULL DEFAULT now()
);
