// Package gatewaynode is a gateway pod: it keeps the Discord sessions of the
// shards the control plane gives it, routes every dispatch to the guild's
// owning pod, does the bot's per-guild work on its own SQLite for the guilds
// it owns, and serves the internal API (internal/podapi) that proxies, peers
// and the config leader call.
//
// The pod is built on small seams (seams.go): the map (mapView: the
// assignments.Watcher), the config nodes (controlPlane), other pods
// (peerLink) and Discord (discord, session). Their in-memory twins
// (inmem_test.go) run real pods with real SQLite on a real fsm.State without
// a network, so the invariants below are tested where they live
// (gatewaynode_test.go), in milliseconds; e2e/ checks them again with every
// part really started.
//
// Invariants:
//
//   - Ack after commit (TestAckAfterCommit). A shard's sequence number is
//     acknowledged — and so may appear in the checkpoint another pod resumes
//     from — only once every dispatch up to it is durably committed:
//     processed into the owner's SQLite, accepted by the owning peer (which
//     commits what it accepts before answering), or written to this pod's
//     durable outbox. A pod that dies loses nothing: the pod taking its shards
//     over RESUMEs from the checkpoint, and replays are harmless because every
//     handler is idempotent (keyed by Discord ids or by session:seq).
//   - Per-guild order, exactly once (TestPerGuildOrderAcrossAMove,
//     TestPerGuildOrderAcrossAMoveWithAThirdHolder,
//     TestOutboxDeliversEachHeldEventOnce; e2e
//     TestMoveCommitsEveryEventOnceInDispatchOrder). A guild's events are
//     committed in the order its shard delivered them. An event waits only on
//     the pod that received it from Discord: a migrating guild's events are
//     held by the shard holder, never buffered by the source; an owner never
//     buffers events for someone else — it commits them or refuses them
//     (not the owner at its epoch, migrating, fenced, or older events of the
//     guild wait elsewhere), and the holder keeps what was refused. A guild
//     with held events is pending: newer events queue behind them. One
//     outbox delivery runs at a time, so no held event is handed over twice.
//   - One writer per guild. Only the owner at the map's current epoch writes
//     a guild's rows; guildstore rejects writes with an older epoch (the
//     source of a move fences itself at the move's epoch before exporting).
//   - One holder per shard session (TestWronglyDownPodNeverClosesTheSessionItsSuccessorResumed;
//     e2e TestLivePodWronglyMarkedDownLosesNothing). Checkpoints are saved
//     under the holder epoch the FSM issued and refused once the shard moved
//     on. A pod that lost a shard never reopens its session; if it is marked
//     down, or its successor resumed its session, it detaches it without a
//     close frame (close 1000 would invalidate it for the successor).
//   - Planned handoff without a gap, in order (TestHandoffWithoutAGap). The
//     new holder identifies its own session and routes nothing until the old
//     holder released the shard (a long poll on the old holder); the old
//     holder keeps its session — with no deadline — until the new holder's
//     first checkpoint of its own session at its epoch appears on the change
//     stream, then commits everything its session had received and delivers
//     the shard's held events (bounded, 2 minutes) before closing it. Events
//     seen by both sessions are deduplicated by the handlers.
//   - Nothing silently lost (TestPoisonEventIsDeadLetteredNotLost). An event
//     whose handler keeps failing is dead-lettered (stored, counted,
//     listable, replayable by an operator), never dropped.
package gatewaynode
