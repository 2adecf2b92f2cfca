package bot

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Event is one gateway dispatch: its t and d, exactly as Discord sent them.
type Event struct {
	Type string          `json:"t"`
	Data json.RawMessage `json:"d"`
	// DeliveryID optionally identifies this delivery stably across replays:
	// "<session_id>:<seq>" (a RESUME replays with the same pair). It is used
	// as the idempotency key of events that carry no id of their own
	// (GUILD_BAN_ADD/REMOVE, GUILD_MEMBER_REMOVE); with that form two events
	// of one session are known to be distinct, so their order does not
	// matter (see guildstore.AddModAction). Empty is allowed.
	DeliveryID string `json:"delivery_id,omitempty"`
	// ReceivedAt is when the pod first read the dispatch from its session.
	// Set it once, where the event is received, and keep it through holds,
	// forwards and dead letters: time-dependent decisions (is a timeout still
	// active, when was a message deleted, when did a ban happen) use it, so a
	// held event handled late, or a replay, decides as the original would
	// have. Zero: the handler's clock at handling time is used instead.
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// Guild caches GuildOf's answer (0: not computed). Routing computes it
	// once per event; decoding a large payload several times is what a busy
	// pod would otherwise spend its CPU on.
	Guild uint64 `json:"-"`
}

// WithGuild returns ev with its guild cached (left 0 for events without one).
func WithGuild(ev Event) Event {
	if ev.Guild == 0 {
		ev.Guild, _ = GuildOf(ev)
	}
	return ev
}

// Dispatch event names handled by the bot.
const (
	EventMessageCreate     = "MESSAGE_CREATE"
	EventMessageUpdate     = "MESSAGE_UPDATE"
	EventMessageDelete     = "MESSAGE_DELETE"
	EventMessageDeleteBulk = "MESSAGE_DELETE_BULK"
	EventGuildBanAdd       = "GUILD_BAN_ADD"
	EventGuildBanRemove    = "GUILD_BAN_REMOVE"
	EventGuildMemberRemove = "GUILD_MEMBER_REMOVE"
	EventGuildMemberUpdate = "GUILD_MEMBER_UPDATE"
	EventInteractionCreate = "INTERACTION_CREATE"
)

// GuildOf returns the guild an event belongs to, for routing. Guild
// lifecycle events (GUILD_CREATE/UPDATE/DELETE) carry it as d.id, the others
// as d.guild_id. ok is false for events without a guild (DMs, READY, ...).
func GuildOf(ev Event) (guildID uint64, ok bool) {
	if ev.Guild != 0 {
		return ev.Guild, true
	}
	var d struct {
		GuildID string `json:"guild_id"`
		ID      string `json:"id"`
	}
	if len(ev.Data) == 0 || ev.Data[0] != '{' || json.Unmarshal(ev.Data, &d) != nil {
		return 0, false
	}
	s := d.GuildID
	switch ev.Type {
	case "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE":
		s = d.ID
	}
	id, err := parseID(s)
	if err != nil || id == 0 {
		return 0, false
	}
	return id, true
}

// parseID parses a snowflake ("" is 0).
func parseID(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad snowflake %q: %w", s, err)
	}
	return id, nil
}

// discordEpochMS is the first millisecond of 2015, Discord's snowflake epoch.
const discordEpochMS = 1420070400000

// snowflakeTime is the creation time encoded in a snowflake.
func snowflakeTime(id uint64) time.Time {
	return time.UnixMilli(int64(id>>22) + discordEpochMS).UTC()
}

func idString(id uint64) string { return strconv.FormatUint(id, 10) }
