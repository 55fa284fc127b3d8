-- A value sealed with the webhook key by the first process that started on
-- this database, so that a later one holding another key is refused before
-- it seals anything (WebhookKeyCheck). One row at most.
CREATE TABLE webhook_key_check (
    id     integer PRIMARY KEY CHECK (id = 1),
    sealed text    NOT NULL
);
