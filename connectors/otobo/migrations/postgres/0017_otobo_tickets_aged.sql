-- When each ticket's room was closed (Unix milliseconds; NULL while it is open), and what
-- has been done to it since: 0 nothing, 1 made read-only, 2 emptied.
ALTER TABLE otobo_tickets ADD COLUMN closed_at BIGINT;
ALTER TABLE otobo_tickets ADD COLUMN aged BIGINT NOT NULL DEFAULT 0;
