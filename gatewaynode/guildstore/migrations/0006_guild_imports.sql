-- 0006: chunked imports (import.go). A guild has a row here from the first
-- of its import's bounded transactions to the last: while it does, the
-- guild's data rows on this pod are being replaced and are no consistent
-- copy (Export and Checksum refuse it). A pod that opens its database with a
-- row here (it crashed mid-import, or the clean-up of a failed one did not
-- finish) deletes that guild's data rows, then the row, before serving.
-- Numbered 0006: 0005 is the dashboard rollups (branch dashreads).
CREATE TABLE guild_imports (
    guild_id   INTEGER PRIMARY KEY,
    epoch      INTEGER NOT NULL,   -- the export's epoch
    started_at INTEGER NOT NULL    -- unix ms
);
