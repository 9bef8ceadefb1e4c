-- The data layer (issue 11): usage records, the transactional outbox, tenant credits and
-- credit transfers.
-- usage_records is per tenant and isolated by row-level security exactly like
-- tenant_settings (0003): FORCE applies the policy to the table owner too, and
-- apex.data.tenancy.tenant_transaction switches to apex_tenant (0008), which is neither
-- superuser nor BYPASSRLS, so a code path that forgets the tenant context sees no row.
-- outbox rows are written in the same transaction as the business row they announce; the
-- relay (apex.data.outbox) copies them to ClickHouse and sets relayed_at. The tenant
-- role writes them (inside a tenant transaction), the service role relays them.
-- tenant_credits and credit_transfers belong to the multi-store operation
-- (apex.data.transfer): they name two tenants at once, so they are service tables, not
-- tenant tables.
-- Rolling back drops these four tables; everything of 0001-0009 stays.

-- migrate:up
CREATE TABLE usage_records (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    user_id uuid NOT NULL,
    kind text NOT NULL,
    quantity bigint NOT NULL CHECK (quantity >= 0),
    cost_micros bigint NOT NULL CHECK (cost_micros >= 0),
    idempotency_key text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
-- The summary reads one tenant's records in a time range.
CREATE INDEX usage_records_tenant_time ON usage_records (tenant_id, occurred_at);
ALTER TABLE usage_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_records
    USING (tenant_id = NULLIF(current_setting('apex.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('apex.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON usage_records TO apex_tenant;

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    relayed_at timestamptz NULL
);
-- The relay reads the rows not relayed yet, oldest first.
CREATE INDEX outbox_pending ON outbox (id) WHERE relayed_at IS NULL;
GRANT INSERT ON outbox TO apex_tenant;
GRANT USAGE ON SEQUENCE outbox_id_seq TO apex_tenant;

CREATE TABLE tenant_credits (
    tenant_id uuid PRIMARY KEY,
    balance_micros bigint NOT NULL CHECK (balance_micros >= 0)
);

CREATE TABLE credit_transfers (
    id uuid PRIMARY KEY,
    from_tenant uuid NOT NULL,
    to_tenant uuid NOT NULL,
    amount_micros bigint NOT NULL CHECK (amount_micros > 0),
    idempotency_key text NOT NULL,
    -- apex.data.transfer names the states (e.g. pending, committed, compensated).
    state text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (from_tenant, idempotency_key)
);

-- migrate:down
DROP TABLE credit_transfers;
DROP TABLE tenant_credits;
DROP TABLE outbox;
DROP TABLE usage_records;
