-- Maintenance and incident handling.

-- An operator's drain: the dispatcher gives a drained server no new jobs,
-- across reconnects and restarts, until it is undrained.
ALTER TABLE servers ADD COLUMN drained INTEGER NOT NULL DEFAULT 0;

-- Delivered deliveries by age, for retention.
CREATE INDEX deliveries_delivered ON deliveries (delivered_at) WHERE state = 2;

-- Dead deliveries, which the alerts look at every half minute; there are few.
CREATE INDEX deliveries_dead ON deliveries (job_id, id) WHERE state = 3;
