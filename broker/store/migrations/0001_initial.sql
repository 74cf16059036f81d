-- gradebroker's first schema. Times are Unix milliseconds (INTEGER). Job and
-- delivery states use the numbers of gradebroker.v1.JobState and
-- gradebroker.v1.DeliveryState.

CREATE TABLE operators (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    cert_serial      TEXT    NOT NULL,
    cert_issuer      TEXT    NOT NULL,
    cert_subject     TEXT    NOT NULL,
    cert_fingerprint TEXT    NOT NULL UNIQUE,
    cert_not_after   INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    UNIQUE (cert_serial, cert_issuer)
);

CREATE TABLE tags (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT ''
);

CREATE TABLE server_types (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE server_type_tags (
    type_id INTEGER NOT NULL REFERENCES server_types (id) ON DELETE CASCADE,
    tag_id  INTEGER NOT NULL REFERENCES tags (id) ON DELETE RESTRICT,
    PRIMARY KEY (type_id, tag_id)
) WITHOUT ROWID;

CREATE INDEX server_type_tags_tag ON server_type_tags (tag_id);

CREATE TABLE platforms (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    public_key_pem   TEXT    NOT NULL,
    return_url       TEXT    NOT NULL,
    restrict_paths   TEXT    NOT NULL DEFAULT '[]', -- JSON array of strings
    force_tag_id     INTEGER REFERENCES tags (id) ON DELETE RESTRICT,
    cert_serial      TEXT,
    cert_issuer      TEXT,
    cert_subject     TEXT,
    cert_fingerprint TEXT UNIQUE,
    cert_not_after   INTEGER,
    created_at       INTEGER NOT NULL
);

CREATE INDEX platforms_force_tag ON platforms (force_tag_id);

CREATE TABLE servers (
    id                  INTEGER PRIMARY KEY,
    name                TEXT    NOT NULL UNIQUE,
    cert_serial         TEXT    NOT NULL,
    cert_issuer         TEXT    NOT NULL,
    cert_subject        TEXT    NOT NULL,
    cert_fingerprint    TEXT    NOT NULL UNIQUE,
    cert_not_after      INTEGER NOT NULL,
    type_id             INTEGER NOT NULL REFERENCES server_types (id) ON DELETE RESTRICT,
    max_concurrent_jobs INTEGER NOT NULL CHECK (max_concurrent_jobs > 0),
    wakeup_url          TEXT    NOT NULL DEFAULT '',
    wakeup_fails        INTEGER NOT NULL DEFAULT 0,
    last_seen           INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    UNIQUE (cert_serial, cert_issuer)
);

CREATE INDEX servers_type ON servers (type_id);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    platform_id     INTEGER NOT NULL REFERENCES platforms (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    state           INTEGER NOT NULL,
    priority        INTEGER NOT NULL,
    tags            TEXT    NOT NULL, -- JSON array of tag names, sorted
    timeout_ms      INTEGER NOT NULL,
    idempotency_key TEXT,
    jobdata         BLOB    NOT NULL,
    restrict_paths  TEXT    NOT NULL DEFAULT '[]',
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    lease_id        INTEGER, -- the current lease while assigned
    server_id       INTEGER, -- the server of the latest attempt
    server_name     TEXT    NOT NULL DEFAULT '',
    avoid_server_id INTEGER, -- the server that last failed it, avoided when another can take it
    error           TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    UNIQUE (platform_id, idempotency_key)
);

-- Unfinished jobs, loaded at start.
CREATE INDEX jobs_open ON jobs (state) WHERE state IN (1, 2);
-- Finished jobs by age, for retention.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_platform ON jobs (platform_id, id);

-- The server types whose tags cover a job's tags, computed at submission.
CREATE TABLE job_types (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    type_id INTEGER NOT NULL REFERENCES server_types (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, type_id)
) WITHOUT ROWID;

CREATE INDEX job_types_type ON job_types (type_id);

-- Leases: one row per attempt. The id is the fencing token.
CREATE TABLE leases (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    server_id   INTEGER,
    server_name TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    assigned_at INTEGER NOT NULL,
    deadline    INTEGER NOT NULL,
    ended_at    INTEGER,
    end_kind    TEXT    NOT NULL DEFAULT '',
    reason      TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX leases_job ON leases (job_id);
CREATE INDEX leases_open ON leases (server_id) WHERE ended_at IS NULL;

-- Final results, one per job at most.
CREATE TABLE results (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    lease_id   INTEGER NOT NULL,
    outcome    INTEGER NOT NULL,
    result     BLOB,
    log        TEXT    NOT NULL DEFAULT '',
    error      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

-- The result outbox: one row per callback to a platform.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    platform_id     INTEGER NOT NULL REFERENCES platforms (id) ON DELETE CASCADE,
    state           INTEGER NOT NULL,
    tries           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 1;
CREATE INDEX deliveries_job ON deliveries (job_id);

-- A job's audit trail.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    job_id   INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    actor    TEXT    NOT NULL,
    lease_id INTEGER,
    detail   TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX events_job ON events (job_id);

-- Token ids seen, kept until the token expires, so a replay is refused even
-- after a restart.
CREATE TABLE token_ids (
    signer     TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (signer, jti)
) WITHOUT ROWID;

CREATE INDEX token_ids_expires ON token_ids (expires_at);
