-- OTOBO / Znuny: the last article of each ticket read, and what of the ticket the room already has
-- (its state, its owner and the people invited or named there).
CREATE TABLE otobo_tickets (
    source_id TEXT NOT NULL,
    ticket TEXT NOT NULL,
    last_transaction BIGINT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    people TEXT NOT NULL,
    roomed BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, ticket)
);
