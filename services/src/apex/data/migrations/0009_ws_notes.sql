-- Notes written through the WebSocket gateway (note.create), and their events. A note
-- and its "created" event are inserted in one transaction by apex.gateway.notes.
-- user_id is the access token's subject (text: the gateway does not join users).
-- Rolling back drops both tables; nothing else depends on them.

-- migrate:up
CREATE TABLE ws_notes (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    title text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    body text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ws_notes_user_created ON ws_notes (user_id, created_at);
CREATE TABLE ws_note_events (
    id bigserial PRIMARY KEY,
    note_id uuid NOT NULL REFERENCES ws_notes (id) ON DELETE CASCADE,
    kind text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ws_note_events_note ON ws_note_events (note_id);

-- migrate:down
DROP TABLE ws_note_events;
DROP TABLE ws_notes;
