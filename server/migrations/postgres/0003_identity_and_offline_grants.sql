-- Licence integrity and identity lifecycle (L15, S7, S8, S9).

-- Upper bound of the expiry of every grant issued on a seat (L15): how long the device may
-- hold it offline. Rewritten only when a new grant outlives it (at most hourly per device).
ALTER TABLE seats ADD COLUMN grant_until BIGINT NOT NULL DEFAULT 0;

-- Seats that stay counted after their device lost them, because the device may still hold an
-- unexpired grant offline (L15): revoked, removed or reclaimed while offline, or moved to
-- another key before it confirmed storing the new grant. Counted in licence_keys.seats_used
-- like seat rows; a hold ends when its grant expires (`until`), when the device confirms it
-- dropped or replaced the grant, or by an administrator's override.
CREATE TABLE seat_holds (
    key_id       TEXT NOT NULL REFERENCES licence_keys(id) ON DELETE CASCADE,
    device_id    TEXT NOT NULL,      -- no foreign key: the device may be removed
    cert_sha256  TEXT NOT NULL,      -- the certificate it held, to accept its confirmation
    slot         TEXT NOT NULL,      -- active | reserve
    until        BIGINT NOT NULL,
    reason       TEXT NOT NULL,      -- revoked | removed | reclaimed | superseded
    since_ms     BIGINT NOT NULL,    -- unix ms; a status the device stored after this replaced it
    PRIMARY KEY (key_id, device_id)
);
CREATE INDEX seat_holds_until ON seat_holds (until);
CREATE INDEX seat_holds_device ON seat_holds (device_id);
CREATE INDEX seat_holds_cert ON seat_holds (cert_sha256);

-- An enrollment token may forbid taking over an existing record of the same machine (S7).
ALTER TABLE tokens ADD COLUMN allow_takeover BIGINT NOT NULL DEFAULT 1;

-- Device certificates (S9): when the current one expires; a renewed certificate replaces it
-- only once the device used it (the old one stays accepted until then).
ALTER TABLE devices ADD COLUMN cert_expires_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN next_cert_sha256 TEXT;
CREATE INDEX devices_next_cert ON devices (next_cert_sha256);

-- Gateways in a DMZ the server dials (T4), added with `admin gateway dmz add` (beside the
-- ones in server.toml): dialled from the moment they are added, no restart.
CREATE TABLE dmz_gateways (
    address   TEXT PRIMARY KEY,
    added_at  BIGINT NOT NULL
);
