// Package fsm is modbot's control-plane state machine: the pods, the
// shard → holder map and the guild → owner map, replicated by Raft inside the
// config nodes. It has no network and no clock: every input is a Command that
// carries everything Apply needs (including the leader's timestamp), so every
// replica that applies the same log reaches the same State.
//
// Invariants (each has a test named after it in invariants_test.go):
//
//   - One owner per guild: every guild has exactly one owner, and that owner is a
//     registered pod. A pod that owns guilds, or takes part in a migration,
//     cannot be removed.
//   - Epochs only grow: a guild's epoch is the Raft index of the entry that
//     placed it, started its move or aborted it. Raft indexes only grow, so a
//     guild removed and placed again, or moved back and forth, never reuses an
//     epoch. CompleteMove/AbortMove/SetMovePhase must name the current epoch, so
//     a stale actor can never finish or cancel a newer move.
//   - A migrating guild has exactly one migration record, from its owner to an
//     active pod other than the owner.
//   - Every shard in [0, ShardCount) has at most one holder, the holder is an
//     active pod, and active pods hold an even share (counts differ by at most 1).
//   - The revision is the Raft index of the last entry that changed the map;
//     a rejected or no-op command changes nothing, not even the revision.
//     Shard checkpoints (resume points) are bookkeeping outside the map: saving
//     one emits no event and leaves the revision alone. Only a shard's current
//     holder may save its checkpoint.
//   - Snapshot → Restore reproduces the State exactly (see snapshot.go for the
//     encoding, designed for a million guilds).
//
// Commands are versioned (Command.Version); Apply refuses versions it does not
// know, so a mixed-version cluster fails loudly instead of diverging.
package fsm
