-- Helpdesk: every event the bot relayed (`origin`) and the copy it sent on the other side, so
-- that reactions, edits and redactions of either follow to the other. Looked up by either
-- side, each an index lookup.
CREATE TABLE relays (
    source_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    copy TEXT NOT NULL,
    request_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, origin)
);
CREATE INDEX relays_copy ON relays (source_id, copy);
