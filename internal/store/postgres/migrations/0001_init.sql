-- The PostgreSQL schema, equivalent to the SQLite one after all of its
-- migrations (internal/store/sqlite/migrations). Times are microseconds
-- since the Unix epoch in bigint columns, as in SQLite, so that both
-- drivers share one representation (and a copy between them is a copy of
-- values); 0 stands for "no time" where SQLite has 0. Ids come from
-- identities or sequences, which never hand out a value twice, so no id is
-- ever reused after a delete.

CREATE TABLE batches (
    seq                 bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  text    NOT NULL UNIQUE,
    workspace           text    NOT NULL,
    status              text    NOT NULL,
    total               bigint  NOT NULL DEFAULT 0,
    n_succeeded         bigint  NOT NULL DEFAULT 0,
    n_errored           bigint  NOT NULL DEFAULT 0,
    n_canceled          bigint  NOT NULL DEFAULT 0,
    n_expired           bigint  NOT NULL DEFAULT 0,
    created_at          bigint  NOT NULL,
    expires_at          bigint  NOT NULL,
    ended_at            bigint,
    cancel_initiated_at bigint,
    archived_at         bigint,
    -- Kept for parity with SQLite; PostgreSQL claims do not update it (no
    -- row that every claim writes).
    last_claimed_at     bigint  NOT NULL DEFAULT 0,
    -- anthropic-beta values, comma-separated.
    betas               text    NOT NULL DEFAULT ''
);
CREATE INDEX batches_workspace ON batches (workspace, seq);
CREATE INDEX batches_open ON batches (workspace) WHERE status != 'ended';
CREATE INDEX batches_unended ON batches (expires_at) WHERE status IN ('in_progress', 'canceling');

-- What the client sent; written once at create, never updated.
CREATE SEQUENCE requests_id_seq;
CREATE TABLE requests (
    id        bigint PRIMARY KEY DEFAULT nextval('requests_id_seq'),
    batch_seq bigint NOT NULL,
    custom_id text   NOT NULL,
    model     text   NOT NULL DEFAULT '',
    params    bytea  NOT NULL
);
ALTER SEQUENCE requests_id_seq OWNED BY requests.id;
CREATE INDEX requests_batch ON requests (batch_seq, id);

-- One small row per unsettled request (id = requests.id), deleted when it
-- settles. state: 0 pending, 1 running (leased).
CREATE TABLE tasks (
    id            bigint   PRIMARY KEY,
    batch_seq     bigint   NOT NULL,
    state         smallint NOT NULL DEFAULT 0,
    attempts      integer  NOT NULL DEFAULT 0,
    next_at       bigint   NOT NULL DEFAULT 0,
    lease_owner   text,
    lease_expires bigint,
    last_error    bytea,
    backend       text     NOT NULL DEFAULT '',
    -- The upstream batch a running request was handed to; rescue skips these.
    upstream      bigint
);
CREATE INDEX tasks_pending ON tasks (batch_seq, backend, next_at, id) WHERE state = 0;
CREATE INDEX tasks_running ON tasks (lease_expires) WHERE state = 1;
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE state = 1;
CREATE INDEX tasks_upstream ON tasks (upstream) WHERE upstream IS NOT NULL;

-- One row per settled request (id = requests.id); append-only.
CREATE TABLE results (
    id          bigint PRIMARY KEY,
    batch_seq   bigint NOT NULL,
    custom_id   text   NOT NULL,
    result_type text   NOT NULL,
    result      bytea
);
CREATE INDEX results_batch ON results (batch_seq, id);

-- Batches whose requests are still to be deleted in the background.
CREATE TABLE purges (
    batch_seq bigint PRIMARY KEY
);

CREATE TABLE api_keys (
    id         text   PRIMARY KEY,
    workspace  text   NOT NULL,
    hash       text   NOT NULL UNIQUE,
    prefix     text   NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
);

-- Batches delegated to an upstream Message Batches API, recorded before
-- the upstream create call (upstream_id NULL: the intent).
CREATE TABLE upstream_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    backend     text   NOT NULL,
    owner       text   NOT NULL,
    batch_seq   bigint NOT NULL,
    upstream_id text,
    created_at  bigint NOT NULL
);
CREATE INDEX upstream_batches_backend ON upstream_batches (backend, id);

CREATE TABLE webhook_endpoints (
    id                  text    PRIMARY KEY,
    workspace           text    NOT NULL,
    url                 text    NOT NULL,
    description         text    NOT NULL DEFAULT '',
    event_types         text    NOT NULL DEFAULT '', -- comma-separated; '' = every type
    secret              text    NOT NULL,
    previous_secret     text,
    previous_expires_at bigint,
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text    NOT NULL DEFAULT '',
    failing_since       bigint,
    created_at          bigint  NOT NULL,
    updated_at          bigint  NOT NULL
);
CREATE INDEX webhook_endpoints_workspace ON webhook_endpoints (workspace);

-- The outbox: one event per (batch, type), written in the transaction that
-- makes the change. Writers take a lock before drawing a seq, so events
-- commit in seq order and a reader paging by seq never skips one.
CREATE TABLE events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         text   NOT NULL UNIQUE,
    workspace  text   NOT NULL,
    batch_id   text   NOT NULL,
    type       text   NOT NULL,
    created_at bigint NOT NULL,
    data       bytea  NOT NULL,
    UNIQUE (batch_id, type)
);
CREATE INDEX events_workspace ON events (workspace, seq);
CREATE INDEX events_created ON events (created_at);

-- state: 0 pending, 1 in flight (leased), 2 succeeded, 3 failed for good.
CREATE TABLE deliveries (
    id            bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq     bigint   NOT NULL,
    endpoint_id   text     NOT NULL,
    state         smallint NOT NULL DEFAULT 0,
    attempts      integer  NOT NULL DEFAULT 0,
    next_at       bigint   NOT NULL,
    lease_owner   text,
    lease_expires bigint,
    UNIQUE (event_seq, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 0;
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, next_at, id) WHERE state IN (0, 1);

-- One row per delivery attempt: what the receiver answered, for operators.
CREATE TABLE delivery_attempts (
    id           bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint  NOT NULL,
    endpoint_id  text    NOT NULL,
    attempt      integer NOT NULL,
    at           bigint  NOT NULL,
    status       integer NOT NULL DEFAULT 0,
    error_class  text    NOT NULL DEFAULT '',
    duration_us  bigint  NOT NULL DEFAULT 0,
    response     bytea,
    error        text    NOT NULL DEFAULT '',
    truncated    boolean NOT NULL DEFAULT false
);
CREATE INDEX delivery_attempts_endpoint ON delivery_attempts (endpoint_id, id);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Idempotency-Key of a create or retry (batch_id NULL while it runs).
CREATE TABLE idempotency_keys (
    workspace  text   NOT NULL,
    key        text   NOT NULL,
    body_hash  text   NOT NULL DEFAULT '',
    batch_id   text,
    created_at bigint NOT NULL,
    PRIMARY KEY (workspace, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
