-- The audit trail of apex.auth. Events outlive the users and keys they name,
-- so there are no foreign keys; user_id lets one query find a user's whole history.

-- migrate:up
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    action text NOT NULL,
    subject text NOT NULL,
    user_id uuid,
    actor text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_subject_idx ON audit_events (subject, id);
CREATE INDEX audit_events_user_id_idx ON audit_events (user_id, id) WHERE user_id IS NOT NULL;

-- migrate:down
DROP TABLE audit_events;
