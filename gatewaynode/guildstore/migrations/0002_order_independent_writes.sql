-- 0002: writes that converge to the same rows whatever order a guild's
-- events arrive in (a replayed webhook, a held event delivered late).

-- /setup is a last-writer-wins register per field, ordered by the snowflake
-- of the interaction that set the field (its version), not by arrival: an
-- older /setup handled after a newer one changes nothing the newer one set,
-- and still sets a field the newer one left alone. Version 0: never set.
ALTER TABLE guild_settings ADD COLUMN mod_role_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE guild_settings ADD COLUMN modlog_channel_version INTEGER NOT NULL DEFAULT 0;
-- Rows written before this migration: updated_at is the snowflake time of the
-- /setup that last wrote them, which is their version at millisecond
-- precision (the snowflake's time bits, the low 22 bits zero).
UPDATE guild_settings SET
    mod_role_version = CASE WHEN mod_role_id IS NULL OR updated_at <= 1420070400000 THEN 0
                            ELSE (updated_at - 1420070400000) << 22 END,
    modlog_channel_version = CASE WHEN modlog_channel_id IS NULL OR updated_at <= 1420070400000 THEN 0
                                  ELSE (updated_at - 1420070400000) << 22 END;

-- What is known of a message whose MESSAGE_CREATE has not been handled (yet):
-- its newest edit and its deletion (a tombstone), from MESSAGE_UPDATE /
-- MESSAGE_DELETE / MESSAGE_DELETE_BULK handled before the create. The create
-- takes the row over (deleting it), so a delete overtaken by its create still
-- leaves the message deleted. A row exists only while the message has no row
-- in messages. Never counted as a message on its own; pruned by message age
-- (see Store.PruneUnseenMessages). content_length is the edit's (0 without one).
CREATE TABLE unseen_messages (
    guild_id       INTEGER NOT NULL,
    message_id     INTEGER NOT NULL,
    edited_at      INTEGER,
    content_length INTEGER NOT NULL DEFAULT 0,
    deleted_at     INTEGER,
    PRIMARY KEY (guild_id, message_id)
) WITHOUT ROWID;

-- Moderation actions are listed (dashboard, export) in the order they
-- happened — receipt time, then key — not in the order they were processed,
-- so a reordered delivery stores and exports the same rows in the same order.
CREATE INDEX mod_actions_guild_time ON mod_actions (guild_id, created_at, dedupe_key);
