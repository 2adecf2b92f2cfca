package fakediscord

import (
	"bytes"
	"compress/zlib"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes).
const (
	opDispatch       = 0
	opHeartbeat      = 1
	opIdentify       = 2
	opPresenceUpdate = 3
	opVoiceState     = 4
	opResume         = 6
	opReconnect      = 7
	opRequestMembers = 8
	opInvalidSession = 9
	opHello          = 10
	opHeartbeatACK   = 11
)

// Gateway close codes (same page, "Gateway Close Event Codes").
const (
	CloseUnknownOpcode        = 4001
	CloseDecodeError          = 4002
	CloseNotAuthenticated     = 4003
	CloseAuthenticationFail   = 4004
	CloseAlreadyAuthenticated = 4005
	CloseInvalidSeq           = 4007
	CloseSessionTimedOut      = 4009
	CloseInvalidShard         = 4010
	CloseShardingRequired     = 4011
	CloseInvalidAPIVersion    = 4012
	CloseInvalidIntents       = 4013
)

const sessionStartTotal = 1000

// IdentifyAttempt is one IDENTIFY as the fake judged it.
type IdentifyAttempt struct {
	At        time.Time `json:"at"`
	Shard     [2]int    `json:"shard"`
	Bucket    int       `json:"bucket"`
	Result    string    `json:"result"` // "ok", "rate_limited", "bad_token", "invalid_shard", "sharding_required", "invalid_intents", "start_limit"
	SessionID string    `json:"session_id,omitempty"`
}

// SessionInfo describes a gateway session.
type SessionInfo struct {
	SessionID     string    `json:"session_id"`
	Shard         [2]int    `json:"shard"`
	Seq           int64     `json:"seq"`
	Connected     bool      `json:"connected"`
	Intents       int       `json:"intents"`
	IdentifiedAt  time.Time `json:"identified_at"`
	LastHeartbeat time.Time `json:"last_heartbeat,omitzero"`
	Resumes       int       `json:"resumes"`
}

type frame struct {
	seq int64
	raw []byte
}

// session is a Discord gateway session; it outlives connections until it is
// invalidated or its resume window passes. Guarded by Server.mu.
type session struct {
	id                  string
	shardID, shardCount int
	intents             int
	compress            bool
	seq                 int64
	history             []frame
	conn                *gwConn
	identifiedAt        time.Time
	disconnectedAt      time.Time
	resumes             int
}

// gwConn is one websocket connection. Fields after mu-comment are guarded by Server.mu.
type gwConn struct {
	s          *Server
	ws         *websocket.Conn
	host       string
	notify     chan struct{}
	done       chan struct{}
	writerDone chan struct{}
	killOnce   sync.Once

	// guarded by Server.mu
	sess          *session
	out           [][]byte
	compress      bool
	stallUntil    time.Time
	closeCode     int
	closeText     string
	lastHeartbeat time.Time
}

func (c *gwConn) kill() {
	c.killOnce.Do(func() {
		close(c.done)
		_ = c.ws.NetConn().Close()
	})
}

func (c *gwConn) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// enqueueLocked queues a frame for this connection; s.mu must be held.
func (c *gwConn) enqueueLocked(raw []byte) {
	c.out = append(c.out, raw)
	c.wake()
}

func (c *gwConn) closeWithLocked(code int, text string) {
	if c.closeCode == 0 {
		c.closeCode, c.closeText = code, text
	}
	c.wake()
}

func opFrame(op int, d any) []byte {
	b, _ := json.Marshal(map[string]any{"op": op, "d": d, "s": nil, "t": nil})
	return b
}

func dispatchFrame(t string, seq int64, d json.RawMessage) []byte {
	var b bytes.Buffer
	b.Grow(len(d) + 64)
	b.WriteString(`{"op":0,"t":"`)
	b.WriteString(t)
	b.WriteString(`","s":`)
	b.WriteString(strconv.FormatInt(seq, 10))
	b.WriteString(`,"d":`)
	b.Write(d)
	b.WriteString("}")
	return b.Bytes()
}

// appendLocked adds a dispatch to the session's history and sends it if connected.
func (s *Server) appendLocked(sess *session, t string, d json.RawMessage) {
	sess.seq++
	f := frame{seq: sess.seq, raw: dispatchFrame(t, sess.seq, d)}
	sess.history = append(sess.history, f)
	if over := len(sess.history) - s.cfg.HistoryLimit; over > 0 {
		sess.history = append(sess.history[:0:0], sess.history[over:]...)
	}
	if sess.conn != nil {
		sess.conn.enqueueLocked(f.raw)
	}
}

// dispatchLocked sends a guild event to every live session of the guild's shard
// that has intent (0 = no intent needed).
func (s *Server) dispatchLocked(guildID uint64, t string, d any, intent int) {
	s.dispatchVariantLocked(guildID, t, d, nil, intent)
}

// dispatchVariantLocked is dispatchLocked where sessions without the
// MESSAGE_CONTENT intent get noContent instead of d (when noContent != nil).
func (s *Server) dispatchVariantLocked(guildID uint64, t string, d, noContent any, intent int) {
	s.pruneLocked()
	raw, err := json.Marshal(d)
	if err != nil {
		s.log.Error("fakediscord: marshal dispatch", "type", t, "err", err)
		return
	}
	var rawNC json.RawMessage
	for _, id := range s.sessionOrder {
		sess := s.sessions[id]
		if ShardFor(guildID, sess.shardCount) != sess.shardID || (intent != 0 && sess.intents&intent == 0) {
			continue
		}
		if noContent != nil && sess.intents&IntentMessageContent == 0 {
			if rawNC == nil {
				rawNC, _ = json.Marshal(noContent)
			}
			s.appendLocked(sess, t, rawNC)
			continue
		}
		s.appendLocked(sess, t, raw)
	}
}

func (s *Server) pruneLocked() {
	now := time.Now()
	kept := s.sessionOrder[:0]
	for _, id := range s.sessionOrder {
		sess := s.sessions[id]
		if sess.conn == nil && now.Sub(sess.disconnectedAt) > s.cfg.ResumeWindow {
			delete(s.sessions, id)
			continue
		}
		kept = append(kept, id)
	}
	s.sessionOrder = kept
}

func (s *Server) deleteSessionLocked(sess *session) {
	if _, ok := s.sessions[sess.id]; !ok {
		return
	}
	delete(s.sessions, sess.id)
	for i, id := range s.sessionOrder {
		if id == sess.id {
			s.sessionOrder = append(s.sessionOrder[:i], s.sessionOrder[i+1:]...)
			break
		}
	}
}

func (s *Server) heartbeatTimeout() time.Duration { return 2*s.cfg.HeartbeatInterval + time.Second }

// serveGateway handles the gateway websocket.
// https://discord.com/developers/docs/topics/gateway#connecting
func (s *Server) serveGateway(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		s.log.Debug("fakediscord: websocket upgrade", "err", err)
		return
	}
	c := &gwConn{s: s, ws: ws, host: r.Host, notify: make(chan struct{}, 1), done: make(chan struct{}), writerDone: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.kill()
		return
	}
	s.conns[c] = struct{}{}
	c.enqueueLocked(opFrame(opHello, map[string]any{"heartbeat_interval": s.cfg.HeartbeatInterval.Milliseconds()}))
	if v := r.URL.Query().Get("v"); v != "" && v != "9" && v != "10" {
		c.closeWithLocked(CloseInvalidAPIVersion, "Invalid API version.")
	}
	s.mu.Unlock()

	go c.writeLoop()
	c.readLoop()

	s.mu.Lock()
	delete(s.conns, c)
	if c.sess != nil && c.sess.conn == c {
		c.sess.conn = nil
		c.sess.disconnectedAt = time.Now()
	}
	c.sess = nil
	closing := c.closeCode != 0
	s.mu.Unlock()
	if closing { // let the pending close frame go out
		select {
		case <-c.writerDone:
		case <-time.After(time.Second):
		}
	}
	c.kill()
}

func (c *gwConn) writeLoop() {
	defer close(c.writerDone)
	s := c.s
	for {
		select {
		case <-c.notify:
		case <-c.done:
			return
		}
		for {
			s.mu.Lock()
			code, text := c.closeCode, c.closeText
			if wait := time.Until(c.stallUntil); code == 0 && wait > 0 {
				s.mu.Unlock()
				select {
				case <-time.After(wait):
					continue
				case <-c.done:
					return
				}
			}
			frames, compress := c.out, c.compress
			c.out = nil
			s.mu.Unlock()
			for _, f := range frames {
				if err := c.write(f, compress); err != nil {
					s.log.Debug("fakediscord: gateway write", "err", err)
					c.kill()
					return
				}
			}
			if code != 0 {
				_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
				// Give the client a moment to read the close frame before the TCP close.
				select {
				case <-c.done:
				case <-time.After(200 * time.Millisecond):
				}
				c.kill()
				return
			}
			if len(frames) == 0 {
				break
			}
		}
	}
}

// write sends one payload; with identify compress it is a zlib-compressed
// binary frame, as Discord's payload compression does.
func (c *gwConn) write(f []byte, compress bool) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if !compress {
		return c.ws.WriteMessage(websocket.TextMessage, f)
	}
	var b bytes.Buffer
	zw := zlib.NewWriter(&b)
	if _, err := zw.Write(f); err != nil {
		return fmt.Errorf("compress payload: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress payload: %w", err)
	}
	return c.ws.WriteMessage(websocket.BinaryMessage, b.Bytes())
}

type gatewayPayload struct {
	Op *int            `json:"op"`
	D  json.RawMessage `json:"d"`
}

func (c *gwConn) readLoop() {
	s := c.s
	_ = c.ws.SetReadDeadline(time.Now().Add(s.heartbeatTimeout()))
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			var ne net.Error
			switch {
			case errors.As(err, &ce):
				// Closing with 1000/1001 invalidates the session (gateway docs, "Disconnecting").
				s.log.Debug("fakediscord: client closed", "code", ce.Code)
				if ce.Code == websocket.CloseNormalClosure || ce.Code == websocket.CloseGoingAway {
					s.mu.Lock()
					if c.sess != nil {
						s.deleteSessionLocked(c.sess)
					}
					s.mu.Unlock()
				}
			case errors.As(err, &ne) && ne.Timeout():
				s.mu.Lock()
				if c.sess != nil {
					s.deleteSessionLocked(c.sess)
				}
				c.closeWithLocked(CloseSessionTimedOut, "Session timed out.")
				s.mu.Unlock()
			}
			return
		}
		var p gatewayPayload
		if err := json.Unmarshal(data, &p); err != nil || p.Op == nil {
			s.closeConn(c, CloseDecodeError, "Error while decoding payload.")
			return
		}
		switch *p.Op {
		case opHeartbeat:
			_ = c.ws.SetReadDeadline(time.Now().Add(s.heartbeatTimeout()))
			s.mu.Lock()
			c.lastHeartbeat = time.Now()
			c.enqueueLocked(opFrame(opHeartbeatACK, nil))
			s.mu.Unlock()
		case opIdentify:
			if !s.identify(c, p.D) {
				return
			}
		case opResume:
			if !s.resume(c, p.D) {
				return
			}
		case opRequestMembers:
			if !s.requestMembers(c, p.D) {
				return
			}
		case opPresenceUpdate, opVoiceState:
			s.mu.Lock()
			authed := c.sess != nil
			s.mu.Unlock()
			if !authed {
				s.closeConn(c, CloseNotAuthenticated, "Not authenticated.")
				return
			}
		default:
			s.closeConn(c, CloseUnknownOpcode, "Unknown opcode.")
			return
		}
	}
}

func (s *Server) closeConn(c *gwConn, code int, text string) {
	s.mu.Lock()
	c.closeWithLocked(code, text)
	s.mu.Unlock()
}

func (s *Server) validToken(tok string) bool {
	return tok == s.cfg.Token || tok == "Bot "+s.cfg.Token
}

func newSessionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// identify handles op 2; it returns false when the connection must end.
// https://discord.com/developers/docs/topics/gateway#identifying
func (s *Server) identify(c *gwConn, d json.RawMessage) bool {
	var id struct {
		Token    string  `json:"token"`
		Intents  *int    `json:"intents"`
		Shard    *[2]int `json:"shard"`
		Compress bool    `json:"compress"`
	}
	if err := json.Unmarshal(d, &id); err != nil {
		s.closeConn(c, CloseDecodeError, "Error while decoding payload.")
		return false
	}
	shard := [2]int{0, 1}
	if id.Shard != nil {
		shard = *id.Shard
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	attempt := IdentifyAttempt{At: now, Shard: shard}
	if shard[1] > 0 {
		attempt.Bucket = shard[0] % s.cfg.MaxConcurrency
	}
	record := func(result string) {
		attempt.Result = result
		s.identifies = append(s.identifies, attempt)
		if len(s.identifies) > 10000 {
			s.identifies = append(s.identifies[:0:0], s.identifies[len(s.identifies)-10000:]...)
		}
	}
	if c.sess != nil {
		c.closeWithLocked(CloseAlreadyAuthenticated, "Already authenticated.")
		return false
	}
	if !s.validToken(id.Token) {
		record("bad_token")
		c.closeWithLocked(CloseAuthenticationFail, "Authentication failed.")
		return false
	}
	if shard[1] < 1 || shard[0] < 0 || shard[0] >= shard[1] {
		record("invalid_shard")
		c.closeWithLocked(CloseInvalidShard, "Invalid shard.")
		return false
	}
	if id.Intents == nil || *id.Intents < 0 || *id.Intents >= 1<<26 {
		record("invalid_intents")
		c.closeWithLocked(CloseInvalidIntents, "Invalid intent(s).")
		return false
	}
	var shardGuilds []uint64
	for _, gid := range s.guildOrder {
		if ShardFor(gid, shard[1]) == shard[0] {
			shardGuilds = append(shardGuilds, gid)
		}
	}
	if len(shardGuilds) > s.cfg.MaxGuildsPerShard {
		record("sharding_required")
		c.closeWithLocked(CloseShardingRequired, "Sharding required.")
		return false
	}
	if now.After(s.startsReset) {
		s.startsUsed, s.startsReset = 0, now.Add(24*time.Hour)
	}
	if s.startsUsed >= sessionStartTotal {
		record("start_limit")
		c.enqueueLocked(opFrame(opInvalidSession, false))
		return true
	}
	if last, ok := s.bucketLast[attempt.Bucket]; ok && s.cfg.IdentifyInterval > 0 && now.Sub(last) < s.cfg.IdentifyInterval {
		record("rate_limited")
		c.enqueueLocked(opFrame(opInvalidSession, false))
		return true
	}
	s.bucketLast[attempt.Bucket] = now
	s.startsUsed++

	sess := &session{id: newSessionID(), shardID: shard[0], shardCount: shard[1], intents: *id.Intents, compress: id.Compress, identifiedAt: now, conn: c}
	s.sessions[sess.id] = sess
	s.sessionOrder = append(s.sessionOrder, sess.id)
	c.sess, c.compress = sess, id.Compress
	attempt.SessionID = sess.id
	record("ok")

	unavailable := make([]map[string]any, 0, len(shardGuilds))
	for _, gid := range shardGuilds {
		unavailable = append(unavailable, map[string]any{"id": idStr(gid), "unavailable": true})
	}
	ready, _ := json.Marshal(map[string]any{
		"v": 9, "user": s.botUser(), "guilds": unavailable, "session_id": sess.id, "session_type": "normal",
		"resume_gateway_url": "ws://" + c.host + "/gateway-ws", "shard": shard,
		"application":      map[string]any{"id": idStr(s.appID), "flags": 0},
		"private_channels": []any{}, "relationships": []any{}, "presences": []any{}, "user_settings": map[string]any{},
		"_trace": []string{"fakediscord"},
	})
	s.appendLocked(sess, "READY", ready)
	if sess.intents&IntentGuilds != 0 {
		for _, gid := range shardGuilds {
			raw, _ := json.Marshal(s.guildCreatePayload(s.guilds[gid]))
			s.appendLocked(sess, "GUILD_CREATE", raw)
		}
	}
	s.log.Info("fakediscord: identify", "session", sess.id, "shard", shard, "guilds", len(shardGuilds))
	return true
}

// resume handles op 6. https://discord.com/developers/docs/topics/gateway#resuming
func (s *Server) resume(c *gwConn, d json.RawMessage) bool {
	var r struct {
		Token     string `json:"token"`
		SessionID string `json:"session_id"`
		Seq       int64  `json:"seq"`
	}
	if err := json.Unmarshal(d, &r); err != nil {
		s.closeConn(c, CloseDecodeError, "Error while decoding payload.")
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	if c.sess != nil {
		c.closeWithLocked(CloseAlreadyAuthenticated, "Already authenticated.")
		return false
	}
	if !s.validToken(r.Token) {
		c.closeWithLocked(CloseAuthenticationFail, "Authentication failed.")
		return false
	}
	sess, ok := s.sessions[r.SessionID]
	if !ok {
		s.log.Info("fakediscord: resume of an unknown session", "session", r.SessionID)
		c.enqueueLocked(opFrame(opInvalidSession, false))
		return true
	}
	if r.Seq > sess.seq || r.Seq < 0 {
		c.closeWithLocked(CloseInvalidSeq, "Invalid seq.")
		return false
	}
	if len(sess.history) > 0 && r.Seq < sess.history[0].seq-1 {
		// The dispatches after r.Seq are no longer retained.
		s.deleteSessionLocked(sess)
		c.enqueueLocked(opFrame(opInvalidSession, false))
		return true
	}
	if old := sess.conn; old != nil {
		old.sess = nil
		go old.kill()
	}
	sess.conn, sess.resumes = c, sess.resumes+1
	c.sess, c.compress = sess, sess.compress
	for _, f := range sess.history {
		if f.seq > r.Seq {
			c.out = append(c.out, f.raw)
		}
	}
	c.enqueueLocked(dispatchFrame("RESUMED", sess.seq, json.RawMessage(`{"_trace":["fakediscord"]}`)))
	s.log.Info("fakediscord: resume", "session", sess.id, "from_seq", r.Seq, "to_seq", sess.seq)
	return true
}

// --- fault injection -------------------------------------------------------

func (s *Server) sessionConnLocked(id string) (*session, *gwConn, error) {
	sess, ok := s.sessions[id]
	if !ok {
		return nil, nil, fmt.Errorf("session %q: %w", id, ErrUnknownSession)
	}
	if sess.conn == nil {
		return sess, nil, fmt.Errorf("session %q is not connected: %w", id, ErrUnknownSession)
	}
	return sess, sess.conn, nil
}

// DropSession closes the session's TCP connection abruptly, without a close
// frame. The session stays resumable.
func (s *Server) DropSession(id string) error {
	s.mu.Lock()
	_, c, err := s.sessionConnLocked(id)
	if err == nil {
		c.sess.conn, c.sess.disconnectedAt = nil, time.Now()
		c.sess = nil
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	c.kill()
	return nil
}

// Reconnect sends op 7 RECONNECT; the client should reconnect and RESUME.
func (s *Server) Reconnect(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, c, err := s.sessionConnLocked(id)
	if err != nil {
		return err
	}
	c.enqueueLocked(opFrame(opReconnect, nil))
	return nil
}

// InvalidateSession sends op 9 INVALID SESSION with d=resumable. The
// connection becomes unauthenticated; unless resumable the session is gone.
func (s *Server) InvalidateSession(id string, resumable bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, c, err := s.sessionConnLocked(id)
	if err != nil {
		return err
	}
	c.enqueueLocked(opFrame(opInvalidSession, resumable))
	c.sess, sess.conn, sess.disconnectedAt = nil, nil, time.Now()
	if !resumable {
		s.deleteSessionLocked(sess)
	}
	return nil
}

// StallSession stops sending anything (dispatches and heartbeat ACKs) on the
// session's connection for d; queued payloads are sent afterwards.
func (s *Server) StallSession(id string, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, c, err := s.sessionConnLocked(id)
	if err != nil {
		return err
	}
	c.stallUntil = time.Now().Add(d)
	c.wake()
	return nil
}

// RequestHeartbeat sends op 1 HEARTBEAT; the client must answer with a heartbeat.
func (s *Server) RequestHeartbeat(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, c, err := s.sessionConnLocked(id)
	if err != nil {
		return err
	}
	c.enqueueLocked(opFrame(opHeartbeat, nil))
	return nil
}

// Sessions lists live (connected or resumable) sessions in identify order.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	out := make([]SessionInfo, 0, len(s.sessionOrder))
	for _, id := range s.sessionOrder {
		sess := s.sessions[id]
		info := SessionInfo{SessionID: id, Shard: [2]int{sess.shardID, sess.shardCount}, Seq: sess.seq,
			Connected: sess.conn != nil, Intents: sess.intents, IdentifiedAt: sess.identifiedAt, Resumes: sess.resumes}
		if sess.conn != nil {
			info.LastHeartbeat = sess.conn.lastHeartbeat
		}
		out = append(out, info)
	}
	return out
}

// Identifies is the log of IDENTIFY attempts (the last 10000).
func (s *Server) Identifies() []IdentifyAttempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]IdentifyAttempt(nil), s.identifies...)
}
