// Package proxy is the stateless HTTP front of modbot: it verifies Discord's
// signed interaction webhooks (signature, timestamp freshness, replay) and
// routes them, and the dashboards under /guild/{id}/… (the admin token, or a
// user signed in with Discord whose signed assertion the pod checks), to the
// gateway pod that owns the guild. It also serves the login (/login,
// /callback, /logout) and the operators' /status page.
//
// Routing comes from a Map that is pushed to the proxy (assignments.Watcher:
// list+watch of the config nodes' change stream) and answered from memory: no
// call to the control plane on the request path, no TTL. When every config
// node is gone the proxy keeps routing from the last map it saw.
package proxy

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
	"github.com/modbot/modbot/internal/tlsconfig"
)

// Header names of the internal API between the proxy and the gateway pods.
const (
	HeaderEpoch      = podapi.HeaderEpoch
	HeaderRevision   = podapi.HeaderRevision
	HeaderDeadlineMs = podapi.HeaderDeadlineMs
	// HeaderSignature and HeaderTimestamp are Discord's webhook signature headers.
	HeaderSignature = "X-Signature-Ed25519"
	HeaderTimestamp = "X-Signature-Timestamp"
)

// Map is the part of assignments.Watcher the proxy uses: reads from memory
// and a change feed to wake held requests. Tests use an in-memory one.
type Map interface {
	Lookup(guild uint64) (fsm.Guild, bool)
	Pod(id string) (fsm.Pod, bool)
	// Pods returns every pod ordered by ordinal, then id.
	Pods() []fsm.Pod
	// Subscribe delivers a Change for every new revision (and a Relisted one
	// whenever changes may have been missed); cancel closes the channel.
	Subscribe(buffer int) (<-chan assignments.Change, func())
	Revision() uint64
	// WaitSynced returns once the first map has loaded.
	WaitSynced(ctx context.Context) error
}

// Config configures a Proxy. Zero durations take the defaults noted.
type Config struct {
	Map Map
	// PublicKey is the application's Ed25519 public key (Discord developer
	// portal); required.
	PublicKey ed25519.PublicKey
	// Token is the admin token (--token, DESIGN §4). Until Discord login
	// exists it is the only credential that may read a guild's dashboard:
	// a /guild/{id}/… request is forwarded only with "Authorization: Bearer
	// <Token>". Empty: no request may read a dashboard.
	Token string
	// InternalToken is the bearer token the proxy sends to the gateway
	// pods' internal API (proxy→pod; it is never accepted from a client).
	// Default: Token, so a one-token setup such as dev keeps working.
	InternalToken string
	// ReadToken (--read-token) reads /status, and /metrics when set; it
	// never reads a dashboard. Default: Token.
	ReadToken string
	// TLS, when set, is the TLS of every call the proxy makes to the pods
	// (https, verified against the CA, with its certificate for mTLS). The
	// proxy's own listener stays plain HTTP: it is the public side, behind
	// the Ingress that terminates TLS for Discord and browsers.
	TLS *tlsconfig.Reloader
	// OAuth turns on "log in with Discord" (/login, /callback, /logout)
	// when OAuth.ClientID is set; SessionKey is then required.
	OAuth OAuthConfig
	// SessionKey (32 bytes, from a Secret; the same on every replica)
	// seals the session and login cookies with AES-256-GCM.
	SessionKey []byte
	// SecureCookies marks the cookies Secure: set it when browsers reach
	// the proxy over TLS (an Ingress terminating it counts).
	SecureCookies bool
	// SessionTTL is how long a sign-in lasts (at most the Discord token's
	// lifetime). Default 12 h.
	SessionTTL time.Duration
	// Operators are the Discord user ids that may read /status.
	Operators []uint64
	// ConfigStatus, when set, gives /status the control plane's leader,
	// term and voters (assignments.Client.Status).
	ConfigStatus ConfigStatus
	// RebalanceStatus, when set, shows the current rebalance or drain job
	// on /status (assignments.Client.RebalanceStatus).
	RebalanceStatus RebalanceStatus
	// Name is this replica's name on /status (default "proxy").
	Name   string
	Logger *slog.Logger // default slog.Default()
	// Registry receives the proxy's metrics and is served on /metrics
	// (default: a new registry with the Go and process collectors).
	Registry *prometheus.Registry

	DialTimeout           time.Duration // default 1 s
	ResponseHeaderTimeout time.Duration // dashboards: time to the owner's response headers, default 10 s
	// InteractionBudget is the whole time the proxy spends on one
	// interaction before it answers Discord with a deferred response
	// (type 5); Discord allows 3 s. Default 2.5 s.
	InteractionBudget time.Duration
	// InteractionHold is the part of the budget an interaction for a
	// migrating guild waits for the move to finish before it is sent to the
	// current owner anyway (which then follows up). Default 1 s.
	InteractionHold time.Duration
	// HoldTimeout bounds how long a dashboard request for a migrating guild
	// waits for the guild to become active before 503. Default 5 s.
	HoldTimeout time.Duration
	// MisdirectWait bounds the wait for the map to catch up after a pod
	// answered 421 (not the owner), before the one retry. Default 1 s.
	MisdirectWait time.Duration
	// RetryAfter is the Retry-After of 503 answers. Default 1 s.
	RetryAfter time.Duration
	// WebhookMaxSkew is how far X-Signature-Timestamp may be from this
	// proxy's clock, either way, for a signed interaction to be accepted;
	// outside it the request is refused (401) as a possible replay.
	// Default 5 min.
	WebhookMaxSkew time.Duration
	// ReplayCacheSize bounds the replay cache: how many accepted interaction
	// signatures this replica remembers (each until its timestamp leaves the
	// window). When full, the entry whose window ends first is evicted.
	// Default 100,000 (about 15 MiB: ~150 bytes an entry).
	ReplayCacheSize int
	// MaxBodyBytes caps request bodies (413 beyond). Default 1 MiB.
	MaxBodyBytes int64
	// MaxIdleConnsPerHost sizes the keep-alive pool per pod. Default 512.
	MaxIdleConnsPerHost int
	// Transport overrides the forwarding transport (tests).
	Transport http.RoundTripper
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DialTimeout, time.Second)
	def(&c.ResponseHeaderTimeout, 10*time.Second)
	def(&c.InteractionBudget, 2500*time.Millisecond)
	def(&c.InteractionHold, time.Second)
	def(&c.HoldTimeout, 5*time.Second)
	def(&c.MisdirectWait, time.Second)
	def(&c.RetryAfter, time.Second)
	if c.InteractionHold > c.InteractionBudget {
		c.InteractionHold = c.InteractionBudget / 2
	}
	def(&c.WebhookMaxSkew, 5*time.Minute)
	if c.ReplayCacheSize <= 0 {
		c.ReplayCacheSize = 100_000
	}
	if c.InternalToken == "" {
		c.InternalToken = c.Token
	}
	def(&c.SessionTTL, 12*time.Hour)
	if c.OAuth.AuthorizeURL == "" {
		c.OAuth.AuthorizeURL = DefaultDiscordAuthorizeURL
	}
	if c.OAuth.APIURL == "" {
		c.OAuth.APIURL = DefaultDiscordAPIURL
	}
	c.OAuth.APIURL = strings.TrimRight(c.OAuth.APIURL, "/")
	if c.Name == "" {
		c.Name = "proxy"
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 512
	}
}

// ParsePublicKey decodes a hex Ed25519 public key as shown in Discord's
// developer portal.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("discord public key is not hex: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("discord public key has %d bytes, want %d (64 hex digits)", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// Proxy is the HTTP handler. Create it with New; Start serves it on an
// address, or mount Handler yourself.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	tr      http.RoundTripper
	handler http.Handler
	replay  *replayCache
	auth    *httpapi.Auth
	seal    *sealer // nil: no Discord login
	discord *http.Client
	members memberCache
	events  *eventLog
	// stopStreams ends the /status SSE streams when shutdown begins, so a
	// graceful shutdown does not wait for browsers to leave.
	stopStreams     chan struct{}
	stopStreamsOnce sync.Once

	statusMu   sync.Mutex // guards the cached config status
	statusAt   time.Time
	statusLast *assignments.Status
	statusErr  error
	// rebalanceLast is the last rebalance or drain job read with the
	// config status (nil: none).
	rebalanceLast *rebalanceStatus
	ready         atomic.Bool
	readyCh       chan struct{} // closed once ready

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	srvMu sync.Mutex
	srv   *http.Server
}

// New builds a proxy. It starts one goroutine that marks the proxy ready once
// the map has synced; Close stops it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Map == nil {
		return nil, errors.New("proxy: Config.Map is required")
	}
	if len(cfg.PublicKey) != ed25519.PublicKeySize {
		return nil, errors.New("proxy: Config.PublicKey is required (--discord-public-key, 64 hex digits from the Discord developer portal)")
	}
	cfg.defaults()
	p := &Proxy{cfg: cfg, log: cfg.Logger, readyCh: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.replay = newReplayCache(cfg.ReplayCacheSize)
	p.m = newMetrics(cfg.Registry, cfg.Map, p.replay)
	// The internal token is what the proxy sends, never what it accepts:
	// it is left out, so a client sending it is refused as unknown.
	p.auth = httpapi.NewAuth(httpapi.Tokens{Admin: cfg.Token, Internal: cfg.Token, Read: cfg.ReadToken}, p.m.authRefusals)
	p.discord = &http.Client{Timeout: 10 * time.Second}
	if cfg.OAuth.ClientID != "" {
		if len(cfg.SessionKey) == 0 {
			return nil, errors.New("proxy: Discord login (OAuth.ClientID) needs a SessionKey (--session-key: 32 bytes as 64 hex digits from a Secret, the same on every replica)")
		}
		var err error
		if p.seal, err = newSealer(cfg.SessionKey); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		if cfg.InternalToken == "" {
			return nil, errors.New("proxy: Discord login needs an internal token (--internal-token or --token): it signs the user assertions the pods verify")
		}
	}
	if cfg.Token == "" {
		p.log.Warn("no admin token (--token): every /guild/{id}/… request is refused with 401 until one is set")
	}
	p.tr = cfg.Transport
	if p.tr == nil {
		p.tr = NewTransport(cfg.DialTimeout, cfg.ResponseHeaderTimeout, cfg.MaxIdleConnsPerHost)
	}
	if cfg.TLS != nil {
		t, ok := p.tr.(*http.Transport)
		if !ok {
			return nil, errors.New("proxy: Config.TLS needs Config.Transport to be an *http.Transport (or unset)")
		}
		p.tr = cfg.TLS.Transport(t.Clone())
		p.m.reg.MustRegister(cfg.TLS.Collector("proxy"))
	}
	p.events = newEventLog()
	p.stopStreams = make(chan struct{})
	p.handler = p.routes()
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.followEvents()
	}()
	go func() {
		defer p.wg.Done()
		if err := cfg.Map.WaitSynced(p.ctx); err == nil {
			p.ready.Store(true)
			close(p.readyCh)
			p.log.Info("assignment map synced; ready", "revision", cfg.Map.Revision())
		}
	}()
	return p, nil
}

// NewTransport is the forwarding transport: pooled keep-alive connections,
// a short dial timeout, no transparent compression (bodies pass unchanged).
func NewTransport(dial, responseHeader time.Duration, idlePerHost int) *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          idlePerHost * 4,
		MaxIdleConnsPerHost:   idlePerHost,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: responseHeader,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// Handler returns the proxy's HTTP handler.
func (p *Proxy) Handler() http.Handler { return p.handler }

// ServeHTTP makes the proxy an http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.handler.ServeHTTP(w, r) }

// Ready reports whether the map has synced.
func (p *Proxy) Ready() bool { return p.ready.Load() }

// WaitReady blocks until the map has synced or ctx ends.
func (p *Proxy) WaitReady(ctx context.Context) error {
	select {
	case <-p.readyCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the assignment map: %w", ctx.Err())
	}
}

// Start listens on addr ("127.0.0.1:0" picks a port) and serves in the
// background. It returns the base URL.
func (p *Proxy) Start(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           p.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	p.srvMu.Lock()
	p.srv = srv
	p.srvMu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("proxy server stopped", "err", err)
		}
	}()
	return "http://" + l.Addr().String(), nil
}

// Shutdown stops the server gracefully (in-flight requests finish, bounded
// by ctx), then releases everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.stopStreamsOnce.Do(func() { close(p.stopStreams) })
	p.srvMu.Lock()
	srv := p.srv
	p.srvMu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
	}
	p.cancel()
	p.wg.Wait()
	if t, ok := p.tr.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return err
}

// Close stops the server at once.
func (p *Proxy) Close() error {
	p.srvMu.Lock()
	srv := p.srv
	p.srvMu.Unlock()
	var err error
	if srv != nil {
		err = srv.Close()
	}
	p.cancel()
	p.wg.Wait()
	if t, ok := p.tr.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return err
}

func (p *Proxy) routes() http.Handler {
	r := mux.NewRouter()
	r.NotFoundHandler = p.instrument("other", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusNotFound, "no route %s %s", r.Method, r.URL.Path)
	}))
	r.MethodNotAllowedHandler = p.instrument("other", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path)
	}))
	r.Handle("/healthz", p.instrument("/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/readyz", p.instrument("/readyz", http.HandlerFunc(p.handleReady))).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/metrics", p.auth.Metrics(promhttp.HandlerFor(p.m.reg, promhttp.HandlerOpts{}))).Methods(http.MethodGet)
	r.Handle("/webhooks/discord", p.instrument("/webhooks/discord", http.HandlerFunc(p.handleInteraction))).Methods(http.MethodPost)
	r.Handle("/", p.instrument("/", http.HandlerFunc(p.handleHome))).Methods(http.MethodGet)
	r.Handle("/login", p.instrument("/login", http.HandlerFunc(p.handleLogin))).Methods(http.MethodGet)
	r.Handle("/callback", p.instrument("/callback", http.HandlerFunc(p.handleCallback))).Methods(http.MethodGet)
	r.Handle("/logout", p.instrument("/logout", http.HandlerFunc(p.handleLogout))).Methods(http.MethodGet, http.MethodPost)
	r.Handle("/status", p.instrument("/status", http.HandlerFunc(p.handleStatusPage))).Methods(http.MethodGet)
	r.Handle("/status/events", p.instrument("/status/events", http.HandlerFunc(p.handleStatusEvents))).Methods(http.MethodGet)
	guild := p.instrument("/guild/{id}", http.HandlerFunc(p.handleGuild))
	r.Handle("/guild/{id}", guild)
	r.PathPrefix("/guild/{id}/").Handler(guild)
	unsafe := p.instrument("other", http.HandlerFunc(p.refuseUnsafePath))
	// The path check runs before routing: mux would otherwise clean a
	// dot-segment path itself and redirect, and a decoded %2F would change
	// which route matches.
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if unsafePath(req.URL) != "" {
			unsafe.ServeHTTP(w, req)
			return
		}
		r.ServeHTTP(w, req)
	})
}

func (p *Proxy) handleReady(w http.ResponseWriter, _ *http.Request) {
	if !p.ready.Load() {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "no assignment map yet (waiting for the first list from the config nodes)")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "revision": p.cfg.Map.Revision()})
}

// defaultPod is where interactions without a guild (DMs) go: the active pod
// with the lowest ordinal.
func defaultPod(m Map) (fsm.Pod, bool) {
	for _, pod := range m.Pods() {
		if pod.State == fsm.PodActive {
			return pod, true
		}
	}
	return fsm.Pod{}, false
}

// podURL turns a pod's address into a base URL (https with TLS on).
func (p *Proxy) podURL(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	return p.cfg.TLS.Scheme() + "://" + addr
}

// waitFor blocks until cond holds, ctx ends, or the map's feed closes; it
// wakes on map changes only (no polling). It reports whether cond held.
func waitFor(ctx context.Context, m Map, cond func() bool) bool {
	if cond() {
		return true
	}
	ch, cancel := m.Subscribe(4)
	defer cancel()
	for {
		if cond() { // after subscribing: a change between the checks is not missed
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case _, ok := <-ch:
			if !ok {
				return cond()
			}
		}
	}
}
