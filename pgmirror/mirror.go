package pgmirror

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/tlsconfig"
)

// Options configure a Mirror. Zero values take the defaults noted.
type Options struct {
	// ConfigURLs are the config nodes to follow, the preferred one first
	// (inside a config node: its own API).
	ConfigURLs []string
	Token      string
	// TLS, when set, verifies the config nodes (https URLs) and presents
	// the mirror's certificate.
	TLS *tlsconfig.Reloader
	// PGURL is the database, postgres://user:password@host:port/db.
	PGURL string
	// Name labels logs ("config-0", "pgmirror").
	Name       string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// RetryMin and RetryMax bound the reconnect backoff (100 ms, 5 s).
	RetryMin, RetryMax time.Duration
	// LockRetry is how often a mirror without the lock tries to take it (1 s).
	LockRetry time.Duration
	// MaxBatch caps the revisions of one transaction (1000).
	MaxBatch int
	// StaleAfter: a stream that sends nothing, or no proof that its node is
	// current, for this long is dropped for another node (10 s).
	StaleAfter time.Duration
	// PingInterval: how often an idle writer checks its connection (5 s).
	PingInterval time.Duration
	// OnCommit, if set, is called after each committed batch or resync with
	// the revision Postgres is now at (benchmarks measure lag with it).
	OnCommit func(rev uint64)

	hooks *testHooks
}

// testHooks are seams for tests (nil otherwise).
type testHooks struct {
	// beforeCommit runs inside a batch's transaction, after its writes.
	beforeCommit func(last uint64)
}

func (o *Options) setDefaults() {
	if o.Name == "" {
		o.Name = "pgmirror"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 100 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
	if o.LockRetry <= 0 {
		o.LockRetry = time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1000
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 10 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 5 * time.Second
	}
}

// lockKey is the pg_try_advisory_lock key every mirror of a database takes
// (advisory locks are per database).
var lockKey = func() int64 {
	h := fnv.New64a()
	h.Write([]byte("modbot pgmirror writer"))
	return int64(h.Sum64() >> 1)
}()

// Mirror follows the change stream into Postgres. See the package doc.
type Mirror struct {
	o      Options
	log    *slog.Logger
	client *assignments.Client
	pgcfg  *pgx.ConnConfig
	m      *metrics

	mu     sync.Mutex
	st     Status
	lag    lagTracker
	conn   *pgx.Conn // the current connection (for Kill)
	killed bool
}

// Status is what a mirror is doing, for tests and logs.
type Status struct {
	// Writing: this mirror holds the lock.
	Writing bool
	// Revision: the revision of the map in Postgres as this mirror last
	// wrote or read it.
	Revision uint64
	// Err is the last error (nil once the mirror writes again), ErrKind
	// its kind.
	Err     error
	ErrKind string
	// Resyncs counts resyncs from a snapshot.
	Resyncs int
}

// New checks the options (a bad URL is an error here) and returns a mirror;
// Run starts it.
func New(o Options) (*Mirror, error) {
	o.setDefaults()
	if len(o.ConfigURLs) == 0 {
		return nil, errors.New("no config node URL to follow (--config http://HOST:PORT,…)")
	}
	if o.PGURL == "" {
		return nil, errors.New("--pg-url is required (postgres://USER:PASSWORD@HOST:PORT/DATABASE)")
	}
	cfg, err := pgx.ParseConfig(o.PGURL)
	if err != nil {
		return nil, fmt.Errorf("--pg-url is not a PostgreSQL URL (want postgres://USER:PASSWORD@HOST:PORT/DATABASE): %w", err)
	}
	cfg.ConnectTimeout = 10 * time.Second
	c, err := assignments.NewClient(o.ConfigURLs, o.Token)
	if err != nil {
		return nil, fmt.Errorf("config node URLs: %w", err)
	}
	c.UseTLS(o.TLS)
	mr := &Mirror{o: o, log: o.Logger.With("mirror", o.Name), client: c, pgcfg: cfg}
	mr.m = newMetrics(o.Registerer, mr.lagSeconds, mr.log)
	return mr, nil
}

// Status returns what the mirror is doing.
func (mr *Mirror) Status() Status {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	return mr.st
}

func (mr *Mirror) lagSeconds() float64 {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	if len(mr.lag.pending) == 0 {
		return 0
	}
	return max(time.Since(mr.lag.pending[0].at).Seconds(), 0)
}

// saw notes a change (or, from progress, a revision) not yet written.
func (mr *Mirror) saw(rev uint64, at time.Time) {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	if n := len(mr.lag.pending); (n == 0 && rev > mr.st.Revision) || (n > 0 && rev > mr.lag.pending[n-1].rev) {
		mr.lag.pending = append(mr.lag.pending, pendingChange{rev: rev, at: at})
	}
}

// wrote notes that Postgres is at rev.
func (mr *Mirror) wrote(rev uint64) {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	mr.st.Revision = rev
	mr.st.Err, mr.st.ErrKind = nil, ""
	n := 0
	for n < len(mr.lag.pending) && mr.lag.pending[n].rev <= rev {
		n++
	}
	mr.lag.pending = append(mr.lag.pending[:0], mr.lag.pending[n:]...)
	mr.m.revision.Set(float64(rev))
	if mr.o.OnCommit != nil {
		mr.o.OnCommit(rev)
	}
}

func (mr *Mirror) setWriting(w bool) {
	mr.mu.Lock()
	mr.st.Writing = w
	mr.mu.Unlock()
	if w {
		mr.m.lockHeld.Set(1)
	} else {
		mr.m.lockHeld.Set(0)
	}
}

// mirrorError is an error with its kind.
type mirrorError struct {
	kind string
	err  error
}

func (e *mirrorError) Error() string { return e.err.Error() }
func (e *mirrorError) Unwrap() error { return e.err }

func kinded(kind string, err error) error {
	if err == nil {
		return nil
	}
	var me *mirrorError
	if errors.As(err, &me) {
		return err
	}
	return &mirrorError{kind: kind, err: err}
}

// ErrorKind returns the kind (ErrKind…) of an error from Check.
func ErrorKind(err error) string { return kindOf(err) }

func kindOf(err error) string {
	var me *mirrorError
	if errors.As(err, &me) {
		return me.kind
	}
	return ErrKindWrite
}

// connectKind tells a refused or unreachable server from one that refuses
// us (credentials, database).
func connectKind(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "28P01", "28000", "3D000", "42501":
			return ErrKindAuth
		}
	}
	return ErrKindConnect
}

// Check connects once, migrates the schema and reads the stored revision:
// what `modbot pgmirror` does before Run, to fail fast on bad input.
func (mr *Mirror) Check(ctx context.Context) error {
	conn, err := mr.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = readRevision(ctx, conn)
	return err
}

// connect opens the dedicated connection and migrates the schema.
func (mr *Mirror) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, mr.pgcfg)
	if err != nil {
		kind := connectKind(err)
		hint := "is PostgreSQL running and reachable?"
		if kind == ErrKindAuth {
			hint = "check the user, password and database in --pg-url"
		}
		return nil, kinded(kind, fmt.Errorf("connect to PostgreSQL %s:%d/%s (%s): %w", mr.pgcfg.Host, mr.pgcfg.Port, mr.pgcfg.Database, hint, err))
	}
	if err := migrateSchema(ctx, conn); err != nil {
		conn.Close(context.Background())
		return nil, kinded(ErrKindSchema, err)
	}
	return conn, nil
}

func readRevision(ctx context.Context, conn *pgx.Conn) (uint64, error) {
	var rev int64
	if err := conn.QueryRow(ctx, `SELECT revision FROM mirror_state WHERE id`).Scan(&rev); err != nil {
		return 0, kinded(ErrKindWrite, fmt.Errorf("read mirror_state: %w", err))
	}
	return uint64(rev), nil
}

// Run mirrors until ctx ends, then returns nil. Every failure (Postgres
// down, bad credentials, a newer schema, a broken stream) is logged,
// counted and retried with backoff: the caller — a config node — goes on
// serving whatever happens here.
func (mr *Mirror) Run(ctx context.Context) error {
	failures := 0
	for ctx.Err() == nil {
		wrote, err := mr.session(ctx)
		mr.setWriting(false)
		if ctx.Err() != nil {
			break
		}
		if wrote {
			failures = 0
		}
		failures++
		kind := kindOf(err)
		mr.m.errors.WithLabelValues(kind).Inc()
		mr.mu.Lock()
		mr.st.Err, mr.st.ErrKind = err, kind
		mr.mu.Unlock()
		level := slog.LevelWarn
		if kind == ErrKindAuth || kind == ErrKindSchema || kind == ErrKindConfig {
			level = slog.LevelError // needs an operator
		}
		mr.log.Log(ctx, level, "postgres mirror stopped writing; retrying", "kind", kind, "err", err, "revision", mr.Status().Revision)
		step := mr.o.RetryMin << min(failures-1, 20)
		if step > mr.o.RetryMax || step <= 0 {
			step = mr.o.RetryMax
		}
		t := time.NewTimer(step/2 + rand.N(step/2+1))
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	mr.setWriting(false)
	return nil
}

// Kill drops the mirror's connection without a goodbye, as a crash would:
// Postgres rolls back its open transaction and frees its lock. The mirror
// stops for good. For tests of a writer dying mid-batch.
func (mr *Mirror) Kill() {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	mr.killed = true
	if mr.conn != nil {
		_ = mr.conn.PgConn().Conn().Close()
	}
}

// session is one connection: connect, migrate, wait for the lock, write.
// It reports whether it wrote anything.
func (mr *Mirror) session(ctx context.Context) (bool, error) {
	conn, err := mr.connect(ctx)
	if err != nil {
		return false, err
	}
	mr.mu.Lock()
	if mr.killed {
		mr.mu.Unlock()
		_ = conn.PgConn().Conn().Close()
		<-ctx.Done()
		return false, ctx.Err()
	}
	mr.conn = conn
	mr.mu.Unlock()
	defer func() {
		mr.mu.Lock()
		mr.conn = nil
		mr.mu.Unlock()
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	if err := mr.waitLock(ctx, conn); err != nil {
		return false, err
	}
	mr.setWriting(true)
	mr.log.Info("holding the postgres mirror lock; writing", "pid", conn.PgConn().PID())
	return mr.follow(ctx, conn)
}

// waitLock takes the writer lock on conn, trying every LockRetry. The lock
// lives as long as the connection.
func (mr *Mirror) waitLock(ctx context.Context, conn *pgx.Conn) error {
	logged := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, lockKey).Scan(&ok); err != nil {
			return kinded(ErrKindLock, fmt.Errorf("try the mirror lock: %w", err))
		}
		if ok {
			return nil
		}
		mr.mu.Lock()
		mr.lag.pending = nil // another mirror writes: not ours to catch up
		mr.mu.Unlock()
		if !logged {
			logged = true
			mr.log.Info("another mirror holds the postgres mirror lock; standing by")
		}
		if rev, err := readRevision(ctx, conn); err == nil {
			mr.mu.Lock()
			mr.st.Revision = rev
			mr.mu.Unlock()
			mr.m.revision.Set(float64(rev))
		}
		t := time.NewTimer(mr.o.LockRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// streamItem is what the reader goroutine hands the writer.
type streamItem struct {
	change *assignments.WatchChange
	err    error
}

// follow writes the change stream from the stored revision until Postgres
// fails (returned) or ctx ends. Stream failures are retried on the next
// node without giving up the lock.
func (mr *Mirror) follow(ctx context.Context, conn *pgx.Conn) (bool, error) {
	rev, err := readRevision(ctx, conn)
	if err != nil {
		return false, err
	}
	mr.wrote(rev)
	wroteAny := false
	node := 0
	streamFailures := 0
	var learned assignments.Learned
	for ctx.Err() == nil {
		urls := mr.client.URLs()
		base := urls[node%len(urls)]
		next, gone, err := mr.streamFrom(ctx, conn, base, rev, &learned)
		if next > rev {
			wroteAny = true
			streamFailures = 0
		}
		rev = next
		switch {
		case ctx.Err() != nil:
			return wroteAny, ctx.Err()
		case gone:
			mr.log.Info("the change stream no longer has our revision; resyncing from a snapshot", "revision", rev, "node", base, "reason", err)
			r, err := mr.resync(ctx, conn, rev)
			if err != nil {
				return wroteAny, err
			}
			rev, wroteAny = r, true
			continue
		case err != nil && isPGError(err):
			return wroteAny, err
		}
		mr.m.errors.WithLabelValues(ErrKindStream).Inc()
		mr.log.Warn("change stream ended; trying the next config node", "node", base, "err", err, "revision", rev)
		node++
		streamFailures++
		if streamFailures > len(urls) {
			// Every node failed in a row: back off, checking Postgres.
			d := min(mr.o.RetryMin<<min(streamFailures-len(urls), 10), mr.o.RetryMax)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			if err := conn.Ping(ctx); err != nil && ctx.Err() == nil {
				return wroteAny, kinded(ErrKindLock, fmt.Errorf("postgres connection lost: %w", err))
			}
		}
	}
	return wroteAny, ctx.Err()
}

// isPGError reports whether err came from Postgres' side (the session must
// end) rather than the stream's.
func isPGError(err error) bool {
	var me *mirrorError
	return errors.As(err, &me) && me.kind != ErrKindStream
}

// streamFrom opens the stream at base from rev and writes what it brings,
// in batches, until something fails. It returns the revision written, and
// gone when the node cannot serve rev (410, or `event: gone`).
func (mr *Mirror) streamFrom(ctx context.Context, conn *pgx.Conn, base string, rev uint64, learned *assignments.Learned) (uint64, bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := mr.client.OpenStream(sctx, base, assignments.StreamOptions{From: rev, IdleTimeout: mr.o.StaleAfter})
	if assignments.IsStatus(err, http.StatusGone) {
		return rev, true, err
	}
	if err != nil {
		return rev, false, kinded(ErrKindStream, err)
	}
	defer s.Close()
	items := make(chan streamItem, 4*mr.o.MaxBatch)
	go mr.read(sctx, s, items, learned.Revision)
	ping := time.NewTicker(mr.o.PingInterval)
	defer ping.Stop()
	batch := make([]assignments.WatchChange, 0, mr.o.MaxBatch)
	for {
		var it streamItem
		select {
		case <-ctx.Done():
			return rev, false, ctx.Err()
		case <-ping.C:
			if err := conn.Ping(ctx); err != nil {
				return rev, false, kinded(ErrKindLock, fmt.Errorf("postgres connection lost: %w", err))
			}
			continue
		case it = <-items:
		}
		batch = batch[:0]
	collect:
		for {
			if it.err != nil {
				break
			}
			if it.change.Revision > rev && (len(batch) == 0 || it.change.Revision > batch[len(batch)-1].Revision) {
				batch = append(batch, *it.change)
			}
			if len(batch) >= mr.o.MaxBatch {
				break
			}
			select {
			case it = <-items:
			default:
				break collect
			}
		}
		if len(batch) > 0 {
			start := time.Now()
			var hook func(uint64)
			if mr.o.hooks != nil {
				hook = mr.o.hooks.beforeCommit
			}
			next, err := writeBatch(ctx, conn, rev, batch, hook)
			if err != nil {
				kind := ErrKindWrite
				if errors.Is(err, errFenced) {
					kind = ErrKindFenced
				}
				return rev, false, kinded(kind, err)
			}
			mr.m.batches.Observe(time.Since(start).Seconds())
			rev = next
			mr.wrote(rev)
		}
		if it.err != nil {
			if assignments.IsStatus(it.err, http.StatusGone) {
				return rev, true, it.err
			}
			return rev, false, kinded(ErrKindStream, it.err)
		}
	}
}

// read runs the stream into items until it fails (the last item carries
// the error). It drops a node that cannot prove it is current for
// StaleAfter, as the Watcher does.
func (mr *Mirror) read(ctx context.Context, s *assignments.Stream, items chan<- streamItem, learnedRev uint64) {
	learned := assignments.Learned{Revision: learnedRev}
	lastProof := time.Now()
	send := func(it streamItem) bool {
		select {
		case items <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := s.Next()
		if err != nil {
			send(streamItem{err: err})
			return
		}
		switch {
		case msg.Change != nil:
			at := time.Now()
			if len(msg.Change.Events) > 0 {
				at = time.UnixMilli(msg.Change.Events[0].At)
			}
			learned.Note(msg.Change.Revision, 0)
			mr.saw(msg.Change.Revision, at)
			if !send(streamItem{change: msg.Change}) {
				return
			}
		case msg.Progress != nil:
			p := *msg.Progress
			cerr := p.CheckCurrent(learned, mr.o.StaleAfter)
			learned.Note(p.StateRevision(), p.Term)
			if cerr == nil {
				lastProof = time.Now()
				if r := p.StateRevision(); r > p.Revision {
					mr.saw(r, time.Now()) // the node has more than it sent yet
				}
			} else if time.Since(lastProof) >= mr.o.StaleAfter {
				send(streamItem{err: fmt.Errorf("%s cannot prove for %s that it is current: %w", s.Node(), mr.o.StaleAfter, cerr)})
				return
			}
		}
	}
}

// resync replaces the tables by a snapshot not older than rev.
func (mr *Mirror) resync(ctx context.Context, conn *pgx.Conn, rev uint64) (uint64, error) {
	lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	snap, err := mr.client.Snapshot(lctx)
	cancel()
	if err != nil {
		return rev, kinded(ErrKindSnapshot, fmt.Errorf("list /v1/snapshot for a resync: %w", err))
	}
	if snap.Revision <= rev {
		return rev, kinded(ErrKindSnapshot, fmt.Errorf("the snapshot is at revision %d, not after ours (%d): a lagging node; retrying", snap.Revision, rev))
	}
	start := time.Now()
	st, err := writeSnapshot(ctx, conn, rev, &snap)
	if err != nil {
		kind := ErrKindSnapshot
		if errors.Is(err, errFenced) {
			kind = ErrKindFenced
		}
		return rev, kinded(kind, err)
	}
	mr.m.resyncs.Inc()
	mr.mu.Lock()
	mr.st.Resyncs++
	mr.mu.Unlock()
	mr.wrote(snap.Revision)
	mr.log.Info("resynced from a snapshot", "from", rev, "to", snap.Revision, "guilds", len(snap.Guilds),
		"upserted", st.GuildsUpserted, "removed", st.GuildsRemoved, "took", time.Since(start))
	return snap.Revision, nil
}
