package guildstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Copying a guild from another store on this machine (ImportFrom): a
// failover's target imports each guild of a dead pod from that pod's
// restored replica, a database file next to its own. Encoding the rows as an
// export, parsing and re-hashing them and inserting them one statement per
// row cost ~16 µs a row (a 375k-row guild took 6 s of CPU); here SQLite
// copies them itself, the source ATTACHed read-only to the writer's
// connection, with INSERT … SELECT over key ranges:
//
//	begin, clear   as an import (import.go)
//	insert         copyStep rows per statement, up to chunkRows rows and
//	               about chunkBudget per transaction, in each table's key
//	               order; the message rollups are summed from what each
//	               statement inserted (RETURNING), as an import rebuilds them
//	check          the copy, read back on a read connection and hashed as an
//	               export of it would be (with the epoch and settings rows
//	               the last transaction writes), must equal the checksum and
//	               row counts of the source's snapshot, computed meanwhile on
//	               the source's read connection
//	last           as an import
//
// The invariants of an import hold (copy_test.go): bounded transactions that
// other guilds' writes interleave with, no copy to export until the last
// commit, nothing left by a failure — a copy that differs from the source's
// snapshot (the source changed after it was taken) fails with
// ErrChecksumMismatch and its rows are deleted. The source is read, never
// written, and is detached when the last copy from it ends.

// copyStep is the rows one INSERT … SELECT copies.
const copyStep = 1000

// attachment is a database ATTACHed to the writer's connection.
type attachment struct {
	alias string
	refs  int
}

// attach makes the database file at path readable, read-only, on the
// writer's connection under the returned schema name, until detach.
func (w *writer) attach(ctx context.Context, path string) (alias string, detach func(), err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("attach %s: %w", path, err)
	}
	err = w.connJob(ctx, func(ctx context.Context, c *sql.Conn) error {
		if a, ok := w.attached[abs]; ok {
			a.refs++
			alias = a.alias
			return nil
		}
		w.aliases++
		a := &attachment{alias: "src" + strconv.Itoa(w.aliases), refs: 1}
		uri := (&url.URL{Scheme: "file", Path: abs, RawQuery: "mode=ro"}).String()
		if _, err := c.ExecContext(ctx, `ATTACH DATABASE ? AS `+a.alias, uri); err != nil {
			return err
		}
		w.attached[abs] = a
		alias = a.alias
		return nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("attach %s: %w", path, err)
	}
	var once sync.Once
	return alias, func() {
		once.Do(func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			err := w.connJob(dctx, func(ctx context.Context, c *sql.Conn) error {
				a := w.attached[abs]
				if a.refs--; a.refs > 0 {
					return nil
				}
				delete(w.attached, abs)
				_, err := c.ExecContext(ctx, `DETACH DATABASE `+a.alias)
				return err
			})
			if err != nil && !errors.Is(err, ErrClosed) {
				w.s.log.Warn("detach a copied database", "path", abs, "err", err)
			}
		})
	}, nil
}

// ImportFrom replaces the guild's data on s with src's copy of it, as Import
// of src's export would (the same epoch check, steps and result), but
// copied by SQLite from src's database file (see the top of this file). src
// must be a store on a file this process can read; it is only read. The
// result describes src's copy (rows, checksum).
func (s *Store) ImportFrom(ctx context.Context, guildID uint64, src *Store) (ExportInfo, error) {
	start := time.Now()
	info, err := s.importFrom(ctx, guildID, src)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("import guild %d from %s: %w", guildID, src.path, err)
	}
	s.log.Info("imported guild", "guild", guildID, "rows", info.Rows, "checksum", info.Checksum, "from", src.path,
		"took", time.Since(start).Round(time.Millisecond))
	return info, nil
}

type checksumResult struct {
	info ExportInfo
	err  error
}

func (s *Store) importFrom(ctx context.Context, guildID uint64, src *Store) (ExportInfo, error) {
	unlock, err := s.imp.lock(ctx, guildID)
	if err != nil {
		return ExportInfo{}, err
	}
	defer unlock()
	// One snapshot of the source: the epoch and settings rows the last
	// transaction writes, and the checksum the copy must hash to, computed
	// while the rows are copied.
	tx, err := src.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return ExportInfo{}, fmt.Errorf("read the source: %w", err)
	}
	defer tx.Rollback()
	var importing int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM guild_imports WHERE guild_id = ?`, int64(guildID)).Scan(&importing); err != nil {
		return ExportInfo{}, fmt.Errorf("read the source's guild_imports: %w", err)
	}
	if importing > 0 {
		return ExportInfo{}, fmt.Errorf("the source: %w", ErrImporting)
	}
	run := &importRun{s: s, guildID: guildID}
	var head []*exportRow // the epoch and settings rows, as exported
	for _, tb := range exportTables[:2] {
		if _, err := tableRows(ctx, tx, tb, guildID, func(vals []any) error {
			head = append(head, &exportRow{tb, slices.Clone(vals)})
			return nil
		}); err != nil {
			return ExportInfo{}, fmt.Errorf("the source: %w", err)
		}
	}
	var settings *exportRow
	for _, r := range head {
		switch r.spec.name {
		case "guild_epochs":
			run.epoch = r.vals[1].(int64)
		case "guild_settings":
			settings = r
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	want := make(chan checksumResult, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		info, err := exportTx(sctx, tx, guildID, io.Discard, false)
		want <- checksumResult{info, err}
	}()
	defer wg.Wait() // before tx.Rollback
	defer cancel()

	alias, detach, err := s.w.attach(ctx, src.path)
	if err != nil {
		return ExportInfo{}, err
	}
	defer detach()
	return run.run(ctx, func() (ExportInfo, error) {
		return s.copyRows(ctx, run, alias, head, settings, want)
	})
}

func (s *Store) copyRows(ctx context.Context, run *importRun, alias string, head []*exportRow, settings *exportRow,
	want <-chan checksumResult) (ExportInfo, error) {
	if err := run.clear(ctx); err != nil {
		return ExportInfo{}, err
	}
	for _, tb := range exportTables[2:] {
		c := newTableCopy(tb, alias, run.guildID)
		for !c.done {
			if err := run.step(ctx, "insert", c.chunk); err != nil {
				return ExportInfo{}, err
			}
		}
	}
	got, err := s.copiedChecksum(ctx, run.guildID, head)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("check the copy: %w", err)
	}
	var w checksumResult
	select {
	case w = <-want:
	case <-ctx.Done():
		return ExportInfo{}, ctx.Err()
	}
	if w.err != nil {
		return ExportInfo{}, fmt.Errorf("checksum the source: %w", w.err)
	}
	if got.Checksum != w.info.Checksum || !maps.Equal(got.Rows, w.info.Rows) {
		return ExportInfo{}, fmt.Errorf("%w: the copy hashes to %s (rows %v), the source's snapshot to %s (rows %v)",
			ErrChecksumMismatch, got.Checksum, got.Rows, w.info.Checksum, w.info.Rows)
	}
	if err := run.last(ctx, settings, func() error { return nil }); err != nil {
		return ExportInfo{}, err
	}
	return w.info, nil
}

// copiedChecksum hashes the guild's copied data rows, read back on a read
// connection, behind head (the rows the last transaction writes), as an
// export of the finished copy would.
func (s *Store) copiedChecksum(ctx context.Context, guildID uint64, head []*exportRow) (ExportInfo, error) {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return ExportInfo{}, err
	}
	defer tx.Rollback()
	info := ExportInfo{GuildID: guildID, Rows: map[string]int{}}
	h := sha256.New()
	var buf []byte
	for _, tb := range exportTables[:2] {
		info.Rows[tb.name] = 0
	}
	for _, r := range head {
		buf = appendRow(buf[:0], r.spec.name, r.vals)
		h.Write(buf)
		info.Rows[r.spec.name]++
	}
	for _, tb := range exportTables[2:] {
		n, err := tableLines(ctx, tx, tb, guildID, func(line []byte) error {
			h.Write(line)
			return nil
		})
		if err != nil {
			return ExportInfo{}, err
		}
		info.Rows[tb.name] = n
	}
	info.Checksum = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return info, nil
}

// tableCopy copies one table's rows of a guild from an attached database,
// a key range at a time, in key order.
type tableCopy struct {
	tb      tableSpec
	guildID int64
	nkeys   int
	after   []any // the last key copied; nil before the first
	done    bool
	// bound finds the key copyStep rows on (none: fewer are left); copy
	// inserts the rows up to a bound, rest those after the last key.
	bound, boundFirst, copy, copyFirst, rest, restFirst string
}

func newTableCopy(tb tableSpec, alias string, guildID uint64) *tableCopy {
	keys := strings.Split(tb.order, ", ")
	k := "(" + tb.order + ")"
	p := "(?" + strings.Repeat(", ?", len(keys)-1) + ")"
	cols := strings.Join(tb.cols, ", ")
	from := ` FROM ` + alias + `.` + tb.name + ` WHERE guild_id = ?`
	ins := `INSERT INTO main.` + tb.name + ` (` + cols + `) SELECT ` + cols + from
	ret := ` ORDER BY ` + tb.order
	if tb.name == "messages" { // what the rollups count
		ret += ` RETURNING channel_id, author_id, created_at, deleted_at IS NULL, edited_at IS NOT NULL`
	}
	sel := `SELECT ` + tb.order + from
	lim := ` ORDER BY ` + tb.order + ` LIMIT 1 OFFSET ` + strconv.Itoa(copyStep-1)
	return &tableCopy{tb: tb, guildID: int64(guildID), nkeys: len(keys),
		boundFirst: sel + lim,
		bound:      sel + ` AND ` + k + ` > ` + p + lim,
		copyFirst:  ins + ` AND ` + k + ` <= ` + p + ret,
		copy:       ins + ` AND ` + k + ` > ` + p + ` AND ` + k + ` <= ` + p + ret,
		restFirst:  ins + ret,
		rest:       ins + ` AND ` + k + ` > ` + p + ret,
	}
}

// chunk is one insert transaction: key ranges of copyStep rows until
// chunkRows or chunkBudget, or the table is done.
func (c *tableCopy) chunk(ctx context.Context, t *wtx) error {
	start := time.Now()
	for rows := 0; !c.done && rows < chunkRows && time.Since(start) < chunkBudget; rows += copyStep {
		if err := c.step(ctx, t); err != nil {
			return fmt.Errorf("copy %s: %w", c.tb.name, err)
		}
	}
	return nil
}

func (c *tableCopy) step(ctx context.Context, t *wtx) error {
	conn := t.w.conn
	args := []any{c.guildID}
	q := c.boundFirst
	if c.after != nil {
		q, args = c.bound, append(args, c.after...)
	}
	bound := make([]any, c.nkeys)
	ptrs := make([]any, c.nkeys)
	for i := range bound {
		ptrs[i] = &bound[i]
	}
	err := conn.QueryRowContext(ctx, q, args...).Scan(ptrs...)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		// Fewer than copyStep rows are left: copy them all.
		bound = nil
		q = c.restFirst
		if c.after != nil {
			q = c.rest
		}
	case err != nil:
		return fmt.Errorf("find a key range: %w", err)
	default:
		for i, v := range bound {
			if b, ok := v.([]byte); ok {
				bound[i] = string(b) // a text key binds as text, not as a blob
			}
		}
		q = c.copyFirst
		if c.after != nil {
			q = c.copy
		}
		args = append(args, bound...)
	}
	if err := c.insert(ctx, t, q, args); err != nil {
		return err
	}
	if bound == nil {
		c.done = true
	}
	c.after = bound
	return nil
}

func (c *tableCopy) insert(ctx context.Context, t *wtx, q string, args []any) error {
	if c.tb.name != "messages" {
		_, err := t.w.conn.ExecContext(ctx, q, args...)
		return err
	}
	rows, err := t.w.conn.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		r := msgRow{guild: c.guildID}
		if err := rows.Scan(&r.channel, &r.author, &r.createdAt, &r.live, &r.edited); err != nil {
			return err
		}
		t.msgAdded(r) // the rollups are rebuilt, not copied
	}
	return rows.Err()
}
