-- apex.billing's tables (issue 13, contract-billing.md): the provider's customer of each
-- tenant, the tenant's subscription as last known (`provider_updated`: the `created` of
-- the provider event or fetch it came from, so an older event never overwrites a newer
-- state), the provider's price of each plan, every webhook event processed (its id once:
-- exactly once in effect), invoices, and the double-entry ledger. apex.billing acts as
-- apex_app (0010's default privileges); every query names the tenant.

-- migrate:up
CREATE TABLE billing_customers (
    tenant_id uuid PRIMARY KEY,
    customer_id text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing_prices (
    plan text NOT NULL,
    amount bigint NOT NULL,
    price_id text NOT NULL,
    PRIMARY KEY (plan, amount)
);
CREATE TABLE billing_subscriptions (
    tenant_id uuid PRIMARY KEY REFERENCES billing_customers (tenant_id),
    subscription_id text NOT NULL UNIQUE,
    item_id text NOT NULL,
    plan text NOT NULL,
    status text NOT NULL,
    current_period_end timestamptz NOT NULL,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    provider_updated bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing_events (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing_invoices (
    invoice_id text PRIMARY KEY,
    tenant_id uuid NOT NULL,
    subscription_id text NOT NULL,
    amount_paid bigint NOT NULL,
    currency text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    charge_id text,
    refunded bigint NOT NULL DEFAULT 0,
    paid_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT billing_invoices_amounts CHECK (amount_paid >= 0 AND refunded BETWEEN 0 AND amount_paid)
);
CREATE INDEX billing_invoices_tenant ON billing_invoices (tenant_id, period_start);
CREATE TABLE billing_ledger (
    id bigserial PRIMARY KEY,
    transaction_id text NOT NULL,
    tenant_id uuid NOT NULL,
    account text NOT NULL,
    debit bigint NOT NULL DEFAULT 0,
    credit bigint NOT NULL DEFAULT 0,
    currency text NOT NULL,
    memo text NOT NULL,
    booked_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT billing_ledger_account CHECK (account IN (
        'cash', 'receivable', 'deferred_revenue', 'revenue', 'refunds', 'customer_credit'
    )),
    CONSTRAINT billing_ledger_sides CHECK (debit >= 0 AND credit >= 0 AND (debit = 0) <> (credit = 0))
);
CREATE INDEX billing_ledger_transaction ON billing_ledger (transaction_id);
CREATE INDEX billing_ledger_tenant ON billing_ledger (tenant_id, account);

-- migrate:down
DROP TABLE billing_ledger;
DROP TABLE billing_invoices;
DROP TABLE billing_events;
DROP TABLE billing_subscriptions;
DROP TABLE billing_prices;
DROP TABLE billing_customers;
