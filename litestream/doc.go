// Package litestream is modbot's replication sidecar: it runs the Litestream
// library (github.com/benbjohnson/litestream v0.5.18) against one gateway
// pod's SQLite database and restores that database from its replica.
//
// # One process per driver
//
// Litestream opens the database with modernc.org/sqlite; the gateway uses
// mattn/go-sqlite3. POSIX advisory locks belong to a process, not to a file
// descriptor, so two SQLite libraries in one process silently drop each
// other's locks (reproduced with v0.5.18: restores missing rows, "disk I/O
// error"). This package therefore only ever runs in its own process
// (`modbot replicate`, `modbot restore`), and its tests run the writer or the
// sidecar as a subprocess. Nothing in this package opens a database with
// mattn.
//
// # Replicas
//
// Litestream v0.5 takes one replica per database: file:///ABSOLUTE/DIR or
// s3://BUCKET/PATH?endpoint=http://HOST:PORT&region=R (path-style addressing
// whenever an endpoint is given; credentials come from AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY). The replica is written in Litestream's own LTX
// layout, so `litestream restore -o OUT URL` can restore it too.
//
// # Who checkpoints: Litestream
//
// A WAL checkpoint copies WAL frames into the database file; the next writer
// may then restart the WAL from its beginning, overwriting frames. If that
// happens before Litestream has copied those frames, the changes are lost to
// the replica (it then has to take a full snapshot, or worse, never sees them).
// Litestream prevents this by holding a long-running read transaction, which
// forbids any WAL restart, and by owning the checkpoints itself
// (db.go: PASSIVE at MinCheckpointPageN = 1000 pages, a time-based PASSIVE
// every CheckpointInterval, a blocking TRUNCATE only past TruncatePageN): it
// seals the WAL under a write barrier, copies the last frames, checkpoints,
// and only then lets a writer restart the WAL.
//
// So Litestream owns checkpoints and the gateway never issues RESTART,
// TRUNCATE or FULL checkpoints: those would wait on Litestream's read
// transaction for the whole busy timeout, stalling the gateway's single
// writer, and then fail with SQLITE_BUSY. The gateway runs only PASSIVE
// checkpoints (guildstore's checkpointer, beside the writer, not inside its
// commits) as a backstop that bounds the WAL when no sidecar runs (tests, a sidecar that is
// down). A PASSIVE checkpoint never waits and cannot restart the WAL while
// Litestream's read transaction is open, so it cannot skip a frame; with the
// sidecar up, Litestream's 1,000-page checkpoint always fires first and the
// gateway's never has work to do. TestWALStaysBoundedUnderSustainedWrites
// shows the WAL stays near that threshold under sustained writes and the
// restore matches row for row.
//
// # Lag
//
// The sidecar drives Litestream's sync itself (database WAL → local LTX →
// replica, every --sync-interval) instead of Litestream's two independent
// monitors, so it knows exactly which local changes a completed round
// covers: every WAL change seen before a round starts is on the replica when
// the round succeeds. modbot_replication_lag_seconds is the age of the oldest
// change not yet covered (0 when in sync). modbot_replication_lag_txids is
// the local LTX TXID minus the replica's; Litestream's TXIDs count sync
// rounds, not SQLite transactions.
//
// Litestream checkpoints inside DB.Sync, before the upload. A checkpoint
// fsyncs the database file, which on a busy disk is the slowest part of a
// round by far (2.5 s measured under a dsync writer), so the sidecar runs
// the WAL copy with the PASSIVE thresholds off and applies them in a second
// DB.Sync after the upload: the changes of a round are on the replica before
// its checkpoint starts. modbot_replication_round_duration_seconds{phase}
// times wal, upload and checkpoint; a change waits at most
// max(interval/2, wal+upload+checkpoint) + wal+upload.
package litestream
