-- Helpdesk: events the bot heard but could not decrypt (their room key had not arrived),
-- kept until the key comes or the wait for it is over. Stored before the sync position
-- moves past them, so a restart loses none.
CREATE TABLE undecrypted (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    event TEXT NOT NULL,
    heard_at BIGINT NOT NULL
);
