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
	bot := func(pattern string, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.Handle(method+" "+api+path, s.record(s.requireBot(h)))
	}
	open := func(pattern string, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.Handle(method+" "+api+path, s.record(h))
	}
	open("GET /gateway", s.handleGateway)
	bot("GET /gateway/bot", s.handleGatewayBot)
	bot("GET /users/@me", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, s.botUser()) })
	bot("GET /users/{id}", s.handleUser)
	bot("GET /guilds/{gid}", s.handleGetGuild)
	bot("GET /guilds/{gid}/channels", s.handleGuildChannels)
	bot("PUT /guilds/{gid}/bans/{uid}", s.handleBan)
	bot("DELETE /guilds/{gid}/bans/{uid}", s.handleUnban)
	bot("DELETE /guilds/{gid}/members/{uid}", s.handleKick)
	bot("PATCH /guilds/{gid}/members/{uid}", s.handleMemberModify)
	bot("POST /channels/{cid}/messages", s.handleCreateMessage)
	bot("GET /channels/{cid}/messages/{mid}", s.handleGetMessage)
	bot("PATCH /channels/{cid}/messages/{mid}", s.handleEditMessage)
	bot("DELETE /channels/{cid}/messages/{mid}", s.handleDeleteMessage)
	for _, p := range []string{"/applications/{app}/commands", "/applications/{app}/guilds/{gid}/commands"} {
		bot("GET "+p, s.handleListCommands)
		bot("PUT "+p, s.handleOverwriteCommands)
		bot("POST "+p, s.handleCreateCommand)
		bot("DELETE "+p+"/{cmd}", s.handleDeleteCommand)
	}
	// Interaction responses are authenticated by the interaction token, not the bot token.
	open("POST /interactions/{iid}/{token}/callback", s.handleCallback)
	open("POST /webhooks/{app}/{token}", s.handleFollowup)
	open("GET /webhooks/{app}/{token}/messages/{mid}", s.handleWebhookMessage)
	open("PATCH /webhooks/{app}/{token}/messages/{mid}", s.handleWebhookMessage)
	open("DELETE /webhooks/{app}/{token}/messages/{mid}", s.handleWebhookMessage)
	mux.Handle(api+"/", s.record(func(w http.ResponseWriter, r *http.Request) {
		discordError(w, http.StatusNotFound, 0, "404: Not Found")
	}))

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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/api/v10/"); ok {
			r.URL.Path = api + "/" + rest
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) requireBot(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot "+s.cfg.Token {
			discordError(w, http.StatusUnauthorized, 0, "401: Unauthorized")
			return
		}
		h(w, r)
	}
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
	_ = s.banLocked(g.id, uid, r.Header.Get("X-Audit-Log-Reason"))
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
	s.mu.Unlock()
	uid, _ := pathID(r, "uid")
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
	m := memberPayload(uid)
	for k, v := range body {
		m[k] = v
	}
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
	g := s.channelGuildLocked(cid)
	if g == nil {
		discordError(w, 404, 10003, "Unknown Channel")
		return
	}
	content := ""
	if body.Content != nil {
		content = *body.Content
	}
	m := &message{id: s.ids.next(), guildID: g.id, channelID: cid, authorID: s.appID, content: content, bot: true, at: time.Now(), embeds: body.Embeds}
	s.messages[m.id] = m
	s.dispatchMessageLocked("MESSAGE_CREATE", m)
	writeJSON(w, 200, s.messagePayload(m, true))
}

func (s *Server) channelMessageLocked(w http.ResponseWriter, r *http.Request) *message {
	cid, _ := pathID(r, "cid")
	mid, _ := pathID(r, "mid")
	if s.channelGuildLocked(cid) == nil {
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
