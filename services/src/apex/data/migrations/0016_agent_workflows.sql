-- agent_runs gets workflows (issue 12, 001#31/#33/#38/#44): a run of a workflow has no
-- agent, its declaration (`workflow`), each step's state as the supervisor last saved it
-- (`steps`: id, agent, status, result, error, usage, cost) and the keys its merge found
-- in conflict (`conflicts`).

-- migrate:up
ALTER TABLE agent_runs ALTER COLUMN agent DROP NOT NULL;
ALTER TABLE agent_runs ADD COLUMN workflow jsonb;
ALTER TABLE agent_runs ADD COLUMN steps jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE agent_runs ADD COLUMN conflicts jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_agent_or_workflow
    CHECK ((agent IS NULL) <> (workflow IS NULL));

-- migrate:down
DELETE FROM agent_runs WHERE agent IS NULL;
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_agent_or_workflow;
ALTER TABLE agent_runs DROP COLUMN conflicts;
ALTER TABLE agent_runs DROP COLUMN steps;
ALTER TABLE agent_runs DROP COLUMN workflow;
ALTER TABLE agent_runs ALTER COLUMN agent SET NOT NULL;
