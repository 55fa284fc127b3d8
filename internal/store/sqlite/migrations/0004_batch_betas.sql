-- The anthropic-beta values a batch was created with, comma-separated, for
-- backends that forward them upstream.
ALTER TABLE batches ADD COLUMN betas TEXT NOT NULL DEFAULT '';
