-- Leases that make process ownership explicit, so that a process never
-- takes over another live process's work.
--
-- The upload lease of a creating batch: its creator renews it while the
-- requests stream in; once it lapses the leader discards the batch.
-- Existing creating batches (0) are stale at once, as they were before.
ALTER TABLE batches ADD COLUMN upload_expires INTEGER NOT NULL DEFAULT 0;

-- The lease of the delegator polling an upstream batch; once it lapses the
-- leader's delegator adopts the batch and its requests.
ALTER TABLE upstream_batches ADD COLUMN lease_expires INTEGER NOT NULL DEFAULT 0;

-- Leader leases, one row per name ('chores'); term grows by one at every
-- change of holder, and chore verbs check it in their transaction.
CREATE TABLE leaders (
    name    TEXT    PRIMARY KEY,
    owner   TEXT    NOT NULL,
    term    INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
