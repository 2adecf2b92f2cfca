package guildstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Dashboard rollups (migration 0007). Every statement that inserts, changes
// or deletes a messages row records what the row counted for before and
// after (msgRow) in its transaction's change log; the writer adds the log up
// per guild, hour, channel and author and upserts the rollup rows just
// before COMMIT, in the same transaction. So at every commit:
//
//	rollup_messages          = count(*) of the guild's messages, by live / deleted / edited-and-live
//	rollup_message_hours     = count(*) of live messages per UTC hour of created_at
//	rollup_message_channels  = count(*) of live messages per channel
//	rollup_message_authors   = count(*) of live messages per author
//
// and no rollup row is zero (TestRollupsEqualCountsOfRawRowsAfterAnyWriteSequence),
// so a guild's rollups depend only on its messages rows: a moved guild's are
// the source's.
// A unit that rolls back to its savepoint drops its part of the log. This
// replaces per-row triggers, which halved the write throughput: a batch of
// thousands of messages upserts a few dozen rollup rows.

// msgRow is what one messages row counts for in the rollups.
type msgRow struct {
	guild, channel, author, createdAt int64
	live, edited                      bool
}

type msgChange struct {
	row  msgRow
	sign int64 // +1 the row now counts, -1 it no longer does
}

const hourMS = int64(3600000)

// hourOf is the UTC hour index of a unix-millisecond time (floor division).
func hourOf(msTime int64) int64 {
	h := msTime / hourMS
	if msTime%hourMS < 0 {
		h--
	}
	return h
}

// msgAdded records that row now counts (inserted or changed to it).
func (t *wtx) msgAdded(r msgRow) { t.msgLog = append(t.msgLog, msgChange{r, 1}) }

// msgRemoved records that row no longer counts (deleted or changed from it).
func (t *wtx) msgRemoved(r msgRow) { t.msgLog = append(t.msgLog, msgChange{r, -1}) }

// dropRollups records that the guild has no messages rows left in this
// transaction: its rollup rows (all zero once the log is applied) go.
func (t *wtx) dropRollups(guild int64) {
	if t.rollupDrops == nil {
		t.rollupDrops = map[int64]bool{}
	}
	t.rollupDrops[guild] = true
}

type rollKey struct{ guild, key int64 }

type rollTotals struct{ live, deleted, edited int64 }

// flushRollups applies the transaction's change log to the rollup tables.
func (t *wtx) flushRollups(ctx context.Context) error {
	if len(t.msgLog) == 0 && len(t.rollupDrops) == 0 {
		return nil
	}
	totals := map[int64]*rollTotals{}
	hours, channels, authors := map[rollKey]int64{}, map[rollKey]int64{}, map[rollKey]int64{}
	for _, c := range t.msgLog {
		r := c.row
		tt := totals[r.guild]
		if tt == nil {
			tt = &rollTotals{}
			totals[r.guild] = tt
		}
		if !r.live {
			tt.deleted += c.sign
			continue
		}
		tt.live += c.sign
		if r.edited {
			tt.edited += c.sign
		}
		hours[rollKey{r.guild, hourOf(r.createdAt)}] += c.sign
		channels[rollKey{r.guild, r.channel}] += c.sign
		authors[rollKey{r.guild, r.author}] += c.sign
	}
	t.msgLog = t.msgLog[:0]
	t.w.msgLog = t.msgLog // keep the grown array for the next transaction
	// One multi-row upsert per table and chunk of rows (not one statement per
	// row): the batch's few dozen rollup rows cost a few statements.
	var rows []int64
	var empties []rollKey
	for g, tt := range totals {
		if *tt == (rollTotals{}) {
			continue
		}
		rows = append(rows, g, tt.live, tt.deleted, tt.edited)
		if tt.live < 0 || tt.deleted < 0 || tt.edited < 0 {
			empties = append(empties, rollKey{g, 0})
		}
	}
	if err := t.upsertRollup(ctx, "rollup_messages", []string{"guild_id", "live", "deleted", "edited"}, rows); err != nil {
		return err
	}
	for _, e := range empties { // the row may be empty now: the rollups hold no empty rows
		if _, err := t.exec(ctx, `DELETE FROM rollup_messages WHERE guild_id = ? AND live = 0 AND deleted = 0 AND edited = 0`, e.guild); err != nil {
			return fmt.Errorf("drop the empty message rollup of guild %d: %w", e.guild, err)
		}
	}
	for _, tb := range []struct {
		table, col string
		m          map[rollKey]int64
	}{
		{"rollup_message_hours", "hour", hours},
		{"rollup_message_channels", "channel_id", channels},
		{"rollup_message_authors", "author_id", authors},
	} {
		rows, empties = rows[:0], empties[:0]
		for k, n := range tb.m {
			if n == 0 {
				continue
			}
			rows = append(rows, k.guild, k.key, n)
			if n < 0 {
				empties = append(empties, k)
			}
		}
		if err := t.upsertRollup(ctx, tb.table, []string{"guild_id", tb.col, "live"}, rows); err != nil {
			return err
		}
		for _, k := range empties {
			if _, err := t.exec(ctx, `DELETE FROM `+tb.table+` WHERE guild_id = ? AND `+tb.col+` = ? AND live = 0`, k.guild, k.key); err != nil {
				return fmt.Errorf("drop an empty row of %s of guild %d: %w", tb.table, k.guild, err)
			}
		}
	}
	for g := range t.rollupDrops {
		for _, tb := range rollupTables {
			if _, err := t.exec(ctx, `DELETE FROM `+tb+` WHERE guild_id = ?`, g); err != nil {
				return fmt.Errorf("drop %s of guild %d: %w", tb, g, err)
			}
		}
	}
	t.rollupDrops = nil
	return nil
}

// rollupTables are the tables of migration 0007.
var rollupTables = []string{"rollup_messages", "rollup_message_hours", "rollup_message_channels", "rollup_message_authors"}

// msgRowFromExport is what an exported messages row (exportTables order:
// guild_id, message_id, channel_id, author_id, created_at, edited_at,
// deleted_at, content_length) counts for.
func msgRowFromExport(vals []any) (msgRow, error) {
	if len(vals) != 8 {
		return msgRow{}, fmt.Errorf("%w: messages row with %d values", ErrBadExport, len(vals))
	}
	g, ok1 := vals[0].(int64)
	ch, ok2 := vals[2].(int64)
	au, ok3 := vals[3].(int64)
	at, ok4 := vals[4].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return msgRow{}, fmt.Errorf("%w: messages row with a non-integer id or time", ErrBadExport)
	}
	return msgRow{guild: g, channel: ch, author: au, createdAt: at, live: vals[6] == nil, edited: vals[5] != nil}, nil
}

// upsertChunks are the row counts of the multi-row upserts (prepared once each).
var upsertChunks = []int{64, 16, 4, 1}

// upsertRollup adds rows (len(cols) values each: the key columns, then the
// counts) to table's rows, in as few statements as upsertChunks allow.
func (t *wtx) upsertRollup(ctx context.Context, table string, cols []string, rows []int64) error {
	width := len(cols)
	keys := 2
	if table == "rollup_messages" {
		keys = 1
	}
	args := make([]any, 0, upsertChunks[0]*width)
	for len(rows) > 0 {
		n := 1
		for _, c := range upsertChunks {
			if c*width <= len(rows) {
				n = c
				break
			}
		}
		args = args[:0]
		for _, v := range rows[:n*width] {
			args = append(args, v)
		}
		if _, err := t.exec(ctx, upsertSQL(table, cols, keys, n), args...); err != nil {
			return fmt.Errorf("update %s: %w", table, err)
		}
		rows = rows[n*width:]
	}
	return nil
}

var upsertSQLs sync.Map // "table/n" → statement

// upsertSQL is the upsert of n rows into table: cols[:keys] are its primary
// key, the other columns are counts added to the stored ones.
func upsertSQL(table string, cols []string, keys, n int) string {
	k := table + "/" + strconv.Itoa(n)
	if q, ok := upsertSQLs.Load(k); ok {
		return q.(string)
	}
	row := "(?" + strings.Repeat(", ?", len(cols)-1) + ")"
	var set []string
	for _, c := range cols[keys:] {
		set = append(set, c+" = "+c+" + excluded."+c)
	}
	q := `INSERT INTO ` + table + ` (` + strings.Join(cols, ", ") + `) VALUES ` + row + strings.Repeat(", "+row, n-1) +
		` ON CONFLICT (` + strings.Join(cols[:keys], ", ") + `) DO UPDATE SET ` + strings.Join(set, ", ")
	upsertSQLs.Store(k, q)
	return q
}
