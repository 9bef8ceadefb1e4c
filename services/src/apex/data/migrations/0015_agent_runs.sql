-- agent_runs: apex.agents' runs (issue 12), one row per run: who asked (tenant, user), the
-- agent and its input, the state machine's status, the answer or the error, the
-- provider's usage and its cost. The idempotency key is per tenant: the same key again
-- is the first run. apex.agents reads and writes it as apex_app (0010's default
-- privileges grant it); every query names the tenant.

-- migrate:up
CREATE TABLE agent_runs (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    user_id text NOT NULL,
    agent text NOT NULL,
    input text NOT NULL,
    priority text NOT NULL DEFAULT 'normal',
    idempotency_key text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    result text,
    error text,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost_micros bigint NOT NULL DEFAULT 0,
    provider_path jsonb NOT NULL DEFAULT '[]'::jsonb,
    llm_attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT agent_runs_status CHECK (status IN (
        'queued', 'running', 'succeeded', 'failed', 'rejected', 'cancelled', 'timed_out',
        'interrupted'
    )),
    CONSTRAINT agent_runs_priority CHECK (priority IN ('high', 'normal', 'low')),
    CONSTRAINT agent_runs_key UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX agent_runs_tenant_status ON agent_runs (tenant_id, status);

-- migrate:down
DROP TABLE agent_runs;
