-- Idempotency-Key of a create or retry: the first request with a key
-- reserves it (batch_id NULL while it runs), then records the hash of its
-- body and the batch it made; a later request with the same key gets that
-- batch back. Rows expire after a day.
CREATE TABLE idempotency_keys (
    workspace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    body_hash  TEXT    NOT NULL DEFAULT '',
    batch_id   TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
