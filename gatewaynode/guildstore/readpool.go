package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// readPool is the dashboard's: read connections, at most Options.ReadConns,
// each keeping its prepared statements for as long as it lives, so a page
// load prepares nothing. Its connections come from the read pool (rdb, sized
// twice ReadConns for that), so other reads are never starved by it.
type readPool struct {
	db   *sql.DB
	free chan *readConn
	mu   sync.Mutex
	all  map[*readConn]bool
}

type readConn struct {
	conn  *sql.Conn
	stmts map[string]*sql.Stmt
}

func newReadPool(db *sql.DB, size int) *readPool {
	p := &readPool{db: db, free: make(chan *readConn, size), all: map[*readConn]bool{}}
	for range size {
		p.free <- nil // a slot without a connection yet
	}
	return p
}

// get takes a slot (waiting for one) and returns its connection, opening it if needed.
func (p *readPool) get(ctx context.Context) (*readConn, error) {
	var c *readConn
	select {
	case c = <-p.free:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if c != nil {
		return c, nil
	}
	conn, err := p.db.Conn(ctx)
	if err != nil {
		p.free <- nil
		return nil, fmt.Errorf("read connection: %w", err)
	}
	c = &readConn{conn: conn, stmts: map[string]*sql.Stmt{}}
	p.mu.Lock()
	p.all[c] = true
	p.mu.Unlock()
	return c, nil
}

// put returns c's slot; a broken connection (its transaction could not be
// ended) is closed and its slot left empty.
func (p *readPool) put(c *readConn, broken bool) {
	if broken {
		p.mu.Lock()
		delete(p.all, c)
		p.mu.Unlock()
		c.close()
		c = nil
	}
	p.free <- c
}

func (p *readPool) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for c := range p.all {
		errs = append(errs, c.close())
	}
	p.all = map[*readConn]bool{}
	return errors.Join(errs...)
}

func (c *readConn) close() error {
	var errs []error
	for _, st := range c.stmts {
		errs = append(errs, st.Close())
	}
	errs = append(errs, c.conn.Close())
	return errors.Join(errs...)
}

func (c *readConn) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := c.stmts[q]; ok {
		return st, nil
	}
	st, err := c.conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	c.stmts[q] = st
	return st, nil
}

// QueryContext and QueryRowContext make a readConn a queryer that runs
// prepared statements.
func (c *readConn) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := c.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (c *readConn) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := c.stmt(ctx, q)
	if err != nil {
		return c.conn.QueryRowContext(ctx, q, args...) // surfaces the prepare error
	}
	return st.QueryRowContext(ctx, args...)
}

// readTx runs fn in one read transaction (one snapshot) on a pooled connection.
func (p *readPool) readTx(ctx context.Context, fn func(q queryer) error) error {
	c, err := p.get(ctx)
	if err != nil {
		return err
	}
	if _, err := c.conn.ExecContext(ctx, "BEGIN"); err != nil {
		p.put(c, true)
		return fmt.Errorf("begin read: %w", err)
	}
	ferr := fn(c)
	if _, err := c.conn.ExecContext(context.WithoutCancel(ctx), "COMMIT"); err != nil {
		p.put(c, true)
		return errors.Join(ferr, fmt.Errorf("end read: %w", err))
	}
	p.put(c, false)
	return ferr
}
