-- A value sealed with the webhook key by the first server that started on
-- this database, so that a later one holding another key is refused before
-- it seals anything (WebhookKeyCheck). One row at most.
CREATE TABLE webhook_key_check (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    sealed TEXT    NOT NULL
);
