-- usage_daily: usage per tenant, UTC day and kind, a materialized view of usage_records
-- (issue 11, 001#61). apex.data.views refreshes it CONCURRENTLY, which needs the unique
-- index below and lets reads go on during a refresh.
-- Its query reads every tenant's records, and a refresh runs it as the view's owner: the
-- owner is apex_auditor (0011), whose policy sees every record, and only the owner may
-- refresh, so apex.data refreshes as that role (apex_data is a member). A materialized
-- view has no row-level security: it is granted to apex_data (which reads it with a
-- tenant filter), never to apex_tenant.
-- The reference check (apex.data.references) reads users' ids as apex_auditor.
-- cache_invalidations: tenants whose cached summaries and balances the relay must still
-- invalidate on every cache node (queued when it copies their outbox rows, removed once
-- every node took the bump), apart from the outbox so that a Redis outage never holds
-- the ClickHouse copy back.
-- Rolling back drops the view, the queue and the grant; usage_records keeps its rows.

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
ALTER MATERIALIZED VIEW usage_daily OWNER TO apex_auditor;
GRANT SELECT ON usage_daily TO apex_data;
GRANT SELECT (id) ON users TO apex_auditor;
CREATE TABLE cache_invalidations (
    tenant_id uuid PRIMARY KEY,
    queued_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON cache_invalidations TO apex_data;

-- migrate:down
DROP TABLE cache_invalidations;
REVOKE SELECT (id) ON users FROM apex_auditor;
DROP MATERIALIZED VIEW usage_daily;
