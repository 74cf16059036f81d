-- What each grading run used, as its server reported it with its result,
-- and the limit that ended it: written with the lease's end, in the
-- transaction that records the result. NULL usage: the lease ended without
-- a result, or its executor measured nothing. Times in microseconds, so
-- that a run of a few milliseconds keeps its figure.
ALTER TABLE leases ADD COLUMN cpu_time_us INTEGER;
ALTER TABLE leases ADD COLUMN peak_memory_bytes INTEGER;
ALTER TABLE leases ADD COLUMN wall_time_us INTEGER;
-- broker.Limit: '' (none), 'wall_time', 'cpu_time', 'memory', 'pids',
-- 'output', 'disk'.
ALTER TABLE leases ADD COLUMN run_limit TEXT NOT NULL DEFAULT '';
