-- Accounts at external identity providers (OIDC "sub", SAML NameID) linked to users.

-- migrate:up
CREATE TABLE external_identities (
    provider text NOT NULL,
    subject text NOT NULL,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX external_identities_user_id_idx ON external_identities (user_id);

-- migrate:down
DROP TABLE external_identities;
