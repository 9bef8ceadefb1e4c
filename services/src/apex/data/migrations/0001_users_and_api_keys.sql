-- Users and their API keys: the identities apex.auth issues tokens for.
-- An API key is stored as the SHA-256 of its secret part, never the secret itself.

-- migrate:up
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    tier text NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    tenant_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Addresses are unique whatever their case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{12}$'),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    scopes text[] NOT NULL DEFAULT '{}',
    secret_sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

-- migrate:down
DROP TABLE api_keys;
DROP TABLE users;
