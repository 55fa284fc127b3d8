-- tasks_owner is dropped: every claim paid for an entry in it, and the
-- planner, which cannot know how many rows a process's new owner id holds
-- (it is new at every start), took it for a handful and drove the
-- completion of a group of requests by it, comparing each of the owner's
-- running rows with each outcome. An outcome finds its task by id; the
-- heartbeat and the canceling-batch lookup read tasks_running, which holds
-- only running rows (the in-flight and claimed-ahead requests of the
-- cluster, and the delegated ones).
DROP INDEX tasks_owner;
