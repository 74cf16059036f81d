-- XQueue compatibility (broker/xqueue): an Open edX LMS submits and
-- xqueue-watcher pulls through the XQueue interface, into the same jobs,
-- leases and outbox as everything else.

-- A job's pull queue: XQueue's queue_name for a submission, NULL for every
-- other job. A client pulling a queue takes that queue's jobs only.
ALTER TABLE jobs ADD COLUMN queue TEXT;

-- How a server gets its jobs: '' for graderd (pushed over its stream),
-- 'xqueue' for an XQueue user pulling one queue. A pulling server has no
-- certificate: its cert_* columns hold a placeholder that no certificate's
-- fingerprint (hex SHA-256) can equal.
ALTER TABLE servers ADD COLUMN pull TEXT NOT NULL DEFAULT '';

-- XQueue queues: what an operator maps each queue_name to.
CREATE TABLE xqueue_queues (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    tags       TEXT    NOT NULL DEFAULT '[]', -- JSON array of tag names, sorted: its jobs' tags
    type_id    INTEGER NOT NULL REFERENCES server_types (id) ON DELETE RESTRICT, -- its pulling clients' type
    timeout_ms INTEGER NOT NULL DEFAULT 0, -- its jobs' timeout; 0: the broker's default
    created_at INTEGER NOT NULL
);

-- XQueue users: the LMS and the watchers, who log in with a password.
CREATE TABLE xqueue_users (
    id                     INTEGER PRIMARY KEY,
    name                   TEXT    NOT NULL UNIQUE,
    password_hash          TEXT    NOT NULL, -- bcrypt
    platform_id            INTEGER REFERENCES platforms (id) ON DELETE RESTRICT, -- its submissions'; NULL: it may not submit
    callback_hosts         TEXT    NOT NULL DEFAULT '[]', -- JSON: hosts lms_callback_url may name over https
    http_callback_hosts    TEXT    NOT NULL DEFAULT '[]', -- JSON: hosts it may name over http (and https)
    callback_auth_user     TEXT    NOT NULL DEFAULT '', -- HTTP basic auth of its callbacks, if set
    callback_auth_password TEXT    NOT NULL DEFAULT '',
    pull_queues            TEXT    NOT NULL DEFAULT '[]', -- JSON: queues it may pull; ["*"]: all
    max_jobs               INTEGER NOT NULL DEFAULT 1 CHECK (max_jobs > 0), -- of each server made for it
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL
);

CREATE INDEX xqueue_users_platform ON xqueue_users (platform_id);

-- The servers of pulling clients, one per XQueue user and queue, made on
-- the user's first pull from the queue.
CREATE TABLE xqueue_pullers (
    server_id INTEGER PRIMARY KEY REFERENCES servers (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES xqueue_users (id) ON DELETE CASCADE,
    queue     TEXT    NOT NULL,
    UNIQUE (user_id, queue)
);

-- What a job submitted through XQueue needs for its answer: where it goes
-- and the LMS's header, posted back verbatim.
CREATE TABLE xqueue_submissions (
    job_id       INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    user_id      INTEGER REFERENCES xqueue_users (id) ON DELETE SET NULL,
    callback_url TEXT    NOT NULL,
    header       TEXT    NOT NULL
);

-- A new submission to the same callback URL retires the earlier ones.
CREATE INDEX xqueue_submissions_callback ON xqueue_submissions (callback_url, job_id);

-- Files that came with a job, stored with it and deleted with it
-- (retention, a removed platform).
CREATE TABLE job_attachments (
    id     INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   TEXT    NOT NULL,
    data   BLOB    NOT NULL
);

CREATE INDEX job_attachments_job ON job_attachments (job_id);

-- Random keys the broker makes for itself and keeps across restarts (the
-- MAC key of XQueue's submission keys and file links).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
