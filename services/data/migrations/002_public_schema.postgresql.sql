-- Tenant roles must share nothing: nobody but the owner may create objects in the public schema (the
-- PostgreSQL 15 default; older servers granted CREATE to PUBLIC, an open channel between tenants).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public') THEN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    END IF;
END
$$;
