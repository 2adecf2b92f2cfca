package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Write is one fenced mutation: Op applied to Op's guild, carrying the epoch
// under which the caller owns that guild. It is rejected with ErrStaleEpoch if
// the guild's stored epoch is higher; a higher epoch than stored raises it.
type Write struct {
	Epoch uint64
	Op    Op
}

// Op is a mutation of one guild's rows. The set of Ops is closed (this
// package's types); every Op is idempotent, keyed by Discord ids.
type Op interface {
	Guild() uint64
	apply(ctx context.Context, t *wtx) (Outcome, error)
}

// Outcome says what a Write did.
type Outcome struct {
	// Applied is false when the write was a no-op because its effect was
	// already stored (a replay): e.g. a report whose interaction id exists.
	Applied bool
	// Seq is the held-event sequence number assigned by HoldEvent.
	Seq int64
}

// MessageCreate records a message for stats (MESSAGE_CREATE). Key: message id.
// A replay never undoes a later edit or delete.
type MessageCreate struct {
	GuildID, MessageID, ChannelID, AuthorID uint64
	CreatedAt                               time.Time
	ContentLength                           int
}

// MessageEdit records an edit (MESSAGE_UPDATE with edited_timestamp). Edits of
// messages the store never saw are ignored. Only an edit at least as new as the
// stored one changes the row, so replays and reordering converge.
type MessageEdit struct {
	GuildID, MessageID uint64
	EditedAt           time.Time
	ContentLength      int
}

// MessageDelete marks a message deleted (MESSAGE_DELETE / _BULK). The first
// deletion time wins; deletes of unknown messages are ignored.
type MessageDelete struct {
	GuildID, MessageID uint64
	DeletedAt          time.Time
}

// PutSettings replaces the guild's settings (/setup). 0 ids are stored as NULL.
type PutSettings struct {
	GuildID                    uint64
	ModRoleID, ModlogChannelID uint64
	UpdatedAt                  time.Time
}

// AddReport stores a report. Key: Report.ID (the interaction id). A replay is
// a no-op with Applied=false.
type AddReport struct{ Report Report }

// MarkReportPosted records that the report's mod-log message was posted
// (the outbox acknowledgement). Idempotent; first time wins.
type MarkReportPosted struct {
	GuildID, ReportID uint64
	PostedAt          time.Time
}

// AddModAction stores a moderation action.
//
// With a DedupeKey, (guild, DedupeKey) is the exact idempotency key (callers
// derive it from a delivery id such as the gateway's session:seq, or from a
// natural key such as a timeout's end time). Without one (Discord's
// ban/unban/member-remove payloads carry no id or time), the action is
// recorded only if it changes the user's state: a ban or unban only if the
// user's latest ban/unban row is of the other kind, a leave/kick only if the
// user has no leave/kick recorded yet (one per user); the store then
// assigns the key "<kind>:<user>:<n>". That makes replays of the latest state
// no-ops, but a replayed sequence spanning a state flip (ban, unban, ban
// replayed) cannot be told apart from new actions without a delivery id.
type AddModAction struct{ Action ModAction }

// HoldEvent appends an event to the guild's durable held buffer; Outcome.Seq
// is its per-guild sequence number (increasing, never reused).
type HoldEvent struct {
	GuildID    uint64
	Type       string
	Payload    []byte
	ReceivedAt time.Time
}

// DropHeldOp deletes the guild's held events with seq <= UpTo. Idempotent.
type DropHeldOp struct {
	GuildID uint64
	UpTo    int64
}

// unfencedOp marks ops that ignore the epoch: buffering and draining held
// events is safe for any holder (the buffer is replayed through idempotent handlers).
type unfencedOp interface{ unfenced() }

func (HoldEvent) unfenced()  {}
func (DropHeldOp) unfenced() {}

// Action kinds.
const (
	ActionBan     = "ban"
	ActionUnban   = "unban"
	ActionKick    = "kick"
	ActionLeave   = "leave"
	ActionTimeout = "timeout"
)

func (o MessageCreate) Guild() uint64    { return o.GuildID }
func (o MessageEdit) Guild() uint64      { return o.GuildID }
func (o MessageDelete) Guild() uint64    { return o.GuildID }
func (o PutSettings) Guild() uint64      { return o.GuildID }
func (o AddReport) Guild() uint64        { return o.Report.GuildID }
func (o MarkReportPosted) Guild() uint64 { return o.GuildID }
func (o AddModAction) Guild() uint64     { return o.Action.GuildID }
func (o HoldEvent) Guild() uint64        { return o.GuildID }
func (o DropHeldOp) Guild() uint64       { return o.GuildID }

func applied(res sql.Result, err error) (Outcome, error) {
	if err != nil {
		return Outcome{}, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return Outcome{}, err
	}
	return Outcome{Applied: n > 0}, nil
}

func (o MessageCreate) apply(ctx context.Context, t *wtx) (Outcome, error) {
	// The message's immutable facts are (re)written; content_length only
	// while the message was never edited, so a replayed create cannot undo an edit.
	return applied(t.exec(ctx, `INSERT INTO messages (guild_id, message_id, channel_id, author_id, created_at, content_length)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (guild_id, message_id) DO UPDATE SET
			channel_id = excluded.channel_id, author_id = excluded.author_id, created_at = excluded.created_at,
			content_length = CASE WHEN messages.edited_at IS NULL THEN excluded.content_length ELSE messages.content_length END
		WHERE messages.channel_id != excluded.channel_id OR messages.author_id != excluded.author_id
			OR messages.created_at != excluded.created_at
			OR (messages.edited_at IS NULL AND messages.content_length != excluded.content_length)`,
		int64(o.GuildID), int64(o.MessageID), int64(o.ChannelID), int64(o.AuthorID), ms(o.CreatedAt), o.ContentLength))
}

func (o MessageEdit) apply(ctx context.Context, t *wtx) (Outcome, error) {
	return applied(t.exec(ctx, `UPDATE messages SET edited_at = ?, content_length = ?
		WHERE guild_id = ? AND message_id = ? AND (edited_at IS NULL OR edited_at < ? OR (edited_at = ? AND content_length != ?))`,
		ms(o.EditedAt), o.ContentLength, int64(o.GuildID), int64(o.MessageID), ms(o.EditedAt), ms(o.EditedAt), o.ContentLength))
}

func (o MessageDelete) apply(ctx context.Context, t *wtx) (Outcome, error) {
	return applied(t.exec(ctx, `UPDATE messages SET deleted_at = ? WHERE guild_id = ? AND message_id = ? AND deleted_at IS NULL`,
		ms(o.DeletedAt), int64(o.GuildID), int64(o.MessageID)))
}

func (o PutSettings) apply(ctx context.Context, t *wtx) (Outcome, error) {
	return applied(t.exec(ctx, `INSERT INTO guild_settings (guild_id, mod_role_id, modlog_channel_id, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (guild_id) DO UPDATE SET mod_role_id = excluded.mod_role_id,
			modlog_channel_id = excluded.modlog_channel_id, updated_at = excluded.updated_at
		WHERE guild_settings.mod_role_id IS NOT excluded.mod_role_id
			OR guild_settings.modlog_channel_id IS NOT excluded.modlog_channel_id`,
		int64(o.GuildID), nullID(o.ModRoleID), nullID(o.ModlogChannelID), ms(o.UpdatedAt)))
}

func (o AddReport) apply(ctx context.Context, t *wtx) (Outcome, error) {
	r := o.Report
	if r.ID == 0 {
		return Outcome{}, errors.New("report without id (interaction id)")
	}
	var content any
	if r.MessageID != 0 {
		content = r.MessageContent
	}
	return applied(t.exec(ctx, `INSERT INTO reports (id, guild_id, reporter_id, target_user_id, message_id, channel_id,
			message_content, reason, created_at, modlog_channel_id, modlog_posted_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		int64(r.ID), int64(r.GuildID), int64(r.ReporterID), int64(r.TargetUserID), nullID(r.MessageID), nullID(r.ChannelID),
		content, r.Reason, ms(r.CreatedAt), nullID(r.ModlogChannelID), nullMS(r.ModlogPostedAt)))
}

func (o MarkReportPosted) apply(ctx context.Context, t *wtx) (Outcome, error) {
	return applied(t.exec(ctx, `UPDATE reports SET modlog_posted_at = ? WHERE guild_id = ? AND id = ? AND modlog_posted_at IS NULL`,
		ms(o.PostedAt), int64(o.GuildID), int64(o.ReportID)))
}

// overlapWindow bounds how far apart two sessions deliver the same event.
const overlapWindow = 30 * time.Second

func (o AddModAction) apply(ctx context.Context, t *wtx) (Outcome, error) {
	a := o.Action
	switch a.Kind {
	case ActionBan, ActionUnban, ActionKick, ActionLeave, ActionTimeout:
	default:
		return Outcome{}, fmt.Errorf("unknown mod action kind %q", a.Kind)
	}
	key := a.DedupeKey
	if key != "" {
		// A delivery key catches replays of one session. Two sessions on the
		// same shard (a planned handoff overlaps them) deliver the same ban
		// under different keys, so also drop what cannot be a new action: a
		// ban of a user whose last ban-family action is a ban (or unban after
		// unban), or a leave/kick repeated within overlapWindow.
		q := `SELECT kind, created_at FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('ban', 'unban') ORDER BY id DESC LIMIT 1`
		if a.Kind == ActionKick || a.Kind == ActionLeave {
			q = `SELECT kind, created_at FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('leave', 'kick') ORDER BY id DESC LIMIT 1`
		}
		if a.Kind != ActionTimeout {
			var last string
			var at int64
			err := t.queryRow(ctx, q, int64(a.GuildID), int64(a.UserID)).Scan(&last, &at)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return Outcome{}, err
			}
			switch {
			case err != nil:
			case (a.Kind == ActionBan || a.Kind == ActionUnban) && last == a.Kind:
				return Outcome{}, nil
			case (a.Kind == ActionKick || a.Kind == ActionLeave) && ms(a.CreatedAt)-at < overlapWindow.Milliseconds():
				return Outcome{}, nil
			}
		}
	}
	if key == "" {
		var q string
		switch a.Kind {
		case ActionBan, ActionUnban:
			q = `SELECT kind FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('ban', 'unban') ORDER BY id DESC LIMIT 1`
		case ActionKick, ActionLeave:
			q = `SELECT kind FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('leave', 'kick') ORDER BY id DESC LIMIT 1`
		default:
			return Outcome{}, fmt.Errorf("mod action %q needs a dedupe key", a.Kind)
		}
		var last string
		err := t.queryRow(ctx, q, int64(a.GuildID), int64(a.UserID)).Scan(&last)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return Outcome{}, err
		}
		if last == a.Kind || (a.Kind == ActionLeave || a.Kind == ActionKick) && (last == ActionLeave || last == ActionKick) {
			return Outcome{}, nil
		}
		var n int64
		if err := t.queryRow(ctx, `SELECT count(*) FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind = ?`,
			int64(a.GuildID), int64(a.UserID), a.Kind).Scan(&n); err != nil {
			return Outcome{}, err
		}
		key = a.Kind + ":" + strconv.FormatUint(a.UserID, 10) + ":" + strconv.FormatInt(n+1, 10)
	}
	return applied(t.exec(ctx, `INSERT INTO mod_actions (guild_id, kind, user_id, moderator_id, reason, created_at, dedupe_key)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, dedupe_key) DO NOTHING`,
		int64(a.GuildID), a.Kind, int64(a.UserID), nullID(a.ModeratorID), a.Reason, ms(a.CreatedAt), key))
}

func (o HoldEvent) apply(ctx context.Context, t *wtx) (Outcome, error) {
	var seq int64
	if err := t.queryRow(ctx, `INSERT INTO held_cursor (guild_id, last_seq) VALUES (?, 1)
		ON CONFLICT (guild_id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq`, int64(o.GuildID)).Scan(&seq); err != nil {
		return Outcome{}, err
	}
	payload := o.Payload
	if payload == nil {
		payload = []byte{}
	}
	if _, err := t.exec(ctx, `INSERT INTO held_events (guild_id, seq, type, payload, received_at) VALUES (?, ?, ?, ?, ?)`,
		int64(o.GuildID), seq, o.Type, payload, ms(o.ReceivedAt)); err != nil {
		return Outcome{}, err
	}
	return Outcome{Applied: true, Seq: seq}, nil
}

func (o DropHeldOp) apply(ctx context.Context, t *wtx) (Outcome, error) {
	return applied(t.exec(ctx, `DELETE FROM held_events WHERE guild_id = ? AND seq <= ?`, int64(o.GuildID), o.UpTo))
}
