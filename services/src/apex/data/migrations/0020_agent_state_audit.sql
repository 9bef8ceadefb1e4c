-- apex.agents' run states and audit trail (issue 12, 001#34/#45/#95): every state a run
-- went through (`agent_run_states`: status, step records, result and error as they were
-- after each step change, versions 1..n per run; a restore sets a run back to one of
-- them) and the ordered events of each run (`agent_audit_events`: submitted, step started,
-- LLM called, tool called or denied, quality failed, breaker opened, finished...).
-- Both carry the run's tenant: every read names it. Independent of migration 0017.

-- migrate:up
CREATE TABLE agent_run_states (
    run_id uuid NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    version integer NOT NULL,
    tenant_id uuid NOT NULL,
    status text NOT NULL,
    steps jsonb NOT NULL,
    result text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, version),
    CONSTRAINT agent_run_states_version CHECK (version >= 1)
);
CREATE TABLE agent_audit_events (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    kind text NOT NULL,
    step text,
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_audit_events_run ON agent_audit_events (run_id, id);

-- migrate:down
DROP TABLE agent_audit_events;
DROP TABLE agent_run_states;
