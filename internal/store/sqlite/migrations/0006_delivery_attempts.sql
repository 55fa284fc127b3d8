-- One row per delivery attempt: what the receiver answered, for operators.
CREATE TABLE delivery_attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status       INTEGER NOT NULL DEFAULT 0,
    error_class  TEXT    NOT NULL DEFAULT '',
    duration_us  INTEGER NOT NULL DEFAULT 0,
    response     BLOB
);
CREATE INDEX delivery_attempts_endpoint ON delivery_attempts (endpoint_id, id);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
