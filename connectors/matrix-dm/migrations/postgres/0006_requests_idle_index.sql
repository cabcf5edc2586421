-- The idle index led with source_id, like the chat and thread indexes: without fresh table
-- statistics PostgreSQL took it for a chat's open request and read every open request.
-- Keyed by last activity alone, it serves only the idle scan.
DROP INDEX requests_idle;
CREATE INDEX requests_idle ON requests (last_activity_at) WHERE closed_at IS NULL;
