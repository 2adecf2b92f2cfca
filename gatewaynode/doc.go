// Package gatewaynode is a gateway pod: it keeps the Discord sessions of the
// shards the control plane gives it, routes every dispatch to the guild's
// owning pod, does the bot's per-guild work on its own SQLite for the guilds
// it owns, and serves the internal API that proxies and peers call.
//
// Invariants (tests named after them in gatewaynode_test.go and e2e/):
//
//   - Ack after commit. A shard's sequence number is acknowledged — and so may
//     appear in the checkpoint another pod resumes from — only once every
//     dispatch up to it is durably committed: processed into the owner's
//     SQLite, accepted by the owning peer (which commits before answering), or
//     written to this pod's durable outbox. A pod that dies loses nothing: the
//     pod taking its shards over RESUMEs from the checkpoint, and replays are
//     harmless because every handler is idempotent (keyed by Discord ids or
//     by session:seq).
//   - Per-guild order. A guild's events reach its owner in the order the shard
//     delivered them: one shard's batches are routed one after another, and a
//     guild with undelivered outbox events gets its new events appended to the
//     outbox, never sent past it.
//   - One writer per guild. Only the owner at the map's current epoch writes a
//     guild's rows; guildstore rejects writes with an older epoch. A migrating
//     guild's events are held in the owner's durable buffer until the move ends.
//   - Planned handoff without a gap. When a shard moves between live pods the
//     new holder identifies a new session and the old holder keeps its own
//     — with no deadline — until the new one has saved a checkpoint (READY and
//     committing), then commits everything its session had received by then
//     (a resumed backlog exists nowhere else) before closing it; events seen
//     by both sessions meanwhile are deduplicated by the handlers.
package gatewaynode
