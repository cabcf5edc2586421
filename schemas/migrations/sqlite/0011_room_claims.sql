-- Which source a Matrix room belongs to, for the sync to hand its events to that source's
-- connector alone: recorded when a connector takes the bot's invite into the room, or first
-- says the room is one of its own.
CREATE TABLE room_claims (
    room_id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
