-- Events, their deliveries and attempts are kept as long as results are
-- (--retention), then pruned by the archive sweep.
CREATE INDEX events_created ON events (created_at);
