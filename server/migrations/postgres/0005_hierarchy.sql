-- Server hierarchy and licence leases (H1–H9).

-- For a key leased from a neighbour (origin 'neighbour'): the end of the lease's current
-- period. No device grant on it outlives this (L7), and no seat is usable after it unless the
-- lease was renewed (H6). NULL for keys this server owns.
ALTER TABLE licence_keys ADD COLUMN usable_until BIGINT;

-- Neighbour servers (H1–H3), each pinned by its link certificate.
CREATE TABLE servers (
    name          TEXT PRIMARY KEY,          -- chosen by the administrator
    kind          TEXT NOT NULL,             -- what it is to this server: primary | secondary | peer
    cert_sha256   TEXT NOT NULL UNIQUE,      -- its link certificate (hex)
    address       TEXT NOT NULL DEFAULT '',  -- where to dial it; '' when it dials us
    dials         BIGINT NOT NULL,           -- 1: this server dials it
    connection    TEXT NOT NULL DEFAULT 'permanent',  -- permanent | periodic
    interval_secs BIGINT NOT NULL DEFAULT 0, -- periodic: seconds between connections
    sends         BIGINT NOT NULL DEFAULT 1, -- peers (H2): this side sends licences
    receives      BIGINT NOT NULL DEFAULT 1, -- peers (H2): this side receives licences
    added_at      BIGINT NOT NULL,
    last_contact  BIGINT NOT NULL DEFAULT 0
);

-- Leases this server gives (H5, H6): the giver's state machine (outpost_proto::lease::Given).
-- `held` is what the lease counts in licence_keys.seats_leased_out: the most seats of any
-- grant whose period has not ended (`promised`: "seats:until" pairs, comma-separated).
CREATE TABLE leases_given (
    id           TEXT PRIMARY KEY,
    key_id       TEXT NOT NULL REFERENCES licence_keys(id),
    server       TEXT NOT NULL REFERENCES servers(name),
    seats        BIGINT NOT NULL,
    end_at       BIGINT NOT NULL,
    period_secs  BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    revoked      BIGINT NOT NULL DEFAULT 0,
    promised     TEXT NOT NULL DEFAULT '',
    held         BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at   BIGINT NOT NULL
);
CREATE INDEX leases_given_server ON leases_given (server);
CREATE INDEX leases_given_key ON leases_given (key_id);

-- Leases this server holds from a neighbour (outpost_proto::lease::Received): the newest
-- grant. The seats are the key's seats here (licence_keys, origin 'neighbour').
CREATE TABLE leases_received (
    server       TEXT NOT NULL REFERENCES servers(name),
    id           TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    seats        BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    end_at       BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (server, id)
);
CREATE INDEX leases_received_key ON leases_received (key_id);
