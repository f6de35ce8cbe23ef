-- What a secondary inherits from its primary (H4, D5, D1).
-- Tasks passed down are stored beside the server's own, with the primary's name as origin
-- (NULL: created here); they are replaced as a set whenever the primary sends its list.
ALTER TABLE tasks ADD COLUMN origin TEXT;

-- The primary's effective root policy: the bottom layer of every device's effective policy
-- here (this server's own groups' documents override it, nearest wins).
CREATE TABLE inherited_policy (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    source       TEXT NOT NULL,
    document     TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

-- Update revisions taken from the primary: its update key (pinned at the first manifest) and
-- the newest of its revisions taken, so an older one is refused (rollback) however often it
-- is offered. Written in the transaction that records the local revision.
CREATE TABLE upstream_updates (
    source      TEXT PRIMARY KEY,
    update_key  BLOB NOT NULL,
    revision    BIGINT NOT NULL,
    taken_at    BIGINT NOT NULL
);
