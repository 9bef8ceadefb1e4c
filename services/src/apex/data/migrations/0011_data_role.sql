-- The roles of apex.data's own connections (issue 11, 002#10).
-- apex_data: what every connection of the data service's pools runs as (the pool does
-- SET ROLE apex_data), whatever user the DSN names; neither superuser nor BYPASSRLS, so
-- the FORCE RLS policy of usage_records shows it no row: a code path that forgets
-- apex.data.tenancy.tenant_transaction sees nothing instead of every tenant's records.
-- It may switch to apex_tenant (tenant transactions) and apex_auditor, and owns the
-- service tables' rights (outbox, credits, transfers).
-- apex_auditor: read-only, every tenant's usage records (its own policy), for the
-- explicit cross-tenant paths (apex.data.tenancy.audit_transaction: the reference check
-- between PostgreSQL and ClickHouse).
-- Roles are cluster-wide: created only if missing, never dropped on rollback (like 0008).

-- migrate:up
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apex_data') THEN
        CREATE ROLE apex_data NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apex_auditor') THEN
        CREATE ROLE apex_auditor NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION
    -- A concurrent migration of another database created them first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'apex_data', 'MEMBER') THEN
        EXECUTE format('GRANT apex_data TO %I', current_user);
    END IF;
    IF NOT pg_has_role('apex_data', 'apex_tenant', 'MEMBER') THEN
        GRANT apex_tenant TO apex_data;
    END IF;
    IF NOT pg_has_role('apex_data', 'apex_auditor', 'MEMBER') THEN
        GRANT apex_auditor TO apex_data;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT SELECT ON usage_records TO apex_data;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox, tenant_credits, credit_transfers TO apex_data;
GRANT USAGE ON SEQUENCE outbox_id_seq TO apex_data;
GRANT SELECT ON usage_records TO apex_auditor;
CREATE POLICY auditor_reads ON usage_records FOR SELECT TO apex_auditor USING (true);

-- migrate:down
DROP POLICY auditor_reads ON usage_records;
REVOKE ALL ON usage_records FROM apex_auditor;
REVOKE ALL ON usage_records, outbox, tenant_credits, credit_transfers FROM apex_data;
REVOKE ALL ON SEQUENCE outbox_id_seq FROM apex_data;
