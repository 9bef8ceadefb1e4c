-- Deleting a tenant's usage records (issue 11): `POST /admin/tenants/purge` deletes the
-- records of the tenants it is given, each in that tenant's transaction (role
-- apex_tenant, RLS: a tenant's delete reaches its own records only), so an L4 run
-- removes what its tenants wrote. apex_tenant could only read and insert them before.
-- Rolling back revokes the grant; no data changes.

-- migrate:up
GRANT DELETE ON usage_records TO apex_tenant;

-- migrate:down
REVOKE DELETE ON usage_records FROM apex_tenant;
