-- Named console accounts (O8): an administrator signs in to the web console with a name and a
-- password instead of a one-time link. Only the argon2id hash (PHC string, its own salt) is
-- stored. Consecutive failures lock the account for a while; a sign-in resets them. Sessions
-- opened with an account name it, so removing the account or resetting its password ends them.
CREATE TABLE console_accounts (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    changed_at    BIGINT NOT NULL,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_until  BIGINT NOT NULL DEFAULT 0,
    last_sign_in  BIGINT NOT NULL DEFAULT 0
);

ALTER TABLE console_sessions ADD COLUMN account TEXT NOT NULL DEFAULT '';
