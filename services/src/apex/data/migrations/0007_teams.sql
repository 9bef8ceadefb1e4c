-- Teams (nested through parent_id), their members with a role, and permission grants
-- on teams and on users. Effective permissions are computed in code
-- (apex.auth.permissions); a team's subtree goes with it (ON DELETE CASCADE).
-- Rolling this migration back drops teams, memberships and grants.

-- migrate:up
CREATE TABLE teams (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    parent_id uuid NULL REFERENCES teams (id) ON DELETE CASCADE,
    idp_group text UNIQUE NULL,
    tenant_id uuid NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);
CREATE INDEX teams_parent_id ON teams (parent_id);

CREATE TABLE team_members (
    team_id uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('viewer', 'member', 'admin')),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_id ON team_members (user_id);

CREATE TABLE team_grants (
    team_id uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    permission text NOT NULL,
    effect text NOT NULL CHECK (effect IN ('allow', 'deny')),
    PRIMARY KEY (team_id, permission)
);

CREATE TABLE user_grants (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    permission text NOT NULL,
    effect text NOT NULL CHECK (effect IN ('allow', 'deny')),
    PRIMARY KEY (user_id, permission)
);

-- migrate:down
DROP TABLE user_grants;
DROP TABLE team_grants;
DROP TABLE team_members;
DROP TABLE teams;
