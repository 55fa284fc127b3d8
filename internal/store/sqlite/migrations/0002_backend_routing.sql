-- Route requests to backends when they are created, so that each backend
-- claims only its own work: a throttled backend then never holds the
-- slots of another.
ALTER TABLE requests ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN backend TEXT NOT NULL DEFAULT '';
DROP INDEX tasks_pending;
CREATE INDEX tasks_pending ON tasks (batch_seq, backend, next_at) WHERE state = 0;
