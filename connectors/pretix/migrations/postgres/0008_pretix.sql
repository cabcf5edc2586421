-- pretix: who each order put into which room (so that a cancellation or a changed answer
-- removes exactly them, and nobody is invited twice), and the answers already reported as
-- not being Matrix IDs (so each is reported once).
CREATE TABLE pretix_grants (
    source_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, order_key, room_id, user_id)
);
CREATE INDEX pretix_grants_member ON pretix_grants (source_id, room_id, user_id);
CREATE TABLE pretix_reports (
    source_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    position_id BIGINT NOT NULL,
    answer TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, order_key, position_id, answer)
);
