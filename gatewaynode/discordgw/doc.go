// Package discordgw drives one Discord gateway shard over its websocket
// (HELLO, IDENTIFY, RESUME, heartbeats, RECONNECT, INVALID SESSION) so that
// the session can be checkpointed durably and resumed by another process.
//
// discordgo v0.29.0 keeps the gateway session id and sequence unexported, so a
// pod that takes over a dead pod's shard cannot RESUME the dead pod's session
// through discordgo.Session.Open; a fresh IDENTIFY would lose every dispatch
// the dead pod received but never committed and every dispatch sent while no
// one was connected. This package exposes the session as a Checkpoint instead
// (see DESIGN.md §2, "Losing nothing when a gateway pod dies", option (a)).
//
// # Invariants
//
//   - Order: Events() yields the dispatches (op 0: READY, RESUMED,
//     GUILD_CREATE, MESSAGE_CREATE, …) in the order Discord sequenced them.
//   - No duplicates per Shard: within one Shard value a dispatch of a session
//     is delivered at most once, also across the internal reconnects and
//     resumes the Shard performs on its own (a replayed dispatch with
//     Seq <= the last one received is skipped). RESUMED is a marker and is
//     always delivered; it carries Discord's current sequence and is not
//     a duplicate of the dispatch with that number.
//   - Checkpoint = acknowledged position only: Checkpoint().Seq is the highest
//     sequence passed to Ack (or AckDispatch) for the current session, never
//     merely the last one received or delivered. Storing a checkpoint after
//     committing the events up to its Seq is therefore always safe.
//   - Resume from a checkpoint: a Shard opened with Config.Resume replays,
//     in order and with nothing missing, every dispatch of that session
//     after Checkpoint.Seq that Discord still retains — those the previous
//     holder received but never acknowledged and those sent while nobody was
//     connected — then RESUMED, then live dispatches. Across processes
//     delivery is at least once: the previous holder may have processed
//     dispatches after the checkpoint it last stored, so they can arrive
//     again; handlers must be idempotent.
//   - Fallback identify loses the gap: if the checkpoint's session is no
//     longer resumable (op 9 with d:false, close 4007/4009 — e.g. the resume
//     window passed or the previous holder closed with 1000), the Shard
//     identifies afresh and ResumeFailed reports true. Dispatches between
//     the checkpoint and the new READY are then lost for good; the caller
//     should reconcile (for example by refetching state over REST). The same
//     holds for any later READY in Events(): a READY always starts a new
//     session, whose sequence numbers restart at 1.
//
// # Lifetime
//
// Open connects and returns once READY or RESUMED has been received. The
// context passed to Open bounds the whole life of the Shard: when it ends the
// Shard stops as with Detach (the session stays resumable) and Err reports
// the context's error. Close ends the session (close code 1000: Discord
// invalidates it); Detach stops but leaves the session resumable elsewhere
// (close code 4000). Close while the shard is between connections sends no
// close frame; the session then simply expires on Discord's side. After
// either, Events() is closed; dispatches that were
// received but not yet taken from Events() are dropped — they are after the
// acknowledged checkpoint, so a resume elsewhere delivers them again. When the
// gateway ends the shard for good (close 4004, 4010–4014), the dispatches
// already received are still delivered, then Events() is closed and Err says
// why. Every goroutine of a Shard has ended when Close or Detach returns.
package discordgw
