-- Token totals of succeeded results per batch, model and UTC day (micros of
-- its midnight), added to in the transaction that settles the results. The
-- rows outlive their batch: a deleted batch's work was still paid for.
CREATE TABLE batch_usage (
    batch_seq             INTEGER NOT NULL,
    workspace             TEXT    NOT NULL,
    batch_id              TEXT    NOT NULL,
    model                 TEXT    NOT NULL,
    day                   INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_seq, model, day)
);
CREATE INDEX batch_usage_workspace ON batch_usage (workspace, day);
