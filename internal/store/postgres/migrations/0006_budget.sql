-- The most a batch can cost at batch price (its estimate's upper bound),
-- recorded at publish when its workspace has a budget: batches in progress
-- hold that much of the budget until they end.
ALTER TABLE batches ADD COLUMN max_cost_usd double precision;
