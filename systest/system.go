package systest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/tlsconfig"
	"github.com/modbot/modbot/internal/tlsconfig/tlstest"
)

// SystemOptions sizes a System. Zero values take the defaults noted.
type SystemOptions struct {
	Shards   int // default 4
	Gateways int // started by StartSystem; more with AddGateway
	// PodTimeout marks a silent pod down (default 1.5 s, short so that
	// fault scenarios settle quickly).
	PodTimeout time.Duration
	// HistoryLimit bounds the fake Discord's per-session resume history
	// (default 10000).
	HistoryLimit int
	Logger       *slog.Logger // default: discard
	// Proxy starts a proxy once the gateways are up (System.Proxy); more
	// with StartProxy.
	Proxy bool
	// TLS turns on TLS with client certificates (mTLS) between every
	// component: one test CA, one certificate for 127.0.0.1 (System.TLS).
	TLS bool
	// TweakConfig and TweakGateway adjust each node's configuration.
	TweakConfig  func(*confignode.Config)
	TweakGateway func(*gatewaynode.Config)
}

// System is the whole of modbot on loopback in this process: three config
// nodes, the fake Discord, gateway pods with their own SQLite files and,
// optionally, proxies.
type System struct {
	Dir        string
	Cluster    *Cluster
	Client     *assignments.Client
	Discord    *fakediscord.Server
	DiscordURL string
	Cfgs       []gatewaynode.Config
	Gateways   []*gatewaynode.Node // nil while stopped
	Proxy      *Proxy              // started by SystemOptions.Proxy, else nil
	// TLS is the components' TLS with SystemOptions.TLS (nil: plain HTTP);
	// HTTP is a client that speaks it, with the test CA's certificate.
	TLS     *tlsconfig.Reloader
	HTTP    *http.Client
	opts    SystemOptions
	dbMu    sync.Mutex
	dbs     map[int]*sql.DB
	proxyMu sync.Mutex
	proxies []*Proxy
}

// StartSystem starts the config cluster, the fake Discord and o.Gateways
// gateway pods in dir (and a proxy if o.Proxy).
func StartSystem(ctx context.Context, dir string, o SystemOptions) (*System, error) {
	if o.Shards <= 0 {
		o.Shards = 4
	}
	if o.PodTimeout <= 0 {
		o.PodTimeout = 1500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &System{Dir: dir, opts: o}
	var err error
	if o.TLS {
		files, err := tlstest.Generate(filepath.Join(dir, "tls"), true, "127.0.0.1", "localhost")
		if err != nil {
			return nil, fmt.Errorf("test certificates: %w", err)
		}
		if s.TLS, err = tlsconfig.New(files, tlsconfig.Options{Logger: o.Logger}); err != nil {
			return nil, err
		}
	}
	s.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: s.TLS.Transport(nil)}
	s.Cluster, err = StartCluster(ctx, filepath.Join(dir, "config"), 3, func(c *confignode.Config) {
		c.TLS = s.TLS
		c.Shards = o.Shards
		c.PodTimeout = o.PodTimeout
		c.IdentifyInterval = 50 * time.Millisecond
		c.Logger = o.Logger
		if o.TweakConfig != nil {
			o.TweakConfig(c)
		}
	})
	if err != nil {
		return nil, err
	}
	s.Client = s.Cluster.Client()
	s.Discord, err = fakediscord.New(fakediscord.Config{
		Token: discordToken, Shards: o.Shards, MaxConcurrency: 16, HistoryLimit: o.HistoryLimit,
		IdentifyInterval: 50 * time.Millisecond, HeartbeatInterval: time.Second, Logger: o.Logger,
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	// Port 0: the kernel picks a free port while binding, nothing to retry.
	if s.DiscordURL, err = s.Discord.Start("127.0.0.1:0"); err != nil {
		s.Close()
		return nil, err
	}
	for i := 0; i < o.Gateways; i++ {
		if _, err := s.AddGateway(); err != nil {
			s.Close()
			return nil, err
		}
	}
	if o.Proxy {
		if s.Proxy, err = s.StartProxy(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// gatewayConfig is gateway i's configuration on addr.
func (s *System) gatewayConfig(i int, addr string) gatewaynode.Config {
	id := fmt.Sprintf("gateway-%d", i)
	cfg := gatewaynode.Config{
		ID: id, Ordinal: -1, DataDir: filepath.Join(s.Dir, id),
		HTTPAddr: addr, ConfigURLs: s.Cluster.URLs(), Token: Token, InternalToken: InternalToken, ReadToken: ReadToken, TLS: s.TLS,
		DiscordToken: discordToken, DiscordURL: s.DiscordURL,
		HeartbeatInterval: 200 * time.Millisecond, CheckpointInterval: 200 * time.Millisecond,
		HandoffTimeout: 10 * time.Second, Logger: s.opts.Logger.With("pod", id),
	}
	if s.opts.TweakGateway != nil {
		s.opts.TweakGateway(&cfg)
	}
	return cfg
}

// AddGateway starts a new gateway pod (gateway-N) and returns its index. A
// port taken between picking and binding is retried on a fresh one.
func (s *System) AddGateway() (int, error) {
	i := len(s.Cfgs)
	s.Cfgs = append(s.Cfgs, gatewaynode.Config{})
	s.Gateways = append(s.Gateways, nil)
	err := startFresh(func() (string, error) {
		addr, err := freeAddr()
		if err != nil {
			return "", err
		}
		cfg := s.gatewayConfig(i, addr)
		dir := ""
		if freshDir(cfg.DataDir) {
			dir = cfg.DataDir
		}
		s.Cfgs[i] = cfg
		s.Gateways[i], err = gatewaynode.Start(cfg)
		return dir, err
	})
	if err != nil {
		return i, fmt.Errorf("start gateway %d: %w", i, err)
	}
	return i, nil
}

// StartGateway restarts gateway i with its configuration and data. It
// retries while the previous incarnation's port is still bound.
func (s *System) StartGateway(i int) error {
	err := retryAddrInUse(startAttempts, startRetryDelay, func(int) error {
		var err error
		s.Gateways[i], err = gatewaynode.Start(s.Cfgs[i])
		return err
	})
	if err != nil {
		return fmt.Errorf("start gateway %d: %w", i, err)
	}
	return nil
}

// StartPod starts one gateway pod outside a System (the ingest benchmark
// runs a single pod with its own configuration). An empty cfg.HTTPAddr
// takes a free loopback port, and a fresh one if it is taken before the pod
// binds it; an explicit address is retried while it is in use.
func StartPod(cfg gatewaynode.Config) (*gatewaynode.Node, error) {
	pick := cfg.HTTPAddr == ""
	var n *gatewaynode.Node
	err := retryAddrInUse(startAttempts, startRetryDelay, func(int) error {
		c := cfg
		if pick {
			addr, err := freeAddr()
			if err != nil {
				return err
			}
			c.HTTPAddr = addr
		}
		var err error
		n, err = gatewaynode.Start(c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start gateway %s: %w", cfg.ID, err)
	}
	return n, nil
}

// StopGateway stops gateway i as SIGTERM does (modbot gateway): it hands
// its shards over (Leave, bounded by timeout), then closes. It returns how
// long the handoff took and Leave's error, if any.
func (s *System) StopGateway(i int, timeout time.Duration) (time.Duration, error) {
	g := s.Gateways[i]
	if g == nil {
		return 0, nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := g.Leave(ctx)
	cancel()
	took := time.Since(start)
	_ = g.Close()
	s.Gateways[i] = nil
	return took, err
}

// KillGateway hard-stops gateway i, as a crash would.
func (s *System) KillGateway(i int) {
	if s.Gateways[i] != nil {
		s.Gateways[i].Kill()
		s.Gateways[i] = nil
	}
}

// Close stops everything.
func (s *System) Close() {
	s.proxyMu.Lock()
	for _, p := range s.proxies {
		p.Close()
	}
	s.proxies = nil
	s.proxyMu.Unlock()
	for i := range s.Gateways {
		s.KillGateway(i)
	}
	s.dbMu.Lock()
	for _, db := range s.dbs {
		_ = db.Close()
	}
	s.dbs = nil
	s.dbMu.Unlock()
	if s.Discord != nil {
		_ = s.Discord.Close()
	}
	if s.Cluster != nil {
		s.Cluster.Close()
	}
}

// PodIndex returns the index of the gateway with this id, or -1.
func (s *System) PodIndex(id string) int {
	for i, c := range s.Cfgs {
		if c.ID == id {
			return i
		}
	}
	return -1
}

// WaitSettled waits until every shard is held by an active pod whose
// session has checkpointed, every fake guild is placed and every running
// gateway is ready.
func (s *System) WaitSettled(ctx context.Context, d time.Duration) error {
	return Poll(ctx, d, "shards held and guilds placed", func() bool {
		st, err := s.Client.Status(ctx)
		if err != nil || st.Guilds < len(s.Discord.Guilds()) {
			return false
		}
		sl, err := s.Client.Shards(ctx)
		if err != nil {
			return false
		}
		for _, sh := range sl.Shards {
			if sh.Holder == "" || sh.Checkpoint == nil || sh.Checkpoint.Holder != sh.Holder {
				return false
			}
		}
		for _, g := range s.Gateways {
			if g != nil && !s.Ready(g.Addr()) {
				return false
			}
		}
		return true
	})
}

// Owner returns the guild's placement per the config nodes.
func (s *System) Owner(ctx context.Context, guild uint64) (assignments.GuildView, error) {
	return s.Client.Guild(ctx, fmt.Sprint(guild))
}

// InsertMessages writes n synthetic messages (ids firstID, firstID+1, …)
// straight into the guild's rows on gateway i, at the guild's current epoch,
// in batches of batch writes per transaction. It is how the benchmarks and
// fault tests give a guild a large history quickly.
func (s *System) InsertMessages(ctx context.Context, i int, guild, firstID uint64, n, batch int) error {
	g := s.Gateways[i]
	if g == nil {
		return errors.New("gateway is stopped")
	}
	v, err := s.Owner(ctx, guild)
	if err != nil {
		return err
	}
	return InsertMessages(ctx, g.Store(), guild, v.Epoch, firstID, n, batch)
}

// InsertMessages writes n synthetic MessageCreate rows for guild at epoch
// into store, batch writes per Apply.
func InsertMessages(ctx context.Context, store *guildstore.Store, guild, epoch, firstID uint64, n, batch int) error {
	if batch <= 0 {
		batch = 5000
	}
	at := time.Now().Add(-time.Hour)
	ws := make([]guildstore.Write, 0, batch)
	for done := 0; done < n; {
		ws = ws[:0]
		for j := 0; j < batch && done < n; j++ {
			id := firstID + uint64(done)
			ws = append(ws, guildstore.Write{Epoch: epoch, Op: guildstore.MessageCreate{
				GuildID: guild, MessageID: id, ChannelID: guild + 1 + id%5, AuthorID: 100000000000000000 + id%97,
				CreatedAt: at, ContentLength: int(id % 200),
			}})
			done++
		}
		if _, err := store.Apply(ctx, ws...); err != nil {
			return fmt.Errorf("insert messages into guild %d: %w", guild, err)
		}
	}
	return nil
}

// MessageRows counts the guild's message rows in gateway i's database.
func (s *System) MessageRows(ctx context.Context, i int, guild uint64) (int64, error) {
	g := s.Gateways[i]
	if g == nil {
		return 0, errors.New("gateway is stopped")
	}
	c, err := g.Store().Counts(ctx, guild)
	if err != nil {
		return 0, err
	}
	return c["messages"], nil
}

// DB returns a read-only handle on gateway i's SQLite file (cached; it
// stays valid across restarts of the pod).
func (s *System) DB(i int) (*sql.DB, error) {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if db, ok := s.dbs[i]; ok {
		return db, nil
	}
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(s.Cfgs[i].DataDir, "modbot.db")+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		return nil, err
	}
	if s.dbs == nil {
		s.dbs = map[int]*sql.DB{}
	}
	s.dbs[i] = db
	return db, nil
}

// CloseDB closes the cached handle on gateway i's file (before its disk is
// deleted: the next DB call opens the new file).
func (s *System) CloseDB(i int) {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if db, ok := s.dbs[i]; ok {
		_ = db.Close()
		delete(s.dbs, i)
	}
}

// TotalMessages counts every message row in gateway i's database.
func (s *System) TotalMessages(ctx context.Context, i int) (int64, error) {
	db, err := s.DB(i)
	if err != nil {
		return 0, err
	}
	var n int64
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM messages`).Scan(&n)
	return n, err
}
