// Package guildstore is a gateway pod's SQLite database: the per-guild rows
// of the moderation bot (settings, message stats, reports, moderation actions,
// the held-event buffer and the fencing epoch), and the export/import used to
// move a guild between pods.
//
// # Storage
//
// One database file per pod (github.com/mattn/go-sqlite3), WAL journal, a busy
// timeout, synchronous=FULL by default (see Options.Synchronous), foreign keys
// on, and never exclusive locking mode, because the Litestream sidecar process
// reads the same file. Schema migrations are embedded numbered .sql files,
// recorded in schema_migrations; opening twice migrates once.
//
// All writes go through one connection owned by one goroutine (group commit):
// every Apply queued while the previous commit ran is applied in a single
// transaction, each Apply inside its own SAVEPOINT so one failing caller does
// not fail the others. Apply returns after the commit. Reads use a separate
// pool and see every committed write (read-your-writes after Apply returns).
//
// # Invariants
//
// Every table is keyed by guild_id (Discord snowflakes as int64).
//
// Idempotency: every write is keyed by Discord ids, so replaying an event is
// a no-op (Outcome.Applied=false):
//   - messages: (guild_id, message_id); a replayed create never undoes a later
//     edit or delete; edits apply only if at least as new as the stored one;
//     the first delete time wins.
//   - reports: the interaction id is the report id.
//   - mod_actions: UNIQUE (guild_id, dedupe_key). Timeouts use
//     "timeout:<user>:<until>". Bans, unbans and member removals carry no id
//     in Discord's payload: callers pass a delivery-derived key (the gateway's
//     session:seq, stable across RESUME replays) when they have one; without
//     a key they are recorded only when they change the user's state (ban
//     after non-ban, unban after ban, the first leave/kick), so a replay of
//     the latest state is a no-op.
//   - guild_settings: keyed by guild_id, last write wins.
//   - held events: per-guild seq from held_cursor, never reused.
//
// Fencing: guild_epochs holds each guild's epoch. A Write whose Epoch is lower
// than the stored one fails with ErrStaleEpoch and changes nothing; a higher
// one raises the stored epoch. Fence raises it explicitly (migration start).
// DeleteGuild keeps the epoch row as a tombstone so stale writers stay fenced.
// Holding and draining held events is not fenced.
//
// Checksum: SHA-256 over the canonical encoding of all of a guild's rows (see
// export.go): tables in a fixed order, rows in key order, one canonical JSON
// array line per row. Export streams exactly those lines plus a header and a
// trailer; Checksum computes the same value from the stored rows.
//
// Import is all-or-nothing: in one transaction it deletes the guild's rows,
// inserts the exported ones, and commits only if they hash to the wanted
// checksum and agree with the trailer's row counts (else ErrChecksumMismatch
// or ErrBadExport, with nothing changed). Re-importing is therefore
// idempotent. The held-event buffer travels with the export, so the target
// processes held events in their original order.
package guildstore
