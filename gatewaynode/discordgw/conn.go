package discordgw

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes).
const (
	opDispatch       = 0
	opHeartbeat      = 1
	opIdentify       = 2
	opResume         = 6
	opReconnect      = 7
	opInvalidSession = 9
	opHello          = 10
	opHeartbeatACK   = 11
)

// closeResumable is the close code the shard sends when the session must stay
// resumable: Discord invalidates a session only on 1000 and 1001.
const closeResumable = 4000

const writeTimeout = 10 * time.Second

// fatalCloseCode reports whether a close code ends the shard for good:
// reconnecting cannot help (authentication, shard, version or intents).
func fatalCloseCode(code int) bool {
	switch code {
	case 4004, 4010, 4011, 4012, 4013, 4014:
		return true
	}
	return false
}

// payload is a gateway message as received.
type payload struct {
	Op int             `json:"op"`
	D  json.RawMessage `json:"d"`
	S  *int64          `json:"s"`
	T  string          `json:"t"`
}

type identifyProperties struct {
	OS      string `json:"os"`
	Browser string `json:"browser"`
	Device  string `json:"device"`
}

type identifyData struct {
	Token          string             `json:"token"`
	Intents        int                `json:"intents"`
	Properties     identifyProperties `json:"properties"`
	Compress       bool               `json:"compress"`
	LargeThreshold int                `json:"large_threshold"`
	Shard          [2]int             `json:"shard"`
}

type resumeData struct {
	Token     string `json:"token"`
	SessionID string `json:"session_id"`
	Seq       int64  `json:"seq"`
}

// conn is one websocket connection of a Shard. The run goroutine reads
// (serve); the watch goroutine heartbeats and closes the connection when the
// shard stops or the connection turns out to be a zombie.
type conn struct {
	s          *Shard
	ws         *websocket.Conn
	lim        *limiter
	hello      chan time.Duration
	readerDone chan struct{}

	wmu sync.Mutex // gorilla allows one concurrent writer

	mu           sync.Mutex
	unackedSince time.Time // oldest heartbeat without ACK
	lastBeat     time.Time
	zombie       bool
}

// connect runs one connection from dial to close and says what to do next.
func (s *Shard) connect(mode connMode) outcome {
	s.mu.Lock()
	target := s.cfg.GatewayURL
	if mode == modeResume && s.resumeURL != "" {
		target = s.resumeURL
	}
	s.mu.Unlock()
	u, err := gatewayURL(target)
	if err != nil {
		s.log.Warn("discordgw: unusable resume URL; using the gateway URL", "url", target, "err", err)
		u, _ = gatewayURL(s.cfg.GatewayURL) // validated by Open
	}
	ws, _, err := s.cfg.Dialer.DialContext(s.ctx, u, nil)
	if err != nil {
		return outcome{next: mode, err: fmt.Errorf("dial %s: %w", u, err)}
	}
	c := &conn{
		s:          s,
		ws:         ws,
		lim:        newLimiter(gatewayCommandLimit, gatewayCommandWindow),
		hello:      make(chan time.Duration, 1),
		readerDone: make(chan struct{}),
	}
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		c.watch()
	}()
	o := c.serve(mode)
	close(c.readerDone)
	<-watcherDone
	_ = ws.Close()
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	return o
}

// serve performs the handshake and reads until the connection ends.
func (c *conn) serve(mode connMode) outcome {
	s := c.s
	_ = c.ws.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	p, err := c.read()
	if err != nil {
		return c.classify(mode, false, fmt.Errorf("waiting for HELLO: %w", err))
	}
	if p.Op != opHello {
		c.closeWith(closeResumable)
		return outcome{next: mode, err: fmt.Errorf("expected HELLO (op 10), got op %d", p.Op)}
	}
	var hello struct {
		HeartbeatInterval int64 `json:"heartbeat_interval"`
	}
	if err := json.Unmarshal(p.D, &hello); err != nil || hello.HeartbeatInterval <= 0 {
		c.closeWith(closeResumable)
		return outcome{next: mode, err: fmt.Errorf("bad HELLO %s: %v", p.D, err)}
	}
	interval := time.Duration(hello.HeartbeatInterval) * time.Millisecond
	c.lim.reserveFor(interval)
	c.hello <- interval
	_ = c.ws.SetReadDeadline(time.Time{})

	if err := c.authenticate(mode); err != nil {
		return c.classify(mode, false, err)
	}

	established := false
	for {
		p, err := c.read()
		if err != nil {
			return c.classify(mode, established, err)
		}
		switch p.Op {
		case opDispatch:
			if p.S == nil {
				s.log.Warn("discordgw: dispatch without a sequence number ignored", "type", p.T)
				continue
			}
			est, err := s.handleDispatch(*p.S, p.T, p.D)
			if err != nil {
				c.closeWith(closeResumable)
				return outcome{next: modeIdentify, established: established, err: err}
			}
			if est {
				established, mode = true, modeResume
				s.mu.Lock()
				s.cur = c
				s.mu.Unlock()
				s.readyOnce.Do(func() { close(s.ready) })
			}
		case opHeartbeat:
			if err := c.heartbeat(); err != nil {
				return c.classify(mode, established, fmt.Errorf("answer heartbeat request: %w", err))
			}
		case opHeartbeatACK:
			c.ack()
		case opReconnect:
			c.closeWith(closeResumable)
			return outcome{next: modeResume, established: established, err: errors.New("gateway asked to reconnect (op 7)")}
		case opInvalidSession:
			var resumable bool
			_ = json.Unmarshal(p.D, &resumable)
			c.closeWith(closeResumable)
			if resumable {
				return outcome{next: modeResume, established: established, err: errors.New("invalid session (op 9), resumable")}
			}
			return outcome{next: modeIdentify, wait: s.invalidSessionDelay(), established: established,
				err: errors.New("invalid session (op 9), not resumable: identifying afresh")}
		case opHello:
			// Only expected once; nothing to do.
		default:
			s.log.Debug("discordgw: unhandled opcode", "op", p.Op)
		}
	}
}

// authenticate sends IDENTIFY or RESUME.
func (c *conn) authenticate(mode connMode) error {
	s := c.s
	if mode == modeResume {
		s.mu.Lock()
		r := resumeData{Token: s.cfg.Token, SessionID: s.sessionID, Seq: s.lastSeq}
		s.mu.Unlock()
		s.log.Info("discordgw: resuming", "session", r.SessionID, "seq", r.Seq)
		if err := c.send(s.ctx, opResume, r, false); err != nil {
			return fmt.Errorf("send RESUME: %w", err)
		}
		return nil
	}
	id := identifyData{
		Token:          s.cfg.Token,
		Intents:        s.cfg.Intents,
		Properties:     identifyProperties{OS: runtime.GOOS, Browser: "modbot", Device: "modbot"},
		Compress:       false,
		LargeThreshold: s.cfg.LargeThreshold,
		Shard:          [2]int{s.cfg.ShardID, s.cfg.ShardCount},
	}
	s.log.Info("discordgw: identifying")
	if err := c.send(s.ctx, opIdentify, id, false); err != nil {
		return fmt.Errorf("send IDENTIFY: %w", err)
	}
	return nil
}

// classify turns a read error into what to do next.
func (c *conn) classify(mode connMode, established bool, err error) outcome {
	c.mu.Lock()
	zombie := c.zombie
	c.mu.Unlock()
	if zombie {
		return outcome{next: modeResume, established: established, err: errors.New("no heartbeat ACK: zombie connection closed")}
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		cerr := &CloseError{Code: ce.Code, Text: ce.Text}
		switch {
		case fatalCloseCode(ce.Code):
			return outcome{fatal: true, established: established, err: cerr}
		case ce.Code == 4007 || ce.Code == 4009:
			return outcome{next: modeIdentify, established: established, err: cerr}
		default:
			return outcome{next: modeResume, established: established, err: cerr}
		}
	}
	if mode == modeIdentify && !established {
		return outcome{next: modeIdentify, err: err}
	}
	return outcome{next: modeResume, established: established, err: err}
}

func (c *conn) read() (payload, error) {
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		return payload{}, err
	}
	if mt == websocket.BinaryMessage {
		// Payload compression (identify compress:true) sends each payload as
		// its own zlib stream. We identify with compress:false, but handle it.
		if data, err = inflate(data); err != nil {
			return payload{}, fmt.Errorf("binary gateway frame: %w", err)
		}
	}
	var p payload
	if err := json.Unmarshal(data, &p); err != nil {
		return payload{}, fmt.Errorf("decode gateway payload: %w", err)
	}
	return p, nil
}

func inflate(b []byte) ([]byte, error) {
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("zlib: %w", err)
	}
	defer zr.Close()
	out, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("zlib: %w", err)
	}
	return out, nil
}

// send writes one command. Heartbeats (priority) are never delayed by the
// rate limiter; everything else waits for a slot.
func (c *conn) send(ctx context.Context, op int, d any, priority bool) error {
	b, err := json.Marshal(struct {
		Op int `json:"op"`
		D  any `json:"d"`
	}{op, d})
	if err != nil {
		return fmt.Errorf("encode op %d: %w", op, err)
	}
	if !priority {
		if err := c.lim.wait(ctx, c.readerDone); err != nil {
			return err
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		return fmt.Errorf("write op %d: %w", op, err)
	}
	return nil
}

func (c *conn) heartbeat() error {
	s := c.s
	s.mu.Lock()
	var d any
	if s.lastSeq > 0 {
		d = s.lastSeq
	}
	s.mu.Unlock()
	now := time.Now()
	c.mu.Lock()
	if c.unackedSince.IsZero() {
		c.unackedSince = now
	}
	c.lastBeat = now
	c.mu.Unlock()
	return c.send(s.ctx, opHeartbeat, d, true)
}

func (c *conn) ack() {
	c.mu.Lock()
	c.unackedSince = time.Time{}
	rtt := time.Since(c.lastBeat)
	beat := !c.lastBeat.IsZero()
	c.mu.Unlock()
	if beat {
		c.s.mu.Lock()
		c.s.latency = rtt
		c.s.mu.Unlock()
	}
}

// watch heartbeats (first beat after a random fraction of the interval, as
// Discord asks), detects zombie connections, and closes the connection when
// the shard stops.
func (c *conn) watch() {
	s := c.s
	var interval time.Duration
	select {
	case interval = <-c.hello:
	case <-c.readerDone:
		return
	case <-s.ctx.Done():
		c.shutdown()
		return
	}
	t := time.NewTimer(time.Duration(rand.Float64() * float64(interval)))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.mu.Lock()
			zombie := !c.unackedSince.IsZero() && time.Since(c.unackedSince) >= interval/2
			c.zombie = zombie
			c.mu.Unlock()
			if zombie {
				s.log.Warn("discordgw: no heartbeat ACK since the last heartbeat; closing zombie connection", "interval", interval)
				c.closeWith(closeResumable)
				_ = c.ws.NetConn().Close()
				return
			}
			if err := c.heartbeat(); err != nil {
				s.log.Debug("discordgw: heartbeat", "err", err)
			}
			t.Reset(interval)
		case <-c.readerDone:
			return
		case <-s.ctx.Done():
			c.shutdown()
			return
		}
	}
}

// shutdown ends the connection as the stop mode asks: a close frame (1000 to
// end the session, 4000 to keep it resumable) and a short wait for the
// server's close reply, or an abrupt TCP close.
func (c *conn) shutdown() {
	code := closeResumable
	switch c.s.stopMode() {
	case stopAbandon:
		_ = c.ws.NetConn().Close()
		return
	case stopClose:
		code = websocket.CloseNormalClosure
	}
	c.closeWith(code)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
	}
	_ = c.ws.NetConn().Close()
}

func (c *conn) closeWith(code int) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
}
