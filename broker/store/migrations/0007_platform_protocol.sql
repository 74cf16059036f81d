-- The protocol a platform speaks (broker.Protocol): gradebroker's own
-- (tokens in, a JWE callback to return_url out) or a compatibility
-- protocol, each with its own form of result callback in the one outbox.
-- Every platform registered so far speaks gradebroker's.
ALTER TABLE platforms ADD COLUMN protocol TEXT NOT NULL DEFAULT 'gradebroker';
