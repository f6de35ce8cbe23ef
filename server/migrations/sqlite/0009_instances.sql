-- Which server instance holds which session (P2). Several instances may share one PostgreSQL
-- database; on the embedded store there is one, recorded the same way.

-- A running instance: a random id per process start, a readable name (`store.instance`, default
-- host name and port), and a heartbeat. An instance not seen for a while is gone (killed); its
-- rows here and in `held` are purged by the others.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);

-- The instance holding a device's live connection: an agent's session or a gateway's uplink.
-- Written when the connection is registered, deleted (by that instance only) when it ends.
CREATE TABLE held (
    device_id   TEXT PRIMARY KEY,
    instance    TEXT NOT NULL,
    since       BIGINT NOT NULL
);
CREATE INDEX held_instance ON held (instance);
