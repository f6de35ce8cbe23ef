-- Tasks (D5): what agents are asked to run through their local handler. A task targets a
-- group (and the groups below it) or one device; it runs once at or after `not_before`, or
-- every `every_secs` from then on. Removing a task stops further runs; its results stay.
CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    arguments     TEXT NOT NULL,
    target_group  TEXT REFERENCES groups(path),
    target_device TEXT,
    not_before    BIGINT NOT NULL,
    every_secs    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    CHECK ((target_group IS NULL) <> (target_device IS NULL))
);

-- One row per device and run, written in the transaction that stores the result event (S5):
-- an event delivered twice is stored once, so is its result.
CREATE TABLE task_results (
    task_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    run            BIGINT NOT NULL,
    outcome        TEXT NOT NULL,
    exit_code      BIGINT,
    output         TEXT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    received_at    BIGINT NOT NULL,
    PRIMARY KEY (task_id, device_id, run)
);
