-- usage_daily: usage per tenant, UTC day and kind, a materialized view of usage_records
-- (issue 11, 001#61). apex.data.views refreshes it CONCURRENTLY, which needs the unique
-- index below and lets reads go on during a refresh.
-- A materialized view has no row-level security of its own: it is not granted to
-- apex_tenant, and the service reads it with an explicit tenant filter. Its query runs
-- as the view's owner, which must see every tenant's rows (a superuser or a BYPASSRLS
-- role), like the other cross-tenant work (the relay, the references check).
-- Rolling back drops the view; usage_records keeps its rows.

-- migrate:up
CREATE MATERIALIZED VIEW usage_daily AS
SELECT
    tenant_id,
    (occurred_at AT TIME ZONE 'UTC')::date AS day,
    kind,
    sum(quantity)::bigint AS quantity,
    sum(cost_micros)::bigint AS cost_micros
FROM usage_records
GROUP BY tenant_id, (occurred_at AT TIME ZONE 'UTC')::date, kind
WITH DATA;
CREATE UNIQUE INDEX usage_daily_key ON usage_daily (tenant_id, day, kind);

-- migrate:down
DROP MATERIALIZED VIEW usage_daily;
