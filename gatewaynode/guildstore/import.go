package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Chunked imports. A guild's import (a move's, or a failover's from a
// restored replica) is verified first, without touching the database: the
// whole stream is read, every row re-encoded canonically and hashed, and
// only an export that hashes to the wanted checksum and agrees with its
// trailer goes on (Import spools it to a local file on the way). A
// failover's import from a restored replica on this machine (ImportFrom,
// copy.go) takes the same steps with SQLite copying the rows. It is then published through the single writer in
// bounded transactions — at most chunkRows rows and about chunkBudget each —
// so every write of another guild queued meanwhile commits between two of
// them instead of waiting for the whole guild:
//
//	begin    check the epoch, record the import in guild_imports
//	clear    delete the guild's old data rows (not its epoch, not its settings)
//	insert   the exported rows, re-hashed as they are inserted
//	last     verify the hash again, replace the settings row, raise the
//	         epoch to the export's, delete the guild_imports row
//
// Every transaction first checks that the stored epoch is still at most the
// export's: a Fence above it (the move was aborted and its copy is being
// dropped) stops the import with ErrStaleEpoch.
//
// Invariants (import_test.go):
//   - Nothing changes before the export is verified
//     (TestImportIsAllOrNothing): a tampered, truncated or foreign export
//     leaves the target exactly as it was, its old copy included.
//   - An import is published in bounded transactions interleaved with other
//     guilds' writes (TestAnImportIsPublishedInBoundedTransactions,
//     TestOtherGuildsWritesInterleaveWithAnImport).
//   - A guild mid-import is no copy to ship: Export and Checksum refuse it
//     with ErrImporting until the last transaction, which alone sets the
//     export's epoch and settings (TestAGuildMidImportIsNoCopyUntilItsLastCommit).
//   - A failed publish leaves nothing (TestAFailedPublishLeavesNothing): the
//     guild's data rows are deleted (again in bounded transactions) and its
//     epoch is never lowered.
//   - A crash mid-import leaves nothing (TestACrashMidImportLeavesNothing):
//     Open finds the guild_imports row and deletes the guild's data rows
//     before it returns.
//   - One import per guild at a time on a store; a second waits for the first.
//
// Between the first and the last transaction the guild's rows on this pod are
// a mix of nothing and part of the export. No part of the pod acts on them:
// the pod is the move's target, not the guild's owner, until the import
// returned and the leader committed the move (gatewaynode serves a guild's
// reads and writes only as its owner), and an export of it is refused.

// ErrImporting: the guild's import is being published on this store; until
// it finishes the store holds no consistent copy of the guild to export.
var ErrImporting = errors.New("guild import in progress")

const (
	// chunkRows bounds the rows one import or delete transaction writes.
	chunkRows = 5000
	// chunkBudget bounds the time one import or delete transaction spends
	// writing rows (it stops at the first row after it), so another guild's
	// write waits at most about this long plus one commit.
	chunkBudget = 5 * time.Millisecond
	// deleteBudget is chunkBudget for deleting transactions (an import's
	// clear step, a moved guild's drop): a deleted row dirties every index
	// of its table and its rollups, so the COMMIT after a delete chunk
	// writes more pages than one after an insert chunk of the same length.
	deleteBudget = 2 * time.Millisecond
	// deleteStep is the rows one DELETE statement removes inside a chunk.
	deleteStep = 100
)

// imports serializes the imports of each guild and carries the test hook.
type imports struct {
	mu   sync.Mutex
	busy map[uint64]chan struct{}
	// afterChunk, when set (tests), runs after each committed transaction of
	// an import's publish with the guild and the transaction's number (from
	// 1) and what it did ("begin", "clear", "insert", "last", "cleanup").
	afterChunk func(guild uint64, n int, step string)
}

// lock waits until no other import of guild runs on this store and takes it.
func (im *imports) lock(ctx context.Context, guild uint64) (func(), error) {
	for {
		im.mu.Lock()
		if im.busy == nil {
			im.busy = map[uint64]chan struct{}{}
		}
		ch, ok := im.busy[guild]
		if !ok {
			ch = make(chan struct{})
			im.busy[guild] = ch
			im.mu.Unlock()
			return func() {
				im.mu.Lock()
				delete(im.busy, guild)
				im.mu.Unlock()
				close(ch)
			}, nil
		}
		im.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// verifyExport reads a whole export of guildID from r and checks it against
// its trailer and wantChecksum; each canonical row line is copied to w when
// w is not nil.
func verifyExport(ctx context.Context, r io.Reader, guildID uint64, wantChecksum string, w io.Writer) (ExportInfo, *trailer, error) {
	er, err := newExportReader(r, guildID)
	if err != nil {
		return ExportInfo{}, nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return ExportInfo{}, nil, err
		}
		_, _, err := er.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return ExportInfo{}, nil, err
		}
		if w != nil {
			if _, err := w.Write(er.buf); err != nil {
				return ExportInfo{}, nil, fmt.Errorf("spool: %w", err)
			}
		}
	}
	info, err := er.finish(wantChecksum)
	return info, er.trailer, err
}

type exportRow struct {
	spec tableSpec
	vals []any
}

// importRun is one import's sequence of bounded transactions (see the top
// of this file); publish and ImportFrom differ only in where the rows come
// from.
type importRun struct {
	s       *Store
	guildID uint64
	epoch   int64 // the export's
	n       int   // transactions committed
}

// step runs fn in a transaction of its own on the writer, after checking
// the stored epoch is still at most the export's.
func (r *importRun) step(ctx context.Context, name string, fn func(ctx context.Context, t *wtx) error) error {
	err := r.s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		if err := importEpochOK(ctx, t, r.guildID, r.epoch); err != nil {
			return err
		}
		return fn(ctx, t)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.n++
	if h := r.s.imp.afterChunk; h != nil {
		h(r.guildID, r.n, name)
	}
	return nil
}

// begin records the import in guild_imports; nothing else is written yet.
func (r *importRun) begin(ctx context.Context) error {
	return r.step(ctx, "begin", func(ctx context.Context, t *wtx) error {
		t.w.unseen[r.guildID] = true // the import may bring parked rows
		_, err := t.exec(ctx, `INSERT INTO guild_imports (guild_id, epoch, started_at) VALUES (?, ?, ?)
			ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch, started_at = excluded.started_at`,
			int64(r.guildID), r.epoch, r.s.opts.Now().UnixMilli())
		return err
	})
}

// clear deletes the guild's old data rows (not its epoch, not its settings).
func (r *importRun) clear(ctx context.Context) error {
	for _, tb := range exportTables[2:] { // not guild_epochs, guild_settings
		for done := false; !done; {
			if err := r.step(ctx, "clear", func(ctx context.Context, t *wtx) error {
				var err error
				done, err = deleteRowsChunk(ctx, t, tb, r.guildID)
				return err
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// last runs check, replaces the settings row with settings (none: no
// row), raises the epoch to the export's and ends the import.
func (r *importRun) last(ctx context.Context, settings *exportRow, check func() error) error {
	return r.step(ctx, "last", func(ctx context.Context, t *wtx) error {
		if err := check(); err != nil {
			return err
		}
		if _, err := t.exec(ctx, `DELETE FROM guild_settings WHERE guild_id = ?`, int64(r.guildID)); err != nil {
			return fmt.Errorf("clear guild_settings: %w", err)
		}
		if settings != nil {
			if _, err := t.exec(ctx, insertSQL(settings.spec), settings.vals...); err != nil {
				return fmt.Errorf("insert guild_settings: %w", err)
			}
		}
		if r.epoch > 0 {
			if _, err := t.exec(ctx, `INSERT INTO guild_epochs (guild_id, epoch) VALUES (?, ?)
				ON CONFLICT (guild_id) DO UPDATE SET epoch = excluded.epoch`, int64(r.guildID), r.epoch); err != nil {
				return fmt.Errorf("set epoch: %w", err)
			}
		}
		_, err := t.exec(ctx, `DELETE FROM guild_imports WHERE guild_id = ?`, int64(r.guildID))
		return err
	})
}

// failed leaves nothing of an import that failed after its begin, even if
// the caller gave up; a store closed meanwhile leaves the guild_imports row
// for the next Open.
func (r *importRun) failed(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	if cerr := r.s.dropImport(cctx, r.guildID); cerr != nil {
		r.s.log.Warn("clean-up of a failed import failed; the next open finishes it", "guild", r.guildID, "err", cerr)
	}
}

// run records the import (begin), then has publish write its rows and end
// it (clear, insert, last); a failure after the begin leaves nothing.
func (r *importRun) run(ctx context.Context, publish func() (ExportInfo, error)) (ExportInfo, error) {
	if err := r.begin(ctx); err != nil {
		return ExportInfo{}, err // nothing written
	}
	info, err := publish()
	if err != nil {
		r.failed(ctx)
		return ExportInfo{}, err
	}
	return info, nil
}

// publish replaces the guild's data rows with those of a verified export
// read from r, in bounded transactions (see the top of this file).
func (s *Store) publish(ctx context.Context, guildID uint64, r io.Reader, wantChecksum string) (ExportInfo, error) {
	unlock, err := s.imp.lock(ctx, guildID)
	if err != nil {
		return ExportInfo{}, err
	}
	defer unlock()
	er, err := newExportReader(r, guildID)
	if err != nil {
		return ExportInfo{}, err
	}
	// The export starts with the guild's one-row tables (epoch, settings):
	// they are written by the last transaction only.
	run := &importRun{s: s, guildID: guildID}
	var settings, carry *exportRow
	eof := false
	for carry == nil && !eof {
		spec, vals, err := er.next()
		switch {
		case err == io.EOF:
			eof = true
		case err != nil:
			return ExportInfo{}, err
		case spec.name == "guild_epochs":
			run.epoch = vals[1].(int64)
		case spec.name == "guild_settings":
			settings = &exportRow{spec, vals}
		default:
			carry = &exportRow{spec, vals}
		}
	}
	return run.run(ctx, func() (ExportInfo, error) {
		return s.publishRows(ctx, run, er, carry, settings, wantChecksum)
	})
}

func (s *Store) publishRows(ctx context.Context, run *importRun, er *exportReader, carry, settings *exportRow, wantChecksum string) (ExportInfo, error) {
	if err := run.clear(ctx); err != nil {
		return ExportInfo{}, err
	}
	for carry != nil {
		if err := run.step(ctx, "insert", func(ctx context.Context, t *wtx) error {
			start := time.Now()
			for rows := 0; carry != nil && rows < chunkRows && time.Since(start) < chunkBudget; rows++ {
				if carry.spec.name == "guild_epochs" || carry.spec.name == "guild_settings" {
					return fmt.Errorf("%w: %s row after the data rows", ErrBadExport, carry.spec.name)
				}
				if _, err := t.exec(ctx, insertSQL(carry.spec), carry.vals...); err != nil {
					return fmt.Errorf("insert %s: %w", carry.spec.name, err)
				}
				if carry.spec.name == "messages" { // the rollups are rebuilt, not imported
					r, err := msgRowFromExport(carry.vals)
					if err != nil {
						return err
					}
					t.msgAdded(r)
				}
				spec, vals, err := er.next()
				switch {
				case err == io.EOF:
					carry = nil
				case err != nil:
					return err
				default:
					carry = &exportRow{spec, vals}
				}
			}
			return nil
		}); err != nil {
			return ExportInfo{}, err
		}
	}
	var info ExportInfo
	err := run.last(ctx, settings, func() error {
		var err error
		info, err = er.finish(wantChecksum)
		return err
	})
	return info, err
}

// importEpochOK fails with ErrStaleEpoch once the guild's stored epoch is
// above the export's.
func importEpochOK(ctx context.Context, t *wtx, guildID uint64, epoch int64) error {
	var stored int64
	err := t.queryRow(ctx, `SELECT epoch FROM guild_epochs WHERE guild_id = ?`, int64(guildID)).Scan(&stored)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read epoch: %w", err)
	}
	if stored > epoch {
		return fmt.Errorf("export epoch %d < stored epoch %d: %w", epoch, stored, ErrStaleEpoch)
	}
	return nil
}

// deleteRowsChunk deletes at most chunkRows of the guild's rows of table tb,
// stopping after about deleteBudget; done reports that none are left.
func deleteRowsChunk(ctx context.Context, t *wtx, tb tableSpec, guildID uint64) (done bool, err error) {
	if tb.name == "messages" {
		return deleteMessagesChunk(ctx, t, guildID)
	}
	key := "rowid"
	if tb.name == "unseen_messages" { // WITHOUT ROWID
		key = "message_id"
	}
	q := `DELETE FROM ` + tb.name + ` WHERE guild_id = ? AND ` + key + ` IN (SELECT ` + key + ` FROM ` + tb.name + ` WHERE guild_id = ? LIMIT ?)`
	start := time.Now()
	for rows := int64(0); rows < chunkRows && time.Since(start) < deleteBudget; {
		res, err := t.exec(ctx, q, int64(guildID), int64(guildID), deleteStep)
		if err != nil {
			return false, fmt.Errorf("delete from %s: %w", tb.name, err)
		}
		k, err := res.RowsAffected()
		if err != nil {
			return false, err
		}
		if k < deleteStep {
			return true, nil
		}
		rows += k
	}
	return false, nil
}

// deleteMessagesChunk is deleteRowsChunk for messages: the deleted rows
// leave the rollups, and once none is left the guild's rollup rows go too.
func deleteMessagesChunk(ctx context.Context, t *wtx, guildID uint64) (done bool, err error) {
	g := int64(guildID)
	start := time.Now()
	for rows := int64(0); rows < chunkRows && time.Since(start) < deleteBudget; {
		st, err := t.stmt(ctx, `DELETE FROM messages WHERE guild_id = ? AND message_id IN (SELECT message_id FROM messages WHERE guild_id = ? LIMIT ?)
			RETURNING channel_id, author_id, created_at, deleted_at IS NULL, edited_at IS NOT NULL`)
		if err != nil {
			return false, fmt.Errorf("delete from messages: %w", err)
		}
		res, err := st.QueryContext(ctx, g, g, deleteStep)
		if err != nil {
			return false, fmt.Errorf("delete from messages: %w", err)
		}
		k := int64(0)
		for res.Next() {
			r := msgRow{guild: g}
			if err := res.Scan(&r.channel, &r.author, &r.createdAt, &r.live, &r.edited); err != nil {
				res.Close()
				return false, fmt.Errorf("delete from messages: %w", err)
			}
			t.msgRemoved(r)
			k++
		}
		if err := res.Close(); err != nil {
			return false, fmt.Errorf("delete from messages: %w", err)
		}
		if err := res.Err(); err != nil {
			return false, fmt.Errorf("delete from messages: %w", err)
		}
		if k < deleteStep {
			t.dropRollups(g)
			return true, nil
		}
		rows += k
	}
	return false, nil
}

// deleteGuildRows deletes the guild's rows of tables in bounded
// transactions; check, when set, runs first in each.
func (s *Store) deleteGuildRows(ctx context.Context, guildID uint64, tables []tableSpec, check func(context.Context, *wtx) error,
	after func(table string)) error {
	for _, tb := range tables {
		for done := false; !done; {
			err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
				if check != nil {
					if err := check(ctx, t); err != nil {
						return err
					}
				}
				var err error
				done, err = deleteRowsChunk(ctx, t, tb, guildID)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", tb.name, err)
			}
			if after != nil {
				after(tb.name)
			}
		}
	}
	return nil
}

// dropImport deletes what an unfinished import of the guild wrote — every
// data row but the epoch — and then its guild_imports row.
func (s *Store) dropImport(ctx context.Context, guildID uint64) error {
	n := 0
	after := func(string) {
		n++
		if h := s.imp.afterChunk; h != nil {
			h(guildID, n, "cleanup")
		}
	}
	if err := s.deleteGuildRows(ctx, guildID, exportTables[1:], nil, after); err != nil {
		return fmt.Errorf("drop unfinished import of guild %d: %w", guildID, err)
	}
	if err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		_, err := t.exec(ctx, `DELETE FROM guild_imports WHERE guild_id = ?`, int64(guildID))
		return err
	}); err != nil {
		return fmt.Errorf("drop unfinished import of guild %d: %w", guildID, err)
	}
	return nil
}

// dropUnfinishedImports is Open's: the guilds whose import a crash (or a
// failed clean-up) left unfinished lose their data rows.
func (s *Store) dropUnfinishedImports(ctx context.Context) error {
	rows, err := s.rdb.QueryContext(ctx, `SELECT guild_id FROM guild_imports ORDER BY guild_id`)
	if err != nil {
		return fmt.Errorf("list unfinished imports: %w", err)
	}
	var gs []uint64
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			rows.Close()
			return fmt.Errorf("list unfinished imports: %w", err)
		}
		gs = append(gs, uint64(g))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list unfinished imports: %w", err)
	}
	for _, g := range gs {
		if err := s.dropImport(ctx, g); err != nil {
			return err
		}
		s.log.Info("deleted the rows of an import a crash left unfinished", "guild", g)
	}
	return nil
}
