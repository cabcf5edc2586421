-- Work that keeps failing in a way retrying cannot mend is set aside instead of holding up
-- the rest: a delivery after a few failed tries (`set_aside_at`), an action after a number
-- of errors answered by the far end (`errors`; state 'set_aside'). Both keep their last
-- error and can be retried by an operator (`switchboard failed`, `switchboard retry`).
ALTER TABLE inbox ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbox ADD COLUMN last_error TEXT;
ALTER TABLE inbox ADD COLUMN set_aside_at BIGINT;
DROP INDEX inbox_unprocessed;
CREATE INDEX inbox_unprocessed ON inbox (id) WHERE processed_at IS NULL AND set_aside_at IS NULL;
CREATE INDEX inbox_set_aside ON inbox (id) WHERE set_aside_at IS NOT NULL;
ALTER TABLE outbox ADD COLUMN errors BIGINT NOT NULL DEFAULT 0;
CREATE INDEX outbox_failed ON outbox (id) WHERE state IN ('failed', 'set_aside');
