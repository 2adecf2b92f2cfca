package litestream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	ls "github.com/benbjohnson/litestream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/superfly/ltx"
)

// ReplicateOptions configure Replicate.
type ReplicateOptions struct {
	// DBPath is the gateway's database. Required. It may not exist yet:
	// replication starts once the gateway creates it.
	DBPath string
	// ReplicaURL is the one replica (see NewReplicaClient).
	ReplicaURL string
	// RestoreIfMissing restores a missing DBPath from the replica before
	// replication starts (a replica without backup: start fresh).
	RestoreIfMissing bool
	// SyncInterval bounds how long a committed change waits before it is
	// on the replica (while the replica is reachable): sync rounds (WAL →
	// local LTX → replica) start every SyncInterval/2. Default 1s.
	SyncInterval time.Duration
	// MetricsAddr, if set, serves /metrics and /healthz (host:port).
	MetricsAddr string
	// ShutdownTimeout bounds the final sync on shutdown. Default 30s.
	ShutdownTimeout time.Duration
	// MinCheckpointPageN is Litestream's PASSIVE checkpoint threshold in
	// WAL pages (default 1000, Litestream's).
	MinCheckpointPageN int
	// CheckpointInterval is Litestream's time-based PASSIVE checkpoint (default 1m).
	CheckpointInterval time.Duration
	// TruncatePageN is the WAL size, in pages, at which Litestream forces a
	// TRUNCATE checkpoint: it waits for open read transactions (a move's
	// export, a dashboard read) and blocks writes meanwhile, then empties
	// the WAL. It is what bounds the WAL when PASSIVE checkpoints cannot
	// restart it because readers are always present. Default 121359 pages
	// (~500 MB), Litestream's.
	TruncatePageN int
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Registerer for the modbot_replication_* series; default a private
	// registry served on MetricsAddr together with the default registry
	// (Litestream's own litestream_* series, Go and process metrics).
	Registry *prometheus.Registry
	// Ready, if set, is called once replication runs, with the metrics
	// URL ("" without MetricsAddr).
	Ready func(metricsURL string)
}

// Replicate runs the sidecar until ctx is cancelled, then does a final sync
// and returns nil (or the final sync's error). It returns early on bad
// options or a replica client that cannot be set up. A failed
// --restore-if-missing restore is retried with backoff (counted in
// modbot_replication_restore_errors_total) and replication does not start
// before it succeeds.
func Replicate(ctx context.Context, opt ReplicateOptions) error {
	if opt.DBPath == "" {
		return errors.New("database path required (--db)")
	}
	if opt.SyncInterval <= 0 {
		opt.SyncInterval = time.Second
	}
	if opt.ShutdownTimeout <= 0 {
		opt.ShutdownTimeout = 30 * time.Second
	}
	if opt.MinCheckpointPageN <= 0 {
		opt.MinCheckpointPageN = ls.DefaultMinCheckpointPageN
	}
	if opt.CheckpointInterval <= 0 {
		opt.CheckpointInterval = ls.DefaultCheckpointInterval
	}
	if opt.TruncatePageN <= 0 {
		opt.TruncatePageN = ls.DefaultTruncatePageN
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Registry == nil {
		opt.Registry = prometheus.NewRegistry()
	}
	dbPath, err := filepath.Abs(opt.DBPath)
	if err != nil {
		return err
	}
	log := opt.Logger.With("db", dbPath)
	client, desc, err := NewReplicaClient(opt.ReplicaURL)
	if err != nil {
		return err
	}
	m := NewMetrics(opt.Registry)
	m.lag.walPath = dbPath + "-wal"

	var st status
	st.phase.Store("starting")
	var metricsURL string
	if opt.MetricsAddr != "" {
		srv, url, err := serveMetrics(opt.MetricsAddr, opt.Registry, m, &st, opt.SyncInterval)
		if err != nil {
			return err
		}
		metricsURL = url
		defer srv.Close()
		log.Info("metrics listening", "url", url+"/metrics")
	}

	initCtx, cancelInit := context.WithTimeout(ctx, time.Minute)
	err = client.Init(initCtx)
	cancelInit()
	if err != nil {
		return fmt.Errorf("replica %s: %w", opt.ReplicaURL, explainS3(err))
	}

	if opt.RestoreIfMissing {
		// Retry until it works (or we are stopped): replicating an empty
		// database over a replica we failed to read would be worse than
		// waiting. /healthz answers 503 until then, so the gateway waits.
		st.phase.Store("restoring")
		for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
			res, err := Restore(ctx, RestoreOptions{DBPath: dbPath, ReplicaURL: opt.ReplicaURL, IfDBNotExists: true, IfReplicaExists: true, Logger: opt.Logger})
			if err == nil {
				if !res.Restored {
					log.Info("no restore needed", "reason", res.Reason)
				}
				st.lastErr.Store("")
				break
			}
			m.RestoreErrors.Inc()
			st.lastErr.Store(err.Error())
			log.Error("--restore-if-missing failed; retrying", "error", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return fmt.Errorf("--restore-if-missing: stopped before a restore succeeded: %w", err)
			case <-time.After(backoff):
			}
		}
	}

	db := ls.NewDB(dbPath)
	r := ls.NewReplicaWithClient(db, client)
	r.MonitorEnabled = false // we drive sync rounds (see the package doc: lag)
	r.SyncInterval = opt.SyncInterval
	db.Replica = r
	db.MonitorInterval = 0
	db.MinCheckpointPageN = opt.MinCheckpointPageN
	db.CheckpointInterval = opt.CheckpointInterval
	db.TruncatePageN = opt.TruncatePageN
	store := ls.NewStore([]*ls.DB{db}, ls.DefaultCompactionLevels)
	store.Logger = opt.Logger.With("subsystem", "litestream")
	store.ShutdownSyncTimeout = opt.ShutdownTimeout
	db.ShutdownSyncTimeout = opt.ShutdownTimeout
	db.SetLogger(store.Logger.With("db", filepath.Base(dbPath)))
	if err := store.Open(ctx); err != nil {
		return fmt.Errorf("start litestream: %w", explainS3(err))
	}
	log.Info("replicating", "replica", desc.Scheme, "dir", desc.Path, "bucket", desc.Bucket, "path", desc.Prefix,
		"endpoint", desc.Endpoint, "sync_interval", opt.SyncInterval, "min_checkpoint_pages", opt.MinCheckpointPageN, "truncate_pages", opt.TruncatePageN)
	st.phase.Store("replicating")
	if opt.Ready != nil {
		opt.Ready(metricsURL)
	}

	// Watch the WAL for changes between rounds (lag), at 1/10 of the interval.
	var wg sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(min(max(opt.SyncInterval/10, 10*time.Millisecond), 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-t.C:
				m.lag.observe()
			}
		}
	}()

	var lastRemote uint64
	// A round is wal (WAL → local LTX), upload (→ replica), then
	// checkpoint. Litestream checkpoints inside db.Sync, before the upload;
	// a checkpoint copies pages into the database file and fsyncs it, which
	// on a busy disk takes longer than the rest of the round, and every
	// change of the round would wait for it before it is uploaded. So the
	// wal phase runs with the PASSIVE thresholds off (the emergency TRUNCATE
	// threshold stays on) and a second db.Sync after the upload applies
	// them: the same checkpoints, Litestream's own logic, off the path of
	// the changes being shipped.
	syncWAL := func(rctx context.Context, checkpoint bool) error {
		if checkpoint {
			db.MinCheckpointPageN, db.CheckpointInterval = opt.MinCheckpointPageN, opt.CheckpointInterval
		} else {
			db.MinCheckpointPageN, db.CheckpointInterval = math.MaxInt32, 0
		}
		return db.Sync(rctx)
	}
	timed := func(phase string, f func() error) error {
		start := time.Now()
		err := f()
		m.RoundSeconds.WithLabelValues(phase).Observe(time.Since(start).Seconds())
		return err
	}
	var lastSlowLog time.Time
	slowRounds := 0
	round := func(rctx context.Context) error {
		start := time.Now()
		m.lag.beginRound()
		err := timed("wal", func() error { return syncWAL(rctx, false) })
		walDone := time.Now()
		var local ltx.Pos
		if err == nil {
			local, err = db.Pos()
		}
		if err == nil && !local.IsZero() {
			err = timed("upload", func() error { return r.Sync(rctx) })
		}
		ok := err == nil
		m.lag.endRound(ok)
		if d := time.Since(start); d > opt.SyncInterval/2 {
			// A change may then wait longer than --sync-interval: say so,
			// at most every 10 s (the histogram has every round).
			if slowRounds++; time.Since(lastSlowLog) >= 10*time.Second {
				log.Warn("sync round slower than half the sync interval: changes wait longer than --sync-interval for the replica",
					"duration", d, "wal", walDone.Sub(start), "upload", time.Since(walDone), "sync_interval", opt.SyncInterval, "slow_rounds", slowRounds)
				lastSlowLog, slowRounds = time.Now(), 0
			}
		}
		if remote := uint64(r.Pos().TXID); remote != 0 {
			lastRemote = remote
		}
		if !local.IsZero() {
			m.LagTXIDs.Set(float64(uint64(local.TXID) - min(lastRemote, uint64(local.TXID))))
		}
		if ok {
			now := time.Now()
			m.LastSync.Set(float64(now.UnixNano()) / 1e9)
			st.lastOK.Store(now.UnixNano())
			st.lastErr.Store("")
			err = timed("checkpoint", func() error { return syncWAL(rctx, true) })
			if err != nil {
				err = fmt.Errorf("checkpoint after upload: %w", err)
			}
		}
		if err != nil {
			m.SyncErrors.Inc()
			st.lastErr.Store(err.Error())
		}
		return err
	}

	// Rounds start every half interval, so a change committed at any moment
	// is read by a round starting at most interval/2 later and is on the
	// replica one round duration after that: within SyncInterval while the
	// replica is reachable and a round takes less than half of it.
	period := opt.SyncInterval / 2
	var (
		backoff      time.Duration
		consecutive  int
		lastErrorLog time.Time
		next         = time.Now()
	)
	timer := time.NewTimer(0)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-timer.C:
		}
		err := round(ctx)
		if err != nil && ctx.Err() == nil {
			consecutive++
			backoff = min(max(2*backoff, opt.SyncInterval), 30*time.Second)
			if time.Since(lastErrorLog) >= 10*time.Second || consecutive == 1 {
				log.Error("sync failed; retrying", "error", explainS3(err), "consecutive_errors", consecutive, "retry_in", backoff)
				lastErrorLog = time.Now()
			}
			next = time.Now().Add(backoff)
			timer.Reset(backoff)
			continue
		}
		if consecutive > 0 {
			log.Info("sync recovered", "previous_errors", consecutive)
		}
		consecutive, backoff = 0, 0
		next = next.Add(period)
		if now := time.Now(); next.Before(now) {
			next = now // overran: start the next round at once, do not burst
		}
		timer.Reset(time.Until(next))
	}
	timer.Stop()

	st.phase.Store("stopping")
	log.Info("shutting down: final sync")
	sctx, cancel := context.WithTimeout(context.Background(), opt.ShutdownTimeout+5*time.Second)
	defer cancel()
	// The final round runs under our lag bookkeeping; Close then syncs
	// again (a no-op unless a write landed in between) and stops Litestream.
	finalErr := round(sctx)
	closeErr := store.Close(sctx)
	stopWatch()
	wg.Wait()
	if err := errors.Join(finalErr, closeErr); err != nil {
		return fmt.Errorf("final sync: %w", explainS3(err))
	}
	log.Info("final sync done; exiting", "replica_txid", lastRemote)
	return nil
}

type status struct {
	phase   atomic.Value // string
	lastOK  atomic.Int64 // unix nanos
	lastErr atomic.Value // string
}

func serveMetrics(addr string, reg *prometheus.Registry, m *Metrics, st *status, interval time.Duration) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, prometheus.DefaultGatherer}, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		phase, _ := st.phase.Load().(string)
		lastErr, _ := st.lastErr.Load().(string)
		body := map[string]any{"status": phase, "lag_seconds": m.lag.lag().Seconds()}
		code := http.StatusOK
		if ns := st.lastOK.Load(); ns != 0 {
			last := time.Unix(0, ns)
			body["last_sync"] = last.UTC().Format(time.RFC3339Nano)
			// Unhealthy once syncs have failed for a while (not on one blip).
			if lastErr != "" && time.Since(last) > max(30*time.Second, 10*interval) {
				code = http.StatusServiceUnavailable
			}
		}
		if lastErr != "" {
			body["last_error"] = lastErr
		}
		if phase != "replicating" {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String(), nil
}
