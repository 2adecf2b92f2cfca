package fakediscord

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// SentRequest is one write the bot made through REST.
type SentRequest struct {
	Seq    int             `json:"seq"`
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	At     time.Time       `json:"at"`
}

// Sent returns every non-GET REST request the bot made, in completion order.
func (s *Server) Sent() []SentRequest { return s.SentSince(0) }

// SentSince returns the recorded requests with Seq > since.
func (s *Server) SentSince(since int) []SentRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	if since < 0 {
		since = 0
	}
	if since >= len(s.sent) {
		return []SentRequest{}
	}
	return append([]SentRequest(nil), s.sent[since:]...)
}

const maxBody = 8 << 20

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	api := "/api/v9"
	// bot routes need "Authorization: Bot <token>"; open routes are
	// authenticated by what is in their path (interaction tokens).
	bot := func(pattern string, rt route, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.Handle(method+" "+api+path, s.record(s.limited(rt, true, h)))
	}
	open := func(pattern string, rt route, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.Handle(method+" "+api+path, s.record(s.limited(rt, false, h)))
	}
	byChannel := func(b string) route { return route{bucket: b, major: majorChannel} }
	byGuild := func(b string) route { return route{bucket: b, major: majorGuild} }
	plain := func(b string) route { return route{bucket: b} }

	open("GET /gateway", plain(BucketGateway), s.handleGateway)
	bot("GET /gateway/bot", plain(BucketGateway), s.handleGatewayBot)
	bot("GET /users/@me", plain(BucketUsers), func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, s.botUser()) })
	bot("GET /users/{id}", plain(BucketUsers), s.handleUser)
	bot("POST /users/@me/channels", plain(BucketCreateDM), s.handleCreateDM)
	bot("GET /applications/@me", plain(BucketApplication), s.handleApplication)
	bot("GET /oauth2/applications/@me", plain(BucketApplication), s.handleApplication)
	bot("GET /guilds/{gid}", byGuild(BucketGuild), s.handleGetGuild)
	bot("GET /guilds/{gid}/channels", byGuild(BucketGuildChannels), s.handleGuildChannels)
	bot("GET /guilds/{gid}/roles", byGuild(BucketGuildRoles), s.handleGuildRoles)
	bot("GET /guilds/{gid}/audit-logs", byGuild(BucketAuditLog), s.handleAuditLog)
	bot("GET /guilds/{gid}/bans", byGuild(BucketGuildBans), s.handleListBans)
	bot("GET /guilds/{gid}/bans/{uid}", byGuild(BucketGuildBans), s.handleGetBan)
	bot("PUT /guilds/{gid}/bans/{uid}", byGuild(BucketGuildBans), s.handleBan)
	bot("DELETE /guilds/{gid}/bans/{uid}", byGuild(BucketGuildBans), s.handleUnban)
	bot("GET /guilds/{gid}/members/{uid}", byGuild(BucketGuildMembers), s.handleGetMember)
	bot("DELETE /guilds/{gid}/members/{uid}", byGuild(BucketGuildMembers), s.handleKick)
	bot("PATCH /guilds/{gid}/members/{uid}", byGuild(BucketGuildMembers), s.handleMemberModify)
	bot("GET /channels/{cid}", byChannel(BucketChannel), s.handleGetChannel)
	bot("GET /channels/{cid}/messages", byChannel(BucketGetMessages), s.handleListMessages)
	bot("POST /channels/{cid}/messages", byChannel(BucketCreateMessage), s.handleCreateMessage)
	bot("POST /channels/{cid}/messages/bulk-delete", byChannel(BucketBulkDelete), s.handleBulkDelete)
	bot("GET /channels/{cid}/messages/{mid}", byChannel(BucketGetMessages), s.handleGetMessage)
	bot("PATCH /channels/{cid}/messages/{mid}", byChannel(BucketEditMessage), s.handleEditMessage)
	bot("DELETE /channels/{cid}/messages/{mid}", byChannel(BucketDeleteMessage), s.handleDeleteMessage)
	bot("PUT /channels/{cid}/messages/{mid}/reactions/{emoji}/@me", byChannel(BucketReactions), s.handleAddReaction)
	for _, p := range []string{"/applications/{app}/commands", "/applications/{app}/guilds/{gid}/commands"} {
		bot("GET "+p, plain(BucketCommands), s.handleListCommands)
		bot("PUT "+p, plain(BucketCommands), s.handleOverwriteCommands)
		bot("POST "+p, plain(BucketCommands), s.handleCreateCommand)
		bot("DELETE "+p+"/{cmd}", plain(BucketCommands), s.handleDeleteCommand)
	}
	// Interaction responses are authenticated by the interaction token, not
	// the bot token, and are not bound to the global limit.
	callback := route{bucket: BucketInteractionCallback, major: majorInteraction, exempt: true}
	webhook := route{bucket: BucketWebhook, major: majorWebhook, exempt: true}
	open("POST /interactions/{iid}/{token}/callback", callback, s.handleCallback)
	open("POST /webhooks/{app}/{token}", webhook, s.handleFollowup)
	open("GET /webhooks/{app}/{token}/messages/{mid}", webhook, s.handleWebhookMessage)
	open("PATCH /webhooks/{app}/{token}/messages/{mid}", webhook, s.handleWebhookMessage)
	open("DELETE /webhooks/{app}/{token}/messages/{mid}", webhook, s.handleWebhookMessage)
	mux.Handle(api+"/", s.record(s.limited(route{}, false, func(w http.ResponseWriter, r *http.Request) {
		discordError(w, http.StatusNotFound, 0, "404: Not Found")
	})))

	mux.HandleFunc("/gateway-ws", s.serveGateway)
	mux.HandleFunc("/gateway-ws/", s.serveGateway)
	s.controlRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) { // like wss://gateway.discord.gg/?v=9
			s.serveGateway(w, r)
			return
		}
		http.NotFound(w, r)
	})
	s.oauthRoutes(mux)
	users := s.oauthUserRoutes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/api/v10/"); ok {
			r.URL.Path = api + "/" + rest
		}
		// A user's OAuth2 access token ("Bearer …") on /users/@me… is the
		// signed-in user, not the bot.
		if strings.HasPrefix(r.URL.Path, api+"/users/@me") && strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			users.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// record stores every non-GET request (body and response status) in Sent.
func (s *Server) record(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			h(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err != nil {
			discordError(w, http.StatusBadRequest, 50109, "The request body contains invalid JSON.")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		rec := SentRequest{Method: r.Method, Path: r.URL.Path, Status: sw.status, At: time.Now()}
		if payload, err := requestJSON(r.Header.Get("Content-Type"), body); err == nil && len(payload) > 0 {
			rec.Body = payload
		} else if len(body) > 0 {
			rec.Body, _ = json.Marshal(string(body))
		}
		s.mu.Lock()
		rec.Seq = len(s.sent) + 1
		s.sent = append(s.sent, rec)
		s.mu.Unlock()
	})
}

// requestJSON returns the JSON payload of a request: the body itself, or the
// payload_json part of a multipart body (used when files are attached).
func requestJSON(contentType string, body []byte) (json.RawMessage, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	mt, params, _ := mime.ParseMediaType(contentType)
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				return nil, fmt.Errorf("multipart body without payload_json: %w", err)
			}
			if p.FormName() == "payload_json" {
				b, err := io.ReadAll(p)
				if err != nil {
					return nil, fmt.Errorf("read payload_json: %w", err)
				}
				return requestJSON("application/json", b)
			}
		}
	}
	if !json.Valid(body) {
		return nil, errors.New("invalid JSON")
	}
	return json.RawMessage(body), nil
}

// decodeBody decodes the JSON (or multipart payload_json) body into v, writing
// Discord's 400 on failure.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err == nil {
		var payload json.RawMessage
		payload, err = requestJSON(r.Header.Get("Content-Type"), body)
		if err == nil && len(payload) > 0 {
			err = json.Unmarshal(payload, v)
		}
	}
	if err != nil {
		discordError(w, http.StatusBadRequest, 50109, "The request body contains invalid JSON.")
		return false
	}
	return true
}

func pathID(r *http.Request, name string) (uint64, bool) {
	n, err := strconv.ParseUint(r.PathValue(name), 10, 64)
	return n, err == nil
}

func (s *Server) gatewayURL(r *http.Request) string { return "ws://" + r.Host + "/gateway-ws" }

// https://discord.com/developers/docs/topics/gateway#get-gateway
func (s *Server) handleGateway(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]any{"url": s.gatewayURL(r)})
}

// https://discord.com/developers/docs/topics/gateway#get-gateway-bot
func (s *Server) handleGatewayBot(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	now := time.Now()
	if now.After(s.startsReset) {
		s.startsUsed, s.startsReset = 0, now.Add(24*time.Hour)
	}
	limit := map[string]any{
		"total": sessionStartTotal, "remaining": sessionStartTotal - s.startsUsed,
		"reset_after": s.startsReset.Sub(now).Milliseconds(), "max_concurrency": s.cfg.MaxConcurrency,
	}
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"url": s.gatewayURL(r), "shards": s.cfg.Shards, "session_start_limit": limit})
}

func (s *Server) handleUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		discordError(w, 404, 10013, "Unknown User")
		return
	}
	if id == s.appID {
		writeJSON(w, 200, s.botUser())
		return
	}
	writeJSON(w, 200, userPayload(id, false))
}

func (s *Server) guildFromPath(w http.ResponseWriter, r *http.Request) *guild {
	id, ok := pathID(r, "gid")
	g := s.guilds[id]
	if !ok || g == nil {
		discordError(w, 404, 10004, "Unknown Guild")
		return nil
	}
	return g
}

func (s *Server) handleGetGuild(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.guildFromPath(w, r); g != nil {
		p := s.guildCreatePayload(g)
		for _, k := range []string{"members", "channels", "threads", "presences", "voice_states", "joined_at", "large", "member_count", "unavailable"} {
			delete(p, k)
		}
		writeJSON(w, 200, p)
	}
}

func (s *Server) handleGuildChannels(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.guildFromPath(w, r); g != nil {
		writeJSON(w, 200, s.guildCreatePayload(g)["channels"])
	}
}

func (s *Server) handleBan(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DeleteMessageSeconds int `json:"delete_message_seconds"`
	}
	if r.ContentLength != 0 && !decodeBody(w, r, &body) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	uid, ok := pathID(r, "uid")
	if g == nil {
		return
	} else if !ok {
		discordError(w, 404, 10013, "Unknown User")
		return
	}
	reason := auditReason(r)
	_ = s.banLocked(g.id, uid, reason)
	s.auditLocked(g, s.appID, uid, AuditMemberBanAdd, reason, nil, nil)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleUnban(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	g := s.guildFromPath(w, r)
	uid, _ := pathID(r, "uid")
	if g == nil {
		s.mu.Unlock()
		return
	}
	_, banned := g.bans[uid]
	if banned {
		s.auditLocked(g, s.appID, uid, AuditMemberBanRemove, auditReason(r), nil, nil)
	}
	s.mu.Unlock()
	if !banned {
		discordError(w, 404, 10026, "Unknown Ban")
		return
	}
	_ = s.Unban(g.id, uid)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleKick(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	g := s.guildFromPath(w, r)
	uid, _ := pathID(r, "uid")
	if g != nil && !g.isMember(uid) {
		s.mu.Unlock()
		discordError(w, 404, 10007, "Unknown Member")
		return
	}
	if g != nil {
		s.auditLocked(g, s.appID, uid, AuditMemberKick, auditReason(r), nil, nil)
	}
	s.mu.Unlock()
	if g == nil {
		return
	}
	_ = s.RemoveMember(g.id, uid)
	w.WriteHeader(http.StatusNoContent)
}

// handleMemberModify supports timeouts (communication_disabled_until) and
// dispatches GUILD_MEMBER_UPDATE.
func (s *Server) handleMemberModify(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if !decodeBody(w, r, &body) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guildFromPath(w, r)
	uid, _ := pathID(r, "uid")
	if g == nil {
		return
	}
	if !g.isMember(uid) {
		discordError(w, 404, 10007, "Unknown Member")
		return
	}
	g.join(uid, time.Now())
	mem := g.members[uid]
	if mem.patch == nil {
		mem.patch = map[string]any{}
	}
	changes := []map[string]any{}
	for k, v := range body {
		changes = append(changes, map[string]any{"key": k, "old_value": mem.patch[k], "new_value": v})
		mem.patch[k] = v
	}
	s.auditLocked(g, s.appID, uid, AuditMemberUpdate, auditReason(r), changes, nil)
	m := s.memberLocked(g, uid)
	m["guild_id"] = idStr(g.id)
	s.dispatchLocked(g.id, "GUILD_MEMBER_UPDATE", m, IntentGuildMembers)
	writeJSON(w, 200, m)
}

type messageBody struct {
	Content    *string         `json:"content"`
	Embeds     json.RawMessage `json:"embeds"`
	Components json.RawMessage `json:"components"`
	StickerIDs []string        `json:"sticker_ids"`
	Flags      int             `json:"flags"`
	// MessageReference makes the message a reply (type 19).
	MessageReference *messageReference `json:"message_reference"`
	// Nonce (a string or an integer) with EnforceNonce: a second create by
	// the same author with the same nonce within Config.NonceWindow returns
	// the first message and creates none.
	Nonce        json.RawMessage `json:"nonce"`
	EnforceNonce bool            `json:"enforce_nonce"`
}

type nonceEntry struct {
	message uint64
	at      time.Time
}

// NonceReplays is how many creates enforce_nonce answered with an existing
// message instead of a new one.
func (s *Server) NonceReplays() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nonceReplays
}

func (b messageBody) empty() bool {
	nonEmpty := func(raw json.RawMessage) bool {
		t := strings.TrimSpace(string(raw))
		return t != "" && t != "null" && t != "[]"
	}
	return (b.Content == nil || *b.Content == "") && !nonEmpty(b.Embeds) && !nonEmpty(b.Components) && len(b.StickerIDs) == 0
}

// https://discord.com/developers/docs/resources/message#create-message
func (s *Server) handleCreateMessage(w http.ResponseWriter, r *http.Request) {
	var body messageBody
	if !decodeBody(w, r, &body) {
		return
	}
	if body.empty() {
		discordError(w, 400, 50006, "Cannot send an empty message")
		return
	}
	if body.Content != nil && len([]rune(*body.Content)) > 2000 {
		discordError(w, 400, 50035, "Invalid Form Body")
		return
	}
	cid, _ := pathID(r, "cid")
	s.mu.Lock()
	defer s.mu.Unlock()
	var guildID uint64
	if g := s.channelGuildLocked(cid); g != nil {
		guildID = g.id
	} else if _, dm := s.dms[cid]; !dm {
		discordError(w, 404, 10003, "Unknown Channel")
		return
	}
	refID, ok := s.replyTargetLocked(w, cid, body.MessageReference)
	if !ok {
		return
	}
	nonce := strings.Trim(strings.TrimSpace(string(body.Nonce)), `"`)
	if len(nonce) > 25 {
		discordError(w, 400, 50035, "Invalid Form Body: nonce longer than 25 characters")
		return
	}
	nonceKey := fmt.Sprintf("%d:%s", s.appID, nonce)
	if body.EnforceNonce && nonce != "" {
		if e, ok := s.nonces[nonceKey]; ok && time.Since(e.at) < s.cfg.NonceWindow {
			if m, ok := s.messages[e.message]; ok {
				s.nonceReplays++
				writeJSON(w, 200, s.messagePayload(m, true))
				return
			}
		}
	}
	content := ""
	if body.Content != nil {
		content = *body.Content
	}
	m := &message{id: s.ids.next(), guildID: guildID, channelID: cid, authorID: s.appID, content: content, bot: true, at: time.Now(), embeds: body.Embeds}
	if refID != 0 {
		m.typ, m.refID = messageReply, refID
	}
	s.messages[m.id] = m
	if body.EnforceNonce && nonce != "" {
		if len(s.nonces) >= 10000 { // forget expired ones now and then
			for k, e := range s.nonces {
				if time.Since(e.at) >= s.cfg.NonceWindow {
					delete(s.nonces, k)
				}
			}
		}
		s.nonces[nonceKey] = nonceEntry{message: m.id, at: m.at}
	}
	s.dispatchMessageLocked("MESSAGE_CREATE", m)
	writeJSON(w, 200, s.messagePayload(m, true))
}

func (s *Server) channelMessageLocked(w http.ResponseWriter, r *http.Request) *message {
	cid, _ := pathID(r, "cid")
	mid, _ := pathID(r, "mid")
	if !s.channelExistsLocked(cid) {
		discordError(w, 404, 10003, "Unknown Channel")
		return nil
	}
	m, ok := s.messages[mid]
	if !ok || m.channelID != cid {
		discordError(w, 404, 10008, "Unknown Message")
		return nil
	}
	return m
}

func (s *Server) handleGetMessage(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.channelMessageLocked(w, r); m != nil {
		writeJSON(w, 200, s.messagePayload(m, true))
	}
}

func (s *Server) handleEditMessage(w http.ResponseWriter, r *http.Request) {
	var body messageBody
	if !decodeBody(w, r, &body) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.channelMessageLocked(w, r)
	if m == nil {
		return
	}
	if !m.bot {
		discordError(w, 403, 50005, "Cannot edit a message authored by another user")
		return
	}
	now := time.Now()
	if body.Content != nil {
		m.content = *body.Content
	}
	if body.Embeds != nil {
		m.embeds = body.Embeds
	}
	m.edited = &now
	s.dispatchMessageLocked("MESSAGE_UPDATE", m)
	writeJSON(w, 200, s.messagePayload(m, true))
}

func (s *Server) handleDeleteMessage(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m := s.channelMessageLocked(w, r)
	if m != nil && m.guildID == 0 {
		delete(s.messages, m.id)
		s.dispatchLocked(0, "MESSAGE_DELETE", map[string]any{"id": idStr(m.id), "channel_id": idStr(m.channelID)}, IntentDirectMessages)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if m != nil && !m.bot { // deleting someone else's message is audited
		s.auditLocked(s.guilds[m.guildID], s.appID, m.authorID, AuditMessageDelete, auditReason(r), nil,
			map[string]any{"channel_id": idStr(m.channelID), "count": "1"})
	}
	s.mu.Unlock()
	if m == nil {
		return
	}
	_ = s.DeleteMessage(m.guildID, m.id)
	w.WriteHeader(http.StatusNoContent)
}

// --- application commands ---------------------------------------------------

func (s *Server) commandScope(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	if app, ok := pathID(r, "app"); !ok || app != s.appID {
		discordError(w, 403, 50001, "Missing Access")
		return 0, false
	}
	if r.PathValue("gid") == "" {
		return 0, true
	}
	gid, _ := pathID(r, "gid")
	if _, ok := s.guilds[gid]; !ok {
		discordError(w, 404, 10004, "Unknown Guild")
		return 0, false
	}
	return gid, true
}

func (s *Server) normalizeCommandLocked(scope uint64, c map[string]any) (map[string]any, bool) {
	name, _ := c["name"].(string)
	if name == "" {
		return nil, false
	}
	if _, ok := c["type"]; !ok {
		c["type"] = 1
	}
	for _, old := range s.commands[scope] {
		if old["name"] == name && fmt.Sprint(old["type"]) == fmt.Sprint(c["type"]) {
			c["id"] = old["id"]
		}
	}
	if _, ok := c["id"].(string); !ok {
		c["id"] = idStr(s.ids.next())
	}
	c["application_id"] = idStr(s.appID)
	c["version"] = idStr(s.ids.next())
	if scope != 0 {
		c["guild_id"] = idStr(scope)
	}
	return c, true
}

func (s *Server) handleListCommands(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if scope, ok := s.commandScope(w, r); ok {
		writeJSON(w, 200, append([]map[string]any{}, s.commands[scope]...))
	}
}

// https://discord.com/developers/docs/interactions/application-commands#bulk-overwrite-global-application-commands
func (s *Server) handleOverwriteCommands(w http.ResponseWriter, r *http.Request) {
	var cmds []map[string]any
	if !decodeBody(w, r, &cmds) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	scope, ok := s.commandScope(w, r)
	if !ok {
		return
	}
	out := make([]map[string]any, 0, len(cmds))
	for _, c := range cmds {
		c, ok := s.normalizeCommandLocked(scope, c)
		if !ok {
			discordError(w, 400, 50035, "Invalid Form Body")
			return
		}
		out = append(out, c)
	}
	s.commands[scope] = out
	writeJSON(w, 200, out)
}

func (s *Server) handleCreateCommand(w http.ResponseWriter, r *http.Request) {
	var c map[string]any
	if !decodeBody(w, r, &c) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	scope, ok := s.commandScope(w, r)
	if !ok {
		return
	}
	c, ok = s.normalizeCommandLocked(scope, c)
	if !ok {
		discordError(w, 400, 50035, "Invalid Form Body")
		return
	}
	list := s.commands[scope][:0:0]
	status := 201
	for _, old := range s.commands[scope] {
		if old["id"] == c["id"] {
			status = 200 // upsert of an existing command
			continue
		}
		list = append(list, old)
	}
	s.commands[scope] = append(list, c)
	writeJSON(w, status, c)
}

func (s *Server) handleDeleteCommand(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	scope, ok := s.commandScope(w, r)
	if !ok {
		return
	}
	list := s.commands[scope][:0:0]
	found := false
	for _, c := range s.commands[scope] {
		if c["id"] == r.PathValue("cmd") {
			found = true
			continue
		}
		list = append(list, c)
	}
	if !found {
		discordError(w, 404, 10063, "Unknown application command")
		return
	}
	s.commands[scope] = list
	w.WriteHeader(http.StatusNoContent)
}

// Commands returns the registered application commands (guildID 0 = global).
func (s *Server) Commands(guildID uint64) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any{}, s.commands[guildID]...)
}
