-- Notifications travelling up to the main server (H4): per relation, the last notification the
-- main server acknowledged (this server's at_ms and id); the next batch starts after it.
ALTER TABLE servers ADD COLUMN notices_sent_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN notices_sent_id TEXT NOT NULL DEFAULT '';
