-- Interactive logins: passwords (argon2id hashes), phone numbers for SMS codes,
-- TOTP second factors with hashed single-use backup codes, and account lockout.

-- migrate:up
ALTER TABLE users
    ADD COLUMN password_hash text,
    ADD COLUMN phone text,
    ADD COLUMN totp_secret text,
    ADD COLUMN totp_enabled boolean NOT NULL DEFAULT false,
    ADD COLUMN locked_until timestamptz;

CREATE TABLE mfa_backup_codes (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_sha256 text NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (user_id, code_sha256)
);

-- migrate:down
DROP TABLE mfa_backup_codes;
ALTER TABLE users
    DROP COLUMN locked_until,
    DROP COLUMN totp_enabled,
    DROP COLUMN totp_secret,
    DROP COLUMN phone,
    DROP COLUMN password_hash;
