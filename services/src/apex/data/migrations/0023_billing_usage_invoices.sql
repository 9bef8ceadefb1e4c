-- apex.billing's usage invoices (issue 13, notes-billing.md § Scheduled invoicing): each
-- tenant's usage period that was invoiced (even with nothing to bill, so the schedule
-- does not invoice it again), and each invoice item the provider was asked to add for a
-- period's line: the first, then a correction for usage that arrived late. What was
-- invoiced for a line is the sum of its items.

-- migrate:up
CREATE TABLE billing_usage_periods (
    tenant_id uuid NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    invoiced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start, period_end),
    CONSTRAINT billing_usage_periods_order CHECK (period_start < period_end)
);
CREATE TABLE billing_usage_items (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    kind text NOT NULL,
    agent text NOT NULL,
    model text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    invoice_item text NOT NULL UNIQUE,
    correction boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_usage_items_period ON billing_usage_items (tenant_id, period_start, period_end);

-- migrate:down
DROP TABLE billing_usage_items;
DROP TABLE billing_usage_periods;
