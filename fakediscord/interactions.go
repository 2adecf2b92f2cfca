package fakediscord

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Interaction and command types
// (https://discord.com/developers/docs/interactions/receiving-and-responding).
const (
	InteractionPing               = 1
	InteractionApplicationCommand = 2

	CommandChatInput = 1
	CommandUser      = 2
	CommandMessage   = 3

	ResponsePong                    = 1
	ResponseChannelMessage          = 4
	ResponseDeferredChannelMessage  = 5
	ResponseDeferredUpdateMessage   = 6
	ResponseUpdateMessage           = 7
	ResponseAutocomplete            = 8
	ResponseModal                   = 9
	followupWindow                  = 15 * time.Minute
	ephemeralFlag                   = 1 << 6
	interactionWebhookClientTimeout = 10 * time.Second
)

// InteractionSpec describes an application command invocation to deliver.
type InteractionSpec struct {
	GuildID   uint64
	ChannelID uint64 // 0 = the guild's first channel
	UserID    uint64 // 0 = a generated user
	Name      string
	// CommandType is 1 (slash, default), 2 (user) or 3 (message, e.g. "Report").
	// With TargetID set and CommandType 0, 3 is assumed.
	CommandType int
	// Options is the data.options array, or an object {name: value} that is
	// turned into options (string, integer, boolean or number typed).
	Options  json.RawMessage
	TargetID uint64
	// Permissions is the invoking member's permission bitfield as Discord
	// sends it (decimal string); "" = a member without Manage Server.
	Permissions string
}

// InteractionRecord is what the fake knows about one interaction.
type InteractionRecord struct {
	ID             string            `json:"id"`
	Token          string            `json:"token"`
	GuildID        string            `json:"guild_id"`
	Name           string            `json:"name"`
	Mode           string            `json:"mode"` // "gateway" or "webhook"
	SessionID      string            `json:"session_id,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	Acknowledged   bool              `json:"acknowledged"`
	RespondedAt    time.Time         `json:"responded_at,omitzero"`
	ResponseType   int               `json:"response_type,omitempty"`
	Response       json.RawMessage   `json:"response,omitempty"`
	WithinDeadline bool              `json:"within_deadline"`
	HTTPStatus     int               `json:"http_status,omitempty"`
	Error          string            `json:"error,omitempty"`
	Followups      []json.RawMessage `json:"followups,omitempty"`
	Original       json.RawMessage   `json:"original,omitempty"`
}

type interaction struct {
	rec       InteractionRecord
	id        uint64
	guildID   uint64
	channelID uint64
	original  *message
	ephemeral bool
	// commandType and userID make the response message's type (20 or 23)
	// and interaction_metadata.
	commandType int
	userID      uint64
}

// DeliverInteraction creates an application command interaction and delivers
// it: as a signed POST to Config.InteractionsURL (waiting for the response,
// at most Config.InteractionDeadline) or as INTERACTION_CREATE to one session
// of the guild's shard. Endpoint failures are recorded in the returned record;
// the error is for interactions that could not be created or delivered at all.
func (s *Server) DeliverInteraction(ctx context.Context, spec InteractionSpec) (InteractionRecord, error) {
	if spec.Name == "" {
		return InteractionRecord{}, errors.New("interaction needs a command name")
	}
	s.mu.Lock()
	g, ok := s.guilds[spec.GuildID]
	if !ok {
		s.mu.Unlock()
		return InteractionRecord{}, fmt.Errorf("guild %d: %w", spec.GuildID, ErrUnknownGuild)
	}
	if spec.ChannelID == 0 {
		spec.ChannelID = g.channels[0].ID
	}
	if spec.UserID == 0 {
		spec.UserID = 100000000000000000 + uint64(len(s.interactions)%50)
	}
	payload, in, err := s.newInteractionLocked(spec)
	if err != nil {
		s.mu.Unlock()
		return InteractionRecord{}, err
	}
	if s.cfg.InteractionsURL == "" {
		defer s.mu.Unlock()
		sess := s.interactionSessionLocked(spec.GuildID)
		if sess == nil {
			return InteractionRecord{}, fmt.Errorf("deliver interaction to guild %d (shard %d): %w", spec.GuildID, ShardFor(spec.GuildID, s.cfg.Shards), ErrNoSession)
		}
		s.storeInteractionLocked(in)
		in.rec.Mode, in.rec.SessionID = "gateway", sess.id
		s.appendLocked(sess, "INTERACTION_CREATE", payload)
		return in.rec, nil
	}
	in.rec.Mode = "webhook"
	s.storeInteractionLocked(in)
	s.mu.Unlock()

	status, body, err := s.postSigned(ctx, payload, false)
	s.mu.Lock()
	defer s.mu.Unlock()
	in.rec.HTTPStatus = status
	switch {
	case err != nil:
		in.rec.Error = err.Error()
	case status != http.StatusOK:
		in.rec.Error = fmt.Sprintf("interactions endpoint answered HTTP %d", status)
	default:
		var resp struct {
			Type int `json:"type"`
		}
		if json.Unmarshal(body, &resp) != nil || resp.Type < ResponseChannelMessage || resp.Type > ResponseModal {
			in.rec.Error = "interactions endpoint returned an invalid interaction response"
		} else if !in.rec.Acknowledged {
			s.acknowledgeLocked(in, resp.Type, body)
		}
	}
	return in.rec, nil
}

func (s *Server) storeInteractionLocked(in *interaction) {
	s.interactions[in.id] = in
	s.byToken[in.rec.Token] = in
}

// interactionSessionLocked picks the one session that gets INTERACTION_CREATE:
// the oldest connected session of the guild's shard, else the oldest resumable one.
func (s *Server) interactionSessionLocked(guildID uint64) *session {
	s.pruneLocked()
	var resumable *session
	for _, id := range s.sessionOrder {
		sess := s.sessions[id]
		if ShardFor(guildID, sess.shardCount) != sess.shardID {
			continue
		}
		if sess.conn != nil {
			return sess
		}
		if resumable == nil {
			resumable = sess
		}
	}
	return resumable
}

func (s *Server) newInteractionLocked(spec InteractionSpec) (json.RawMessage, *interaction, error) {
	ctype := spec.CommandType
	if ctype == 0 {
		ctype = CommandChatInput
		if spec.TargetID != 0 {
			ctype = CommandMessage
		}
	}
	if ctype < CommandChatInput || ctype > CommandMessage {
		return nil, nil, fmt.Errorf("command type %d is not 1, 2 or 3", ctype)
	}
	cmdID := uint64(0)
	for _, scope := range []uint64{spec.GuildID, 0} {
		for _, c := range s.commands[scope] {
			if c["name"] == spec.Name && fmt.Sprint(c["type"]) == strconv.Itoa(ctype) {
				cmdID, _ = strconv.ParseUint(fmt.Sprint(c["id"]), 10, 64)
			}
		}
	}
	if cmdID == 0 {
		cmdID = s.ids.next()
	}
	data := map[string]any{"id": idStr(cmdID), "name": spec.Name, "type": ctype, "guild_id": idStr(spec.GuildID)}
	if ctype == CommandChatInput {
		opts, err := commandOptions(spec.Options, s.optionTypesLocked(spec.GuildID, spec.Name))
		if err != nil {
			return nil, nil, err
		}
		if len(opts) > 0 {
			data["options"] = opts
			if res := s.resolveOptionsLocked(spec.GuildID, opts); len(res) > 0 {
				data["resolved"] = res
			}
		}
	}
	switch ctype {
	case CommandMessage:
		if spec.TargetID == 0 {
			return nil, nil, errors.New("a message command needs target_id (a message id)")
		}
		data["target_id"] = idStr(spec.TargetID)
		target := &message{id: spec.TargetID, guildID: spec.GuildID, channelID: spec.ChannelID, authorID: spec.UserID, at: time.Now()}
		if m, ok := s.messages[spec.TargetID]; ok {
			target = m
		}
		data["resolved"] = map[string]any{"messages": map[string]any{idStr(spec.TargetID): s.messagePayload(target, true)}}
	case CommandUser:
		if spec.TargetID == 0 {
			return nil, nil, errors.New("a user command needs target_id (a user id)")
		}
		data["target_id"] = idStr(spec.TargetID)
		data["resolved"] = map[string]any{"users": map[string]any{idStr(spec.TargetID): userPayload(spec.TargetID, false)}}
	}
	if g, ok := s.guilds[spec.GuildID]; ok {
		g.join(spec.UserID, time.Now())
	}
	id := s.ids.next()
	token := fmt.Sprintf("aW50ZXJhY3Rpb246%d:%s", id, newSessionID())
	member := memberPayload(spec.UserID)
	member["permissions"] = "1071698660929"
	if spec.Permissions != "" {
		member["permissions"] = spec.Permissions
	}
	payload, err := json.Marshal(map[string]any{
		"id": idStr(id), "application_id": idStr(s.appID), "type": InteractionApplicationCommand, "data": data,
		"guild_id": idStr(spec.GuildID), "channel_id": idStr(spec.ChannelID),
		"channel": map[string]any{"id": idStr(spec.ChannelID), "type": 0, "guild_id": idStr(spec.GuildID)},
		"member":  member, "token": token, "version": 1, "locale": "en-US", "guild_locale": "en-US",
		"app_permissions": "1071698660929", "entitlements": []any{}, "context": 0,
		"authorizing_integration_owners": map[string]any{"0": idStr(spec.GuildID)},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("marshal interaction: %w", err)
	}
	in := &interaction{id: id, guildID: spec.GuildID, channelID: spec.ChannelID, commandType: ctype, userID: spec.UserID, rec: InteractionRecord{
		ID: idStr(id), Token: token, GuildID: idStr(spec.GuildID), Name: spec.Name, CreatedAt: time.Now(),
	}}
	return payload, in, nil
}

// commandOptions accepts an options array as is, or builds one from an
// object: an option's type is the registered command's (types, by name),
// else guessed from the JSON value.
func commandOptions(raw json.RawMessage, types map[string]int) ([]any, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	var arr []any
	if err := json.Unmarshal(raw, &arr); err == nil {
		return arr, nil
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("options must be an array of options or an object of name: value: %w", err)
	}
	out := make([]any, 0, len(obj))
	for name, v := range obj {
		typ := 3 // STRING
		switch x := v.(type) {
		case bool:
			typ = 5
		case float64:
			typ = 10 // NUMBER
			if x == float64(int64(x)) {
				typ = 4 // INTEGER
			}
		}
		if t, ok := types[name]; ok {
			typ = t
		}
		out = append(out, map[string]any{"name": name, "type": typ, "value": v})
	}
	return out, nil
}

// Sign returns the hex Ed25519 signature Discord puts in X-Signature-Ed25519.
func (s *Server) Sign(timestamp string, body []byte) string {
	return hex.EncodeToString(ed25519.Sign(s.priv, append([]byte(timestamp), body...)))
}

// postSigned POSTs body to the interactions endpoint the way Discord does;
// with tamper the signature does not match the body.
func (s *Server) postSigned(ctx context.Context, body []byte, tamper bool) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.InteractionDeadline)
	defer cancel()
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	sig := s.Sign(ts, body)
	if tamper {
		sig = s.Sign(ts, append([]byte(`{"tampered":true}`), body...))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.InteractionsURL, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("build interaction request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Discord-Interactions/1.0 (+https://discord.com)")
	req.Header.Set("X-Signature-Ed25519", sig)
	req.Header.Set("X-Signature-Timestamp", ts)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("post interaction to %s: %w", s.cfg.InteractionsURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read interactions endpoint response: %w", err)
	}
	return resp.StatusCode, b, nil
}

// PingResult is the outcome of a PING to the interactions endpoint.
type PingResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// SendPing POSTs a PING (type 1) interaction to Config.InteractionsURL, with
// a valid signature or, with tamper, an invalid one.
func (s *Server) SendPing(ctx context.Context, tamper bool) (PingResult, error) {
	if s.cfg.InteractionsURL == "" {
		return PingResult{}, errors.New("no InteractionsURL configured")
	}
	s.mu.Lock()
	id := s.ids.next()
	s.mu.Unlock()
	body, _ := json.Marshal(map[string]any{"id": idStr(id), "application_id": idStr(s.appID), "type": InteractionPing,
		"token": newSessionID(), "version": 1})
	status, resp, err := s.postSigned(ctx, body, tamper)
	res := PingResult{Status: status}
	if json.Valid(resp) {
		res.Body = resp
	}
	if err != nil {
		res.Error = err.Error()
	}
	return res, nil
}

// VerifyEndpoint does what Discord does when an interactions endpoint URL is
// saved: a signed PING must get 200 {"type":1} and a badly signed one 401.
func (s *Server) VerifyEndpoint(ctx context.Context) error {
	good, err := s.SendPing(ctx, false)
	if err != nil {
		return err
	}
	var pong struct {
		Type int `json:"type"`
	}
	if good.Status != 200 || json.Unmarshal(good.Body, &pong) != nil || pong.Type != ResponsePong {
		return fmt.Errorf("interactions endpoint answered a valid PING with HTTP %d %s %s, want 200 {\"type\":1}", good.Status, good.Body, good.Error)
	}
	bad, err := s.SendPing(ctx, true)
	if err != nil {
		return err
	}
	if bad.Status != http.StatusUnauthorized {
		return fmt.Errorf("interactions endpoint answered a PING with a bad signature with HTTP %d, want 401", bad.Status)
	}
	return nil
}

// acknowledgeLocked records the first response to an interaction.
func (s *Server) acknowledgeLocked(in *interaction, typ int, body []byte) {
	now := time.Now()
	in.rec.Acknowledged, in.rec.RespondedAt, in.rec.ResponseType = true, now, typ
	in.rec.Response = append(json.RawMessage(nil), body...)
	in.rec.WithinDeadline = now.Sub(in.rec.CreatedAt) <= s.cfg.InteractionDeadline
	if typ == ResponseChannelMessage {
		var resp struct {
			Data messageBody `json:"data"`
		}
		_ = json.Unmarshal(body, &resp)
		s.createOriginalLocked(in, resp.Data)
	}
}

func (s *Server) createOriginalLocked(in *interaction, data messageBody) *message {
	m := &message{id: s.ids.next(), guildID: in.guildID, channelID: in.channelID, authorID: s.appID, bot: true, at: time.Now(), embeds: data.Embeds, flags: data.Flags}
	if data.Content != nil {
		m.content = *data.Content
	}
	m.typ = messageChatInputCommand
	if in.commandType != CommandChatInput {
		m.typ = messageContextMenuCommand
	}
	m.interaction = map[string]any{"id": in.rec.ID, "type": InteractionApplicationCommand, "name": in.rec.Name,
		"user": userPayload(in.userID, false), "authorizing_integration_owners": map[string]any{"0": idStr(in.guildID)}}
	in.original, in.ephemeral = m, data.Flags&ephemeralFlag != 0
	s.messages[m.id] = m
	if !in.ephemeral {
		s.dispatchMessageLocked("MESSAGE_CREATE", m)
	}
	in.rec.Original, _ = json.Marshal(s.messagePayload(m, true))
	return m
}

// Interactions lists every interaction delivered so far.
func (s *Server) Interactions() []InteractionRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]InteractionRecord, 0, len(s.interactions))
	for _, in := range s.interactions {
		out = append(out, s.recordCopy(in))
	}
	return out
}

// Interaction returns one interaction's record by id.
func (s *Server) Interaction(id uint64) (InteractionRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.interactions[id]
	if !ok {
		return InteractionRecord{}, false
	}
	return s.recordCopy(in), true
}

func (s *Server) recordCopy(in *interaction) InteractionRecord {
	r := in.rec
	r.Followups = append([]json.RawMessage(nil), in.rec.Followups...)
	return r
}

// https://discord.com/developers/docs/interactions/receiving-and-responding#create-interaction-response
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	var resp struct {
		Type int             `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err == nil {
		var payload json.RawMessage
		payload, err = requestJSON(r.Header.Get("Content-Type"), body)
		if err == nil {
			err = json.Unmarshal(payload, &resp)
			body = payload
		}
	}
	if err != nil {
		discordError(w, 400, 50109, "The request body contains invalid JSON.")
		return
	}
	iid, _ := pathID(r, "iid")
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.interactions[iid]
	if !ok || in.rec.Token != r.PathValue("token") || time.Since(in.rec.CreatedAt) > s.cfg.InteractionDeadline {
		if ok && !in.rec.Acknowledged {
			in.rec.Error = "callback arrived after the deadline"
		}
		discordError(w, 404, 10062, "Unknown interaction")
		return
	}
	if in.rec.Acknowledged {
		discordError(w, 400, 40060, "Interaction has already been acknowledged.")
		return
	}
	if resp.Type < ResponseChannelMessage || resp.Type > ResponseModal {
		discordError(w, 400, 50035, "Invalid Form Body")
		return
	}
	s.acknowledgeLocked(in, resp.Type, body)
	if r.URL.Query().Get("with_response") == "true" {
		writeJSON(w, 200, map[string]any{"interaction": map[string]any{"id": in.rec.ID, "type": InteractionApplicationCommand,
			"response_message_loading": resp.Type == ResponseDeferredChannelMessage}})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// webhookInteractionLocked finds the interaction behind a webhook token, or
// writes 404 Unknown Webhook (also once the 15-minute token lifetime passed).
func (s *Server) webhookInteractionLocked(w http.ResponseWriter, r *http.Request) *interaction {
	app, _ := pathID(r, "app")
	in, ok := s.byToken[r.PathValue("token")]
	if app != s.appID || !ok || !in.rec.Acknowledged || time.Since(in.rec.CreatedAt) > followupWindow {
		discordError(w, 404, 10015, "Unknown Webhook")
		return nil
	}
	return in
}

// https://discord.com/developers/docs/interactions/receiving-and-responding#create-followup-message
func (s *Server) handleFollowup(w http.ResponseWriter, r *http.Request) {
	var body messageBody
	if !decodeBody(w, r, &body) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.webhookInteractionLocked(w, r)
	if in == nil {
		return
	}
	if body.empty() {
		discordError(w, 400, 50006, "Cannot send an empty message")
		return
	}
	if in.rec.ResponseType == ResponseDeferredChannelMessage && in.original == nil {
		// The first follow-up after a deferred response edits the loading message.
		m := s.createOriginalLocked(in, body)
		in.rec.Followups = append(in.rec.Followups, in.rec.Original)
		writeJSON(w, 200, s.messagePayload(m, true))
		return
	}
	m := &message{id: s.ids.next(), guildID: in.guildID, channelID: in.channelID, authorID: s.appID, bot: true, at: time.Now(), embeds: body.Embeds, flags: body.Flags}
	if body.Content != nil {
		m.content = *body.Content
	}
	s.messages[m.id] = m
	if body.Flags&ephemeralFlag == 0 {
		s.dispatchMessageLocked("MESSAGE_CREATE", m)
	}
	p, _ := json.Marshal(s.messagePayload(m, true))
	in.rec.Followups = append(in.rec.Followups, p)
	writeJSON(w, 200, json.RawMessage(p))
}

// handleWebhookMessage serves GET/PATCH/DELETE /webhooks/{app}/{token}/messages/{mid}
// (mid "@original" is the interaction response).
func (s *Server) handleWebhookMessage(w http.ResponseWriter, r *http.Request) {
	var body messageBody
	if r.Method == http.MethodPatch && !decodeBody(w, r, &body) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.webhookInteractionLocked(w, r)
	if in == nil {
		return
	}
	var m *message
	if mid := r.PathValue("mid"); mid == "@original" {
		m = in.original
		if m == nil && r.Method == http.MethodPatch && in.rec.ResponseType == ResponseDeferredChannelMessage {
			writeJSON(w, 200, s.messagePayload(s.createOriginalLocked(in, body), true))
			return
		}
	} else if id, err := strconv.ParseUint(mid, 10, 64); err == nil {
		if mm, ok := s.messages[id]; ok && mm.bot && mm.guildID == in.guildID {
			m = mm
		}
	}
	if m == nil {
		discordError(w, 404, 10008, "Unknown Message")
		return
	}
	switch r.Method {
	case http.MethodGet:
		writeJSON(w, 200, s.messagePayload(m, true))
	case http.MethodDelete:
		delete(s.messages, m.id)
		if in.original == m {
			in.original = nil
		}
		s.dispatchLocked(m.guildID, "MESSAGE_DELETE", map[string]any{"id": idStr(m.id), "channel_id": idStr(m.channelID), "guild_id": idStr(m.guildID)}, IntentGuildMessages)
		w.WriteHeader(http.StatusNoContent)
	default:
		now := time.Now()
		if body.Content != nil {
			m.content = *body.Content
		}
		if body.Embeds != nil {
			m.embeds = body.Embeds
		}
		m.edited = &now
		if in.original == m {
			in.rec.Original, _ = json.Marshal(s.messagePayload(m, true))
		}
		if m.flags&ephemeralFlag == 0 {
			s.dispatchMessageLocked("MESSAGE_UPDATE", m)
		}
		writeJSON(w, 200, s.messagePayload(m, true))
	}
}

// Application command option types with resolved data
// (https://discord.com/developers/docs/interactions/application-commands#application-command-object-application-command-option-type).
const (
	optionSubCommand      = 1
	optionSubCommandGroup = 2
	optionUser            = 6
	optionChannel         = 7
	optionRole            = 8
	optionMentionable     = 9
)

// optionTypesLocked maps option names to types from the registered command
// (guild command first, then global), subcommand options included.
func (s *Server) optionTypesLocked(guildID uint64, name string) map[string]int {
	types := map[string]int{}
	var walk func(opts any)
	walk = func(opts any) {
		list, _ := opts.([]any)
		for _, o := range list {
			m, _ := o.(map[string]any)
			n, _ := m["name"].(string)
			t, _ := m["type"].(float64)
			if n != "" && t > 0 {
				types[n] = int(t)
			}
			walk(m["options"])
		}
	}
	for _, scope := range []uint64{guildID, 0} {
		for _, c := range s.commands[scope] {
			if c["name"] == name && fmt.Sprint(c["type"]) == strconv.Itoa(CommandChatInput) {
				walk(c["options"])
				return types
			}
		}
	}
	return types
}

// resolveOptionsLocked builds data.resolved for user, channel, role and
// mentionable options (in subcommands too), as Discord does.
func (s *Server) resolveOptionsLocked(guildID uint64, opts []any) map[string]any {
	g := s.guilds[guildID]
	users, members, channels, roles := map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}
	addUser := func(id uint64) {
		users[idStr(id)] = userPayload(id, false)
		if id == s.appID {
			users[idStr(id)] = s.botUser()
		}
		if g != nil && g.isMember(id) {
			m := s.memberLocked(g, id)
			delete(m, "user")
			m["permissions"] = "1071698660929"
			members[idStr(id)] = m
		}
	}
	addRole := func(id uint64) bool {
		if g == nil {
			return false
		}
		for i, r := range g.roles {
			if r.ID == id {
				roles[idStr(id)] = rolePayload(r, i)
				return true
			}
		}
		return false
	}
	var walk func(list []any)
	walk = func(list []any) {
		for _, o := range list {
			m, _ := o.(map[string]any)
			t, _ := m["type"].(int)
			if f, ok := m["type"].(float64); ok {
				t = int(f)
			}
			if t == optionSubCommand || t == optionSubCommandGroup {
				sub, _ := m["options"].([]any)
				walk(sub)
				continue
			}
			id, err := strconv.ParseUint(fmt.Sprint(m["value"]), 10, 64)
			if err != nil {
				continue
			}
			switch t {
			case optionUser:
				addUser(id)
			case optionRole:
				addRole(id)
			case optionMentionable:
				if !addRole(id) {
					addUser(id)
				}
			case optionChannel:
				if g == nil {
					continue
				}
				for _, c := range g.channels {
					if c.ID == id {
						channels[idStr(id)] = map[string]any{"id": idStr(id), "name": c.Name, "type": 0, "guild_id": idStr(g.id),
							"permissions": "1071698660929", "parent_id": nil}
					}
				}
			}
		}
	}
	walk(opts)
	out := map[string]any{}
	for k, v := range map[string]map[string]any{"users": users, "members": members, "channels": channels, "roles": roles} {
		if len(v) > 0 {
			out[k] = v
		}
	}
	return out
}
