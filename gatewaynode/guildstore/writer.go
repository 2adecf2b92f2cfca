package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// UnitResult is the result of one atomic unit of an ApplyBatch call.
type UnitResult struct {
	Outcomes []Outcome // one per Write, when Err is nil
	Err      error     // e.g. ErrStaleEpoch; the unit's writes were rolled back
}

// WriterStats are cumulative group-commit counters (for metrics).
type WriterStats struct {
	Commits   uint64 // transactions committed
	Requests  uint64 // caller requests committed
	Writes    uint64 // writes committed (including no-op replays)
	MaxWrites uint64 // largest number of writes in one commit
}

// Apply applies writes atomically (all or none) through the group-commit
// writer and returns once they are committed. It shares its transaction with
// whatever else is queued at the same time; a failing Apply does not affect
// the others (each is a SAVEPOINT).
//
// If ctx ends while waiting, Apply returns ctx.Err() but the writes may still
// commit; callers retry, which is safe because every Op is idempotent.
func (s *Store) Apply(ctx context.Context, writes ...Write) ([]Outcome, error) {
	res, err := s.ApplyBatch(ctx, [][]Write{writes})
	if err != nil {
		return nil, err
	}
	return res[0].Outcomes, res[0].Err
}

// ApplyBatch applies several independent units in one commit. Each unit is
// atomic on its own; the returned error is for the whole call (e.g. the commit
// failed), per-unit errors are in the results.
func (s *Store) ApplyBatch(ctx context.Context, units [][]Write) ([]UnitResult, error) {
	r := &request{ctx: ctx, units: units, done: make(chan struct{})}
	if err := s.w.submit(ctx, r); err != nil {
		return nil, err
	}
	return r.res, r.err
}

// Fence raises the guild's epoch to epoch (a migration started or finished
// under that epoch). Writes carrying a lower epoch are rejected from now on.
// Fencing with a lower epoch than stored fails with ErrStaleEpoch.
func (s *Store) Fence(ctx context.Context, guildID, epoch uint64) error {
	return s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		if err := t.checkEpoch(ctx, guildID, epoch); err != nil {
			return fmt.Errorf("fence guild %d: %w", guildID, err)
		}
		return nil
	})
}

// Stats returns the writer's counters.
func (s *Store) Stats() WriterStats {
	return WriterStats{
		Commits:   s.w.commits.Load(),
		Requests:  s.w.requests.Load(),
		Writes:    s.w.writes.Load(),
		MaxWrites: s.w.maxWrites.Load(),
	}
}

type request struct {
	ctx   context.Context
	units [][]Write
	job   func(ctx context.Context, t *wtx) error
	// conn, when set, runs on the writer's connection outside any
	// transaction (ATTACH and DETACH cannot run inside one).
	conn func(ctx context.Context, c *sql.Conn) error
	res  []UnitResult
	err  error
	done chan struct{}
}

func (r *request) size() int {
	n := 0
	for _, u := range r.units {
		n += len(u)
	}
	return n
}

// writer owns the single write connection. One goroutine drains the request
// queue: everything queued when it becomes free goes into one transaction.
type writer struct {
	s      *Store
	conn   *sql.Conn
	ctx    context.Context // the writer's own; caller contexts never interrupt a shared transaction
	cancel context.CancelFunc
	reqs   chan *request
	exited chan struct{}
	stmts  map[string]*sql.Stmt
	once   sync.Once
	// unseen holds the guilds that may have rows in unseen_messages (parked
	// edits and tombstones of messages not created yet). Every create of a
	// guild outside it skips the lookup; it is loaded at open, grows when
	// a row is parked or a guild imported, and never shrinks (a stale entry
	// only costs that lookup). Touched only by the writer's goroutine.
	unseen map[uint64]bool
	// msgLog is the change log's backing array, reused across transactions.
	msgLog []msgChange
	// attached are the databases ATTACHed to the connection, by path
	// (copy.go). Touched only by the writer's goroutine.
	attached map[string]*attachment
	aliases  int

	commits, requests, writes, maxWrites atomic.Uint64
}

func newWriter(ctx context.Context, s *Store) (*writer, error) {
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("writer connection: %w", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w := &writer{s: s, conn: conn, ctx: wctx, cancel: cancel, reqs: make(chan *request, 1024),
		exited: make(chan struct{}), stmts: map[string]*sql.Stmt{}, unseen: map[uint64]bool{},
		attached: map[string]*attachment{}}
	rows, err := conn.QueryContext(ctx, `SELECT DISTINCT guild_id FROM unseen_messages`)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("load guilds with unseen messages: %w", err)
	}
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			rows.Close()
			cancel()
			conn.Close()
			return nil, fmt.Errorf("load guilds with unseen messages: %w", err)
		}
		w.unseen[uint64(g)] = true
	}
	rows.Close()
	go w.run()
	return w, nil
}

func (w *writer) wait() { <-w.exited }

func (w *writer) close() error {
	var errs []error
	for _, st := range w.stmts {
		errs = append(errs, st.Close())
	}
	errs = append(errs, w.conn.Close())
	w.cancel()
	return errors.Join(errs...)
}

func (w *writer) submit(ctx context.Context, r *request) error {
	select {
	case w.reqs <- r:
	case <-w.s.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.done:
		return nil
	case <-w.exited:
		// The writer may have finished r just before exiting.
		select {
		case <-r.done:
			return nil
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// job runs fn alone in its own write transaction on the writer goroutine.
func (w *writer) job(ctx context.Context, fn func(ctx context.Context, t *wtx) error) error {
	r := &request{ctx: ctx, job: fn, done: make(chan struct{})}
	if err := w.submit(ctx, r); err != nil {
		return err
	}
	return r.err
}

// connJob runs fn on the writer goroutine with its connection, outside any
// transaction.
func (w *writer) connJob(ctx context.Context, fn func(ctx context.Context, c *sql.Conn) error) error {
	r := &request{ctx: ctx, conn: fn, done: make(chan struct{})}
	if err := w.submit(ctx, r); err != nil {
		return err
	}
	return r.err
}

func (w *writer) run() {
	defer close(w.exited)
	var pending *request
	for {
		first := pending
		pending = nil
		if first == nil {
			select {
			case first = <-w.reqs:
			case <-w.s.closed:
				w.failQueued()
				return
			}
		}
		if first.job != nil || first.conn != nil {
			w.runJob(first)
			continue
		}
		batch := []*request{first}
		n := first.size()
	collect:
		for n < w.s.opts.MaxBatch {
			select {
			case r := <-w.reqs:
				if r.job != nil || r.conn != nil {
					pending = r
					break collect
				}
				batch = append(batch, r)
				n += r.size()
			default:
				break collect
			}
		}
		w.commitBatch(batch, n)
	}
}

func (w *writer) failQueued() {
	for {
		select {
		case r := <-w.reqs:
			r.err = ErrClosed
			close(r.done)
		default:
			return
		}
	}
}

func (w *writer) runJob(r *request) {
	defer close(r.done)
	w.s.dc.committing(nil) // a job may write any guild (dashcache.go)
	defer w.s.dc.committed(nil)
	if err := r.ctx.Err(); err != nil {
		r.err = err
		return
	}
	if r.conn != nil {
		r.err = r.conn(r.ctx, w.conn)
		return
	}
	t, err := w.begin()
	if err != nil {
		r.err = err
		return
	}
	// The job's context may cancel its own (unshared) transaction.
	if err := r.job(r.ctx, t); err != nil {
		t.rollback()
		r.err = err
		return
	}
	r.err = t.commit()
}

func (w *writer) commitBatch(batch []*request, n int) {
	defer func() {
		for _, r := range batch {
			close(r.done)
		}
	}()
	t, err := w.begin()
	if err != nil {
		for _, r := range batch {
			r.err = err
		}
		return
	}
	live := 0
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.err = err // gave up before we started: not applied
			continue
		}
		live++
		r.res = make([]UnitResult, len(r.units))
		for i, u := range r.units {
			r.res[i] = t.applyUnit(w.ctx, u)
		}
	}
	w.s.dc.committing(t.touched) // pending from before COMMIT until the callers hear (dashcache.go)
	defer w.s.dc.committed(t.touched)
	if err := t.commit(); err != nil {
		for _, r := range batch {
			r.res, r.err = nil, err
		}
		return
	}
	w.commits.Add(1)
	w.requests.Add(uint64(live))
	w.writes.Add(uint64(n))
	for {
		cur := w.maxWrites.Load()
		if uint64(n) <= cur || w.maxWrites.CompareAndSwap(cur, uint64(n)) {
			break
		}
	}
}

// wtx is the writer's open transaction (BEGIN IMMEDIATE on the single
// connection), with prepared statements reused across transactions.
type wtx struct {
	w      *writer
	epochs map[uint64]uint64 // epochs read or raised in this transaction
	sp     int
	// msgLog and rollupDrops are the transaction's message-rollup changes,
	// applied by commit (rollup.go).
	msgLog      []msgChange
	rollupDrops map[int64]bool
	unitLog     int // len(msgLog) when the current unit began
	// touched are the guilds the transaction's units wrote (dashcache.go).
	touched map[uint64]struct{}
}

func (w *writer) begin() (*wtx, error) {
	if _, err := w.conn.ExecContext(w.ctx, "BEGIN IMMEDIATE"); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return &wtx{w: w, epochs: map[uint64]uint64{}, msgLog: w.msgLog[:0], touched: map[uint64]struct{}{}}, nil
}

func (t *wtx) commit() error {
	if err := t.flushRollups(t.w.ctx); err != nil {
		t.rollback()
		return fmt.Errorf("commit: %w", err)
	}
	if _, err := t.w.conn.ExecContext(t.w.ctx, "COMMIT"); err != nil {
		t.rollback()
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (t *wtx) rollback() {
	if _, err := t.w.conn.ExecContext(t.w.ctx, "ROLLBACK"); err != nil {
		t.w.s.log.Warn("rollback failed", "err", err)
	}
}

func (t *wtx) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := t.w.stmts[q]; ok {
		return st, nil
	}
	st, err := t.w.conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	t.w.stmts[q] = st
	return st, nil
}

func (t *wtx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	st, err := t.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

func (t *wtx) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := t.stmt(ctx, q)
	if err != nil {
		// Surface the prepare error through the Row.
		return t.w.conn.QueryRowContext(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// applyUnit applies one atomic unit inside a savepoint.
func (t *wtx) applyUnit(ctx context.Context, u []Write) UnitResult {
	if _, err := t.exec(ctx, "SAVEPOINT unit"); err != nil {
		return UnitResult{Err: err}
	}
	t.unitLog = len(t.msgLog)
	out := make([]Outcome, len(u))
	for i, wr := range u {
		if wr.Op == nil {
			return t.abortUnit(ctx, errors.New("write without op"))
		}
		g := wr.Op.Guild()
		t.touched[g] = struct{}{}
		if _, free := wr.Op.(unfencedOp); !free {
			if err := t.checkEpoch(ctx, g, wr.Epoch); err != nil {
				return t.abortUnit(ctx, fmt.Errorf("guild %d: %w", g, err))
			}
		}
		o, err := wr.Op.apply(ctx, t)
		if err != nil {
			return t.abortUnit(ctx, fmt.Errorf("guild %d: apply %T: %w", g, wr.Op, err))
		}
		out[i] = o
	}
	if _, err := t.exec(ctx, "RELEASE unit"); err != nil {
		return t.abortUnit(ctx, err)
	}
	return UnitResult{Outcomes: out}
}

func (t *wtx) abortUnit(ctx context.Context, cause error) UnitResult {
	t.epochs = map[uint64]uint64{}  // raises inside the unit are undone
	t.msgLog = t.msgLog[:t.unitLog] // and so are its message changes
	if _, err := t.exec(ctx, "ROLLBACK TO unit"); err != nil {
		return UnitResult{Err: errors.Join(cause, err)}
	}
	if _, err := t.exec(ctx, "RELEASE unit"); err != nil {
		return UnitResult{Err: errors.Join(cause, err)}
	}
	return UnitResult{Err: cause}
}

// checkEpoch enforces the fence: epoch < stored → ErrStaleEpoch; epoch > stored raises it.
func (t *wtx) checkEpoch(ctx context.Context, guildID, epoch uint64) error {
	stored, ok := t.epochs[guildID]
	if !ok {
		var v int64
		err := t.queryRow(ctx, `SELECT epoch FROM guild_epochs WHERE guild_id = ?`, int64(guildID)).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("read epoch: %w", err)
		}
		stored = uint64(v) // no row: epoch 0
		t.epochs[guildID] = stored
	}
	switch {
	case epoch < stored:
		return fmt.Errorf("write epoch %d < stored epoch %d: %w", epoch, stored, ErrStaleEpoch)
	case epoch > stored:
		if _, err := t.exec(ctx, `INSERT INTO guild_epochs (guild_id, epoch) VALUES (?, ?)
			ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch`, int64(guildID), int64(epoch)); err != nil {
			return fmt.Errorf("raise epoch: %w", err)
		}
		t.epochs[guildID] = epoch
	}
	return nil
}
