-- The web console: jobs found by tag, name and state at a million rows;
-- console sessions and the single use of login links; the console's own
-- platform for test jobs.

-- Jobs by tag. jobs.tags is JSON text, which no index reaches; this table
-- has one row per tag of every job, written in the transaction that stores
-- the job (store.JobTx.InsertJob), so that "jobs with tag T, newest first"
-- is a walk down its primary key. The tag is its name, not an id: a tag
-- removed later leaves finished jobs findable by the name they had.
CREATE TABLE job_tags (
    tag    TEXT    NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, job_id)
) WITHOUT ROWID;

-- Deleting a job (retention, a removed platform) finds its rows here.
CREATE INDEX job_tags_job ON job_tags (job_id);

INSERT INTO job_tags (tag, job_id) SELECT je.value, j.id FROM jobs j, json_each(j.tags) je;

-- Failed and cancelled jobs, newest first. They are few, so these indexes
-- cost the writer little; done jobs are most jobs and are found by walking
-- the table, queued and assigned ones through jobs_open.
CREATE INDEX jobs_failed ON jobs (state) WHERE state = 4;
CREATE INDEX jobs_cancelled ON jobs (state) WHERE state = 5;

-- The console's search by name (a prefix).
CREATE INDEX jobs_name ON jobs (name);

-- The console's built-in platform: test jobs sent from the console belong
-- to it. Its name cannot be registered, changed or removed through the
-- admin API ('@' is not allowed in names); it has no key, so no token can
-- claim it, and no return URL, so its results are kept and delivered
-- nowhere.
INSERT INTO platforms (name, public_key_pem, return_url, created_at)
VALUES ('@console', '', '', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

-- Console sessions. The cookie holds a random secret; only its SHA-256 is
-- stored, so a copy of the database opens no session.
CREATE TABLE console_sessions (
    id           INTEGER PRIMARY KEY,
    secret_hash  BLOB    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('operator', 'viewer')),
    platform     TEXT    NOT NULL DEFAULT '', -- a viewer's scope: one platform
    tags         TEXT    NOT NULL DEFAULT '[]', -- or a set of tags (JSON array)
    via          TEXT    NOT NULL, -- 'link' or 'certificate'
    created_by   TEXT    NOT NULL, -- the operator who minted the link
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- Login links used, kept until they expire: a link opens one session.
CREATE TABLE console_logins (
    jti        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    session_id INTEGER NOT NULL
) WITHOUT ROWID;
