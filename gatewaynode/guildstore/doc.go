// Package guildstore is a gateway pod's SQLite database: the per-guild rows
// of the moderation bot (settings, message stats, reports, moderation
// actions), the guild's fencing epoch, the export/import used to move a guild
// between pods, and two tables that are the pod's own rather than any
// guild's: the held-event buffer and the dead letters.
//
// # Invariants
//
// Each is checked by the tests named after it (store_test.go,
// export_test.go, import_test.go, deadletters_test.go).
//
//   - One writer per guild, fenced by epoch (TestStaleEpochWriteIsRejected).
//     guild_epochs holds each guild's epoch. A Write whose Epoch is lower than
//     the stored one fails with ErrStaleEpoch and changes nothing (its whole
//     unit is rolled back); a higher one raises the stored epoch. Fence
//     raises it explicitly (migration start). DeleteGuild keeps the epoch row
//     as a tombstone so stale writers stay fenced
//     (TestGuildIDsAndDeleteGuildKeepsFence). An import with a lower epoch
//     fails with ErrStaleEpoch.
//   - Idempotent writes (TestApplyIsIdempotent): every write is keyed by
//     Discord ids, so replaying one is a no-op (Outcome.Applied=false):
//     messages by (guild_id, message_id); reports by the interaction id;
//     mod_actions by UNIQUE (guild_id, dedupe_key) — "timeout:<user>:<until>",
//     or a delivery key "<kind>:<user>:<session>:<seq>" (see AddModAction for
//     events without one); settings fields by the /setup interaction id.
//   - Order-independent writes: the rows a guild converges to do not depend
//     on the order its events arrive in (a replayed webhook, a held event
//     delivered late). Settings are a last-writer-wins register per field,
//     ordered by the /setup interaction's snowflake
//     (TestOlderSettingsNeverOverwriteNewer); the newest edit of a message
//     wins and the earliest delete; an edit or delete of a message whose
//     create was not handled yet is parked in unseen_messages (a tombstone for
//     a delete) and applied by the create (TestMessageWritesConvergeInAnyOrder,
//     TestDeleteBeforeCreateStaysDeleted); moderation actions of one session
//     are the set of their keys, listed and exported by (created_at,
//     dedupe_key), not by processing order
//     (TestModActionsOfOneSessionConvergeInAnyOrder); the report's posted
//     time is the earliest acknowledgement.
//   - Imports are all-or-nothing (TestImportIsAllOrNothing). Import first
//     validates the whole stream into a spool file: unless it hashes to the
//     wanted checksum and agrees with the trailer's row counts
//     (ErrChecksumMismatch, ErrBadExport) nothing changes. It then replaces
//     the guild's data rows in bounded transactions interleaved with other
//     guilds' writes; until the last one the guild cannot be exported
//     (ErrImporting), and a failed or crashed publish leaves none of its
//     rows (import.go lists these invariants and their tests). Re-importing
//     is idempotent. An export of another format
//     version is refused (TestExportOfAnotherFormatVersionIsRefused).
//   - Held events belong to the pod that received them, not to the guild's
//     data (TestImportKeepsTheTargetsHeldEventsInOrder,
//     TestExportNeverShipsHeldEvents, TestDeleteGuildKeepsHeldEvents). Export
//     never includes held_events/held_cursor, Import never deletes or
//     replaces them, DeleteGuild keeps them, and Checksum and Counts cover
//     only the guild's data rows. A pod that holds events for a guild it is
//     importing (the shard holder, after a forward to the old owner failed)
//     still holds every one, in order, when the import commits; whoever
//     holds events delivers them itself. Holding and dropping held events is
//     not fenced. A held event's seq is per guild and never reused
//     (TestHeldEventsRoundTripInOrder); HeldPage reads the buffer in seq
//     order a page at a time (TestHeldPageReadsEveryEventOnceInSeqOrder).
//   - The dashboard's rollups equal their raw rows at every commit
//     (TestRollupsEqualCountsOfRawRowsAfterAnyWriteSequence): the writer
//     sums each transaction's message changes and upserts the rollup rows
//     before its COMMIT (rollup.go); a moved guild's rollups are rebuilt from
//     the rows imported, so they equal the source's.
//   - A dashboard read answers what the database holds
//     (TestDashboardCacheAnswersWhatTheDatabaseHolds,
//     TestDashboardReadsItsOwnWritesUnderConcurrentCommits): Dashboard
//     reuses a guild's last read only while no commit has written the
//     guild since and the UTC hour is the same (dashcache.go).
//   - No event is lost silently. An event whose handler kept failing is kept
//     in dead_letters until an operator replays or discards it
//     (TestDeadLettersStayUntilReplayed, TestFailedReplayKeepsTheDeadLetter);
//     one delivery is one row however often it fails
//     (TestDeadLetterOfOneDeliveryIsOneRow). Dead letters are the pod's, like
//     held events: never exported, imported or deleted with a guild
//     (TestDeleteGuildKeepsHeldEvents).
//
// Every table is keyed by guild_id (Discord snowflakes stored as int64).
//
// # Storage
//
// One database file per pod (github.com/mattn/go-sqlite3), WAL journal, a busy
// timeout, synchronous=FULL by default (see Options.Synchronous), foreign keys
// on, and never exclusive locking mode, because the Litestream sidecar process
// reads the same file. Schema migrations are embedded numbered .sql files,
// recorded in schema_migrations; opening twice migrates once
// (TestOpenMigratesOnceAndUsesWAL, TestUpgradeOrdersExistingSettingsByTheirTime).
//
// All writes go through one connection owned by one goroutine (group commit):
// every Apply queued while the previous commit ran is applied in a single
// transaction, each Apply inside its own SAVEPOINT so one failing caller does
// not fail the others (TestGroupCommitSerializesConcurrentWriters). Apply
// returns after the commit. Reads use a separate pool and see every committed
// write (read-your-writes after Apply returns).
//
// # Export
//
// Checksum: SHA-256 over the canonical encoding of the guild's data rows
// (exportTables in export.go): tables in a fixed order, rows in key order, one
// canonical JSON array line per row. Export streams exactly those lines plus a
// header and a trailer; Checksum computes the same value from the stored rows
// (TestExportImportReproducesChecksumAndDashboard).
package guildstore
