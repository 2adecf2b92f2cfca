// Package fsm is modbot's control-plane state machine: the pods, the
// shard → holder map and the guild → owner map, replicated by Raft inside the
// config nodes. It has no network and no clock: every input is a Command that
// carries everything Apply needs (including the leader's timestamp), so every
// replica that applies the same log reaches the same State.
//
// # Invariants
//
// Each holds after every Apply, accepted or rejected. TestRandomCommandsKeepInvariants
// (invariants_test.go) checks all of them after every step of random command
// sequences — valid, invalid and stale — and each also has a test named after
// it that drives its edge cases:
//
//   - One owner per guild (TestOneOwnerPerGuild): every guild has exactly one
//     owner, and that owner is a registered pod. A pod that owns guilds, or is
//     the target of a migration, cannot be removed. A migrating guild has
//     exactly one migration record, from its owner to a pod other than the
//     owner, at the guild's epoch.
//   - Guild epochs only grow (TestGuildEpochsOnlyGrow): a guild's epoch is the
//     Raft index of the entry that placed it, started its move or aborted it.
//     Raft indexes only grow, so a guild removed and placed again, or moved
//     back and forth, never reuses an epoch. CompleteMove, AbortMove and
//     SetMovePhase must name the current epoch, so a stale actor can never
//     finish or cancel a newer move.
//   - One holder per shard, at a holder epoch that only grows
//     (TestOneHolderPerShardAtGrowingEpochs): every shard in [0, ShardCount) has at
//     most one holder, the holder is an active pod, every shard has one while
//     a pod is active, and active pods hold an even share (counts differ by at
//     most 1). A shard's holder epoch (ShardAssignment.Epoch, State.ShardEpochs)
//     is the Raft index of the entry that last changed its holder: it changes
//     exactly when the holder does, so one epoch names one tenure of one
//     holder, and a pod that lost a shard — even one that got it back since —
//     is fenced off from its old tenure. Every EventShard carries it.
//   - Checkpoint fencing (TestCheckpointsAreAcceptedOnlyFromTheHolderAtItsEpoch):
//     CmdSaveCheckpoints is refused with ErrStaleEpoch unless the sender is
//     the shard's current holder and every checkpoint's Epoch is the shard's
//     current holder epoch. A saved checkpoint records its holder and epoch,
//     so a stored checkpoint with the shard's current epoch is the current
//     holder's own. A later seq of the same session is bookkeeping: it
//     emits no event and leaves the revision alone. The first checkpoint of a
//     session in a tenure (a new session id, holder or epoch) emits one
//     EventShard carrying it: the stream then says "the holder's session is up
//     and committing", which a shard's previous holder hands over on.
//   - A drain survives down time (TestDrainSurvivesDownTime): a draining pod
//     that is marked down and heard from again (CmdPodAlive) comes back
//     draining, not active; Pod.Drain remembers it, and is set only while the
//     pod is down. Re-registering (CmdRegisterPod) puts a pod back to work.
//   - Rejected commands change nothing (TestRejectedCommandsChangeNothing):
//     Apply either accepts a command or returns a *CommandError and leaves the
//     State byte-for-byte as it was. The revision is the Raft index of the
//     last entry that changed the map; a no-op changes nothing either, not
//     even the revision.
//   - Snapshot → Restore reproduces the State exactly
//     (TestSnapshotRestoreReproducesTheState); snapshots written by older
//     builds (version 1) still restore (TestVersion1SnapshotStillRestores).
//     See snapshot.go for the encoding, designed for a million guilds.
//
// # Representation
//
// The guilds live in a GuildTable (guildtable.go): packed records in sorted
// segments with a small overlay of changes, owners and states interned,
// per-owner counters and a per-owner position index, migrations kept as
// exceptions. A million guilds cost ~5 B each of live heap (a map of
// *Guild cost ~100), GuildCount and the migrating count are counters, and
// snapshots are written in id order straight from it. Every test above runs
// over it, and checkInvariants also checks the table's own structure and
// its per-owner index after every step.
//
// Commands are versioned (Command.Version, see CommandVersion): Apply
// refuses versions it does not know, so a mixed-version cluster fails loudly
// instead of diverging, and it applies an old version's entries with that
// version's meaning, so an old log replays to the same State on every node.
// Upgrade followers first: the leader proposes the newest version it knows.
package fsm
