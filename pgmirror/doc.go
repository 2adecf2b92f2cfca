// Package pgmirror mirrors the guild → pod map into PostgreSQL for
// reporting (DESIGN §10): the tables pods, guild_assignments,
// shard_assignments, assignment_events (one row per change, with move
// durations), pod_guild_counts and mirror_state, read by the Grafana
// dashboards in deploy/grafana. It is a client of the config nodes' change
// stream (assignments.Client.OpenStream, the typed stream client, resumed
// from the revision stored in Postgres; /v1/snapshot after 410 Gone), never
// part of their request path, and it never polls the config plane.
//
// It follows the stream itself instead of subscribing to an
// assignments.Watcher: a Watcher always starts with a list and coalesces a
// slow subscriber into a "relisted" notice, which would lose the history
// between two runs, or while Postgres is down; the mirror's state is in
// Postgres, so it resumes from there and replays the missed revisions.
//
// # Invariants
//
// Each has a test named after it (mirror_test.go, cluster_test.go).
//
//   - One batch, one transaction. A batch of consecutive revisions is
//     written in one transaction that also moves mirror_state.revision to
//     its last revision, so a crash never leaves half a batch and Postgres
//     is always the map at the revision mirror_state names
//     (TestMirrorEqualsTheFSMAfterRandomChanges,
//     TestAWriterKilledMidBatchLeavesNothingHalfWritten).
//   - A replay changes nothing. A batch first locks mirror_state and checks
//     it is at the revision this writer last wrote; revisions at or below it
//     are skipped, and assignment_events is keyed by (revision, seq), so
//     nothing is doubled or lost across restarts and takeovers
//     (TestAWriterKilledMidBatchLeavesNothingHalfWritten,
//     TestEventsAreExactlyTheStreamNoneDoubledNoneMissing).
//   - One writer per database. A mirror writes only on the connection that
//     holds pg_try_advisory_lock(lockKey); losing that connection loses the
//     lock, so it stops writing and starts over (connect, migrate, lock,
//     resume). Others stand by and retry the lock every LockRetry
//     (TestTwoMirrorsOnOneDatabaseOneWrites,
//     TestAWriterKilledMidBatchLeavesNothingHalfWritten).
//   - Gaps are resynced, and said so. When the stream no longer has the
//     stored revision (410 Gone), the mirror lists /v1/snapshot, writes only
//     the difference, and records one resync event at (revision, -1)
//     (TestAResyncAfterGoneWritesTheDiffAndRecordsIt).
//   - Postgres is never in the way. Nothing in the config node waits for
//     the mirror; with Postgres down the mirror retries with backoff and,
//     when it returns, catches up from its stored revision
//     (TestPostgresDownThenBackTheMirrorCatchesUp; the write-latency
//     comparison is `modbotbench -only pgmirror`).
//   - Bad input is a clear error, never a crash: a malformed URL fails New;
//     a wrong password, a missing database, a schema a newer build migrated,
//     a server refusing connections are logged with what to do, counted by
//     kind, and retried (TestBadInputIsAClearErrorAndTheConfigNodeServes).
//   - The schema only moves forward: migrations (tern, under its advisory
//     lock) run at start; a database at a newer version is refused, never
//     migrated down.
package pgmirror
