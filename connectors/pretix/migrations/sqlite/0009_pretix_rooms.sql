-- pretix: rooms organisers mapped to events from the chat (`!setroom`), besides those in the
-- config file.
CREATE TABLE pretix_rooms (
    source_id TEXT NOT NULL,
    organizer TEXT NOT NULL,
    event TEXT NOT NULL,
    room_id TEXT NOT NULL,
    added_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, organizer, event, room_id)
);
CREATE INDEX pretix_rooms_room ON pretix_rooms (source_id, room_id);
