-- Shares of backends' limits, one row per backend and process: what the
-- process may have in flight (concurrency) or spend per minute of each
-- limit, until expires. Every process renews its rows about every second;
-- the holdings of live rows never sum above the limit (store.GrantShare),
-- and a lapsed row counts for nothing.
CREATE TABLE limit_shares (
    backend          text   NOT NULL,
    owner            text   NOT NULL,
    concurrency      bigint NOT NULL,
    requests_pm      bigint NOT NULL,
    input_tokens_pm  bigint NOT NULL,
    output_tokens_pm bigint NOT NULL,
    expires          bigint NOT NULL,
    PRIMARY KEY (backend, owner)
);
