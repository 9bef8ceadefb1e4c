-- Usage records get labels (issue 12, contract-agents.md § Who is asking): apex.agents
-- sends each LLM call's cost with {agent, model, provider, run_id}, and billing asks
-- what a tenant spent per agent and model. The labels are a JSON object of strings
-- (apex.data.routes checks their shape); the outbox payload carries them to ClickHouse
-- (usage_events.label_keys / label_values). A record written without labels has `{}`.
-- Rolling back drops the column (and so the labels); the records stay.

-- migrate:up
ALTER TABLE usage_records ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb
    CONSTRAINT usage_records_labels_object CHECK (jsonb_typeof(labels) = 'object');

-- migrate:down
ALTER TABLE usage_records DROP COLUMN labels;
