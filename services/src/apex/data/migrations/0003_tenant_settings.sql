-- Per-tenant settings, isolated by row-level security: a session sees only the rows
-- of the tenant named by the transaction-local setting apex.tenant_id
-- (apex.data.tenancy.tenant_transaction). FORCE applies the policy to the table
-- owner too; superusers and BYPASSRLS roles still see everything.
-- Rolling this migration back drops the settings; users, keys and audit events stay.

-- migrate:up
CREATE TABLE tenant_settings (
    tenant_id uuid NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
ALTER TABLE tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;
-- Without a tenant no row matches: missing_ok=true gives NULL when the setting was
-- never defined, and NULLIF turns the '' it reads as after a transaction that set
-- it locally into NULL too (''::uuid would be an error, not "no rows").
CREATE POLICY tenant_isolation ON tenant_settings
    USING (tenant_id = NULLIF(current_setting('apex.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('apex.tenant_id', true), '')::uuid);

-- migrate:down
DROP TABLE tenant_settings;
