// Package bot is the moderation bot's per-guild behaviour, without network:
// a pure function of (gateway dispatch, current store state) to (store
// writes, interaction response, outbound REST effects).
//
// The caller (the gateway pod) feeds each dispatch's t and d as an Event,
// routes it by GuildOf, performs the returned PostMessage effects through
// Discord REST and answers interactions with Result.Response.
//
// Invariants:
//   - Idempotency: every event maps to writes keyed by Discord ids (message
//     id, interaction id = report id, timeout end, delivery id for bans and
//     member removals; see guildstore), so replaying any event adds no rows.
//     A replayed report interaction returns Duplicate=true and no new post
//     once the first post was acknowledged (AckPosted); until then the post
//     is re-emitted with the same Nonce (an outbox: at-least-once posting,
//     deduplicated by Discord's enforce_nonce within its window).
//   - Fencing: every write carries the caller's epoch for the guild; a stale
//     owner's writes fail with guildstore.ErrStaleEpoch and change nothing.
//   - Read-your-writes: interactions read settings/history from the store
//     after all earlier events of the batch were committed.
//   - Ignored on purpose: messages from bots and webhooks (stats are about
//     people, and the bot's own mod-log posts would count), DMs, message
//     updates without edited_timestamp (embed unfurls).
package bot
