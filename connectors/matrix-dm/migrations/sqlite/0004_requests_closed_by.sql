-- The event (a `done` command) that closed a request: if the delivery that carried it is
-- processed again after a crash, its actions are queued again instead of being lost.
ALTER TABLE requests ADD COLUMN closed_by TEXT;
