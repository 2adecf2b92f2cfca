// Package fakediscord is an in-process fake of the parts of Discord that
// modbot talks to: the REST API (/api/v9), the gateway websocket and
// interaction delivery (gateway INTERACTION_CREATE or signed HTTP webhooks).
//
// It is meant to be indistinguishable from Discord for the discordgo v0.29.0
// client as used by modbot. The fake guarantees:
//
//   - a guild's dispatches go to every live session identified with the
//     [shard_id, shard_count] that owns it ((guild_id >> 22) % shard_count),
//     each session numbering its dispatches 1, 2, 3, … with no gaps;
//   - a session keeps its dispatch history (bounded by Config.HistoryLimit)
//     for Config.ResumeWindow after a disconnect, and a RESUME replays every
//     dispatch after the client's seq, in order, followed by RESUMED;
//   - identifies are limited per bucket (shard_id % max_concurrency) to one per
//     Config.IdentifyInterval; a too-early identify gets op 9 (d:false);
//   - wrong bot tokens get REST 401 and gateway close 4004, exactly as Discord;
//   - webhook-mode interactions are signed with Ed25519 over timestamp+body, and
//     the 3-second first-response rule and 15-minute follow-up window are
//     enforced and recorded.
//
// Everything the bot writes through REST is recorded (Server.Sent), and the
// test-only control API under /_fake/ (see control.go) creates guilds, sends
// messages, injects faults (drop, reconnect, invalid session, stall) and
// delivers interactions. All methods are safe for concurrent use.
//
// Use discordgw.ClientFor / discordgw.ConfigureSession to point a discordgo.Session at a fake
// without touching discordgo's package-level endpoint variables.
package fakediscord

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// DiscordEpoch is the first millisecond of 2015, the epoch of Discord snowflakes.
const DiscordEpoch = 1420070400000

// Config configures a fake Discord. Zero values get sensible defaults.
type Config struct {
	// Token is the bot token accepted on REST ("Authorization: Bot <token>")
	// and in gateway IDENTIFY/RESUME. Default "fake-token".
	Token string
	// ApplicationID is the application (and bot user) id. Default a fixed snowflake.
	ApplicationID string
	// BotName is the bot user's username. Default "modbot".
	BotName string
	// Shards is the recommended shard count returned by GET /gateway/bot. Default 1.
	Shards int
	// MaxConcurrency is session_start_limit.max_concurrency. Default 16.
	MaxConcurrency int
	// IdentifyInterval is the minimum spacing of identifies per bucket.
	// Default 5s; negative disables identify rate limiting.
	IdentifyInterval time.Duration
	// HeartbeatInterval is sent in HELLO. Default 41250ms.
	HeartbeatInterval time.Duration
	// ResumeWindow is how long a disconnected session stays resumable. Default 3m.
	ResumeWindow time.Duration
	// NonceWindow is how long a create-message nonce sent with
	// enforce_nonce is remembered ("the past few minutes"). Default 3m.
	NonceWindow time.Duration
	// HistoryLimit bounds the dispatches kept per session for RESUME. Default 10000.
	HistoryLimit int
	// MaxGuildsPerShard makes IDENTIFY fail with close 4011 (sharding required)
	// when a shard would hold more guilds. Default 2500, like Discord.
	MaxGuildsPerShard int
	// InteractionsURL, when set, makes interactions arrive as signed HTTP POSTs
	// to this URL instead of gateway INTERACTION_CREATE dispatches.
	InteractionsURL string
	// InteractionDeadline is the time allowed for the first interaction
	// response. Default 3s, like Discord.
	InteractionDeadline time.Duration
	// RateLimits configures the REST rate limits; the zero value is
	// Discord's (50 requests/s global, 5 messages per 5 s per channel, …).
	RateLimits RateLimits
	// Logger receives debug/info logs. Default discards.
	Logger *slog.Logger
	// ClientSecret is the OAuth2 client secret of the application (client
	// id = ApplicationID) accepted by /api/v10/oauth2/token. Default
	// "fake-client-secret".
	ClientSecret string
}

func (c *Config) defaults() {
	if c.Token == "" {
		c.Token = "fake-token"
	}
	if c.ApplicationID == "" {
		c.ApplicationID = "1100000000000000001"
	}
	if c.BotName == "" {
		c.BotName = "modbot"
	}
	if c.Shards <= 0 {
		c.Shards = 1
	}
	if c.MaxConcurrency <= 0 {
		c.MaxConcurrency = 16
	}
	if c.IdentifyInterval == 0 {
		c.IdentifyInterval = 5 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 41250 * time.Millisecond
	}
	if c.ResumeWindow <= 0 {
		c.ResumeWindow = 3 * time.Minute
	}
	if c.NonceWindow == 0 {
		c.NonceWindow = 3 * time.Minute
	}
	if c.HistoryLimit <= 0 {
		c.HistoryLimit = 10000
	}
	if c.MaxGuildsPerShard <= 0 {
		c.MaxGuildsPerShard = 2500
	}
	if c.InteractionDeadline <= 0 {
		c.InteractionDeadline = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ClientSecret == "" {
		c.ClientSecret = "fake-client-secret"
	}
}

// Server is a fake Discord. Create it with New.
type Server struct {
	// seeded counts guilds made by Seed; pendingChannels are the channel
	// ids the guild being seeded gets (both under mu).
	seeded          int
	pendingChannels []Channel
	pendingRole     uint64

	cfg     Config
	log     *slog.Logger
	appID   uint64
	pub     ed25519.PublicKey
	priv    ed25519.PrivateKey
	handler http.Handler
	client  *http.Client // delivers webhook interactions
	rl      *rateLimiter

	mu           sync.Mutex
	ids          snowflakes
	guilds       map[uint64]*guild
	guildOrder   []uint64
	messages     map[uint64]*message
	nonces       map[string]nonceEntry // enforce_nonce: author:nonce → the message it created
	nonceReplays int
	sessions     map[string]*session
	sessionOrder []string
	conns        map[*gwConn]struct{}
	identifies   []IdentifyAttempt
	bucketLast   map[int]time.Time
	startsUsed   int
	startsReset  time.Time
	sent         []SentRequest
	interactions map[uint64]*interaction
	byToken      map[string]*interaction
	commands     map[uint64][]map[string]any // 0 = global, else guild id
	dms          map[uint64]uint64           // DM channel id → recipient
	dmByUser     map[uint64]uint64           // recipient → DM channel id
	closed       bool
	oauth        *oauthState

	srvMu sync.Mutex
	srv   *http.Server
	ln    net.Listener
}

// New creates a fake Discord with a fresh Ed25519 key pair for interaction signing.
func New(cfg Config) (*Server, error) {
	cfg.defaults()
	appID, err := strconv.ParseUint(cfg.ApplicationID, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("fakediscord: application id %q is not a snowflake: %w", cfg.ApplicationID, err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("fakediscord: generate ed25519 key: %w", err)
	}
	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		appID:        appID,
		pub:          pub,
		priv:         priv,
		client:       &http.Client{},
		rl:           newRateLimiter(cfg.RateLimits),
		guilds:       map[uint64]*guild{},
		messages:     map[uint64]*message{},
		nonces:       map[string]nonceEntry{},
		sessions:     map[string]*session{},
		conns:        map[*gwConn]struct{}{},
		bucketLast:   map[int]time.Time{},
		startsReset:  time.Now().Add(24 * time.Hour),
		interactions: map[uint64]*interaction{},
		byToken:      map[string]*interaction{},
		commands:     map[uint64][]map[string]any{},
		dms:          map[uint64]uint64{},
		dmByUser:     map[uint64]uint64{},
		oauth:        newOAuthState(),
	}
	s.handler = s.routes()
	return s, nil
}

// Handler serves everything: /api/v9/…, the gateway websocket (/gateway-ws)
// and the control API (/_fake/…).
func (s *Server) Handler() http.Handler { return s.handler }

// PublicKeyHex is the hex Ed25519 public key interactions are signed with
// (what the Developer Portal calls the application's public key).
func (s *Server) PublicKeyHex() string { return hex.EncodeToString(s.pub) }

// PublicKey is the Ed25519 public key interactions are signed with.
func (s *Server) PublicKey() ed25519.PublicKey { return s.pub }

// Config returns the effective configuration (defaults applied).
func (s *Server) Config() Config { return s.cfg }

// Start listens on addr (e.g. "127.0.0.1:0") and serves in the background.
// It returns the base URL, e.g. "http://127.0.0.1:7900".
func (s *Server) Start(addr string) (string, error) {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		return "", errors.New("fakediscord: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("fakediscord: listen on %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("fakediscord: serve", "err", err)
		}
	}()
	base := "http://" + ln.Addr().String()
	s.log.Info("fake discord listening", "url", base)
	return base, nil
}

// Close stops the listener (if started) and drops every gateway connection.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]*gwConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.kill()
	}
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("fakediscord: shutdown: %w", err)
	}
	return nil
}

// ShardFor is the shard that receives a guild's events: (guild_id >> 22) % shard_count.
func ShardFor(guildID uint64, shardCount int) int {
	if shardCount <= 1 {
		return 0
	}
	return int((guildID >> 22) % uint64(shardCount))
}

// snowflakes generates Discord-style ids: 42 bits of milliseconds since
// DiscordEpoch, 5 bits worker, 5 bits process, 12 bits increment. Guild ids
// use their own worker and strictly increasing timestamps so that consecutive
// guilds land on consecutive shards. Guarded by Server.mu.
type snowflakes struct {
	lastMS, inc uint64
	guildMS     uint64
}

func nowMS() uint64 { return uint64(time.Now().UnixMilli() - DiscordEpoch) }

func (g *snowflakes) next() uint64 {
	ms := nowMS()
	if ms <= g.lastMS {
		ms = g.lastMS
		g.inc++
		if g.inc >= 1<<12 {
			ms++
			g.inc = 0
		}
	} else {
		g.inc = 0
	}
	g.lastMS = ms
	return ms<<22 | 0<<17 | 1<<12 | g.inc
}

func (g *snowflakes) nextGuild() uint64 {
	ms := nowMS()
	if ms <= g.guildMS {
		ms = g.guildMS + 1
	}
	g.guildMS = ms
	return ms<<22 | 1<<17 | 1<<12
}

func idStr(id uint64) string { return strconv.FormatUint(id, 10) }

// jsonID accepts a snowflake as a JSON string or number.
type jsonID uint64

func (j *jsonID) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case nil:
		*j = 0
	case string:
		if x == "" {
			*j = 0
			return nil
		}
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return fmt.Errorf("id %q is not a snowflake", x)
		}
		*j = jsonID(n)
	case float64:
		*j = jsonID(uint64(x))
	default:
		return fmt.Errorf("id must be a string or number, got %s", string(b))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v == nil {
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// discordError writes an error body shaped like Discord's: {"message", "code"}.
func discordError(w http.ResponseWriter, status int, code int, msg string) {
	writeJSON(w, status, map[string]any{"message": msg, "code": code})
}

func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000+00:00") }
