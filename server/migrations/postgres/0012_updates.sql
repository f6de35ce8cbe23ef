-- The update repository (D1). A revision is a signed manifest (outpost_proto::update): every
-- file with its size, SHA-256 and per-block SHA-256. File content is kept as blocks addressed
-- by their SHA-256, in the database so that every server instance (P2) serves the same bytes
-- and an import commits with its manifest or not at all.
CREATE TABLE update_revisions (
    revision    BIGINT PRIMARY KEY,
    body        BYTEA NOT NULL,
    signature   BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    source      TEXT NOT NULL,
    files       BIGINT NOT NULL,
    bytes       BIGINT NOT NULL
);

CREATE TABLE update_blocks (
    sha256  TEXT PRIMARY KEY,
    data    BYTEA NOT NULL
);

-- Revision numbers are never reused, also after a removal: a device holding revision N must
-- never be offered different content under the same N.
CREATE TABLE update_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  BIGINT NOT NULL
);
