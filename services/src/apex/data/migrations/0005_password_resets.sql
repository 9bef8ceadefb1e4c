-- Password reset tokens, stored as the SHA-256 of the token mailed to the user.

-- migrate:up
CREATE TABLE password_resets (
    token_sha256 text PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX password_resets_user_id_idx ON password_resets (user_id);

-- migrate:down
DROP TABLE password_resets;
