-- The web console (O8). Login links are one-time: the row is deleted when used. Sessions are
-- kept by the SHA-256 of their cookie (the cookie itself is never stored), so every instance
-- on a shared store knows them and a restart keeps them. The audit log records every action
-- and every refused one.
CREATE TABLE console_logins (
    token_sha256  TEXT PRIMARY KEY,
    admin         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE TABLE console_sessions (
    id_sha256   TEXT PRIMARY KEY,
    csrf        TEXT NOT NULL,
    admin       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);

CREATE TABLE console_audit (
    id       TEXT PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    admin    TEXT NOT NULL,
    address  TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL
);
CREATE INDEX console_audit_at ON console_audit (at_ms);
