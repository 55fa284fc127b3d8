-- Batches delegated to an upstream Message Batches API (anthropic-batch
-- backends). A row and the marks on its requests' tasks are written BEFORE
-- the upstream create call (upstream_id NULL: the intent), so that after a
-- restart no request that may already be upstream is rescued and resent;
-- upstream_id is set once the upstream has answered with its id.
CREATE TABLE upstream_batches (
    id          INTEGER PRIMARY KEY,
    backend     TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    batch_seq   INTEGER NOT NULL,
    upstream_id TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX upstream_batches_backend ON upstream_batches (backend, id);

-- The upstream batch a running request was handed to; rescue skips these.
ALTER TABLE tasks ADD COLUMN upstream INTEGER;
CREATE INDEX tasks_upstream ON tasks (upstream) WHERE upstream IS NOT NULL;
