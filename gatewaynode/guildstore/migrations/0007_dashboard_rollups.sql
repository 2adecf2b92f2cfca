-- 0007: the dashboard's message figures, kept as the messages are written
-- instead of counted per page load (rollup.go). The single writer adds up
-- each transaction's message changes in memory and upserts these rows once
-- per transaction, in that transaction: at every commit each row equals the
-- COUNT(*) of the raw messages rows it summarizes. Not exported: an import
-- rebuilds them from the rows it inserts (and its clear step removes them
-- with the rows it deletes). A row that reaches zero is deleted.
-- (0005 was the trigger-based rollups of branch dashreads, never merged.)

-- Per guild: live (deleted_at IS NULL), deleted, and edited live messages.
CREATE TABLE rollup_messages (
    guild_id INTEGER PRIMARY KEY,
    live     INTEGER NOT NULL,
    deleted  INTEGER NOT NULL,
    edited   INTEGER NOT NULL
);

-- Live messages per UTC hour of created_at (hour = floor(created_at / 3600000)).
CREATE TABLE rollup_message_hours (
    guild_id INTEGER NOT NULL,
    hour     INTEGER NOT NULL,
    live     INTEGER NOT NULL,
    PRIMARY KEY (guild_id, hour)
) WITHOUT ROWID;

-- Live messages per channel and per author. The top channels sort the
-- guild's channel rows (a few hundred at most). Authors are many: an index
-- serves their top list, at the price of moving an entry whenever an
-- author's count changes (once per author per commit). No such index on
-- channels: in small commits both cost a third of the writer's throughput
-- (BenchmarkApplyMessageCreate, synchronous=NORMAL).
CREATE TABLE rollup_message_channels (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    live       INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
) WITHOUT ROWID;

CREATE TABLE rollup_message_authors (
    guild_id  INTEGER NOT NULL,
    author_id INTEGER NOT NULL,
    live      INTEGER NOT NULL,
    PRIMARY KEY (guild_id, author_id)
) WITHOUT ROWID;
CREATE INDEX rollup_message_authors_top ON rollup_message_authors (guild_id, live DESC, author_id);

-- Backfill from the rows written before this migration.
INSERT INTO rollup_messages (guild_id, live, deleted, edited)
SELECT guild_id,
       count(*) FILTER (WHERE deleted_at IS NULL),
       count(*) FILTER (WHERE deleted_at IS NOT NULL),
       count(*) FILTER (WHERE deleted_at IS NULL AND edited_at IS NOT NULL)
FROM messages GROUP BY guild_id;

INSERT INTO rollup_message_hours (guild_id, hour, live)
SELECT guild_id, (created_at - (((created_at % 3600000) + 3600000) % 3600000)) / 3600000, count(*)
FROM messages WHERE deleted_at IS NULL GROUP BY 1, 2;

INSERT INTO rollup_message_channels (guild_id, channel_id, live)
SELECT guild_id, channel_id, count(*) FROM messages WHERE deleted_at IS NULL GROUP BY 1, 2;

INSERT INTO rollup_message_authors (guild_id, author_id, live)
SELECT guild_id, author_id, count(*) FROM messages WHERE deleted_at IS NULL GROUP BY 1, 2;
