-- 0003: events whose handler failed (other than a stale epoch) after the
-- caller's retries. Like the held buffer they belong to the pod that received
-- them, not to the guild's data: never exported, imported or deleted with a
-- guild; an operator replays them (back through the router, which sends them
-- to the guild's owner wherever it is now) or discards them.
CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY,
    guild_id        INTEGER NOT NULL,
    type            TEXT NOT NULL,
    payload         BLOB NOT NULL,              -- the dispatch's d, as received
    delivery_id     TEXT NOT NULL DEFAULT '',   -- "<session>:<seq>" when known
    received_at     INTEGER,                    -- when the pod received the event (NULL: unknown)
    error           TEXT NOT NULL,              -- the last failure
    attempts        INTEGER NOT NULL CHECK (attempts >= 1),
    first_failed_at INTEGER NOT NULL,
    last_failed_at  INTEGER NOT NULL
);
-- One row per delivery: failing again (after a replay) updates it.
CREATE UNIQUE INDEX dead_letters_delivery ON dead_letters (guild_id, delivery_id) WHERE delivery_id != '';
CREATE INDEX dead_letters_guild ON dead_letters (guild_id, id);
