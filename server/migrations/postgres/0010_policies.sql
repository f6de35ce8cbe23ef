-- Policy documents per group (D5): a JSON object of settings. A device's effective policy is
-- the documents of its group and the groups above it merged from the root down, the nearest
-- group winning per setting (`outpost_proto::policy`). `revision` counts changes of this
-- group's document; agents are sent a hash of their effective document.
CREATE TABLE policies (
    group_path  TEXT PRIMARY KEY REFERENCES groups(path),
    document    TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
