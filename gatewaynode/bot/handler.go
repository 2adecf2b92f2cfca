package bot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// Store is what the bot needs from guildstore (*guildstore.Store implements it).
type Store interface {
	ApplyBatch(ctx context.Context, units [][]guildstore.Write) ([]guildstore.UnitResult, error)
	Settings(ctx context.Context, guildID uint64) (guildstore.Settings, error)
	Report(ctx context.Context, guildID, reportID uint64) (guildstore.Report, bool, error)
	ReportsForUser(ctx context.Context, guildID, userID uint64) ([]guildstore.Report, error)
	UnpostedReports(ctx context.Context, guildID uint64, before time.Time, limit int) ([]guildstore.Report, error)
}

var _ Store = (*guildstore.Store)(nil)

// Handler interprets events for the guilds this pod owns.
type Handler struct {
	Store Store
	Log   *slog.Logger     // default slog.Default()
	Now   func() time.Time // default time.Now
}

// Input is one event with the epoch under which the caller owns its guild.
type Input struct {
	Event Event
	Epoch uint64
}

// PostMessage is an outbound REST effect: create a message in ChannelID
// (POST /channels/{id}/messages). Send Nonce with enforce_nonce=true so
// Discord drops a repeat; after a successful post of a report, call
// Handler.AckPosted so replays stop re-emitting it.
type PostMessage struct {
	ChannelID       uint64
	Content         string
	Embeds          []*discordgo.MessageEmbed
	AllowedMentions *discordgo.MessageAllowedMentions
	Nonce           string
	ReportID        uint64 // set for mod-log report posts (for AckPosted)
}

// ErrMalformedEvent marks a per-event error caused by the event itself (it
// does not decode, lacks a required id): handling it again fails the same
// way, so a caller dead-letters it at once instead of retrying.
var ErrMalformedEvent = errors.New("malformed event")

func malformed(err error) error { return fmt.Errorf("%w: %w", ErrMalformedEvent, err) }

// Result is what handling one event produced.
type Result struct {
	// Event is the event this result is for, exactly as it was passed in, so
	// a failed one (Err != nil) can be retried or dead-lettered as it is
	// (see NewDeadLetter).
	Event   Event
	GuildID uint64
	// Response answers an INTERACTION_CREATE (nil for other events).
	Response *discordgo.InteractionResponse
	// Posts are REST effects to perform, in order.
	Posts []PostMessage
	// Applied is true if the event changed stored state.
	Applied bool
	// Duplicate is true if the event was a replay of one already handled.
	Duplicate bool
	// Ignored is true for events the bot does not act on.
	Ignored bool
	// Err is the per-event error in HandleBatch (Handle returns it as its
	// error too). It wraps guildstore.ErrStaleEpoch when the guild moved on
	// (hold the event for the new owner: not a failure), ErrMalformedEvent
	// when retrying cannot help, and otherwise a store failure that a retry
	// may fix. The event's writes were rolled back in every case.
	Err error
}

// NewDeadLetter is the dead letter of an event that failed attempts times
// with err (the last failure, at failedAt): what guildstore.AddDeadLetter
// stores. EventFromDeadLetter gives the event back for a replay.
func NewDeadLetter(ev Event, err error, attempts int, failedAt time.Time) guildstore.DeadLetter {
	g, _ := GuildOf(ev)
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	return guildstore.DeadLetter{GuildID: g, Type: ev.Type, Payload: ev.Data, DeliveryID: ev.DeliveryID, ReceivedAt: ev.ReceivedAt,
		Error: msg, Attempts: attempts, FirstFailedAt: failedAt, LastFailedAt: failedAt}
}

// EventFromDeadLetter is the event a dead letter holds, ready to be routed
// and handled again.
func EventFromDeadLetter(d guildstore.DeadLetter) Event {
	return Event{Type: d.Type, Data: d.Payload, DeliveryID: d.DeliveryID, ReceivedAt: d.ReceivedAt, Guild: d.GuildID}
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// at is the time of ev for time-dependent decisions: when it was received,
// or now if the caller did not say.
func (h *Handler) at(ev Event) time.Time {
	if !ev.ReceivedAt.IsZero() {
		return ev.ReceivedAt
	}
	return h.now()
}

func (h *Handler) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}

// Handle processes one event: commits its writes (fenced by epoch) and
// returns the response and effects. Errors wrap guildstore.ErrStaleEpoch when
// the guild has moved on to a newer owner.
func (h *Handler) Handle(ctx context.Context, ev Event, epoch uint64) (Result, error) {
	res, err := h.HandleBatch(ctx, []Input{{Event: ev, Epoch: epoch}})
	if err != nil {
		return Result{}, err
	}
	return res[0], res[0].Err
}

// HandleBatch processes events in order, committing the writes of
// consecutive non-interaction events in one group commit (each event its own
// atomic unit). An interaction first flushes the writes before it, so it reads
// its guild's state as of every earlier event. Per-event failures are in
// Result.Err; the error return is for failures of the whole batch.
func (h *Handler) HandleBatch(ctx context.Context, items []Input) ([]Result, error) {
	results := make([]Result, len(items))
	var units [][]guildstore.Write
	var unitIdx []int
	flush := func() error {
		if len(units) == 0 {
			return nil
		}
		ur, err := h.Store.ApplyBatch(ctx, units)
		if err != nil {
			return fmt.Errorf("apply %d events: %w", len(units), err)
		}
		for k, u := range ur {
			r := &results[unitIdx[k]]
			if u.Err != nil {
				r.Err = u.Err
				continue
			}
			for _, o := range u.Outcomes {
				r.Applied = r.Applied || o.Applied
			}
			r.Duplicate = !r.Applied
		}
		units, unitIdx = units[:0], unitIdx[:0]
		return nil
	}
	for i, in := range items {
		g, _ := GuildOf(in.Event)
		results[i].Event, results[i].GuildID = in.Event, g
		if in.Event.Type == EventInteractionCreate {
			if err := flush(); err != nil {
				return nil, err
			}
			r, err := h.interaction(ctx, in.Event, in.Epoch)
			if err != nil {
				r.Err = fmt.Errorf("%s in guild %d: %w", in.Event.Type, g, err)
			}
			r.Event, r.GuildID = in.Event, g
			results[i] = r
			continue
		}
		ops, err := h.interpret(in.Event)
		if err != nil {
			results[i].Err = fmt.Errorf("%s in guild %d: %w", in.Event.Type, g, err)
			continue
		}
		if len(ops) == 0 {
			results[i].Ignored = true
			continue
		}
		unit := make([]guildstore.Write, len(ops))
		for k, op := range ops {
			unit[k] = guildstore.Write{Epoch: in.Epoch, Op: op}
		}
		units = append(units, unit)
		unitIdx = append(unitIdx, i)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return results, nil
}

// AckPosted records that a report's mod-log post was delivered, so replays of
// the report no longer re-emit it.
func (h *Handler) AckPosted(ctx context.Context, guildID, reportID, epoch uint64) error {
	ur, err := h.Store.ApplyBatch(ctx, [][]guildstore.Write{{{Epoch: epoch,
		Op: guildstore.MarkReportPosted{GuildID: guildID, ReportID: reportID, PostedAt: h.now()}}}})
	if err == nil {
		err = ur[0].Err
	}
	if err != nil {
		return fmt.Errorf("ack mod-log post of report %d in guild %d: %w", reportID, guildID, err)
	}
	return nil
}

// interpret maps a non-interaction event to its store ops (none: ignored).
// messageStats is the part of a MESSAGE_CREATE the statistics use.
type messageStats struct {
	ID        string    `json:"id"`
	GuildID   string    `json:"guild_id"`
	ChannelID string    `json:"channel_id"`
	WebhookID string    `json:"webhook_id"`
	Content   string    `json:"content"`
	Timestamp time.Time `json:"timestamp"`
	Author    *struct {
		ID  string `json:"id"`
		Bot bool   `json:"bot"`
	} `json:"author"`
}

func (h *Handler) interpret(ev Event) ([]guildstore.Op, error) {
	switch ev.Type {
	case EventMessageCreate:
		// The hottest event: decode only the fields the stats need (the
		// whole discordgo.Message costs several times more).
		var m messageStats
		if err := json.Unmarshal(ev.Data, &m); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		if m.GuildID == "" || m.Author == nil || m.Author.Bot || m.WebhookID != "" {
			return nil, nil
		}
		ids, err := parseIDs(m.GuildID, m.ID, m.ChannelID, m.Author.ID)
		if err != nil {
			return nil, malformed(err)
		}
		created := m.Timestamp
		if created.IsZero() {
			created = snowflakeTime(ids[1])
		}
		return []guildstore.Op{guildstore.MessageCreate{GuildID: ids[0], MessageID: ids[1], ChannelID: ids[2], AuthorID: ids[3],
			CreatedAt: created, ContentLength: utf8.RuneCountInString(m.Content)}}, nil
	case EventMessageUpdate:
		var m discordgo.Message
		if err := json.Unmarshal(ev.Data, &m); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		if m.GuildID == "" || m.EditedTimestamp == nil || (m.Author != nil && m.Author.Bot) {
			return nil, nil
		}
		ids, err := parseIDs(m.GuildID, m.ID)
		if err != nil {
			return nil, malformed(err)
		}
		return []guildstore.Op{guildstore.MessageEdit{GuildID: ids[0], MessageID: ids[1], EditedAt: *m.EditedTimestamp,
			ContentLength: utf8.RuneCountInString(m.Content)}}, nil
	case EventMessageDelete:
		var m discordgo.Message
		if err := json.Unmarshal(ev.Data, &m); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		if m.GuildID == "" {
			return nil, nil
		}
		ids, err := parseIDs(m.GuildID, m.ID)
		if err != nil {
			return nil, malformed(err)
		}
		return []guildstore.Op{guildstore.MessageDelete{GuildID: ids[0], MessageID: ids[1], DeletedAt: h.at(ev)}}, nil
	case EventMessageDeleteBulk:
		var d discordgo.MessageDeleteBulk
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		if d.GuildID == "" {
			return nil, nil
		}
		ids, err := parseIDs(append([]string{d.GuildID}, d.Messages...)...)
		if err != nil {
			return nil, malformed(err)
		}
		now := h.at(ev)
		ops := make([]guildstore.Op, 0, len(d.Messages))
		for _, id := range ids[1:] {
			ops = append(ops, guildstore.MessageDelete{GuildID: ids[0], MessageID: id, DeletedAt: now})
		}
		return ops, nil
	case EventGuildBanAdd, EventGuildBanRemove, EventGuildMemberRemove:
		var d struct {
			GuildID string          `json:"guild_id"`
			User    *discordgo.User `json:"user"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		if d.User == nil {
			return nil, malformed(errors.New("event without user"))
		}
		ids, err := parseIDs(d.GuildID, d.User.ID)
		if err != nil {
			return nil, malformed(err)
		}
		kind := map[string]string{EventGuildBanAdd: guildstore.ActionBan, EventGuildBanRemove: guildstore.ActionUnban,
			EventGuildMemberRemove: guildstore.ActionLeave}[ev.Type]
		a := guildstore.ModAction{GuildID: ids[0], Kind: kind, UserID: ids[1], CreatedAt: h.at(ev)}
		if ev.DeliveryID != "" {
			a.DedupeKey = kind + ":" + idString(ids[1]) + ":" + ev.DeliveryID
		}
		return []guildstore.Op{guildstore.AddModAction{Action: a}}, nil
	case EventGuildMemberUpdate:
		var m discordgo.Member
		if err := json.Unmarshal(ev.Data, &m); err != nil {
			return nil, malformed(fmt.Errorf("decode: %w", err))
		}
		// Judged at receipt: a held event handled after the timeout ended
		// still records it.
		at := h.at(ev)
		if m.User == nil || m.CommunicationDisabledUntil == nil || !m.CommunicationDisabledUntil.After(at) {
			return nil, nil
		}
		ids, err := parseIDs(m.GuildID, m.User.ID)
		if err != nil {
			return nil, malformed(err)
		}
		until := m.CommunicationDisabledUntil.UTC()
		return []guildstore.Op{guildstore.AddModAction{Action: guildstore.ModAction{GuildID: ids[0], Kind: guildstore.ActionTimeout,
			UserID: ids[1], CreatedAt: at, Reason: "timed out until " + until.Format(time.RFC3339),
			DedupeKey: "timeout:" + idString(ids[1]) + ":" + strconv.FormatInt(until.UnixMilli(), 10)}}}, nil
	}
	return nil, nil
}

func parseIDs(ss ...string) ([]uint64, error) {
	out := make([]uint64, len(ss))
	for i, s := range ss {
		id, err := parseID(s)
		if err != nil {
			return nil, err
		}
		if id == 0 {
			return nil, fmt.Errorf("missing snowflake (field %d)", i)
		}
		out[i] = id
	}
	return out, nil
}

// PendingPosts are the mod-log posts of the guild's reports created before
// before that were never acknowledged (AckPosted): a post that failed, or
// that its pod died before acknowledging. Posting them again is safe: they
// carry the same Nonce as the first attempt.
func (h *Handler) PendingPosts(ctx context.Context, guildID uint64, before time.Time, limit int) ([]PostMessage, error) {
	rs, err := h.Store.UnpostedReports(ctx, guildID, before, limit)
	if err != nil {
		return nil, err
	}
	posts := make([]PostMessage, len(rs))
	for i, r := range rs {
		posts[i] = modlogPost(r)
	}
	return posts, nil
}
