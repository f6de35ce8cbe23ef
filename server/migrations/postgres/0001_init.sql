-- Outpost server schema, version 1.
-- The PostgreSQL copy of migrations/sqlite (P2): the same tables, columns, keys and CHECKs, with
-- BIGINT for INTEGER and BYTEA for BLOB; kept in step by the test
-- p2_sqlite_and_postgres_schemas_match.
-- Times are unix seconds (BIGINT) unless the column name ends in _ms.
-- Seat arithmetic is only ever a conditional UPDATE inside a transaction, and the CHECK on
-- licence_keys makes over-allocation impossible even for a buggy caller.

CREATE TABLE groups (
    path        TEXT PRIMARY KEY,            -- 'everyone', 'everyone/berlin', ...
    parent      TEXT REFERENCES groups(path),
    created_at  BIGINT NOT NULL
);
INSERT INTO groups (path, parent, created_at) VALUES ('everyone', NULL, 0);

CREATE TABLE devices (
    id              TEXT PRIMARY KEY,
    role            TEXT NOT NULL,           -- agent | gateway | admin
    cert_sha256     TEXT NOT NULL UNIQUE,    -- hex; how a connection is mapped to its device
    group_path      TEXT NOT NULL REFERENCES groups(path),
    machine_id      TEXT NOT NULL DEFAULT '',
    hostname        TEXT NOT NULL DEFAULT '',
    os              TEXT NOT NULL DEFAULT '',
    agent_version   TEXT NOT NULL DEFAULT '',
    addresses       TEXT NOT NULL DEFAULT '',
    enrolled_at     BIGINT NOT NULL,
    last_seen       BIGINT NOT NULL DEFAULT 0,
    revoked_at      BIGINT,                  -- NULL while the device may connect
    licence_state   TEXT NOT NULL DEFAULT 'unknown',  -- licensed | unlicensed | unknown
    licence_key     TEXT,
    licence_reason  TEXT NOT NULL DEFAULT '',
    last_check_at   BIGINT NOT NULL DEFAULT 0,
    path            TEXT NOT NULL DEFAULT ''  -- how it last connected: 'direct' or 'via <gateway id>'
);
CREATE INDEX devices_machine ON devices (role, machine_id);

CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,
    secret_sha256   TEXT NOT NULL,
    role            TEXT NOT NULL,           -- agent | gateway
    group_path      TEXT NOT NULL REFERENCES groups(path),
    expires_at      BIGINT NOT NULL,
    uses_left       BIGINT NOT NULL CHECK (uses_left >= 0),
    uses_total      BIGINT NOT NULL,
    comment         TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL
);

CREATE TABLE licence_keys (
    id                TEXT PRIMARY KEY,
    licensee          TEXT NOT NULL,
    product           TEXT NOT NULL,
    components        TEXT NOT NULL,         -- comma-separated, sorted
    seats             BIGINT NOT NULL,
    seats_used        BIGINT NOT NULL DEFAULT 0 CHECK (seats_used >= 0),
    seats_leased_out  BIGINT NOT NULL DEFAULT 0 CHECK (seats_leased_out >= 0),
    valid_from        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    kind              TEXT NOT NULL,         -- commercial | demo
    renews            TEXT,
    auto_distribute   BIGINT NOT NULL DEFAULT 0,
    origin            TEXT NOT NULL DEFAULT 'imported',  -- imported | renewal | neighbour | activation
    file_name         TEXT NOT NULL,
    file              TEXT NOT NULL,         -- the signed file, byte for byte
    imported_at       BIGINT NOT NULL,
    CHECK (seats_used + seats_leased_out <= seats)
);

CREATE TABLE key_assignments (
    key_id  TEXT NOT NULL REFERENCES licence_keys(id) ON DELETE CASCADE,
    object  TEXT NOT NULL,                   -- 'group:<path>' or 'device:<id>'
    PRIMARY KEY (key_id, object)
);
CREATE INDEX key_assignments_object ON key_assignments (object);

CREATE TABLE seats (
    key_id     TEXT NOT NULL REFERENCES licence_keys(id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    taken_at   BIGINT NOT NULL,
    PRIMARY KEY (key_id, device_id)
);
CREATE INDEX seats_device ON seats (device_id);

CREATE TABLE events (
    device_id      TEXT NOT NULL,
    id             TEXT NOT NULL,            -- chosen by the agent; de-duplication key (S5)
    kind           TEXT NOT NULL,
    payload        BYTEA NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    received_at    BIGINT NOT NULL,
    PRIMARY KEY (device_id, id)
);

CREATE TABLE pushes (
    id            TEXT NOT NULL,
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind          BIGINT NOT NULL,
    payload       BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (id, device_id)
);
CREATE INDEX pushes_device ON pushes (device_id);
