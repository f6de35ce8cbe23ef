-- Network discovery (D3): hosts a gateway's scan of its office found, keyed by gateway, MAC and
-- IP. Never joined into devices: a scan does not create, change, merge or delete a device.
CREATE TABLE discovered_hosts (
    gateway_id  TEXT NOT NULL,
    mac         TEXT NOT NULL,
    ip          TEXT NOT NULL,
    methods     TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, mac, ip)
);
