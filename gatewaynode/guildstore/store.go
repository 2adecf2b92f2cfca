package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"time"

	_ "github.com/mattn/go-sqlite3" // the pod's SQLite driver (cgo); the only SQLite driver in this process
)

// Errors returned by the store. Match them with errors.Is.
var (
	// ErrStaleEpoch: a write or import carried an epoch lower than the guild's stored epoch.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrChecksumMismatch: an import's rows do not hash to the expected checksum.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrBadExport: an export stream is malformed, truncated or for another guild.
	ErrBadExport = errors.New("malformed export")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("guildstore closed")
)

// Options tune Open. The zero value is the production default.
type Options struct {
	// Synchronous is SQLite's synchronous pragma: "FULL" (default) or "NORMAL".
	//
	// FULL is the default because the gateway acknowledges Discord dispatches
	// (checkpoints its resume sequence, answers interactions) once a commit
	// returns: with WAL + NORMAL a commit survives a process crash but the last
	// transactions can be lost on power or node loss, which would silently skip
	// events the checkpoint claims were processed. Group commit amortizes the
	// one WAL fsync per transaction over every event queued behind it, so FULL
	// costs little throughput. NORMAL is offered for benchmarks and tests.
	Synchronous string
	// BusyTimeout is how long a connection waits for a lock held by another
	// connection or process (e.g. the Litestream sidecar's checkpoints). Default 5s.
	BusyTimeout time.Duration
	// ReadConns is how many dashboard reads run at once, each on its own
	// connection with its prepared statements; the read pool holds twice
	// as many connections, the other half for every other read. Default:
	// the number of cores (at least 2).
	ReadConns int
	// MaxBatch caps how many writes one group commit contains. Default 4096.
	MaxBatch int
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.Synchronous == "" {
		o.Synchronous = "FULL"
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = 5 * time.Second
	}
	if o.ReadConns <= 0 {
		o.ReadConns = max(2, runtime.NumCPU())
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Store is one gateway pod's SQLite database. It owns one writer connection,
// driven by a single group-commit goroutine, and a pool of read connections.
// It is safe for concurrent use.
type Store struct {
	path   string
	opts   Options
	log    *slog.Logger
	wdb    *sql.DB   // exactly one connection, used only by the writer goroutine
	rdb    *sql.DB   // read pool (query_only)
	dash   *readPool // the dashboard's connections, from rdb (readpool.go)
	dc     *dashCache
	w      *writer
	imp    imports       // chunked imports in progress (import.go)
	cdb    *sql.DB       // one connection, the checkpointer's (checkpointLoop)
	cpDone chan struct{} // closed when checkpointLoop has returned
	closed chan struct{}
}

// Open opens (creating if needed) the database at path, applies pending schema
// migrations and starts the group-commit writer.
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenWithOptions(ctx, path, Options{})
}

// OpenWithOptions is Open with explicit options.
func OpenWithOptions(ctx context.Context, path string, opts Options) (*Store, error) {
	opts.defaults()
	switch opts.Synchronous {
	case "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("open %s: synchronous must be FULL or NORMAL, got %q", path, opts.Synchronous)
	}
	common := url.Values{}
	// WAL: readers never block the writer and Litestream needs it. No
	// exclusive locking mode: the replication sidecar must read the WAL.
	common.Set("_journal_mode", "WAL")
	common.Set("_busy_timeout", fmt.Sprint(opts.BusyTimeout.Milliseconds()))
	common.Set("_synchronous", opts.Synchronous)
	common.Set("_foreign_keys", "on")

	wq := url.Values{}
	for k, v := range common {
		wq[k] = v
	}
	// BEGIN IMMEDIATE: take the write lock up front instead of upgrading a
	// read lock mid-transaction (which fails with SQLITE_BUSY, not waits).
	wq.Set("_txlock", "immediate")
	wdb, err := sql.Open("sqlite3", "file:"+path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	// Checkpoints belong to the Litestream sidecar (package litestream):
	// this process never runs RESTART/TRUNCATE checkpoints. SQLite's
	// automatic PASSIVE one would run inside the commit that crosses its
	// threshold, holding every other guild's writes behind it while it
	// copies up to 40 MB (a move imports ~100 MB); it is off, and the
	// store's checkpointer (checkpointLoop) runs the same PASSIVE
	// checkpoint beside the writer on a connection of its own, as a
	// backstop for running without a sidecar.
	if _, err := wdb.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 0"); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open %s: wal_autocheckpoint: %w", path, err)
	}
	if err := migrate(ctx, wdb); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}

	rq := url.Values{}
	for k, v := range common {
		rq[k] = v
	}
	rq.Set("_query_only", "true")
	rdb, err := sql.Open("sqlite3", "file:"+path+"?"+rq.Encode())
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open %s (read pool): %w", path, err)
	}
	rdb.SetMaxOpenConns(2 * opts.ReadConns)
	rdb.SetMaxIdleConns(2 * opts.ReadConns)
	if err := rdb.PingContext(ctx); err != nil {
		wdb.Close()
		rdb.Close()
		return nil, fmt.Errorf("open %s (read pool): %w", path, err)
	}

	cdb, err := sql.Open("sqlite3", "file:"+path+"?"+common.Encode())
	if err != nil {
		wdb.Close()
		rdb.Close()
		return nil, fmt.Errorf("open %s (checkpointer): %w", path, err)
	}
	cdb.SetMaxOpenConns(1)
	s := &Store{path: path, opts: opts, log: opts.Logger.With("component", "guildstore", "db", path), wdb: wdb, rdb: rdb, cdb: cdb, closed: make(chan struct{}), cpDone: make(chan struct{})}
	s.dash = newReadPool(rdb, opts.ReadConns)
	s.dc = newDashCache()
	w, err := newWriter(ctx, s)
	if err != nil {
		wdb.Close()
		rdb.Close()
		cdb.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s.w = w
	go s.checkpointLoop()
	if err := s.dropUnfinishedImports(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return s, nil
}

// checkpointInterval is how often checkpointLoop looks for new commits.
const checkpointInterval = 500 * time.Millisecond

// checkpointLoop runs a PASSIVE checkpoint every checkpointInterval after
// commits, on its own connection: it copies committed WAL frames into the
// database while the writer goes on committing (a PASSIVE checkpoint takes
// no lock a writer waits for), so no commit pays for it. With a Litestream
// sidecar holding its read transaction it copies only what the sidecar has
// replicated, as SQLite's automatic checkpoint did.
func (s *Store) checkpointLoop() {
	defer close(s.cpDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		c := s.w.commits.Load()
		if c == last {
			continue
		}
		last = c
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := s.cdb.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
			s.log.Warn("checkpoint failed", "err", err)
		}
		cancel()
	}
}

// Path is the database file path.
func (s *Store) Path() string { return s.path }

// Close stops the writer (pending writes fail with ErrClosed) and closes the database.
func (s *Store) Close() error {
	select {
	case <-s.closed:
		return nil
	default:
	}
	close(s.closed)
	s.w.wait()
	<-s.cpDone
	return errors.Join(s.w.close(), s.dash.close(), s.rdb.Close(), s.cdb.Close(), s.wdb.Close())
}

// ms converts a time to the stored unix-millisecond form (0 for the zero time).
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// nullMS is ms but NULL for the zero time.
func nullMS(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// nullID stores an optional snowflake: 0 means absent (NULL).
func nullID(id uint64) any {
	if id == 0 {
		return nil
	}
	return int64(id)
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func fromNullMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64).UTC()
}

func fromNullID(v sql.NullInt64) uint64 {
	if !v.Valid {
		return 0
	}
	return uint64(v.Int64)
}
