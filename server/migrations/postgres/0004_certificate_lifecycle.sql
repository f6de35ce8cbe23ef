-- S9: which CA issued each device's certificate (a CA roll-over finishes once no active device
-- holds one from the old CA), and the renewed certificate waiting for its first use.
ALTER TABLE devices ADD COLUMN cert_ca_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN next_cert_expires_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN next_cert_ca_sha256 TEXT NOT NULL DEFAULT '';
