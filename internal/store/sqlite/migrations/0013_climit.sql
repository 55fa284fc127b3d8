-- Shares of backends' limits, one row per backend and process: what the
-- process may have in flight (concurrency) or spend per minute of each
-- limit, until expires. Every process renews its rows about every second;
-- the holdings of live rows never sum above the limit (store.GrantShare),
-- and a lapsed row counts for nothing.
CREATE TABLE limit_shares (
    backend          TEXT    NOT NULL,
    owner            TEXT    NOT NULL,
    concurrency      INTEGER NOT NULL,
    requests_pm      INTEGER NOT NULL,
    input_tokens_pm  INTEGER NOT NULL,
    output_tokens_pm INTEGER NOT NULL,
    expires          INTEGER NOT NULL,
    PRIMARY KEY (backend, owner)
);
