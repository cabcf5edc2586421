-- Core tables: inbox (accepted deliveries), outbox (actions until done), links (ticket -> room),
-- cursors (poll positions), settings (key-value). Times are Unix milliseconds.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    events TEXT NOT NULL,
    processed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (source_id, dedupe_key)
);
CREATE INDEX inbox_unprocessed ON inbox (id) WHERE processed_at IS NULL;

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inbox_id BIGINT NOT NULL,
    source_id TEXT NOT NULL,
    ticket_key TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT,
    last_error TEXT,
    result TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX outbox_lane ON outbox (source_id, ticket_key, id) WHERE state = 'pending';
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';

CREATE TABLE links (
    source_id TEXT NOT NULL,
    ticket_key TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT,
    invited TEXT NOT NULL DEFAULT '[]',
    closed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, ticket_key)
);
CREATE INDEX links_room ON links (room_id);

CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
