CREATE TABLE batches (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT    NOT NULL UNIQUE,
    workspace           TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    total               INTEGER NOT NULL DEFAULT 0,
    n_succeeded         INTEGER NOT NULL DEFAULT 0,
    n_errored           INTEGER NOT NULL DEFAULT 0,
    n_canceled          INTEGER NOT NULL DEFAULT 0,
    n_expired           INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    cancel_initiated_at INTEGER,
    archived_at         INTEGER,
    last_claimed_at     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX batches_workspace ON batches (workspace, seq);
CREATE INDEX batches_open ON batches (workspace) WHERE status != 'ended';

-- What the client sent; written once at create, never updated, so the
-- large params are never rewritten while requests run.
CREATE TABLE requests (
    id        INTEGER PRIMARY KEY,
    batch_seq INTEGER NOT NULL,
    custom_id TEXT    NOT NULL,
    params    BLOB    NOT NULL
);
CREATE INDEX requests_batch ON requests (batch_seq);

-- One small row per unsettled request (id = requests.id), deleted when the
-- request settles, so the claim indexes hold only live work.
-- state: 0 pending, 1 running (leased).
CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY,
    batch_seq     INTEGER NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires INTEGER,
    last_error    BLOB
);
CREATE INDEX tasks_pending ON tasks (batch_seq, next_at) WHERE state = 0;
CREATE INDEX tasks_running ON tasks (lease_expires) WHERE state = 1;

-- One row per settled request (id = requests.id); append-only.
CREATE TABLE results (
    id          INTEGER PRIMARY KEY,
    batch_seq   INTEGER NOT NULL,
    custom_id   TEXT    NOT NULL,
    result_type TEXT    NOT NULL,
    result      BLOB
);
CREATE INDEX results_batch ON results (batch_seq);

-- Batches whose requests are still to be deleted in the background.
CREATE TABLE purges (
    batch_seq INTEGER PRIMARY KEY
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    workspace  TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    prefix     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
