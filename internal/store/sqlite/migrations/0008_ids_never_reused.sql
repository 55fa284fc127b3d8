-- Delivery and attempt ids are never reused (AUTOINCREMENT): without it
-- SQLite hands out max(id)+1, so deleting the newest rows (the retention
-- sweep) gave their ids to the next ones, and a receiver's dedup or a
-- resend by id could hit another delivery. Events already had it.
-- SQLite cannot add AUTOINCREMENT to a table: rebuild both, keeping rows.
CREATE TABLE deliveries_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq     INTEGER NOT NULL,
    endpoint_id   TEXT    NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_expires INTEGER,
    UNIQUE (event_seq, endpoint_id)
);
INSERT INTO deliveries_new (id, event_seq, endpoint_id, state, attempts, next_at, lease_owner, lease_expires)
    SELECT id, event_seq, endpoint_id, state, attempts, next_at, lease_owner, lease_expires FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 0;

CREATE TABLE delivery_attempts_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  INTEGER NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status       INTEGER NOT NULL DEFAULT 0,
    error_class  TEXT    NOT NULL DEFAULT '',
    duration_us  INTEGER NOT NULL DEFAULT 0,
    response     BLOB
);
INSERT INTO delivery_attempts_new (id, delivery_id, endpoint_id, attempt, at, status, error_class, duration_us, response)
    SELECT id, delivery_id, endpoint_id, attempt, at, status, error_class, duration_us, response FROM delivery_attempts;
DROP TABLE delivery_attempts;
ALTER TABLE delivery_attempts_new RENAME TO delivery_attempts;
CREATE INDEX delivery_attempts_endpoint ON delivery_attempts (endpoint_id, id);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- The copy set each sequence to its table's max(id); an attempt may still
-- name a delivery above it (its newest, already deleted): start past that.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries', (SELECT max(delivery_id) FROM delivery_attempts)
    WHERE (SELECT max(delivery_id) FROM delivery_attempts) > coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0)
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries');
UPDATE sqlite_sequence SET seq = (SELECT max(delivery_id) FROM delivery_attempts)
    WHERE name = 'deliveries' AND seq < (SELECT coalesce(max(delivery_id), 0) FROM delivery_attempts);
