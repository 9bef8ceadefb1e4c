-- Tools and versioned definitions of apex.agents (issue 12, 001#32/#42, 003 tool
-- authorization): the registered versions of agents (`agent_definitions`) and tools
-- (`agent_tool_versions`), each definition as JSON (the built-in ones are in the code);
-- and on each run the agent version it runs (`agent_version`, resolved at submit), the
-- permissions its user held at submit (`permissions`: a tool with a permission runs only
-- if they include it) and its tool calls as the worker recorded them (`tool_calls`).
-- Definitions are the platform's, not a tenant's. apex_app reads and writes them (0010's
-- default privileges).

-- migrate:up
CREATE TABLE agent_definitions (
    name text NOT NULL,
    version text NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE TABLE agent_tool_versions (
    name text NOT NULL,
    version text NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
ALTER TABLE agent_runs ADD COLUMN agent_version text;
ALTER TABLE agent_runs ADD COLUMN permissions jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE agent_runs ADD COLUMN tool_calls jsonb NOT NULL DEFAULT '[]'::jsonb;

-- migrate:down
ALTER TABLE agent_runs DROP COLUMN tool_calls;
ALTER TABLE agent_runs DROP COLUMN permissions;
ALTER TABLE agent_runs DROP COLUMN agent_version;
DROP TABLE agent_tool_versions;
DROP TABLE agent_definitions;
