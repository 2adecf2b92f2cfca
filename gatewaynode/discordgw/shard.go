package discordgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Checkpoint is the resumable position of a gateway session: what the caller
// stores durably and what another process passes as Config.Resume.
type Checkpoint struct {
	SessionID string `json:"session_id"`
	Seq       int64  `json:"seq"`
	ResumeURL string `json:"resume_url"`
}

// Dispatch is one gateway op-0 event, exactly as received.
type Dispatch struct {
	Seq       int64
	Type      string
	Data      json.RawMessage
	SessionID string
}

// Config configures a Shard.
type Config struct {
	// Token is the bot token (without "Bot "; a leading "Bot " is removed).
	Token string
	// ShardID and ShardCount are sent in IDENTIFY as [shard_id, shard_count].
	ShardID, ShardCount int
	// Intents is the gateway intents bit set.
	Intents int
	// GatewayURL is the "url" of REST GET /gateway/bot; the package sets
	// ?v=10&encoding=json on it.
	GatewayURL string
	// Dialer dials the websocket; nil means websocket.DefaultDialer.
	Dialer *websocket.Dialer
	// Resume, when set, resumes this (possibly another process's) session
	// instead of identifying.
	Resume *Checkpoint
	// IdentifyGate is called before every IDENTIFY and must return when this
	// shard may identify (the control plane hands out slots per
	// max_concurrency bucket); nil means no gate. An error other than the
	// context's is retried with backoff.
	IdentifyGate func(ctx context.Context, shardID int) error
	// Logger receives the shard's logs; nil discards them.
	Logger *slog.Logger
	// Buffer is the capacity of the Events() channel (default 1024).
	Buffer int

	// InvalidSessionDelay is the wait before identifying again after an
	// op 9 INVALID SESSION with d:false. Zero means a random 1–5 s, as
	// Discord's documentation asks.
	InvalidSessionDelay time.Duration
	// ReconnectBackoff is the base of the exponential backoff between
	// repeated failed connection attempts (the first reconnect after a
	// working connection is immediate). Default 1 s.
	ReconnectBackoff time.Duration
	// MaxReconnectBackoff caps the backoff. Default 30 s.
	MaxReconnectBackoff time.Duration
	// HandshakeTimeout bounds the wait for HELLO after connecting.
	// Default 20 s.
	HandshakeTimeout time.Duration
	// LargeThreshold is IDENTIFY's large_threshold (50–250, default 250).
	LargeThreshold int
}

func (c *Config) defaults() {
	if c.Dialer == nil {
		c.Dialer = websocket.DefaultDialer
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Buffer <= 0 {
		c.Buffer = 1024
	}
	if c.ReconnectBackoff <= 0 {
		c.ReconnectBackoff = time.Second
	}
	if c.MaxReconnectBackoff <= 0 {
		c.MaxReconnectBackoff = 30 * time.Second
	}
	if c.MaxReconnectBackoff < c.ReconnectBackoff {
		c.MaxReconnectBackoff = c.ReconnectBackoff
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 20 * time.Second
	}
	if c.LargeThreshold <= 0 {
		c.LargeThreshold = 250
	}
	c.Token = strings.TrimPrefix(c.Token, "Bot ")
}

func (c *Config) validate() error {
	if c.Token == "" {
		return errors.New("discordgw: Config.Token is empty")
	}
	if c.ShardCount < 1 || c.ShardID < 0 || c.ShardID >= c.ShardCount {
		return fmt.Errorf("discordgw: invalid shard [%d, %d]", c.ShardID, c.ShardCount)
	}
	if c.GatewayURL == "" {
		return errors.New("discordgw: Config.GatewayURL is empty (use the url from GET /gateway/bot)")
	}
	if _, err := gatewayURL(c.GatewayURL); err != nil {
		return err
	}
	if c.Resume != nil && c.Resume.Seq < 0 {
		return fmt.Errorf("discordgw: Config.Resume.Seq %d is negative", c.Resume.Seq)
	}
	return nil
}

// CloseError is a gateway close frame that ended the shard for good
// (4004 authentication failed, 4010 invalid shard, 4011 sharding required,
// 4012 invalid API version, 4013 invalid intents, 4014 disallowed intents).
type CloseError struct {
	Code int
	Text string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("gateway closed the connection with %d (%s): %q", e.Code, closeCodeName(e.Code), e.Text)
}

// closeCodeName names Discord's gateway close codes
// (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-close-event-codes).
func closeCodeName(code int) string {
	switch code {
	case 4000:
		return "unknown error"
	case 4001:
		return "unknown opcode"
	case 4002:
		return "decode error"
	case 4003:
		return "not authenticated"
	case 4004:
		return "authentication failed"
	case 4005:
		return "already authenticated"
	case 4007:
		return "invalid seq"
	case 4008:
		return "rate limited"
	case 4009:
		return "session timed out"
	case 4010:
		return "invalid shard"
	case 4011:
		return "sharding required"
	case 4012:
		return "invalid API version"
	case 4013:
		return "invalid intents"
	case 4014:
		return "disallowed intents"
	}
	return "unknown close code"
}

// ErrNotConnected is returned by Send while the shard has no authenticated connection.
var ErrNotConnected = errors.New("discordgw: shard is not connected")

type stopMode int

const (
	stopNone    stopMode = iota
	stopClose            // close 1000: Discord invalidates the session
	stopDetach           // close 4000: the session stays resumable
	stopAbandon          // drop TCP without a close frame (a crashed process)
)

// Shard is one gateway session of one shard. Create it with Open.
type Shard struct {
	cfg    Config
	log    *slog.Logger
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc

	out       chan Dispatch
	wake      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
	runDone   chan struct{}
	done      chan struct{}

	mu           sync.Mutex
	stop         stopMode
	sessionID    string
	resumeURL    string
	lastSeq      int64 // last dispatch received (and queued) in sessionID
	acked        int64 // highest acknowledged seq in sessionID
	established  bool  // READY or RESUMED seen at least once
	resumed      bool
	resumeFailed bool
	latency      time.Duration
	err          error
	queue        []Dispatch
	cur          *conn // authenticated connection, for Send
}

// Open connects the shard and returns once READY or RESUMED has been
// received, or with an error when the gateway refuses the shard for good
// (e.g. close 4004) or ctx ends first. ctx bounds the Shard's whole life.
func Open(ctx context.Context, cfg Config) (*Shard, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Shard{
		cfg:     cfg,
		log:     cfg.Logger.With("shard", cfg.ShardID, "shard_count", cfg.ShardCount),
		parent:  ctx,
		out:     make(chan Dispatch, cfg.Buffer),
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
		runDone: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	if r := cfg.Resume; r != nil && r.SessionID != "" {
		s.sessionID, s.resumeURL, s.lastSeq, s.acked = r.SessionID, r.ResumeURL, r.Seq, r.Seq
	}
	go s.run()
	go s.deliver() // outlives run; closes done last

	select {
	case <-s.ready:
		return s, nil
	case <-s.runDone:
		s.cancel()
		<-s.done
		if err := s.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("discordgw: open shard %d: %w", cfg.ShardID, context.Cause(ctx))
	}
}

// Events returns every dispatch in order, without duplicates (see the
// package documentation). It is closed when the shard stops for good.
func (s *Shard) Events() <-chan Dispatch { return s.out }

// Ack records that the consumer has durably committed every dispatch of the
// current session with Seq <= seq. A seq beyond the last received dispatch
// is ignored. After a fresh IDENTIFY (a READY in Events) sequence numbers
// restart; use AckDispatch when acknowledgements may lag across sessions.
func (s *Shard) Ack(seq int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ackLocked(seq)
}

// AckDispatch is Ack(d.Seq) if d belongs to the current session; otherwise
// it does nothing.
func (s *Shard) AckDispatch(d Dispatch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.SessionID == s.sessionID {
		s.ackLocked(d.Seq)
	}
}

func (s *Shard) ackLocked(seq int64) {
	if seq > s.lastSeq {
		s.log.Debug("discordgw: ack beyond the last received dispatch ignored", "seq", seq, "last", s.lastSeq)
		return
	}
	if seq > s.acked {
		s.acked = seq
	}
}

// Checkpoint is the position another process resumes from: the current
// session, the highest acknowledged seq and the session's resume URL.
func (s *Shard) Checkpoint() Checkpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Checkpoint{SessionID: s.sessionID, Seq: s.acked, ResumeURL: s.resumeURL}
}

// Received returns the current session and the seq of the last dispatch
// received in it (queued to Events, acknowledged or not). A holder handing
// its shard over waits until its acknowledged seq reaches this, so nothing
// it received is dropped with the session.
func (s *Shard) Received() (sessionID string, seq int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessionID, s.lastSeq
}

// Resumed reports whether Open resumed Config.Resume's session.
func (s *Shard) Resumed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumed
}

// ResumeFailed reports whether Config.Resume was given but its session could
// not be resumed, so the shard identified afresh: dispatches after the
// checkpoint and before the new READY are lost.
func (s *Shard) ResumeFailed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumeFailed
}

// Latency is the round trip of the last acknowledged heartbeat.
func (s *Shard) Latency() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latency
}

// Err reports why the shard stopped: nil after Close or Detach, the
// context's error when Open's context ended, or the gateway's reason
// (a *CloseError for fatal close codes).
func (s *Shard) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the shard for good and ends the session: it closes the
// connection with code 1000, after which Discord invalidates the session.
// It returns when every goroutine of the shard has ended.
func (s *Shard) Close() error { return s.halt(stopClose) }

// Detach stops the shard but keeps the session resumable elsewhere from
// Checkpoint(): it closes the connection with code 4000 (any code but
// 1000/1001 keeps a Discord session alive). It returns when every goroutine
// of the shard has ended.
func (s *Shard) Detach() error { return s.halt(stopDetach) }

// abandon drops the TCP connection without a close frame, as a crashed
// process would. For tests.
func (s *Shard) abandon() { _ = s.halt(stopAbandon) }

func (s *Shard) halt(m stopMode) error {
	s.mu.Lock()
	if s.stop == stopNone {
		s.stop = m
	}
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return nil
}

func (s *Shard) stopMode() stopMode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop
}

// Send sends a gateway command such as op 3 PRESENCE UPDATE or op 8 REQUEST
// GUILD MEMBERS on the current connection, within Discord's limit of 120
// commands per 60 s. Heartbeat, IDENTIFY and RESUME are the Shard's own.
func (s *Shard) Send(ctx context.Context, op int, d any) error {
	switch op {
	case opHeartbeat, opIdentify, opResume:
		return fmt.Errorf("discordgw: op %d is managed by the shard", op)
	}
	s.mu.Lock()
	c := s.cur
	s.mu.Unlock()
	if c == nil {
		return ErrNotConnected
	}
	return c.send(ctx, op, d, false)
}

// --- run loop ----------------------------------------------------------------

type connMode int

const (
	modeIdentify connMode = iota
	modeResume
)

func (m connMode) String() string {
	if m == modeResume {
		return "resume"
	}
	return "identify"
}

// outcome is how one connection ended and what to do next.
type outcome struct {
	next        connMode
	wait        time.Duration // extra wait before the next attempt (op 9 d:false)
	established bool          // READY or RESUMED arrived on this connection
	fatal       bool
	err         error
}

func (s *Shard) run() {
	defer close(s.runDone)
	mode := modeIdentify
	if s.Checkpoint().SessionID != "" {
		mode = modeResume
	}
	failures := 0
	for {
		if s.ctx.Err() != nil {
			s.stopped()
			return
		}
		if mode == modeResume && s.Checkpoint().SessionID == "" {
			mode = modeIdentify
		}
		if mode == modeIdentify && s.cfg.IdentifyGate != nil {
			if err := s.cfg.IdentifyGate(s.ctx, s.cfg.ShardID); err != nil {
				if s.ctx.Err() != nil {
					s.stopped()
					return
				}
				failures++
				d := s.backoff(failures)
				s.log.Warn("discordgw: identify gate failed; retrying", "err", err, "retry_in", d)
				if !s.sleep(d) {
					s.stopped()
					return
				}
				continue
			}
		}
		o := s.connect(mode)
		if s.ctx.Err() != nil {
			s.stopped()
			return
		}
		if o.fatal {
			s.log.Error("discordgw: shard stopped", "err", o.err)
			s.mu.Lock()
			s.err = fmt.Errorf("discordgw: shard %d: %w", s.cfg.ShardID, o.err)
			s.mu.Unlock()
			return
		}
		if o.established {
			failures = 0
		}
		failures++
		wait := o.wait
		if failures > 1 {
			wait += s.backoff(failures - 1)
		}
		s.log.Info("discordgw: reconnecting", "mode", o.next, "reason", o.err, "wait", wait)
		mode = o.next
		if !s.sleep(wait) {
			s.stopped()
			return
		}
	}
}

// stopped records why the run loop ends on context end.
func (s *Shard) stopped() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop == stopNone && s.err == nil {
		if err := context.Cause(s.parent); err != nil {
			s.err = fmt.Errorf("discordgw: shard %d: %w", s.cfg.ShardID, err)
		}
	}
}

// backoff is the wait before retry n (n >= 1): base·2^(n-1) capped, ±20 % jitter.
func (s *Shard) backoff(n int) time.Duration {
	d := s.cfg.ReconnectBackoff
	for i := 1; i < n && d < s.cfg.MaxReconnectBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxReconnectBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func (s *Shard) invalidSessionDelay() time.Duration {
	if s.cfg.InvalidSessionDelay > 0 {
		return s.cfg.InvalidSessionDelay
	}
	return time.Second + rand.N(4*time.Second)
}

func (s *Shard) sleep(d time.Duration) bool {
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// deliver moves queued dispatches to the Events channel, so that a slow
// consumer never stalls the reader (and with it heartbeat ACKs).
func (s *Shard) deliver() {
	defer func() {
		<-s.runDone // Err is final before Events() closes
		close(s.out)
		s.cancel()
		close(s.done)
	}()
	for {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		if len(q) == 0 {
			select {
			case <-s.wake:
				continue
			case <-s.ctx.Done():
				return
			case <-s.runDone:
				s.mu.Lock()
				empty := len(s.queue) == 0
				s.mu.Unlock()
				if empty {
					return
				}
				continue
			}
		}
		for _, d := range q {
			select {
			case s.out <- d:
			case <-s.ctx.Done():
				return
			}
		}
	}
}

// handleDispatch records and queues one dispatch; it reports whether the
// dispatch was READY or RESUMED.
func (s *Shard) handleDispatch(seq int64, t string, d json.RawMessage) (established bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch t {
	case "READY":
		var r struct {
			SessionID        string `json:"session_id"`
			ResumeGatewayURL string `json:"resume_gateway_url"`
		}
		if err := json.Unmarshal(d, &r); err != nil || r.SessionID == "" {
			return false, fmt.Errorf("decode READY: session_id missing or %w", err)
		}
		// Checked before the session is switched: a READY at seq <= 0
		// would start the new session and then be dropped as a replay.
		if seq < 1 {
			return false, fmt.Errorf("READY of session %s at sequence %d: a session starts at 1", r.SessionID, seq)
		}
		if s.cfg.Resume != nil && s.cfg.Resume.SessionID != "" && !s.established {
			s.resumeFailed = true
			s.log.Warn("discordgw: checkpoint could not be resumed; identified a new session — dispatches after the checkpoint are lost",
				"checkpoint_session", s.cfg.Resume.SessionID, "checkpoint_seq", s.cfg.Resume.Seq, "session", r.SessionID)
		}
		s.sessionID, s.resumeURL, s.lastSeq, s.acked = r.SessionID, r.ResumeGatewayURL, 0, 0
		s.log.Info("discordgw: ready", "session", r.SessionID)
	case "RESUMED":
		if s.cfg.Resume != nil && !s.established {
			s.resumed = true
		}
		s.log.Info("discordgw: resumed", "session", s.sessionID, "seq", s.lastSeq)
	}
	if t != "RESUMED" && seq <= s.lastSeq {
		return false, nil // replayed by a resume; already delivered
	}
	if t != "RESUMED" && seq != s.lastSeq+1 {
		s.log.Warn("discordgw: gap in dispatch sequence", "last", s.lastSeq, "seq", seq, "type", t)
	}
	if seq > s.lastSeq {
		s.lastSeq = seq
	}
	s.queue = append(s.queue, Dispatch{Seq: seq, Type: t, Data: d, SessionID: s.sessionID})
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if t == "READY" || t == "RESUMED" {
		s.established = true
		return true, nil
	}
	return false, nil
}

// gatewayURL sets v=10 and encoding=json on a gateway URL.
func gatewayURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("discordgw: parse gateway URL %q: %w", base, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	default:
		return "", fmt.Errorf("discordgw: gateway URL %q: scheme must be ws or wss", base)
	}
	q := u.Query()
	q.Set("v", "10")
	q.Set("encoding", "json")
	u.RawQuery = q.Encode()
	return u.String(), nil
}
