-- Redmine issues with a room of their own: how far each issue's journals have been read,
-- and what of the issue the room already has (its assignee and the people invited or
-- named there), as the ticket systems' rooms keep it.
CREATE TABLE redmine_rooms (
    source_id TEXT NOT NULL,
    ticket TEXT NOT NULL,
    last_transaction BIGINT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    people TEXT NOT NULL,
    roomed BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    closed_at BIGINT,
    aged BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (source_id, ticket)
);
