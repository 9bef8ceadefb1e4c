-- The role tenant transactions run as (apex.data.tenancy.tenant_transaction does
-- SET LOCAL ROLE apex_tenant): it is neither superuser nor BYPASSRLS, so row-level
-- security applies even when the service connects as a superuser or the table owner.
-- Roles are cluster-wide: the role is created only if missing (another database of
-- the cluster may have made it, possibly at the same moment) and rolling back only
-- takes its rights on this database's tables away; it never drops the role.

-- migrate:up
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apex_tenant') THEN
        CREATE ROLE apex_tenant NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION
    -- A concurrent migration of another database created it first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    -- SET ROLE needs membership unless the current user is a superuser.
    IF NOT pg_has_role(current_user, 'apex_tenant', 'MEMBER') THEN
        EXECUTE format('GRANT apex_tenant TO %I', current_user);
    END IF;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_settings TO apex_tenant;

-- migrate:down
REVOKE ALL ON tenant_settings FROM apex_tenant;
