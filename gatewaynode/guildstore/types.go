package guildstore

import "time"

// Settings are a guild's /setup configuration. Zero ids mean "not set".
type Settings struct {
	GuildID         uint64    `json:"guild_id,string"`
	ModRoleID       uint64    `json:"mod_role_id,string,omitempty"`
	ModlogChannelID uint64    `json:"modlog_channel_id,string,omitempty"`
	UpdatedAt       time.Time `json:"updated_at,omitzero"`
}

// Report is a user (or message) report. ID is the interaction id that created it.
type Report struct {
	ID              uint64    `json:"id,string"`
	GuildID         uint64    `json:"guild_id,string"`
	ReporterID      uint64    `json:"reporter_id,string"`
	TargetUserID    uint64    `json:"target_user_id,string"`
	MessageID       uint64    `json:"message_id,string,omitempty"`
	ChannelID       uint64    `json:"channel_id,string,omitempty"`
	MessageContent  string    `json:"message_content,omitempty"` // snapshot of the reported message
	Reason          string    `json:"reason"`
	CreatedAt       time.Time `json:"created_at"`
	ModlogChannelID uint64    `json:"modlog_channel_id,string,omitempty"` // where the report is/was to be posted
	ModlogPostedAt  time.Time `json:"modlog_posted_at,omitzero"`          // zero: not yet acknowledged as posted
}

// ModAction is a moderation action seen on the gateway.
type ModAction struct {
	GuildID     uint64    `json:"guild_id,string"`
	Kind        string    `json:"kind"` // ActionBan, ActionUnban, ActionKick, ActionLeave, ActionTimeout
	UserID      uint64    `json:"user_id,string"`
	ModeratorID uint64    `json:"moderator_id,string,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	DedupeKey   string    `json:"dedupe_key,omitempty"`
}

// HeldEvent is an event this pod buffered (its guild migrating, its owner
// unreachable) and still has to deliver. It belongs to the pod, not to the
// guild's data.
type HeldEvent struct {
	GuildID    uint64    `json:"guild_id,string"`
	Seq        int64     `json:"seq"`
	Type       string    `json:"type"`
	Payload    []byte    `json:"payload"`
	ReceivedAt time.Time `json:"received_at"`
}

// IDCount is a ranked id with a message count (top channels / authors).
type IDCount struct {
	ID       uint64 `json:"id,string"`
	Messages int64  `json:"messages"`
}

// Dashboard is a guild's activity summary.
type Dashboard struct {
	GuildID         uint64 `json:"guild_id,string"`
	Epoch           uint64 `json:"epoch"`
	Messages        int64  `json:"messages"` // not deleted
	MessagesDeleted int64  `json:"messages_deleted"`
	MessagesEdited  int64  `json:"messages_edited"`
	// MessagesLast24h counts live messages created in the current UTC hour
	// and the 23 before it (hour resolution: the hourly rollup), or later.
	MessagesLast24h  int64            `json:"messages_last_24h"`
	Reports          int64            `json:"reports"`
	ModActions       int64            `json:"mod_actions"`
	ModActionsByKind map[string]int64 `json:"mod_actions_by_kind"`
	HeldEvents       int64            `json:"held_events"` // this pod's held events for the guild (not guild data)
	TopChannels      []IDCount        `json:"top_channels"`
	TopAuthors       []IDCount        `json:"top_authors"`
	RecentReports    []Report         `json:"recent_reports"`
	RecentActions    []ModAction      `json:"recent_actions"`
	Settings         Settings         `json:"settings"`
	Activity         Activity         `json:"activity"`
}

// DeadLetter is an event whose handler kept failing (with an error other than
// a stale epoch), kept durably until an operator replays or discards it.
type DeadLetter struct {
	ID         int64     `json:"id"` // local to this pod
	GuildID    uint64    `json:"guild_id,string"`
	Type       string    `json:"type"`
	Payload    []byte    `json:"payload"` // the dispatch's d, as received
	DeliveryID string    `json:"delivery_id,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitzero"` // when the pod received it (zero: unknown)
	// Error is the last failure's message.
	Error string `json:"error"`
	// Attempts counts every handling that failed, over all rounds.
	Attempts      int       `json:"attempts"`
	FirstFailedAt time.Time `json:"first_failed_at"`
	LastFailedAt  time.Time `json:"last_failed_at"`
}
