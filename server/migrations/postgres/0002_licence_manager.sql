-- Licence manager: reserve seats (L5), automatic distribution and kept keys (L8), attempted
-- usage (L10), notification log (L14), per-key notification state.

-- A device holds at most one active and one reserve seat (L5).
ALTER TABLE seats ADD COLUMN slot TEXT NOT NULL DEFAULT 'active';

ALTER TABLE devices ADD COLUMN licence_reserve_key TEXT;
-- The key that was full when the device was found unlicensed (counts towards 110 %, L10).
ALTER TABLE devices ADD COLUMN licence_wanted_key TEXT;

-- Auto-distributed keys a device received and keeps after the key left the repository (L8).
CREATE TABLE kept_keys (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    key_id      TEXT NOT NULL,
    licensee    TEXT NOT NULL,
    product     TEXT NOT NULL,
    components  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- What has been notified about a key, so each notification goes out once.
CREATE TABLE key_state (
    key_id             TEXT PRIMARY KEY,
    usage_level        BIGINT NOT NULL DEFAULT 0,
    expiring_notified  BIGINT NOT NULL DEFAULT 0,
    expired_notified   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE notifications (
    id       TEXT PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    key_id   TEXT,
    message  TEXT NOT NULL,
    details  TEXT NOT NULL   -- JSON, as given to hooks
);
CREATE INDEX notifications_at ON notifications (at_ms);
