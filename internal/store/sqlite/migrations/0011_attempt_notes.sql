-- What an operator needs beside the status: why an attempt failed (the
-- connection error, the timeout) and whether the stored response is only
-- its first part.
ALTER TABLE delivery_attempts ADD COLUMN error TEXT NOT NULL DEFAULT '';
ALTER TABLE delivery_attempts ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
