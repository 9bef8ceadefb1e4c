-- agent_runs gets the response cache and the quality gate (issue 12, 001#49/#50): whether
-- the run may use the response cache (`use_cache`, POST /v1/runs `cache`), whether its
-- answer came from it (`cached`) and why the quality gate rejected it
-- (`quality_reasons`, the last attempt's reasons of a `rejected` run).

-- migrate:up
ALTER TABLE agent_runs ADD COLUMN use_cache boolean NOT NULL DEFAULT true;
ALTER TABLE agent_runs ADD COLUMN cached boolean NOT NULL DEFAULT false;
ALTER TABLE agent_runs ADD COLUMN quality_reasons jsonb NOT NULL DEFAULT '[]'::jsonb;

-- migrate:down
ALTER TABLE agent_runs DROP COLUMN quality_reasons;
ALTER TABLE agent_runs DROP COLUMN cached;
ALTER TABLE agent_runs DROP COLUMN use_cache;
