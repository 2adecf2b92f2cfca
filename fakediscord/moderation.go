package fakediscord

import (
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The REST a moderation bot reads with: members, bans, roles, channels,
// message history, bulk delete, reactions, DMs, the audit log and the
// current application.

// Audit log events (https://discord.com/developers/docs/resources/audit-log#audit-log-entry-object-audit-log-events).
const (
	AuditMemberKick        = 20
	AuditMemberBanAdd      = 22
	AuditMemberBanRemove   = 23
	AuditMemberUpdate      = 24
	AuditMessageDelete     = 72
	AuditMessageBulkDelete = 73
)

type auditEntry struct {
	id, userID, targetID uint64
	action               int
	reason               string
	changes              []map[string]any
	options              map[string]any
}

func (e auditEntry) payload() map[string]any {
	p := map[string]any{"id": idStr(e.id), "user_id": idStr(e.userID), "target_id": idStr(e.targetID), "action_type": e.action}
	if e.reason != "" {
		p["reason"] = e.reason
	}
	if e.changes != nil {
		p["changes"] = e.changes
	}
	if e.options != nil {
		p["options"] = e.options
	}
	return p
}

// auditLocked appends an audit log entry (what Discord records for actions
// taken through its API or client).
func (s *Server) auditLocked(g *guild, actor, target uint64, action int, reason string, changes []map[string]any, options map[string]any) {
	g.audit = append(g.audit, auditEntry{id: s.ids.next(), userID: actor, targetID: target, action: action, reason: reason, changes: changes, options: options})
}

// auditReason is the X-Audit-Log-Reason header (URL-encoded, as Discord
// asks), or the older ?reason= that discordgo sends for bans.
func auditReason(r *http.Request) string {
	if h := r.Header.Get("X-Audit-Log-Reason"); h != "" {
		if dec, err := url.PathUnescape(h); err == nil {
			return dec
		}
		return h
	}
	return r.URL.Query().Get("reason")
}

// queryInt reads an integer query parameter within [lo, hi]; absent = def.
func queryInt(r *http.Request, name string, def, lo, hi int) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}

func queryID(r *http.Request, name string) uint64 {
	n, _ := strconv.ParseUint(r.URL.Query().Get(name), 10, 64)
	return n
}

func invalidForm(w http.ResponseWriter, field, msg string) {
	writeJSON(w, 400, map[string]any{"message": "Invalid Form Body", "code": 50035,
		"errors": map[string]any{field: map[string]any{"_errors": []map[string]any{{"code": "BASE_TYPE_INVALID", "message": msg}}}}})
}

// https://discord.com/developers/docs/resources/application#get-current-application
func (s *Server) handleApplication(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	guilds := len(s.guilds)
	s.mu.Unlock()
	owner := userPayload(s.appID+1, false)
	writeJSON(w, 200, map[string]any{
		"id": idStr(s.appID), "name": s.cfg.BotName, "icon": nil, "description": "", "bot_public": true,
		"bot_require_code_grant": false, "verify_key": s.PublicKeyHex(), "flags": 0, "bot": s.botUser(), "owner": owner,
		"team": nil, "approximate_guild_count": guilds, "interactions_endpoint_url": nilIfEmpty(s.cfg.InteractionsURL),
		"redirect_uris": []string{}, "tags": []string{},
	})
}

func nilIfEmpty(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// https://discord.com/developers/docs/resources/user#create-dm
func (s *Server) handleCreateDM(w http.ResponseWriter, r *http.Request) {
	var body struct {
		RecipientID jsonID `json:"recipient_id"`
	}
	if !decodeBody(w, r, &body) {
		return
	}
	if body.RecipientID == 0 {
		invalidForm(w, "recipient_id", "This field is required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	uid := uint64(body.RecipientID)
	cid, ok := s.dmByUser[uid]
	if !ok {
		cid = s.ids.next()
		s.dms[cid], s.dmByUser[uid] = uid, cid
	}
	writeJSON(w, 200, s.dmChannelPayload(cid, uid))
}

func (s *Server) dmChannelPayload(cid, uid uint64) map[string]any {
	return map[string]any{"id": idStr(cid), "type": 1, "last_message_id": nil, "flags": 0,
		"recipients": []any{userPayload(uid, false)}}
}

// https://discord.com/developers/docs/resources/channel#get-channel
func (s *Server) handleGetChannel(w http.ResponseWriter, r *http.Request) {
	cid, _ := pathID(r, "cid")
	s.mu.Lock()
	defer s.mu.Unlock()
	if uid, ok := s.dms[cid]; ok {
		writeJSON(w, 200, s.dmChannelPayload(cid, uid))
		return
	}
	g := s.channelGuildLocked(cid)
	if g == nil {
		discordError(w, 404, 10003, "Unknown Channel")
		return
	}
	for i, c := range g.channels {
		if c.ID == cid {
			writeJSON(w, 200, map[string]any{"id": idStr(c.ID), "type": 0, "guild_id": idStr(g.id), "name": c.Name,
				"position": i, "permission_overwrites": []any{}, "topic": nil, "nsfw": false, "rate_limit_per_user": 0,
				"parent_id": nil, "last_message_id": nil, "flags": 0})
			return
		}
	}
}

// channelExistsLocked: a guild text channel or a DM channel.
func (s *Server) channelExistsLocked(cid uint64) bool {
	_, dm := s.dms[cid]
	return dm || s.channelGuildLocked(cid) != nil
}

// https://discord.com/developers/docs/resources/message#get-channel-messages
func (s *Server) handleListMessages(w http.ResponseWriter, r *http.Request) {
	cid, _ := pathID(r, "cid")
	limit, ok := queryInt(r, "limit", 50, 1, 100)
	if !ok {
		invalidForm(w, "limit", "int value should be between 1 and 100")
		return
	}
	before, after, around := queryID(r, "before"), queryID(r, "after"), queryID(r, "around")
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.channelExistsLocked(cid) {
		discordError(w, 404, 10003, "Unknown Channel")
		return
	}
	var ids []uint64
	for id, m := range s.messages {
		if m.channelID == cid && (m.flags&ephemeralFlag == 0) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] > ids[j] }) // newest first, like Discord
	var out []uint64
	switch {
	case around != 0:
		// limit/2 on each side of around (around itself included when it exists).
		var older, newer []uint64
		for _, id := range ids {
			switch {
			case id > around:
				newer = append(newer, id)
			case id <= around:
				older = append(older, id)
			}
		}
		half := limit / 2
		if len(newer) > half {
			newer = newer[len(newer)-half:]
		}
		out = append(newer, older[:min(len(older), limit-len(newer))]...)
	case after != 0:
		for i := len(ids) - 1; i >= 0 && len(out) < limit; i-- { // the oldest after `after`
			if ids[i] > after {
				out = append([]uint64{ids[i]}, out...)
			}
		}
	default:
		for _, id := range ids {
			if (before == 0 || id < before) && len(out) < limit {
				out = append(out, id)
			}
		}
	}
	msgs := make([]map[string]any, 0, len(out))
	for _, id := range out {
		msgs = append(msgs, s.messagePayload(s.messages[id], true))
	}
	writeJSON(w, 200, msgs)
}

// https://discord.com/developers/docs/resources/message#bulk-delete-messages
func (s *Server) handleBulkDelete(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Messages []jsonID `json:"messages"`
	}
	if !decodeBody(w, r, &body) {
		return
	}
	if len(body.Messages) < 2 || len(body.Messages) > 100 {
		invalidForm(w, "messages", "Must be between 2 and 100 in length.")
		return
	}
	cid, _ := pathID(r, "cid")
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.channelGuildLocked(cid)
	if g == nil {
		discordError(w, 404, 10003, "Unknown Channel")
		return
	}
	seen := map[uint64]bool{}
	twoWeeksAgo := uint64(time.Now().Add(-14*24*time.Hour).UnixMilli()-DiscordEpoch) << 22
	for _, id := range body.Messages {
		if seen[uint64(id)] {
			invalidForm(w, "messages", "Duplicate message id.")
			return
		}
		seen[uint64(id)] = true
		if uint64(id) < twoWeeksAgo {
			discordError(w, 400, 50034, "You can only bulk delete messages that are under 14 days old.")
			return
		}
	}
	// Ids that do not exist (or are in another channel) count towards the
	// 2–100 but are skipped, as on Discord.
	var deleted []string
	for _, id := range body.Messages {
		if m, ok := s.messages[uint64(id)]; ok && m.channelID == cid {
			delete(s.messages, m.id)
			deleted = append(deleted, idStr(m.id))
		}
	}
	if len(deleted) > 0 {
		s.dispatchLocked(g.id, "MESSAGE_DELETE_BULK", map[string]any{"ids": deleted, "channel_id": idStr(cid), "guild_id": idStr(g.id)}, IntentGuildMessages)
		s.auditLocked(g, s.appID, cid, AuditMessageBulkDelete, auditReason(r), nil, map[string]any{"count": strconv.Itoa(len(deleted))})
	}
	w.WriteHeader(http.StatusNoContent)
}

// https://discord.com/developers/docs/resources/message#create-reaction
func (s *Server) handleAddReaction(w http.ResponseWriter, r *http.Request) {
	emoji := r.PathValue("emoji")
	if dec, err := url.PathUnescape(emoji); err == nil {
		emoji = dec
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.channelMessageLocked(w, r)
	if m == nil {
		return
	}
	if emoji == "" {
		discordError(w, 400, 10014, "Unknown Emoji")
		return
	}
	e := map[string]any{"id": nil, "name": emoji}
	if name, id, custom := strings.Cut(emoji, ":"); custom { // name:id for custom emoji
		e = map[string]any{"id": id, "name": name}
	}
	if m.guildID != 0 {
		mem := s.memberLocked(s.guilds[m.guildID], s.appID)
		s.dispatchLocked(m.guildID, "MESSAGE_REACTION_ADD", map[string]any{
			"user_id": idStr(s.appID), "channel_id": idStr(m.channelID), "message_id": idStr(m.id), "guild_id": idStr(m.guildID),
			"member": mem, "emoji": e, "burst": false, "type": 0, "message_author_id": idStr(m.authorID),
		}, IntentGuildMessageReactions)
	}
	w.WriteHeader(http.StatusNoContent)
}

// https://discord.com/developers/docs/resources/guild#get-guild-member
func (s *Server) handleGetMember(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	if g == nil {
		return
	}
	uid, ok := pathID(r, "uid")
	if !ok || !g.isMember(uid) {
		discordError(w, 404, 10007, "Unknown Member")
		return
	}
	writeJSON(w, 200, s.memberLocked(g, uid))
}

// https://discord.com/developers/docs/resources/guild#get-guild-roles
func (s *Server) handleGuildRoles(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.guildFromPath(w, r); g != nil {
		writeJSON(w, 200, rolesPayload(g))
	}
}

func banPayload(userID uint64, reason string) map[string]any {
	return map[string]any{"user": userPayload(userID, false), "reason": nilIfEmpty(reason)}
}

// https://discord.com/developers/docs/resources/guild#get-guild-bans
func (s *Server) handleListBans(w http.ResponseWriter, r *http.Request) {
	limit, ok := queryInt(r, "limit", 1000, 1, 1000)
	if !ok {
		invalidForm(w, "limit", "int value should be between 1 and 1000")
		return
	}
	before, after := queryID(r, "before"), queryID(r, "after")
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	if g == nil {
		return
	}
	users := make([]uint64, 0, len(g.bans))
	for uid := range g.bans {
		users = append(users, uid)
	}
	sort.Slice(users, func(i, j int) bool { return users[i] < users[j] }) // by user id
	var sel []uint64
	if before != 0 && after == 0 {
		for i := len(users) - 1; i >= 0 && len(sel) < limit; i-- {
			if users[i] < before {
				sel = append([]uint64{users[i]}, sel...)
			}
		}
	} else {
		for _, uid := range users {
			if uid > after && (before == 0 || uid < before) && len(sel) < limit {
				sel = append(sel, uid)
			}
		}
	}
	out := make([]map[string]any, 0, len(sel))
	for _, uid := range sel {
		out = append(out, banPayload(uid, g.bans[uid]))
	}
	writeJSON(w, 200, out)
}

// https://discord.com/developers/docs/resources/guild#get-guild-ban
func (s *Server) handleGetBan(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	if g == nil {
		return
	}
	uid, _ := pathID(r, "uid")
	reason, ok := g.bans[uid]
	if !ok {
		discordError(w, 404, 10026, "Unknown Ban")
		return
	}
	writeJSON(w, 200, banPayload(uid, reason))
}

// https://discord.com/developers/docs/resources/audit-log#get-guild-audit-log
func (s *Server) handleAuditLog(w http.ResponseWriter, r *http.Request) {
	limit, ok := queryInt(r, "limit", 50, 1, 100)
	if !ok {
		invalidForm(w, "limit", "int value should be between 1 and 100")
		return
	}
	action, ok := queryInt(r, "action_type", 0, 0, 1<<20)
	if !ok {
		invalidForm(w, "action_type", "Value is not int.")
		return
	}
	userID, before, after := queryID(r, "user_id"), queryID(r, "before"), queryID(r, "after")
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	if g == nil {
		return
	}
	match := func(e auditEntry) bool {
		return (userID == 0 || e.userID == userID) && (action == 0 || e.action == action) &&
			(before == 0 || e.id < before) && e.id > after
	}
	entries := []map[string]any{}
	users := map[uint64]bool{}
	// Newest first; with after (and no before) the oldest entries after it.
	if after != 0 && before == 0 {
		for _, e := range g.audit {
			if match(e) && len(entries) < limit {
				entries = append([]map[string]any{e.payload()}, entries...)
				users[e.userID], users[e.targetID] = true, true
			}
		}
	} else {
		for i := len(g.audit) - 1; i >= 0 && len(entries) < limit; i-- {
			if e := g.audit[i]; match(e) {
				entries = append(entries, e.payload())
				users[e.userID], users[e.targetID] = true, true
			}
		}
	}
	userList := []map[string]any{}
	for uid := range users {
		if uid == s.appID {
			userList = append(userList, s.botUser())
		} else if !g.channel(uid) {
			userList = append(userList, userPayload(uid, false))
		}
	}
	writeJSON(w, 200, map[string]any{"audit_log_entries": entries, "users": userList, "integrations": []any{},
		"webhooks": []any{}, "guild_scheduled_events": []any{}, "threads": []any{}, "application_commands": []any{},
		"auto_moderation_rules": []any{}})
}

// messageReference is the message_reference of a message create.
type messageReference struct {
	Type            int    `json:"type"`
	MessageID       jsonID `json:"message_id"`
	ChannelID       jsonID `json:"channel_id"`
	GuildID         jsonID `json:"guild_id"`
	FailIfNotExists *bool  `json:"fail_if_not_exists"`
}

// replyTarget resolves a reply's message_reference: the referenced message,
// 0 to send a plain message (fail_if_not_exists false and it is gone), or
// ok false after writing Discord's 400.
func (s *Server) replyTargetLocked(w http.ResponseWriter, cid uint64, ref *messageReference) (uint64, bool) {
	if ref == nil || ref.Type != 0 || ref.MessageID == 0 {
		return 0, true
	}
	if ref.ChannelID != 0 && uint64(ref.ChannelID) != cid {
		invalidForm(w, "message_reference", "Cannot reply to a message in another channel")
		return 0, false
	}
	if m, ok := s.messages[uint64(ref.MessageID)]; ok && m.channelID == cid {
		return m.id, true
	}
	if ref.FailIfNotExists != nil && !*ref.FailIfNotExists {
		return 0, true
	}
	invalidForm(w, "message_reference", "Unknown message")
	return 0, false
}
