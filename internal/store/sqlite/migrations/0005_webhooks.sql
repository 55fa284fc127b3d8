-- Webhook endpoints, per workspace. Secrets are sealed (encrypted) by the
-- webhook package before they reach the database.
CREATE TABLE webhook_endpoints (
    id                  TEXT PRIMARY KEY,
    workspace           TEXT    NOT NULL,
    url                 TEXT    NOT NULL,
    description         TEXT    NOT NULL DEFAULT '',
    event_types         TEXT    NOT NULL DEFAULT '', -- comma-separated; '' = every type
    secret              TEXT    NOT NULL,
    previous_secret     TEXT,
    previous_expires_at INTEGER,
    enabled             INTEGER NOT NULL DEFAULT 1,
    disabled_reason     TEXT    NOT NULL DEFAULT '',
    failing_since       INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_workspace ON webhook_endpoints (workspace);

-- The outbox: one event per (batch, type), written in the transaction that
-- makes the change, with one delivery per matching endpoint.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    workspace  TEXT    NOT NULL,
    batch_id   TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    UNIQUE (batch_id, type)
);
CREATE INDEX events_workspace ON events (workspace, seq);

-- state: 0 pending, 1 in flight (leased), 2 succeeded, 3 failed for good.
CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY,
    event_seq     INTEGER NOT NULL,
    endpoint_id   TEXT    NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_expires INTEGER,
    UNIQUE (event_seq, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 0;
