// Package bot is the moderation bot's per-guild behaviour, without network:
// a pure function of (gateway dispatch, current store state) to (store
// writes, interaction response, outbound REST effects).
//
// The caller (the gateway pod) feeds each dispatch's t and d as an Event —
// with its delivery id and the time it was received — routes it by GuildOf,
// performs the returned PostMessage effects through Discord REST and answers
// interactions with Result.Response.
//
// # Invariants
//
// Each is checked by the tests named after it (bot_test.go, order_test.go).
//
//   - Idempotent handlers (TestReplayingABatchChangesNothing,
//     TestReportPostsToModlogOnceEvenWhenReplayed): every event maps to
//     writes keyed by Discord ids, so replaying any event adds no rows. The
//     keys, per event:
//     MESSAGE_CREATE, MESSAGE_UPDATE, MESSAGE_DELETE(_BULK): (guild, message id);
//     INTERACTION_CREATE /setup: (guild, field), versioned by the interaction id;
//     /report and the Report message command: the interaction id (= report id);
//     GUILD_BAN_ADD/REMOVE, GUILD_MEMBER_REMOVE: "<kind>:<user>:<delivery id>"
//     (Discord gives them no id; without a delivery id, the user's state
//     change, see guildstore.AddModAction);
//     GUILD_MEMBER_UPDATE timeouts: "timeout:<user>:<until>".
//     A replayed report returns Duplicate=true and no new post once the first
//     post was acknowledged (AckPosted); until then the post is re-emitted
//     with the same Nonce (an outbox: at-least-once posting, deduplicated by
//     Discord's enforce_nonce within its window).
//   - Order-independent handlers (TestHandlersConvergeInAnyArrivalOrder): a
//     guild's stored state converges to the same rows whatever order its
//     events arrive in — a replayed webhook, a held event delivered late, a
//     RESUME replay — because no write depends on what arrived before it:
//     /setup fields keep the value of the newest interaction that set each
//     (TestOlderSetupNeverOverwritesNewer,
//     TestOlderSetupStillSetsFieldsTheNewerLeftAlone); the newest edit of a
//     message wins (by edited_timestamp) and the earliest delete; a delete
//     or edit of a message not seen yet is recorded (a tombstone) and applied
//     by its create (TestDeleteBeforeCreateStaysDeleted); bans, unbans and
//     leaves of one session are distinct by their seq, so their set does not
//     depend on their order (across two overlapping sessions, during a
//     handoff, a duplicate is recognised by the user's state instead, which
//     is order-dependent only for a ban↔unban flip of one user reordered
//     within that overlap); time-dependent decisions use Event.ReceivedAt,
//     not the handling time (TestLateTimeoutIsJudgedAtReceipt).
//     Deliberately not: an interaction is answered — and a report posted to
//     the mod-log channel — from the state committed when it is handled. The
//     report row records that decision (its mod-log channel), written once
//     and repeated on replays; a /setup handled after a newer report does
//     not post it retroactively. Reports have no resolution state, and
//     AckPosted keeps the earliest posted time.
//   - Fencing (TestStaleEpochWriteIsRejected): every write carries the
//     caller's epoch for the guild; a stale owner's writes fail with
//     guildstore.ErrStaleEpoch and change nothing.
//   - No failure is silent (TestFailedEventCanBeDeadLetteredAndReplayed):
//     every Result carries its Event and, on failure, Err; the event's writes
//     were rolled back, so it can be retried, held (ErrStaleEpoch) or
//     dead-lettered (NewDeadLetter; ErrMalformedEvent: retrying cannot help)
//     and replayed later (EventFromDeadLetter) with the same effect.
//   - Read-your-writes: interactions read settings/history from the store
//     after all earlier events of the batch were committed.
//   - Held events belong to the pod that received them
//     (TestMigrationLeavesHeldEventsWithTheReceivingPod): a move's export
//     carries the guild's data only; each pod delivers the events it holds.
//   - Ignored on purpose: messages from bots and webhooks (stats are about
//     people, and the bot's own mod-log posts would count), DMs, message
//     updates without edited_timestamp (embed unfurls).
package bot
