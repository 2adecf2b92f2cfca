-- 0001: the per-guild tables. Every table is keyed by guild_id (a Discord
-- snowflake stored as a signed 64-bit INTEGER). Times are unix milliseconds.

-- Fencing token per guild: writes carrying a lower epoch are rejected.
CREATE TABLE guild_epochs (
    guild_id INTEGER PRIMARY KEY,
    epoch    INTEGER NOT NULL
);

CREATE TABLE guild_settings (
    guild_id          INTEGER PRIMARY KEY,
    mod_role_id       INTEGER,
    modlog_channel_id INTEGER,
    updated_at        INTEGER NOT NULL
);

-- Message statistics only: the content itself is not kept (only its length).
CREATE TABLE messages (
    guild_id       INTEGER NOT NULL,
    message_id     INTEGER NOT NULL,
    channel_id     INTEGER NOT NULL,
    author_id      INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    edited_at      INTEGER,
    deleted_at     INTEGER,
    content_length INTEGER NOT NULL,
    PRIMARY KEY (guild_id, message_id)
) WITHOUT ROWID;

-- id is the interaction id that created the report (a globally unique
-- snowflake), which makes report creation idempotent and keeps ids stable
-- when a guild moves to another pod.
CREATE TABLE reports (
    id                INTEGER PRIMARY KEY,
    guild_id          INTEGER NOT NULL,
    reporter_id       INTEGER NOT NULL,
    target_user_id    INTEGER NOT NULL,
    message_id        INTEGER,
    channel_id        INTEGER,
    message_content   TEXT,
    reason            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    modlog_channel_id INTEGER,
    modlog_posted_at  INTEGER
);
CREATE INDEX reports_guild_target ON reports (guild_id, target_user_id, id);

-- id is local (not exported); export order is id order and import preserves it.
CREATE TABLE mod_actions (
    id           INTEGER PRIMARY KEY,
    guild_id     INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('ban', 'unban', 'kick', 'leave', 'timeout')),
    user_id      INTEGER NOT NULL,
    moderator_id INTEGER,
    reason       TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    dedupe_key   TEXT NOT NULL,
    UNIQUE (guild_id, dedupe_key)
);
CREATE INDEX mod_actions_guild_user ON mod_actions (guild_id, user_id, id);

-- Durable per-guild buffer of events received while the guild migrates.
-- seq is per guild and never reused (held_cursor keeps the last one issued).
CREATE TABLE held_cursor (
    guild_id INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE held_events (
    guild_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    type        TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (guild_id, seq)
) WITHOUT ROWID;
