-- A deterministic key per queued action (delivery ID and position), used for Matrix
-- transaction IDs and room aliases: if a crash undoes the commit that queued an action, the
-- action queued again carries the same key, so the homeserver recognises a repeat.
ALTER TABLE outbox ADD COLUMN txn_key TEXT;
