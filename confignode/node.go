package confignode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/tlsconfig"
)

// Config configures one config node.
type Config struct {
	ID        string
	DataDir   string
	RaftAddr  string // host:port, bound and advertised
	HTTPAddr  string // host:port of the API
	Bootstrap bool
	Shards    int      // shard count set at bootstrap
	Join      []string // config node URLs to join through
	// Token is the admin token (modbotctl; this node's join). InternalToken
	// (what pods and proxies send; this node sends it to pods) and
	// ReadToken (status, reads, watch; /metrics when set) default to it.
	Token, InternalToken, ReadToken string
	// NoAuth must be set explicitly to run without a token.
	NoAuth bool
	// Pprof serves Go's profiler at /debug/pprof/ to the admin token.
	Pprof bool
	// TLS, when set, is the TLS of the API, of the Raft transport and of
	// every call this node makes (peers, pods): internal/tlsconfig.
	TLS *tlsconfig.Reloader
	// PeerTLSName is the name another config node's certificate must carry,
	// on Raft and on forwarded requests (default: the host of the address
	// dialled, an IP address: Raft and the map record IPs).
	PeerTLSName string

	// PodTimeout: a pod not heard from for this long is marked down.
	PodTimeout time.Duration
	// WriteTimeout bounds how long a write waits for a quorum.
	WriteTimeout time.Duration
	// MaxBodyBytes limits request bodies.
	MaxBodyBytes int64
	// WatchHistory is how many change events are kept for watch resumption.
	WatchHistory int
	// WatchProgress is the idle interval between watch progress events.
	WatchProgress time.Duration

	// Raft tuning. Zero values take the defaults below, tuned for a LAN.
	RaftHeartbeatTimeout time.Duration
	RaftElectionTimeout  time.Duration
	// RaftCommitTimeout is how long the leader waits, idle, before telling
	// followers about a new commit (hashicorp/raft waits 1–2× it; default
	// 2 ms). Followers apply — and their watchers see — a commit only then:
	// at 5 ms watchers on followers were ~7 ms behind those on the leader
	// (docs/benchmarks.md, watch vs etcd). Lower means faster watch delivery
	// from followers at the cost of more idle RPCs (raft's floor is 1 ms).
	RaftCommitTimeout time.Duration
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// IdentifyInterval is Discord's spacing between identifies per bucket
	// (5 s; a fake Discord may advertise less).
	IdentifyInterval time.Duration
	// IdentifyDailyLimit is the daily identify budget assumed until a pod
	// reports Discord's session_start_limit (default 1000, Discord's).
	IdentifyDailyLimit int
	// IdentifyReserve is how many of the daily identifies are kept back:
	// identify slots are refused (429) once no more than this many remain,
	// so a crash loop cannot exhaust the budget and get the token reset.
	// 0 means 10 % of the budget's total; negative means no reserve.
	IdentifyReserve int
	// OrphanCheckInterval is how often the leader looks for moves no task of
	// its own runs (default 5 s); it looks at once when it becomes leader.
	OrphanCheckInterval time.Duration
	// MoveTimeout bounds one guild's copy (export + transfer + import).
	MoveTimeout time.Duration
	// MaxMoves and MaxMovesPerPod cap concurrent moves in a rebalance/drain.
	MaxMoves       int
	MaxMovesPerPod int
	// FailoverGrace is how long a gateway pod may stay down before its
	// guilds are failed over from its replica (default 60 s).
	FailoverGrace time.Duration
	// FailoverReplica is the replica URL of a gateway pod, with {pod} for
	// its id (e.g. s3://bucket/modbot/{pod}); empty disables failover.
	FailoverReplica string
	// AutoRebalance starts a rebalance when active pods change and guild
	// counts differ by more than 20 % of the mean.
	AutoRebalance bool
	// NoSync disables fsync of the Raft log (tests only).
	NoSync bool

	Logger *slog.Logger

	// hooks inject faults at the node's seams (tests only; nil otherwise).
	hooks *testHooks
}

// testHooks are the seams tests inject faults through. Each is optional.
type testHooks struct {
	// propose wraps every proposal; next proposes for real.
	propose func(ctx context.Context, cmd fsm.Command, next func() (proposeResult, error)) (proposeResult, error)
	// beforeApply runs in Store.Apply before each command is applied (a
	// blocking hook makes a lagging state machine).
	beforeApply func(cmd fsm.Command)
	// taskDone runs as each leader task (leader.go) ends.
	taskDone func(task string)
}

func (c *Config) setDefaults() {
	if c.PodTimeout == 0 {
		c.PodTimeout = 10 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 5 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 4 << 20
	}
	if c.WatchHistory == 0 {
		c.WatchHistory = 100_000
	}
	if c.WatchProgress == 0 {
		c.WatchProgress = 2 * time.Second
	}
	if c.RaftHeartbeatTimeout == 0 {
		c.RaftHeartbeatTimeout = 500 * time.Millisecond
	}
	if c.RaftElectionTimeout == 0 {
		c.RaftElectionTimeout = 500 * time.Millisecond
	}
	if c.RaftCommitTimeout == 0 {
		c.RaftCommitTimeout = 2 * time.Millisecond
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.IdentifyInterval == 0 {
		c.IdentifyInterval = 5 * time.Second
	}
	if c.IdentifyDailyLimit == 0 {
		c.IdentifyDailyLimit = 1000
	}
	if c.OrphanCheckInterval == 0 {
		c.OrphanCheckInterval = 5 * time.Second
	}
	if c.FailoverGrace == 0 {
		c.FailoverGrace = 60 * time.Second
	}
	if c.MoveTimeout == 0 {
		c.MoveTimeout = 2 * time.Minute
	}
	if c.MaxMoves == 0 {
		c.MaxMoves = 8
	}
	if c.MaxMovesPerPod == 0 {
		c.MaxMovesPerPod = 2
	}
	if c.Shards == 0 {
		c.Shards = 4
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	switch {
	case c.ID == "":
		return errors.New("--id is required (e.g. config-0)")
	case c.DataDir == "":
		return errors.New("--data-dir is required")
	case c.RaftAddr == "":
		return errors.New("--raft-addr is required (e.g. 127.0.0.1:7000)")
	case c.HTTPAddr == "":
		return errors.New("--http-addr is required (e.g. 127.0.0.1:8000)")
	case c.Token == "" && !c.NoAuth:
		return errors.New("refusing to start without an API token: pass --token (or MODBOT_TOKEN), or --insecure-no-auth to run without authentication")
	}
	return nil
}

// Tokens are this node's scoped tokens, the unset ones defaulting to the
// admin token.
func (c Config) Tokens() httpapi.Tokens {
	return httpapi.Tokens{Admin: c.Token, Internal: c.InternalToken, Read: c.ReadToken}.WithDefaults()
}

// Node is a running config node: Raft, the FSM and the HTTP API.
type Node struct {
	cfg      Config
	log      *slog.Logger
	raft     *raft.Raft
	store    *Store
	logs     *raftboltdb.BoltStore
	trans    *raft.NetworkTransport
	stream   *raftStream // the transport's connections, cut if Shutdown hangs
	httpLn   net.Listener
	httpSrv  *http.Server
	httpURL  string
	metrics  *metrics
	auth     *httpapi.Auth
	live     *liveness
	identify *identifyQueue
	budget   *identifyBudget
	mover    *mover
	leader   leaderTasks  // the leader's own work, bound to its term
	pods     *http.Client // to gateway pods (moves)
	peers    *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
}

// Start opens the node's data, starts Raft and serves the API. It returns
// once the node listens; joining a cluster continues in the background.
func Start(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.ID)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.peers = &http.Client{Timeout: cfg.WriteTimeout + 2*time.Second, Transport: cfg.TLS.TransportNamed(&http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConnsPerHost: 32,
	}, cfg.PeerTLSName)}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	n.store = newStore(cfg.WatchHistory)
	if h := cfg.hooks; h != nil {
		n.store.beforeApply = h.beforeApply
		n.leader.done = h.taskDone
	}
	n.metrics = newMetrics(n)
	n.auth = httpapi.NewAuth(cfg.Tokens(), n.metrics.authRefusals)
	n.store.applied = n.metrics.observeApplied
	n.live = newLiveness(n)
	n.identify = newIdentifyQueue(cfg.IdentifyInterval)
	n.budget = newIdentifyBudget(cfg.IdentifyDailyLimit, cfg.IdentifyReserve)
	n.mover = newMover(n)
	n.pods = &http.Client{Transport: cfg.TLS.Transport(&http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
	})}

	if err := n.startRaft(); err != nil {
		n.closeRaft()
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		n.closeRaft()
		return nil, fmt.Errorf("listen on %s for the API: %w", cfg.HTTPAddr, err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS.HTTPServerConfig())
	}
	n.httpLn = ln
	n.httpURL = cfg.TLS.Scheme() + "://" + ln.Addr().String()
	n.httpSrv = &http.Server{
		Handler:           cfg.TLS.RequireClientCert(n.routes(), "/healthz", "/readyz"),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("api server stopped", "err", err)
		}
	}()
	n.wg.Add(2)
	go func() { defer n.wg.Done(); n.leaderLoop() }()
	go func() { defer n.wg.Done(); n.metrics.raftLoop(n.ctx, func() *raft.Raft { return n.raft }) }()
	if len(cfg.Join) > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.joinLoop() }()
	}
	n.log.Info("config node started", "raft_addr", cfg.RaftAddr, "http", n.httpURL, "bootstrap", cfg.Bootstrap, "join", cfg.Join)
	return n, nil
}

// raftLogCache is how many of the last Raft log entries are kept in memory.
const raftLogCache = 16

func (n *Node) startRaft() error {
	cfg := n.cfg
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.RaftHeartbeatTimeout
	rc.ElectionTimeout = cfg.RaftElectionTimeout
	rc.LeaderLeaseTimeout = cfg.RaftHeartbeatTimeout / 2
	rc.CommitTimeout = cfg.RaftCommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	// hashicorp/raft logs through hclog; send its warnings and errors to the
	// node's slog logger so they carry the node id and follow its format.
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{n.log.With("lib", "raft")},
		DisableTime: true})

	var err error
	n.logs, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), NoSync: cfg.NoSync})
	if err != nil {
		return fmt.Errorf("open raft log %s: %w", filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger)
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("resolve raft addr %s: %w", cfg.RaftAddr, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return fmt.Errorf("raft addr %s: an unspecified address is not advertisable: give the address peers dial", cfg.RaftAddr)
	}
	if n.stream, err = newRaftStream(cfg.RaftAddr, adv, cfg.TLS, cfg.PeerTLSName); err != nil {
		return fmt.Errorf("listen on %s for raft: %w", cfg.RaftAddr, err)
	}
	n.trans = raft.NewNetworkTransportWithLogger(n.stream, 5, 5*time.Second, rc.Logger)
	existing, err := raft.HasExistingState(n.logs, n.logs, snaps)
	if err != nil {
		return fmt.Errorf("inspect raft state: %w", err)
	}
	// The last entries stay in memory too: replication reads the entry
	// before each one it sends for its term, and a placement's entry is
	// ~200 KB of msgpack to decode from bolt. 16 entries bound the copy at a
	// few MB.
	cached, err := raft.NewLogCache(raftLogCache, n.logs)
	if err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	n.raft, err = raft.NewRaft(rc, n.store, cached, n.logs, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	if cfg.Bootstrap && !existing {
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: n.trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap cluster: %w", err)
		}
		n.log.Info("bootstrapped a new cluster", "shards", cfg.Shards)
	}
	return nil
}

// URL returns the API's base URL.
func (n *Node) URL() string { return n.httpURL }

// ID returns the node id.
func (n *Node) ID() string { return n.cfg.ID }

// Raft exposes the Raft instance (tests and benchmarks).
func (n *Node) Raft() *raft.Raft { return n.raft }

// Store exposes the replicated state.
func (n *Node) Store() *Store { return n.store }

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Registry returns the node's Prometheus registry.
func (n *Node) Registry() *prometheus.Registry { return n.metrics.reg }

// leaderLoop runs the leader-only duties while this node leads: recording the
// cluster's shard count and this node's addresses, orphaned moves, and pod
// liveness. Each stretch of leadership is a term (leader.go) whose tasks end
// with it.
func (n *Node) leaderLoop() {
	defer n.leader.end()
	for {
		select {
		case <-n.ctx.Done():
			return
		case isLeader := <-n.raft.LeaderCh():
			n.leader.end()
			if !isLeader {
				n.log.Info("lost leadership")
				continue
			}
			n.log.Info("became leader", "term", n.raft.CurrentTerm())
			t := n.leader.begin(n.ctx)
			if t == nil {
				return // closing
			}
			_ = n.leader.spawn(t, "lead", func(context.Context) { n.lead(t) })
		}
	}
}

func (n *Node) lead(t *term) {
	ctx := t.ctx
	// The previous term's tasks were cancelled; let them finish first, so
	// this term never works next to a move of the last one.
	if prev := t.after; prev != nil {
		prev.wg.Wait()
		t.after = nil
	}
	for {
		err := n.barrier(ctx)
		if err == nil {
			break
		}
		n.log.Warn("leader barrier failed", "err", err)
		if ctx.Err() != nil || n.raft.State() != raft.Leader || !sleepCtx(ctx, 100*time.Millisecond) {
			return
		}
	}
	var init bool
	n.store.View(func(st *fsm.State) { init = st.ShardCount == 0 })
	if init && n.cfg.Bootstrap {
		if _, err := n.propose(ctx, fsm.Command{Type: fsm.CmdInit, ShardCount: n.cfg.Shards}); err != nil {
			n.log.Error("set shard count", "err", err)
		}
	}
	self := fsm.ConfigNode{ID: n.cfg.ID, RaftAddr: string(n.trans.LocalAddr()), HTTPAddr: n.httpLn.Addr().String()}
	for ctx.Err() == nil {
		_, err := n.propose(ctx, fsm.Command{Type: fsm.CmdSetConfigNode, ConfigNode: &self})
		if err == nil {
			break
		}
		n.log.Warn("record own address", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	n.identify.reset(time.Now())
	_ = n.leader.spawn(t, "orphans", func(context.Context) { n.mover.sweepOrphans(t) })
	_ = n.leader.spawn(t, "resume-drains", n.mover.resumeDrains)
	if n.cfg.AutoRebalance {
		_ = n.leader.spawn(t, "auto-rebalance", n.mover.autoRebalance)
	}
	if n.cfg.FailoverReplica != "" {
		_ = n.leader.spawn(t, jobFailover, n.failoverLoop)
	}
	n.live.run(ctx)
}

// joinLoop asks the given config nodes to add this node until one accepts.
func (n *Node) joinLoop() {
	req := assignments.JoinRequest{ID: n.cfg.ID, RaftAddr: string(n.trans.LocalAddr()), HTTPAddr: n.httpLn.Addr().String()}
	client, err := assignments.NewClient(n.cfg.Join, n.cfg.Token)
	if err == nil {
		client.UseTLS(n.cfg.TLS)
	}
	if err != nil {
		n.log.Error("join", "err", err)
		return
	}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.WriteTimeout+time.Second)
		_, err := client.Join(ctx, req)
		cancel()
		if err == nil {
			n.log.Info("joined the cluster", "via", n.cfg.Join, "attempts", attempt)
			return
		}
		if assignments.IsStatus(err, http.StatusConflict) || assignments.IsStatus(err, http.StatusUnauthorized) {
			n.log.Error("join refused; not retrying", "err", err)
			return
		}
		n.log.Warn("join failed; retrying", "err", err, "in", backoff)
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Close stops the node gracefully: a leader first hands leadership to another
// voter so the cluster does not wait for an election timeout.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		if n.IsLeader() && n.voters() > 1 {
			if terr := n.raft.LeadershipTransfer().Error(); terr != nil {
				n.log.Warn("leadership transfer before exit failed", "err", terr)
			} else {
				n.log.Info("handed leadership over before exit")
			}
		}
		err = n.shutdown()
	})
	return err
}

// Kill stops the node abruptly, as a crash would (no leadership transfer).
func (n *Node) Kill() {
	n.closeOnce.Do(func() { _ = n.shutdown() })
}

func (n *Node) shutdown() error {
	n.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if n.httpSrv != nil {
		_ = n.httpSrv.Shutdown(ctx)
		_ = n.httpSrv.Close()
	}
	// Every leader task runs on a context n.cancel ended: wait for them
	// while Raft still answers, so none outlives the node.
	n.leader.close()
	err := n.closeRaft()
	n.wg.Wait()
	n.log.Info("config node stopped")
	return err
}

// raftShutdownGrace is how long closeRaft lets Raft stop by itself.
const raftShutdownGrace = 5 * time.Second

func (n *Node) closeRaft() error {
	var errs []error
	if n.raft != nil {
		f := n.raft.Shutdown()
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		select {
		case err := <-done:
			errs = append(errs, err)
		case <-time.After(raftShutdownGrace):
			// A replication goroutine waits on a peer that stopped
			// reading: cut the connections (see raftStream), again
			// while it still waits.
			t := time.NewTicker(raftShutdownGrace)
			defer t.Stop()
			for waiting := true; waiting; {
				n.log.Warn("raft shutdown still waiting; closing its connections", "connections", n.stream.closeAll())
				select {
				case err := <-done:
					errs, waiting = append(errs, err), false
				case <-t.C:
				}
			}
		}
	}
	if n.trans != nil {
		errs = append(errs, n.trans.Close())
	}
	if n.logs != nil {
		errs = append(errs, n.logs.Close())
	}
	return errors.Join(errs...)
}

func (n *Node) voters() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	c := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			c++
		}
	}
	return c
}

var _ io.Closer = (*Node)(nil)

// slogWriter turns hclog's lines into slog records.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.HasPrefix(line, "[ERROR]"):
		w.log.Error(strings.TrimSpace(strings.TrimPrefix(line, "[ERROR]")))
	case strings.HasPrefix(line, "[WARN]"):
		w.log.Warn(strings.TrimSpace(strings.TrimPrefix(line, "[WARN]")))
	default:
		w.log.Info(line)
	}
	return len(p), nil
}
