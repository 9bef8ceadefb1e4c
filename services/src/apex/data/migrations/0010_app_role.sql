-- The role the services' own connections act as (apex.data.pool.create_pool sets it at
-- connect time): neither superuser nor BYPASSRLS, so row-level security applies to every
-- query of a service, not only to those inside tenant_transaction. A query that forgets
-- the tenant context sees no tenant's rows (the policies of 0003 match no row without
-- apex.tenant_id), even when the service logs in as a superuser or the tables' owner.
-- Roles are cluster-wide: created only if missing (another database of the cluster may
-- have made it, possibly at the same moment); rolling back only takes its rights on this
-- database away, it never drops the role.

-- migrate:up
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apex_app') THEN
        CREATE ROLE apex_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION
    -- A concurrent migration of another database created it first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    -- Acting as a role needs membership unless the login is a superuser.
    IF NOT pg_has_role(current_user, 'apex_app', 'MEMBER') THEN
        EXECUTE format('GRANT apex_app TO %I', current_user);
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO apex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO apex_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO apex_app;
-- Tables and sequences later migrations create (as this same user).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO apex_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO apex_app;

-- migrate:down
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM apex_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM apex_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM apex_app;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM apex_app;
REVOKE USAGE ON SCHEMA public FROM apex_app;
