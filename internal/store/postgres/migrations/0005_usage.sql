-- Token totals of succeeded results per batch, model and UTC day (micros of
-- its midnight), added to in the transaction that settles the results. The
-- rows outlive their batch: a deleted batch's work was still paid for.
CREATE TABLE batch_usage (
    batch_seq             bigint NOT NULL,
    workspace             text   NOT NULL,
    batch_id              text   NOT NULL,
    model                 text   NOT NULL,
    day                   bigint NOT NULL,
    input_tokens          bigint NOT NULL DEFAULT 0,
    output_tokens         bigint NOT NULL DEFAULT 0,
    cache_write_5m_tokens bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_seq, model, day)
);
CREATE INDEX batch_usage_workspace ON batch_usage (workspace, day);
