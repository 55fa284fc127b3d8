-- Leases that make process ownership explicit, so that a process never
-- takes over another live process's work.
--
-- The upload lease of a creating batch: its creator renews it while the
-- requests stream in; once it lapses the leader discards the batch.
ALTER TABLE batches ADD COLUMN upload_expires bigint NOT NULL DEFAULT 0;

-- The lease of the delegator polling an upstream batch; once it lapses the
-- leader's delegator adopts the batch and its requests.
ALTER TABLE upstream_batches ADD COLUMN lease_expires bigint NOT NULL DEFAULT 0;

-- Leader leases, one row per name ('chores'); term grows by one at every
-- change of holder. Chore verbs read the row FOR SHARE in their
-- transaction, so a takeover waits for a running chore to commit.
CREATE TABLE leaders (
    name    text   PRIMARY KEY,
    owner   text   NOT NULL,
    term    bigint NOT NULL,
    expires bigint NOT NULL
);
