package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
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
// A replay never undoes a later edit or delete, and an edit or delete handled
// before the create (parked in unseen_messages) is applied to the new row, so
// the row is the same whatever order the three arrived in.
type MessageCreate struct {
	GuildID, MessageID, ChannelID, AuthorID uint64
	CreatedAt                               time.Time
	ContentLength                           int
}

// MessageEdit records an edit (MESSAGE_UPDATE with edited_timestamp). The
// newest edit wins: an edit changes the row only if its EditedAt is later than
// the stored one, or equal with a larger ContentLength (a deterministic tie
// break), so replays and reordering converge. An edit of a message whose
// create was not handled yet is parked in unseen_messages for the create.
type MessageEdit struct {
	GuildID, MessageID uint64
	EditedAt           time.Time
	ContentLength      int
}

// MessageDelete marks a message deleted (MESSAGE_DELETE / _BULK). The
// earliest DeletedAt wins (Discord's payload has no time: it is the receipt
// time), so replays converge. A delete of a message whose create was not
// handled yet records a tombstone in unseen_messages: the create, when it
// comes, stores the message as deleted.
type MessageDelete struct {
	GuildID, MessageID uint64
	DeletedAt          time.Time
}

// PutSettings sets guild settings (/setup). Each field is a last-writer-wins
// register ordered by Version, not by arrival: a field changes only if
// Version is higher than the version that set its stored value (or equal with
// a larger id, a deterministic tie break), so an older /setup handled after a
// newer one changes nothing the newer one set, yet still sets a field the
// newer one left alone. A zero id leaves its field as it is (the /setup
// option was omitted); settings cannot be cleared. updated_at becomes the
// latest UpdatedAt of the writes that changed something.
type PutSettings struct {
	GuildID                    uint64
	ModRoleID, ModlogChannelID uint64 // 0: not set by this write
	// Version orders settings writes: the /setup interaction's id (a
	// snowflake, so it sorts by creation time). Required.
	Version   uint64
	UpdatedAt time.Time
}

// AddReport stores a report. Key: Report.ID (the interaction id). A replay is
// a no-op with Applied=false.
type AddReport struct{ Report Report }

// MarkReportPosted records that the report's mod-log message was posted
// (the outbox acknowledgement). Idempotent; the earliest PostedAt wins.
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
//
// Delivery keys have the form "<kind>:<user>:<session>:<seq>". Two keys of
// the same session are always two distinct actions (a replay within a
// session repeats the key), so the state rule above, which catches the same
// action delivered by two overlapping sessions, is applied only against an
// action of another session. Within one session the stored set of actions is
// therefore the set of distinct keys, whatever order they arrived in.
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
	// An edit or delete handled before this create was parked; take it over.
	var edited, deleted sql.NullInt64
	var editLen int64
	early := false
	if t.w.unseen[o.GuildID] {
		err := t.queryRow(ctx, `DELETE FROM unseen_messages WHERE guild_id = ? AND message_id = ?
			RETURNING edited_at, content_length, deleted_at`, int64(o.GuildID), int64(o.MessageID)).Scan(&edited, &editLen, &deleted)
		early = err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return Outcome{}, fmt.Errorf("read unseen message: %w", err)
		}
	}
	// The message's immutable facts are (re)written; content_length only
	// while the message was never edited, so a replayed create cannot undo an edit.
	out, err := createRow(ctx, t, o)
	if err != nil || !early {
		return out, err
	}
	if edited.Valid {
		if _, err := editRow(ctx, t, o.GuildID, o.MessageID, edited.Int64, editLen); err != nil {
			return Outcome{}, fmt.Errorf("apply the edit seen before the create: %w", err)
		}
	}
	if deleted.Valid {
		if _, err := deleteRow(ctx, t, o.GuildID, o.MessageID, deleted.Int64); err != nil {
			return Outcome{}, fmt.Errorf("apply the delete seen before the create: %w", err)
		}
	}
	return Outcome{Applied: true}, nil
}

// createRow inserts the message's row, or on a replay rewrites the facts
// that differ (channel, author, created_at; content_length while never
// edited), recording the row's rollup change either way.
func createRow(ctx context.Context, t *wtx, o MessageCreate) (Outcome, error) {
	g, m, ch, au, at := int64(o.GuildID), int64(o.MessageID), int64(o.ChannelID), int64(o.AuthorID), ms(o.CreatedAt)
	n, err := rowsChanged(t.exec(ctx, `INSERT INTO messages (guild_id, message_id, channel_id, author_id, created_at, content_length)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, message_id) DO NOTHING`, g, m, ch, au, at, o.ContentLength))
	if err != nil {
		return Outcome{}, fmt.Errorf("insert message: %w", err)
	}
	if n > 0 {
		t.msgAdded(msgRow{guild: g, channel: ch, author: au, createdAt: at, live: true})
		return Outcome{Applied: true}, nil
	}
	// A replay (or a create whose facts changed): the stored row stays but
	// for what differs.
	old := msgRow{guild: g}
	if err := t.queryRow(ctx, `SELECT channel_id, author_id, created_at, deleted_at IS NULL, edited_at IS NOT NULL
		FROM messages WHERE guild_id = ? AND message_id = ?`, g, m).Scan(&old.channel, &old.author, &old.createdAt, &old.live, &old.edited); err != nil {
		return Outcome{}, fmt.Errorf("read the stored message: %w", err)
	}
	n, err = rowsChanged(t.exec(ctx, `UPDATE messages SET channel_id = ?1, author_id = ?2, created_at = ?3,
			content_length = CASE WHEN edited_at IS NULL THEN ?4 ELSE content_length END
		WHERE guild_id = ?5 AND message_id = ?6 AND (channel_id != ?1 OR author_id != ?2 OR created_at != ?3
			OR (edited_at IS NULL AND content_length != ?4))`, ch, au, at, o.ContentLength, g, m))
	if err != nil {
		return Outcome{}, fmt.Errorf("update the stored message: %w", err)
	}
	if n > 0 {
		t.msgRemoved(old)
		t.msgAdded(msgRow{guild: g, channel: ch, author: au, createdAt: at, live: old.live, edited: old.edited})
	}
	return Outcome{Applied: n > 0}, nil
}

// editRow applies an edit to a stored message: the newest edit wins, ties
// broken by the larger content length. It returns the rows changed.
func editRow(ctx context.Context, t *wtx, guildID, messageID uint64, editedAt, contentLength int64) (int64, error) {
	// The first edit makes the message count as edited.
	r := msgRow{guild: int64(guildID)}
	err := t.queryRow(ctx, `UPDATE messages SET edited_at = ?1, content_length = ?2
		WHERE guild_id = ?3 AND message_id = ?4 AND edited_at IS NULL
		RETURNING channel_id, author_id, created_at, deleted_at IS NULL`,
		editedAt, contentLength, int64(guildID), int64(messageID)).Scan(&r.channel, &r.author, &r.createdAt, &r.live)
	if err == nil {
		t.msgRemoved(r)
		r.edited = true
		t.msgAdded(r)
		return 1, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("first edit: %w", err)
	}
	return rowsChanged(t.exec(ctx, `UPDATE messages SET edited_at = ?1, content_length = ?2
		WHERE guild_id = ?3 AND message_id = ?4
			AND edited_at IS NOT NULL AND (edited_at < ?1 OR (edited_at = ?1 AND content_length < ?2))`,
		editedAt, contentLength, int64(guildID), int64(messageID)))
}

// deleteRow marks a stored message deleted: the earliest time wins.
func deleteRow(ctx context.Context, t *wtx, guildID, messageID uint64, deletedAt int64) (int64, error) {
	// The first delete takes the message out of the live counts.
	r := msgRow{guild: int64(guildID), live: true}
	err := t.queryRow(ctx, `UPDATE messages SET deleted_at = ?1
		WHERE guild_id = ?2 AND message_id = ?3 AND deleted_at IS NULL
		RETURNING channel_id, author_id, created_at, edited_at IS NOT NULL`,
		deletedAt, int64(guildID), int64(messageID)).Scan(&r.channel, &r.author, &r.createdAt, &r.edited)
	if err == nil {
		t.msgRemoved(r)
		r.live = false
		t.msgAdded(r)
		return 1, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("first delete: %w", err)
	}
	return rowsChanged(t.exec(ctx, `UPDATE messages SET deleted_at = ?1
		WHERE guild_id = ?2 AND message_id = ?3 AND deleted_at > ?1`,
		deletedAt, int64(guildID), int64(messageID)))
}

// messageSeen reports whether the message has a row (its create was handled).
func messageSeen(ctx context.Context, t *wtx, guildID, messageID uint64) (bool, error) {
	var one int
	err := t.queryRow(ctx, `SELECT 1 FROM messages WHERE guild_id = ? AND message_id = ?`, int64(guildID), int64(messageID)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up message: %w", err)
	}
	return true, nil
}

func rowsChanged(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (o MessageEdit) apply(ctx context.Context, t *wtx) (Outcome, error) {
	n, err := editRow(ctx, t, o.GuildID, o.MessageID, ms(o.EditedAt), int64(o.ContentLength))
	if err != nil || n > 0 {
		return Outcome{Applied: n > 0}, err
	}
	if seen, err := messageSeen(ctx, t, o.GuildID, o.MessageID); err != nil || seen {
		return Outcome{}, err // seen: the stored edit is at least as new
	}
	t.w.unseen[o.GuildID] = true
	return applied(t.exec(ctx, `INSERT INTO unseen_messages (guild_id, message_id, edited_at, content_length) VALUES (?1, ?2, ?3, ?4)
		ON CONFLICT (guild_id, message_id) DO UPDATE SET edited_at = excluded.edited_at, content_length = excluded.content_length
		WHERE unseen_messages.edited_at IS NULL OR unseen_messages.edited_at < excluded.edited_at
			OR (unseen_messages.edited_at = excluded.edited_at AND unseen_messages.content_length < excluded.content_length)`,
		int64(o.GuildID), int64(o.MessageID), ms(o.EditedAt), o.ContentLength))
}

func (o MessageDelete) apply(ctx context.Context, t *wtx) (Outcome, error) {
	n, err := deleteRow(ctx, t, o.GuildID, o.MessageID, ms(o.DeletedAt))
	if err != nil || n > 0 {
		return Outcome{Applied: n > 0}, err
	}
	if seen, err := messageSeen(ctx, t, o.GuildID, o.MessageID); err != nil || seen {
		return Outcome{}, err // seen: already deleted, at an earlier or equal time
	}
	// A tombstone for the create still to come.
	t.w.unseen[o.GuildID] = true
	return applied(t.exec(ctx, `INSERT INTO unseen_messages (guild_id, message_id, deleted_at) VALUES (?1, ?2, ?3)
		ON CONFLICT (guild_id, message_id) DO UPDATE SET deleted_at = excluded.deleted_at
		WHERE unseen_messages.deleted_at IS NULL OR unseen_messages.deleted_at > excluded.deleted_at`,
		int64(o.GuildID), int64(o.MessageID), ms(o.DeletedAt)))
}

// newerSetting is the condition under which PutSettings replaces one stored
// field: a higher version, or the same version with a larger id.
func newerSetting(col string) string {
	return `(excluded.` + col + `_version > guild_settings.` + col + `_version OR (excluded.` + col + `_version != 0
		AND excluded.` + col + `_version = guild_settings.` + col + `_version AND excluded.` + col + `_id > guild_settings.` + col + `_id))`
}

var putSettingsSQL = func() string {
	role, ch := newerSetting("mod_role"), newerSetting("modlog_channel")
	return `INSERT INTO guild_settings (guild_id, mod_role_id, mod_role_version, modlog_channel_id, modlog_channel_version, updated_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (guild_id) DO UPDATE SET
			mod_role_id = CASE WHEN ` + role + ` THEN excluded.mod_role_id ELSE guild_settings.mod_role_id END,
			mod_role_version = CASE WHEN ` + role + ` THEN excluded.mod_role_version ELSE guild_settings.mod_role_version END,
			modlog_channel_id = CASE WHEN ` + ch + ` THEN excluded.modlog_channel_id ELSE guild_settings.modlog_channel_id END,
			modlog_channel_version = CASE WHEN ` + ch + ` THEN excluded.modlog_channel_version ELSE guild_settings.modlog_channel_version END,
			updated_at = max(guild_settings.updated_at, excluded.updated_at)
		WHERE ` + role + ` OR ` + ch
}()

func (o PutSettings) apply(ctx context.Context, t *wtx) (Outcome, error) {
	if o.Version == 0 || o.Version > math.MaxInt64 {
		return Outcome{}, fmt.Errorf("settings write with version %d (want the /setup interaction id)", o.Version)
	}
	if o.ModRoleID == 0 && o.ModlogChannelID == 0 {
		return Outcome{}, nil // sets nothing
	}
	version := func(id uint64) int64 {
		if id == 0 {
			return 0
		}
		return int64(o.Version)
	}
	return applied(t.exec(ctx, putSettingsSQL, int64(o.GuildID), nullID(o.ModRoleID), version(o.ModRoleID),
		nullID(o.ModlogChannelID), version(o.ModlogChannelID), ms(o.UpdatedAt)))
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
	return applied(t.exec(ctx, `UPDATE reports SET modlog_posted_at = ?1
		WHERE guild_id = ?2 AND id = ?3 AND (modlog_posted_at IS NULL OR modlog_posted_at > ?1)`,
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
		// Two keys of one session are two actions: the rule is only for
		// another session's copy of this one.
		q := `SELECT kind, created_at, dedupe_key FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('ban', 'unban') ORDER BY id DESC LIMIT 1`
		if a.Kind == ActionKick || a.Kind == ActionLeave {
			q = `SELECT kind, created_at, dedupe_key FROM mod_actions WHERE guild_id = ? AND user_id = ? AND kind IN ('leave', 'kick') ORDER BY id DESC LIMIT 1`
		}
		if a.Kind != ActionTimeout {
			var last, lastKey string
			var at int64
			err := t.queryRow(ctx, q, int64(a.GuildID), int64(a.UserID)).Scan(&last, &at, &lastKey)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return Outcome{}, err
			}
			switch {
			case err != nil:
			case sameSession(lastKey, key):
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

// keySession is the session part of a delivery key
// "<kind>:<user>:<session>:<seq>" ("" for keys without one, e.g. the
// store-assigned "<kind>:<user>:<n>").
func keySession(key string) string {
	for range 2 {
		_, rest, ok := strings.Cut(key, ":")
		if !ok {
			return ""
		}
		key = rest
	}
	i := strings.LastIndexByte(key, ':')
	if i <= 0 {
		return ""
	}
	return key[:i]
}

func sameSession(a, b string) bool {
	sa := keySession(a)
	return sa != "" && sa == keySession(b)
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
