package gatewaynode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/gatewaynode/restlimit"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
	"github.com/modbot/modbot/internal/tlsconfig"
)

// Config configures a gateway pod.
type Config struct {
	ID         string   // pod id, e.g. gateway-1 (the StatefulSet hostname)
	Ordinal    int      // -1: from the id's suffix
	DataDir    string   // holds modbot.db
	HTTPAddr   string   // internal API listen address
	Advertise  string   // address peers and proxies dial (default: the listen address)
	ConfigURLs []string // config nodes
	// Token is the admin token (dead letters). InternalToken is what pods,
	// proxies and config nodes send each other (this pod sends it to the
	// config nodes and its peers; it keys the proxy's user assertions);
	// ReadToken reads the status (and /metrics when set). Both default to
	// Token.
	Token, InternalToken, ReadToken string
	// TLS, when set, is the TLS of the internal API and of every call this
	// pod makes to config nodes and peers (internal/tlsconfig); the config
	// URLs are then https.
	TLS *tlsconfig.Reloader
	// DiscordToken is the bot token; DiscordURL points at a fake Discord.
	DiscordToken string
	DiscordURL   string
	Intents      int

	HeartbeatInterval  time.Duration // to the config leader (default 1s)
	CheckpointInterval time.Duration // shard resume points to the FSM (default 1s)
	HandoffTimeout     time.Duration // an old holder still waiting for the new one warns this often (default 30s)
	ForwardTimeout     time.Duration // per forwarded batch (default 5s)
	JanitorInterval    time.Duration // how often copies of guilds owned elsewhere are dropped (default 30s)
	Logger             *slog.Logger
	// RestoreFrom, if set, is this pod's replica: a missing database is
	// restored from it (integrity-checked, with RestoreCommand) before the
	// pod opens it — what the init container does in Kubernetes. A replica
	// without a backup starts a fresh database.
	RestoreFrom string
	// ReplicationStatus is the sidecar's /healthz URL: its lag_seconds goes
	// with every heartbeat as the pod's data-loss window.
	ReplicationStatus string
	// RestoreCommand runs `modbot restore` for guild failover (a child
	// process: Litestream's SQLite never shares ours). Default: this
	// executable's "restore" subcommand.
	RestoreCommand []string
	// OnCommit, if set, is called after owned events are committed (used by
	// benchmarks to measure dispatch-to-committed latency).
	OnCommit func(evs []bot.Event)
	// DiscordGlobalLimit is the bot token's global REST limit (requests/s,
	// default Discord's 50), shared by the pods in the map (restlimit).
	DiscordGlobalLimit float64
	// PostRetryInterval is how often mod-log posts still owed are sent
	// again (default 5s).
	PostRetryInterval time.Duration
}

func (c *Config) defaults() error {
	switch {
	case c.ID == "":
		return errors.New("--id is required (e.g. gateway-0)")
	case c.DataDir == "":
		return errors.New("--data-dir is required")
	case len(c.ConfigURLs) == 0:
		return errors.New("--config is required (config node URLs)")
	case c.Token == "":
		return errors.New("--token is required (MODBOT_TOKEN): peers and config nodes authenticate with it")
	}
	t := httpapi.Tokens{Admin: c.Token, Internal: c.InternalToken, Read: c.ReadToken}.WithDefaults()
	c.InternalToken, c.ReadToken = t.Internal, t.Read
	if c.Ordinal < 0 {
		c.Ordinal = fsm.OrdinalFromID(c.ID)
		if c.Ordinal < 0 {
			return fmt.Errorf("pod id %q has no ordinal suffix (like gateway-1); pass --ordinal", c.ID)
		}
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:9000"
	}
	if c.DiscordToken == "" {
		c.DiscordToken = "fake-token"
	}
	if c.Intents == 0 {
		c.Intents = int(discordgo.IntentsGuilds | discordgo.IntentsGuildMessages | discordgo.IntentGuildModeration |
			discordgo.IntentsGuildMembers | discordgo.IntentMessageContent)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = time.Second
	}
	if c.HandoffTimeout == 0 {
		c.HandoffTimeout = 30 * time.Second
	}
	if c.ForwardTimeout == 0 {
		c.ForwardTimeout = 5 * time.Second
	}
	if c.JanitorInterval == 0 {
		c.JanitorInterval = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.DiscordGlobalLimit == 0 {
		c.DiscordGlobalLimit = restlimit.DiscordGlobalLimit
	}
	if c.DiscordGlobalLimit < 0 {
		return fmt.Errorf("--discord-global-limit %v: want a positive rate (requests/s)", c.DiscordGlobalLimit)
	}
	if c.PostRetryInterval == 0 {
		c.PostRetryInterval = 5 * time.Second
	}
	if len(c.RestoreCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this executable for `modbot restore`: %w", err)
		}
		c.RestoreCommand = []string{exe, "restore"}
	}
	return nil
}

// Node is a running gateway pod.
type Node struct {
	cfg      Config
	log      *slog.Logger
	auth     *httpapi.Auth
	store    *guildstore.Store
	bot      *bot.Handler
	watch    mapView      // the map (the Watcher, or a twin in unit tests)
	client   controlPlane // the config nodes
	peers    peerLink     // events to owner pods
	discord  discord      // Discord's gateway (sessions, /gateway/bot)
	rest     *discordgo.Session
	names    *nameCache    // the dashboard's channel, role and user names
	charts   chartCache    // the dashboard's last charts per guild (svgchart.go)
	pods     podapi.Client // other pods' internal API (move exports)
	metrics  *metrics
	outbox   *outbox
	shards   *shardSet
	failover *failoverCopies
	// REST: this pod's share of the global limit, its series, and the
	// mod-log posts being sent.
	restLimit   *restlimit.Limiter
	restMetrics *restlimit.Metrics
	inFlight    postsInFlight
	postQueue   postQueue

	watcher *assignments.Watcher // nil in unit tests
	ln      net.Listener
	srv     *http.Server
	addr    string
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closing sync.Once
	// hbMu orders heartbeats with Leave: once leaving is set no heartbeat
	// is sent (one would bring the pod back from down).
	hbMu    sync.Mutex
	leaving bool
}

// deps are the seams a Node is built on (seams.go).
type deps struct {
	watch  mapView
	client controlPlane
	peers  peerLink
	// discord, when nil, is the real one (discordgw against cfg.DiscordURL).
	discord discord
	reg     *prometheus.Registry
}

// newNode opens the pod's database and builds its parts on the given seams;
// it starts nothing.
func newNode(cfg Config, d deps) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("pod", cfg.ID), watch: d.watch, client: d.client, peers: d.peers, discord: d.discord}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	n.removeCrashLeftovers()
	dbPath := filepath.Join(cfg.DataDir, "modbot.db")
	if err := n.restoreIfMissing(dbPath); err != nil {
		return nil, err
	}
	var err error
	n.store, err = guildstore.OpenWithOptions(n.ctx, dbPath, guildstore.Options{Logger: n.log})
	if err != nil {
		return nil, err
	}
	n.bot = &bot.Handler{Store: n.store, Log: n.log}
	n.rest, err = discordgo.New("Bot " + cfg.DiscordToken)
	if err != nil {
		n.store.Close()
		return nil, fmt.Errorf("discord REST client: %w", err)
	}
	dialer := websocket.DefaultDialer
	if cfg.DiscordURL != "" {
		hc, wd, err := discordgw.ClientFor(cfg.DiscordURL)
		if err != nil {
			n.store.Close()
			return nil, err
		}
		n.rest.Client, dialer = hc, wd
	}
	if d.reg == nil {
		d.reg = prometheus.NewRegistry()
	}
	// Every REST request goes through the pod's limiter (effects.go).
	n.restLimit = restlimit.NewLimiter(restlimit.UnknownShare) // until the map is read (effects.go)
	n.restMetrics = restlimit.NewMetrics(d.reg)
	hc := *n.rest.Client
	hc.Transport = &restlimit.Transport{Base: hc.Transport, Global: n.restLimit, Metrics: n.restMetrics}
	n.rest.Client = &hc
	n.names = newNameCache(n.rest, time.Minute)
	if n.discord == nil {
		n.discord = realDiscord{rest: n.rest, dialer: dialer}
	}
	n.metrics = newMetrics(d.reg, n)
	n.auth = httpapi.NewAuth(httpapi.Tokens{Admin: cfg.Token, Internal: cfg.InternalToken, Read: cfg.ReadToken}, n.metrics.authRefusals)
	n.outbox = newOutbox(n)
	n.shards = newShardSet(n)
	n.failover = newFailoverCopies(n)
	n.postQueue.n = n
	return n, nil
}

// Start opens the database, registers with the control plane, starts
// following the map and serves the internal API. Shard sessions start as the
// map assigns them.
func Start(cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	client, err := assignments.NewClient(cfg.ConfigURLs, cfg.InternalToken)
	if err != nil {
		return nil, err
	}
	client.UseTLS(cfg.TLS)
	reg := prometheus.NewRegistry()
	watcher := assignments.NewWatcher(client, assignments.WatcherOptions{Logger: cfg.Logger.With("pod", cfg.ID), Registerer: reg, Name: cfg.ID})
	pull := &http.Client{Transport: cfg.TLS.Transport(&http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	})}
	pods := podapi.Client{HTTP: pull, Token: cfg.InternalToken, Scheme: cfg.TLS.Scheme()}
	n, err := newNode(cfg, deps{watch: watcher, client: configClient{client}, reg: reg,
		peers: httpPeers{api: pods, timeout: cfg.ForwardTimeout}})
	if err != nil {
		return nil, err
	}
	n.watcher, n.pods = watcher, pods

	n.ln, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		n.store.Close()
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	n.addr = cfg.Advertise
	if n.addr == "" {
		n.addr = n.ln.Addr().String()
	}
	if cfg.TLS != nil {
		n.ln = tls.NewListener(n.ln, cfg.TLS.HTTPServerConfig())
	}
	n.srv = &http.Server{Handler: cfg.TLS.RequireClientCert(n.routes(reg), "/healthz", "/readyz"), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	n.goRun("http", func() {
		if err := n.srv.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("internal API stopped", "err", err)
		}
	})
	n.goRun("watcher", func() { _ = watcher.Run(n.ctx) })
	n.goRun("membership", n.membership)
	n.startLoops()
	n.log.Info("gateway pod started", "addr", n.addr, "config", strings.Join(cfg.ConfigURLs, ","), "discord", cfg.DiscordURL)
	return n, nil
}

// startLoops starts the pod's map-driven loops (unit tests start only these).
func (n *Node) startLoops() {
	n.goRun("shards", n.shards.run)
	n.goRun("checkpoints", n.shards.checkpointLoop)
	n.goRun("outbox", n.outbox.run)
	n.goRun("janitor", n.janitor)
	n.goRun("failover-copies", n.failover.run)
	n.goRun("effects", n.effectsLoop)
}

func (n *Node) goRun(name string, f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// Addr is the advertised internal API address.
func (n *Node) Addr() string { return n.addr }

// RESTShare is the pod's current share of the global REST limit (requests/s).
func (n *Node) RESTShare() float64 { return n.restLimit.Share() }

// ID is the pod id.
func (n *Node) ID() string { return n.cfg.ID }

// Store exposes the pod's database (tests).
func (n *Node) Store() *guildstore.Store { return n.store }

// Watcher exposes the pod's view of the map.
func (n *Node) Watcher() *assignments.Watcher { return n.watcher }

// membership registers the pod and keeps heartbeating; a 404 (the control
// plane forgot the pod) registers it again.
func (n *Node) membership() {
	register := func() error {
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		defer cancel()
		ord := n.cfg.Ordinal
		_, err := n.client.RegisterPod(ctx, assignments.RegisterPodRequest{ID: n.cfg.ID, Addr: n.addr, Ordinal: &ord})
		return err
	}
	backoff := 200 * time.Millisecond
	for {
		err := register()
		if err == nil {
			n.log.Info("registered with the control plane")
			break
		}
		n.log.Warn("register failed; retrying", "err", err, "in", backoff)
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.hbMu.Lock()
		if n.leaving {
			n.hbMu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.HeartbeatInterval*3)
		err := n.client.HeartbeatWithLag(ctx, n.cfg.ID, n.replicationLagMs(ctx))
		cancel()
		if assignments.IsStatus(err, http.StatusNotFound) {
			_ = register()
		} else if err != nil {
			n.metrics.heartbeatErrors.Inc()
			n.log.Debug("heartbeat failed", "err", err)
		}
		n.hbMu.Unlock()
	}
}

// Leave hands the pod's shards to the other pods before a planned stop
// (SIGTERM; a rolling restart): it stops heartbeating, asks the leader to
// mark it down, and waits until the map shows it down and it runs no shard
// session any more — each new holder took its shard over (resumed its
// session or identified its own, and this pod committed what it had before
// letting go: the handoff in shards.go). Its guilds stay its own: the shard
// holders hold their events and deliver them when it is back. Close after
// Leave; a restart registers the pod and makes it active again. An error
// (ctx ended first) says what was still held: Close is still safe, the
// successors then resume the sessions as after a crash.
func (n *Node) Leave(ctx context.Context) error {
	start := time.Now()
	n.hbMu.Lock()
	n.leaving = true
	n.hbMu.Unlock()
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		err := n.client.Leave(ctx, n.cfg.ID)
		if err == nil {
			break
		}
		n.log.Warn("leave: the control plane did not mark this pod down yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("leave: the control plane did not mark %s down: %w", n.cfg.ID, err)
		case <-time.After(backoff):
		}
	}
	// Polled: a handoff ends in its own goroutine, not on a map change.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if p, ok := n.watch.Pod(n.cfg.ID); ok && p.State == fsm.PodDown && n.shards.busy() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("leave: %d shard sessions still running after %s: %w", n.shards.busy(), time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-tick.C:
		}
	}
	n.log.Info("left: every shard handed over", "after", time.Since(start).Round(time.Millisecond))
	return nil
}

// Close stops the pod: shard sessions are detached (resumable by whoever
// takes them over), then the API and the database close.
func (n *Node) Close() error {
	var err error
	n.closing.Do(func() {
		n.shards.stopAll(false)
		n.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if n.srv != nil {
			_ = n.srv.Shutdown(ctx)
		}
		n.wg.Wait()
		err = n.store.Close()
		n.log.Info("gateway pod stopped")
	})
	return err
}

// Kill stops abruptly, as a crash would: sessions are dropped without a
// close frame and nothing is flushed beyond what was committed.
func (n *Node) Kill() {
	n.closing.Do(func() {
		n.shards.stopAll(true)
		n.cancel()
		if n.srv != nil {
			_ = n.srv.Close()
		}
		n.wg.Wait()
		_ = n.store.Close()
	})
}
