-- Licence-usage reports (H9).

-- Set by the main server on its link (LeaseSync): how often this server reports to it and which
-- devices count as active (seconds; 0 = every device). 0/0 until the main server said.
ALTER TABLE servers ADD COLUMN report_period_secs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN active_period_secs BIGINT NOT NULL DEFAULT 0;

-- The newest report of each server below this one (the encoded outpost.admin.UsageReport,
-- with the reports of the servers below it nested).
CREATE TABLE usage_reports (
    server       TEXT PRIMARY KEY REFERENCES servers(name),
    made_at      BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    report       BYTEA NOT NULL
);
