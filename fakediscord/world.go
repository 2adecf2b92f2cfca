package fakediscord

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Gateway intents (https://discord.com/developers/docs/topics/gateway#gateway-intents).
const (
	IntentGuilds                = 1 << 0
	IntentGuildMembers          = 1 << 1 // privileged
	IntentGuildModeration       = 1 << 2
	IntentGuildMessages         = 1 << 9
	IntentGuildMessageReactions = 1 << 10
	IntentDirectMessages        = 1 << 12
	IntentMessageContent        = 1 << 15 // privileged
)

// Errors returned by the programmatic API (the control API maps them to 404/409).
var (
	ErrUnknownGuild   = errors.New("unknown guild")
	ErrUnknownChannel = errors.New("unknown channel")
	ErrUnknownMessage = errors.New("unknown message")
	ErrUnknownSession = errors.New("unknown session")
	ErrNoSession      = errors.New("no gateway session holds the guild's shard")
)

// Guild is a guild as the control API reports it.
type Guild struct {
	ID       uint64    `json:"-"`
	Name     string    `json:"name"`
	Shard    int       `json:"shard"` // shard for Config.Shards
	Channels []Channel `json:"channels"`
	Roles    []Role    `json:"roles"`
}

// Channel is a guild text channel.
type Channel struct {
	ID   uint64 `json:"-"`
	Name string `json:"name"`
}

type guild struct {
	id       uint64
	name     string
	ownerID  uint64
	channels []Channel
	roles    []Role
	created  time.Time
	bans     map[uint64]string
	// members are the users the fake has seen in the guild (authors,
	// invokers, reactors, the owner); gone are those kicked, banned or left.
	members map[uint64]*member
	gone    map[uint64]bool
	audit   []auditEntry
}

// Role is a guild role.
type Role struct {
	ID          uint64 `json:"-"`
	Name        string `json:"name"`
	Permissions string `json:"permissions"`
}

type member struct {
	joined time.Time
	// patch holds what PATCH /guilds/{gid}/members/{uid} set (nick,
	// communication_disabled_until, roles, …).
	patch map[string]any
}

type message struct {
	id, guildID, channelID, authorID uint64
	content                          string
	bot                              bool
	at                               time.Time
	edited                           *time.Time
	embeds                           json.RawMessage
	flags                            int
	typ                              int    // message type: 0 default, 19 reply, 20/23 interaction responses
	refID                            uint64 // the message replied to (type 19)
	interaction                      map[string]any
}

// CreateGuild creates a guild (id 0 = generate a snowflake) with a #general
// and a #mod-log channel, and sends GUILD_CREATE to its shard's sessions.
// Creating an existing id returns the existing guild.
func (s *Server) CreateGuild(id uint64, name string) Guild {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.createGuildLocked(id, name)
}

func (s *Server) createGuildLocked(id uint64, name string) Guild {
	if id == 0 {
		id = s.ids.nextGuild()
	}
	if g, ok := s.guilds[id]; ok {
		return s.guildView(g)
	}
	if name == "" {
		name = fmt.Sprintf("guild-%d", len(s.guildOrder)+1)
	}
	g := &guild{id: id, name: name, ownerID: s.ids.next(), created: time.Now(), bans: map[uint64]string{},
		members: map[uint64]*member{}, gone: map[uint64]bool{}}
	g.channels = s.pendingChannels
	if g.channels == nil {
		g.channels = []Channel{{ID: s.ids.next(), Name: "general"}, {ID: s.ids.next(), Name: "mod-log"}}
	}
	modRole := s.pendingRole
	if modRole == 0 {
		modRole = s.ids.next()
	}
	g.roles = []Role{{ID: id, Name: "@everyone", Permissions: "1071698660929"}, {ID: modRole, Name: "Moderator", Permissions: "1099511627775"}}
	g.members[g.ownerID] = &member{joined: g.created}
	g.members[s.appID] = &member{joined: g.created}
	s.guilds[id] = g
	s.guildOrder = append(s.guildOrder, id)
	s.dispatchLocked(id, "GUILD_CREATE", s.guildCreatePayload(g), 0)
	return s.guildView(g)
}

// seedBaseMS is the snowflake timestamp (ms since the Discord epoch,
// 2023-01-01) of the first seeded guild.
const seedBaseMS = 252_460_800_000

// Seed creates n guilds with consecutive snowflake timestamps, so they spread
// evenly over any shard count; each has a couple of channels. Seeded ids are
// deterministic — the k-th seeded guild always has the same id and channel
// ids — so a fake that restarts (modbot dev restarts a dead child, or is run
// again on the same state) serves the same guilds.
func (s *Server) Seed(n int) []Guild {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Guild, 0, n)
	for i := 0; i < n; i++ {
		id := uint64(seedBaseMS+s.seeded)<<22 | 1<<17 | 1<<12
		s.seeded++
		if _, ok := s.guilds[id]; !ok {
			s.pendingChannels = []Channel{{ID: id + 1, Name: "general"}, {ID: id + 2, Name: "mod-log"}}
			s.pendingRole = id + 3
		}
		out = append(out, s.createGuildLocked(id, fmt.Sprintf("guild-%d", s.seeded)))
		s.pendingChannels, s.pendingRole = nil, 0
	}
	return out
}

// Guilds lists all guilds in creation order.
func (s *Server) Guilds() []Guild {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Guild, 0, len(s.guildOrder))
	for _, id := range s.guildOrder {
		out = append(out, s.guildView(s.guilds[id]))
	}
	return out
}

// Guild returns one guild.
func (s *Server) Guild(id uint64) (Guild, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.guilds[id]
	if !ok {
		return Guild{}, false
	}
	return s.guildView(g), true
}

func (s *Server) guildView(g *guild) Guild {
	return Guild{ID: g.id, Name: g.name, Shard: ShardFor(g.id, s.cfg.Shards), Channels: append([]Channel(nil), g.channels...),
		Roles: append([]Role(nil), g.roles...)}
}

func (g *guild) channel(id uint64) bool {
	for _, c := range g.channels {
		if c.ID == id {
			return true
		}
	}
	return false
}

func (s *Server) channelGuildLocked(channelID uint64) *guild {
	for _, id := range s.guildOrder {
		if g := s.guilds[id]; g.channel(channelID) {
			return g
		}
	}
	return nil
}

// SendMessage posts a message as user authorID (0 = a generated user) in a
// guild channel (0 = the guild's first channel) and dispatches MESSAGE_CREATE.
func (s *Server) SendMessage(guildID, channelID, authorID uint64, content string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.createMessageLocked(guildID, channelID, authorID, content, false)
	if err != nil {
		return 0, err
	}
	return m.id, nil
}

func (s *Server) createMessageLocked(guildID, channelID, authorID uint64, content string, bot bool) (*message, error) {
	g, ok := s.guilds[guildID]
	if !ok {
		return nil, fmt.Errorf("guild %d: %w", guildID, ErrUnknownGuild)
	}
	if channelID == 0 {
		channelID = g.channels[0].ID
	} else if !g.channel(channelID) {
		return nil, fmt.Errorf("channel %d in guild %d: %w", channelID, guildID, ErrUnknownChannel)
	}
	if authorID == 0 {
		authorID = 100000000000000000 + uint64(len(s.messages)%50)
	}
	m := &message{id: s.ids.next(), guildID: guildID, channelID: channelID, authorID: authorID, content: content, bot: bot, at: time.Now()}
	s.messages[m.id] = m
	g.join(authorID, m.at)
	s.dispatchMessageLocked("MESSAGE_CREATE", m)
	return m, nil
}

func (s *Server) messageLocked(guildID, messageID uint64) (*message, error) {
	if _, ok := s.guilds[guildID]; !ok {
		return nil, fmt.Errorf("guild %d: %w", guildID, ErrUnknownGuild)
	}
	m, ok := s.messages[messageID]
	if !ok || m.guildID != guildID {
		return nil, fmt.Errorf("message %d in guild %d: %w", messageID, guildID, ErrUnknownMessage)
	}
	return m, nil
}

// EditMessage changes a message's content and dispatches MESSAGE_UPDATE.
func (s *Server) EditMessage(guildID, messageID uint64, content string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.messageLocked(guildID, messageID)
	if err != nil {
		return err
	}
	now := time.Now()
	m.content, m.edited = content, &now
	s.dispatchMessageLocked("MESSAGE_UPDATE", m)
	return nil
}

// DeleteMessage deletes a message and dispatches MESSAGE_DELETE.
func (s *Server) DeleteMessage(guildID, messageID uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.messageLocked(guildID, messageID)
	if err != nil {
		return err
	}
	delete(s.messages, messageID)
	s.dispatchLocked(guildID, "MESSAGE_DELETE", map[string]any{
		"id": idStr(m.id), "channel_id": idStr(m.channelID), "guild_id": idStr(guildID),
	}, IntentGuildMessages)
	return nil
}

// AddReaction dispatches MESSAGE_REACTION_ADD for a unicode emoji.
func (s *Server) AddReaction(guildID, channelID, messageID, userID uint64, emoji string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.messageLocked(guildID, messageID)
	if err != nil {
		return err
	}
	if channelID == 0 {
		channelID = m.channelID
	}
	if emoji == "" {
		emoji = "👍"
	}
	s.guilds[guildID].join(userID, time.Now())
	s.dispatchLocked(guildID, "MESSAGE_REACTION_ADD", map[string]any{
		"user_id": idStr(userID), "channel_id": idStr(channelID), "message_id": idStr(messageID),
		"guild_id": idStr(guildID), "member": memberPayload(userID), "emoji": map[string]any{"id": nil, "name": emoji},
		"burst": false, "type": 0,
	}, IntentGuildMessageReactions)
	return nil
}

// Ban bans a user and dispatches GUILD_BAN_ADD (and GUILD_MEMBER_REMOVE).
func (s *Server) Ban(guildID, userID uint64, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.banLocked(guildID, userID, reason)
}

func (s *Server) banLocked(guildID, userID uint64, reason string) error {
	g, ok := s.guilds[guildID]
	if !ok {
		return fmt.Errorf("guild %d: %w", guildID, ErrUnknownGuild)
	}
	g.bans[userID] = reason
	g.leave(userID)
	s.dispatchLocked(guildID, "GUILD_BAN_ADD", map[string]any{"guild_id": idStr(guildID), "user": userPayload(userID, false)}, IntentGuildModeration)
	s.dispatchLocked(guildID, "GUILD_MEMBER_REMOVE", map[string]any{"guild_id": idStr(guildID), "user": userPayload(userID, false)}, IntentGuildMembers)
	return nil
}

// Unban lifts a ban and dispatches GUILD_BAN_REMOVE.
func (s *Server) Unban(guildID, userID uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.guilds[guildID]
	if !ok {
		return fmt.Errorf("guild %d: %w", guildID, ErrUnknownGuild)
	}
	delete(g.bans, userID)
	s.dispatchLocked(guildID, "GUILD_BAN_REMOVE", map[string]any{"guild_id": idStr(guildID), "user": userPayload(userID, false)}, IntentGuildModeration)
	return nil
}

// RemoveMember dispatches GUILD_MEMBER_REMOVE (a kick or a leave).
func (s *Server) RemoveMember(guildID, userID uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.guilds[guildID]
	if !ok {
		return fmt.Errorf("guild %d: %w", guildID, ErrUnknownGuild)
	}
	g.leave(userID)
	s.dispatchLocked(guildID, "GUILD_MEMBER_REMOVE", map[string]any{"guild_id": idStr(guildID), "user": userPayload(userID, false)}, IntentGuildMembers)
	return nil
}

// dispatchMessageLocked sends MESSAGE_CREATE/UPDATE; sessions without the
// MESSAGE_CONTENT intent get an empty content unless the bot wrote the message.
func (s *Server) dispatchMessageLocked(t string, m *message) {
	var noContent any
	if !m.bot {
		noContent = s.messagePayload(m, false)
	}
	intent := IntentGuildMessages
	if m.guildID == 0 { // DMs go to shard 0 (guild id 0)
		intent = IntentDirectMessages
	}
	s.dispatchVariantLocked(m.guildID, t, s.messagePayload(m, true), noContent, intent)
}

// join records that a user is (again) a member of the guild.
func (g *guild) join(userID uint64, at time.Time) {
	if userID == 0 {
		return
	}
	delete(g.gone, userID)
	if _, ok := g.members[userID]; !ok {
		g.members[userID] = &member{joined: at}
	}
}

func (g *guild) leave(userID uint64) {
	delete(g.members, userID)
	g.gone[userID] = true
}

// isMember: users the fake never saw are members too (it does not know
// every member), except those who were kicked, banned or left.
func (g *guild) isMember(userID uint64) bool { return !g.gone[userID] }

func (g *guild) role(id uint64) (Role, bool) {
	for _, r := range g.roles {
		if r.ID == id {
			return r, true
		}
	}
	return Role{}, false
}

// memberLocked is a guild member object (with user) for userID.
func (s *Server) memberLocked(g *guild, userID uint64) map[string]any {
	p := memberPayload(userID)
	if userID == s.appID {
		p["user"] = s.botUser()
	}
	if m, ok := g.members[userID]; ok {
		p["joined_at"] = timestamp(m.joined)
		for k, v := range m.patch {
			p[k] = v
		}
	}
	return p
}

// --- payloads ---------------------------------------------------------------

func userPayload(id uint64, bot bool) map[string]any {
	return map[string]any{
		"id": idStr(id), "username": fmt.Sprintf("user%d", id%100000), "discriminator": "0",
		"global_name": nil, "avatar": nil, "bot": bot,
	}
}

func (s *Server) botUser() map[string]any {
	u := userPayload(s.appID, true)
	u["username"] = s.cfg.BotName
	return u
}

func memberPayload(userID uint64) map[string]any {
	return map[string]any{
		"user": userPayload(userID, false), "roles": []string{}, "joined_at": timestamp(time.Unix(1600000000, 0)),
		"deaf": false, "mute": false, "flags": 0,
	}
}

func (s *Server) guildCreatePayload(g *guild) map[string]any {
	chans := make([]map[string]any, 0, len(g.channels))
	for i, c := range g.channels {
		chans = append(chans, map[string]any{"id": idStr(c.ID), "type": 0, "guild_id": idStr(g.id), "name": c.Name, "position": i, "permission_overwrites": []any{}})
	}
	botMember := memberPayload(s.appID)
	botMember["user"] = s.botUser()
	return map[string]any{
		"id": idStr(g.id), "name": g.name, "icon": nil, "owner_id": idStr(g.ownerID), "unavailable": false,
		"joined_at": timestamp(g.created), "large": false, "member_count": len(g.members), "verification_level": 0,
		"roles":    rolesPayload(g),
		"channels": chans, "threads": []any{}, "members": []any{botMember}, "presences": []any{}, "voice_states": []any{},
		"emojis": []any{}, "stickers": []any{}, "features": []string{}, "preferred_locale": "en-US",
	}
}

func rolesPayload(g *guild) []map[string]any {
	out := make([]map[string]any, 0, len(g.roles))
	for i, r := range g.roles {
		out = append(out, rolePayload(r, i))
	}
	return out
}

func rolePayload(r Role, position int) map[string]any {
	return map[string]any{"id": idStr(r.ID), "name": r.Name, "permissions": r.Permissions, "position": position,
		"color": 0, "hoist": false, "managed": false, "mentionable": false, "flags": 0}
}

func (s *Server) messagePayload(m *message, withContent bool) map[string]any {
	p := s.messagePayloadNoRef(m, withContent)
	if m.typ == messageReply {
		var ref any // null once the referenced message is deleted, as on Discord
		if rm, ok := s.messages[m.refID]; ok {
			ref = s.messagePayloadNoRef(rm, true)
		}
		p["referenced_message"] = ref
		mr := map[string]any{"type": 0, "message_id": idStr(m.refID), "channel_id": idStr(m.channelID)}
		if m.guildID != 0 {
			mr["guild_id"] = idStr(m.guildID)
		}
		p["message_reference"] = mr
	}
	return p
}

// Message types (https://discord.com/developers/docs/resources/message#message-object-message-types).
const (
	messageDefault            = 0
	messageReply              = 19
	messageChatInputCommand   = 20
	messageContextMenuCommand = 23
)

func (s *Server) messagePayloadNoRef(m *message, withContent bool) map[string]any {
	author := userPayload(m.authorID, m.bot)
	if m.bot {
		author = s.botUser()
	}
	p := map[string]any{
		"id": idStr(m.id), "channel_id": idStr(m.channelID), "guild_id": idStr(m.guildID), "author": author,
		"content": m.content, "timestamp": timestamp(m.at), "edited_timestamp": nil, "tts": false,
		"mention_everyone": false, "mentions": []any{}, "mention_roles": []any{}, "attachments": []any{},
		"embeds": []any{}, "pinned": false, "type": m.typ,
	}
	if m.guildID == 0 {
		delete(p, "guild_id")
	}
	if m.interaction != nil {
		p["interaction_metadata"] = m.interaction
	}
	if !m.bot && m.guildID != 0 {
		mem := memberPayload(m.authorID)
		delete(mem, "user")
		p["member"] = mem
	}
	if len(m.embeds) > 0 {
		p["embeds"] = m.embeds
	}
	if m.flags != 0 {
		p["flags"] = m.flags
	}
	if m.edited != nil {
		p["edited_timestamp"] = timestamp(*m.edited)
	}
	if !withContent {
		p["content"] = ""
	}
	return p
}

// BotMessages returns the contents of the messages the bot created in the
// channel, oldest first (what a moderator scrolling the channel would see).
func (s *Server) BotMessages(channelID uint64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ms []*message
	for _, m := range s.messages {
		if m.channelID == channelID && m.bot && m.authorID == s.appID {
			ms = append(ms, m)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].id < ms[j].id })
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.content
	}
	return out
}
