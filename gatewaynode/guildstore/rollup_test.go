package guildstore

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// rollupRows is every row of the rollup tables for guild (0: all guilds),
// as sorted strings per table.
func rollupRows(t testing.TB, q queryer, guild uint64) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, tb := range []struct{ name, q string }{
		{"rollup_messages", `SELECT guild_id, 'live', live, 'deleted', deleted, 'edited', edited FROM rollup_messages`},
		{"rollup_message_hours", `SELECT guild_id, 'hour', hour, 'live', live FROM rollup_message_hours`},
		{"rollup_message_channels", `SELECT guild_id, 'channel', channel_id, 'live', live FROM rollup_message_channels`},
		{"rollup_message_authors", `SELECT guild_id, 'author', author_id, 'live', live FROM rollup_message_authors`},
	} {
		out[tb.name] = queryLines(t, q, tb.q, guild)
	}
	return out
}

// countsOfRawRows is what each rollup must hold: the COUNT(*)s of the raw
// messages rows, grouped the way the dashboard used to group them per request.
func countsOfRawRows(t testing.TB, q queryer, guild uint64) map[string][]string {
	t.Helper()
	return map[string][]string{
		"rollup_messages": queryLines(t, q, `SELECT guild_id, 'live', count(*) FILTER (WHERE deleted_at IS NULL),
			'deleted', count(*) FILTER (WHERE deleted_at IS NOT NULL),
			'edited', count(*) FILTER (WHERE edited_at IS NOT NULL AND deleted_at IS NULL) FROM messages GROUP BY guild_id`, guild),
		"rollup_message_hours": queryLines(t, q, `SELECT guild_id, 'hour', (created_at - (((created_at % 3600000) + 3600000) % 3600000)) / 3600000 AS h,
			'live', count(*) FROM messages WHERE deleted_at IS NULL GROUP BY guild_id, h`, guild),
		"rollup_message_channels": queryLines(t, q, `SELECT guild_id, 'channel', channel_id, 'live', count(*) FROM messages
			WHERE deleted_at IS NULL GROUP BY guild_id, channel_id`, guild),
		"rollup_message_authors": queryLines(t, q, `SELECT guild_id, 'author', author_id, 'live', count(*) FROM messages
			WHERE deleted_at IS NULL GROUP BY guild_id, author_id`, guild),
	}
}

func queryLines(t testing.TB, q queryer, query string, guild uint64) []string {
	t.Helper()
	rows, err := q.QueryContext(context.Background(), query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	lines := []string{}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		if g, _ := vals[0].(int64); guild != 0 && uint64(g) != guild {
			continue
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				v = string(b)
			}
			parts[i] = fmt.Sprint(v)
		}
		lines = append(lines, strings.Join(parts, " "))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(lines)
	return lines
}

func assertRollupsEqualRawCounts(t testing.TB, s *Store, guild uint64, when string) {
	t.Helper()
	// One read transaction: both sides see the same commit.
	err := s.dash.readTx(context.Background(), func(q queryer) error {
		got, want := rollupRows(t, q, guild), countsOfRawRows(t, q, guild)
		for tb := range want {
			if !slices.Equal(got[tb], want[tb]) {
				t.Fatalf("%s: %s\n  rollup %q\n  counts %q", when, tb, got[tb], want[tb])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// randomMessageUnits returns batches of units of random message writes
// (creates, replays with changed facts, edits, deletes, bulk deletes, in any
// order, so some edits and deletes come before their create) over guilds,
// channels, authors and hours, plus reports and mod actions; some units fail
// part-way (an unknown action kind), which must roll back their rollup
// changes with their rows.
func randomMessageUnits(rng *rand.Rand, guilds []uint64, batches int) [][][]Write {
	now := t0.Add(time.Hour)
	msgTime := func() time.Time {
		return now.Add(-time.Duration(rng.IntN(40*24*60)) * time.Minute).Add(time.Duration(rng.IntN(60000)) * time.Millisecond)
	}
	op := func() Op {
		g := guilds[rng.IntN(len(guilds))]
		m := uint64(1000 + rng.IntN(60))
		switch r := rng.IntN(100); {
		case r < 45:
			return MessageCreate{GuildID: g, MessageID: m, ChannelID: uint64(1 + rng.IntN(4)), AuthorID: uint64(10 + rng.IntN(6)),
				CreatedAt: msgTime(), ContentLength: rng.IntN(50)}
		case r < 65:
			return MessageEdit{GuildID: g, MessageID: m, EditedAt: now.Add(-time.Duration(rng.IntN(100)) * time.Second), ContentLength: rng.IntN(50)}
		case r < 85:
			return MessageDelete{GuildID: g, MessageID: m, DeletedAt: now.Add(-time.Duration(rng.IntN(100)) * time.Second)}
		case r < 92:
			return AddReport{Report: Report{ID: uint64(rng.Int64N(1 << 40)), GuildID: g, ReporterID: 1, TargetUserID: uint64(10 + rng.IntN(6)),
				Reason: "r", CreatedAt: msgTime()}}
		default:
			kinds := []string{ActionBan, ActionUnban, ActionKick, ActionTimeout}
			return AddModAction{Action: ModAction{GuildID: g, Kind: kinds[rng.IntN(len(kinds))], UserID: uint64(10 + rng.IntN(6)),
				CreatedAt: msgTime(), DedupeKey: fmt.Sprintf("k:%d", rng.Int64())}}
		}
	}
	var out [][][]Write
	for range batches {
		var batch [][]Write
		for range 1 + rng.IntN(6) {
			var unit []Write
			if rng.IntN(4) == 0 { // a bulk delete: one unit of several deletes
				g := guilds[rng.IntN(len(guilds))]
				for range 2 + rng.IntN(8) {
					unit = append(unit, Write{Op: MessageDelete{GuildID: g, MessageID: uint64(1000 + rng.IntN(60)), DeletedAt: now}})
				}
			} else {
				for range 1 + rng.IntN(5) {
					unit = append(unit, Write{Op: op()})
				}
			}
			if rng.IntN(8) == 0 { // fails after its writes: all of them roll back
				unit = append(unit, Write{Op: AddModAction{Action: ModAction{GuildID: guilds[0], Kind: "nope", UserID: 1, CreatedAt: now}}})
			}
			batch = append(batch, unit)
		}
		out = append(out, batch)
	}
	return out
}

// TestRollupsEqualCountsOfRawRowsAfterAnyWriteSequence: after every commit
// of random message writes across guilds, hours and batches (replays, edits,
// deletes and bulk deletes in any order, failing units), each rollup row
// equals the COUNT(*) of the raw rows it summarizes and no other rollup row
// exists; the same after a move (export → import into a fresh store, where
// the guild's rollups are also exactly the source's) and after DeleteGuild
// (no rollup rows left for the guild).
func TestRollupsEqualCountsOfRawRowsAfterAnyWriteSequence(t *testing.T) {
	ctx := context.Background()
	guilds := []uint64{1, 2, 3}
	for seed := uint64(1); seed <= 6; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*7919))
		src := openFuzzStore(t, fmt.Sprintf("src%d.db", seed))
		for i, batch := range randomMessageUnits(rng, guilds, 40) {
			if _, err := src.ApplyBatch(ctx, batch); err != nil {
				t.Fatal(err)
			}
			assertRollupsEqualRawCounts(t, src, 0, fmt.Sprintf("seed %d, after batch %d", seed, i))
		}
		// A move of guild 2 into a fresh store and into one holding a stale
		// copy of it (the import's clear step must take the old rows' counts away).
		// Both ways a guild arrives: an export's import, and a failover's
		// copy from a store on the same machine (ImportFrom).
		data, info := exportOf(t, src, 2)
		var dsts []*Store
		var vias []string
		for _, via := range []string{"Import", "ImportFrom"} {
			fresh, stale := openFuzzStore(t, fmt.Sprintf("fresh%s%d.db", via, seed)), openFuzzStore(t, fmt.Sprintf("stale%s%d.db", via, seed))
			for _, batch := range randomMessageUnits(rng, guilds, 10) {
				if _, err := stale.ApplyBatch(ctx, batch); err != nil {
					t.Fatal(err)
				}
			}
			dsts = append(dsts, fresh, stale)
			vias = append(vias, via, via)
		}
		for i, dst := range dsts {
			var err error
			if vias[i] == "Import" {
				_, err = dst.Import(ctx, 2, bytes.NewReader(data), info.Checksum)
			} else {
				_, err = dst.ImportFrom(ctx, 2, src)
			}
			if err != nil {
				t.Fatal(err)
			}
			assertRollupsEqualRawCounts(t, dst, 0, fmt.Sprintf("seed %d, after %s", seed, vias[i]))
			if got, want := rollupRows(t, dst.rdb, 2), rollupRows(t, src.rdb, 2); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d: the moved guild's rollups differ from the source's:\n got %q\nwant %q", seed, got, want)
			}
			a, err := src.Dashboard(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			b, err := dst.Dashboard(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("seed %d: the moved guild's dashboard differs:\nsource %+v\ntarget %+v", seed, a, b)
			}
		}
		if err := src.DeleteGuild(ctx, 2, 0); err != nil {
			t.Fatal(err)
		}
		assertRollupsEqualRawCounts(t, src, 0, fmt.Sprintf("seed %d, after DeleteGuild", seed))
		for tb, rows := range rollupRows(t, src.rdb, 2) {
			if len(rows) != 0 {
				t.Fatalf("seed %d: DeleteGuild left %s rows %q", seed, tb, rows)
			}
		}
		if rows := rollupRows(t, src.rdb, 1)["rollup_messages"]; len(rows) == 0 {
			t.Fatalf("seed %d: guild 1 lost its rollups with guild 2's", seed)
		}
	}
}

// TestRollupsOfAFailedImportLeaveWithItsRows: an import that fails after
// inserting rows (a checksum mismatch in its last step) and is cleaned up
// leaves the guild's rollups as its (empty) raw rows say.
func TestRollupsOfAFailedImportLeaveWithItsRows(t *testing.T) {
	ctx := context.Background()
	src, dst := openFuzzStore(t, "src.db"), openFuzzStore(t, "dst.db")
	mustApply(t, src, sampleWrites(77, 4)...)
	data, _ := exportOf(t, src, 77)
	mustApply(t, dst, Write{Op: MessageCreate{GuildID: 77, MessageID: 999, ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
	if _, err := dst.publish(ctx, 77, bytes.NewReader(data), "not-the-checksum"); err == nil {
		t.Fatal("an import with the wrong checksum was accepted")
	}
	assertRollupsEqualRawCounts(t, dst, 0, "after the failed import")
	if rows := rollupRows(t, dst.rdb, 77)["rollup_messages"]; len(rows) != 0 {
		t.Fatalf("rollups left by a failed import: %q", rows)
	}
}

// TestMigration0007BackfillsRollupsEqualToCountsOfRawRows: a store written
// by the old schema (up to 0006) gets, on open, rollups equal to the counts
// of its rows, and keeps them so under new writes.
func TestMigration0007BackfillsRollupsEqualToCountsOfRawRows(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, db, 6); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 500 {
		var edited, deleted any
		if rng.IntN(3) == 0 {
			edited = ms(t0)
		}
		if rng.IntN(4) == 0 {
			deleted = ms(t0)
		}
		at := ms(t0) - rng.Int64N(int64(40*24*time.Hour/time.Millisecond))
		if i%50 == 0 {
			at = -rng.Int64N(int64(5 * time.Hour / time.Millisecond)) // before 1970: floor, not truncation
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO messages (guild_id, message_id, channel_id, author_id, created_at, edited_at, deleted_at, content_length)
			VALUES (?, ?, ?, ?, ?, ?, ?, 1)`, 1+rng.IntN(3), i, 1+rng.IntN(5), 1+rng.IntN(9), at, edited, deleted); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := OpenWithOptions(ctx, path, Options{Synchronous: "NORMAL", Now: func() time.Time { return t0.Add(time.Hour) },
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != 7 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	if rows := rollupRows(t, s.rdb, 0)["rollup_message_hours"]; len(rows) == 0 {
		t.Fatal("no hourly rollup backfilled")
	}
	assertRollupsEqualRawCounts(t, s, 0, "after the backfill")
	for _, batch := range randomMessageUnits(rng, []uint64{1, 2, 3}, 20) {
		if _, err := s.ApplyBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	assertRollupsEqualRawCounts(t, s, 0, "after writes on the backfilled rollups")
}

// TestDashboardMessageFiguresAreTheRawCounts: the dashboard's message
// figures (now read from the rollups) are what the per-request counts of
// the raw rows gave.
func TestDashboardMessageFiguresAreTheRawCounts(t *testing.T) {
	ctx := context.Background()
	s := openFuzzStore(t, "d.db")
	rng := rand.New(rand.NewPCG(3, 5))
	var recent []Write // every half hour of the last 60, some deleted
	for k := range 120 {
		m := uint64(5000 + k)
		recent = append(recent, Write{Op: MessageCreate{GuildID: 1, MessageID: m, ChannelID: uint64(k % 3), AuthorID: uint64(k % 13),
			CreatedAt: t0.Add(time.Hour - time.Duration(k)*30*time.Minute)}})
		if k%7 == 0 {
			recent = append(recent, Write{Op: MessageDelete{GuildID: 1, MessageID: m, DeletedAt: t0}})
		}
	}
	mustApply(t, s, recent...)
	for _, batch := range randomMessageUnits(rng, []uint64{1, 2}, 60) {
		if _, err := s.ApplyBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	d, err := s.Dashboard(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var live, deleted, edited int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL),
		count(*) FILTER (WHERE edited_at IS NOT NULL AND deleted_at IS NULL) FROM messages WHERE guild_id = 1`).Scan(&live, &deleted, &edited); err != nil {
		t.Fatal(err)
	}
	if d.Messages != live || d.MessagesDeleted != deleted || d.MessagesEdited != edited || live == 0 || deleted == 0 {
		t.Fatalf("dashboard %d live %d deleted %d edited, raw rows %d %d %d", d.Messages, d.MessagesDeleted, d.MessagesEdited, live, deleted, edited)
	}
	topAuthors := queryLines(t, s.rdb, `SELECT author_id, count(*) AS n FROM messages WHERE guild_id = 1 AND deleted_at IS NULL
		GROUP BY author_id ORDER BY n DESC, author_id LIMIT 10`, 0)
	var got []string
	for _, a := range d.TopAuthors {
		got = append(got, fmt.Sprint(a.ID, " ", a.Messages))
	}
	slices.Sort(got)
	if !slices.Equal(got, topAuthors) {
		t.Fatalf("top authors %q, raw counts %q", got, topAuthors)
	}
	now := t0.Add(time.Hour)
	startOfHours := now.Truncate(time.Hour).Add(-47 * time.Hour)
	var hourly, last24 int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE created_at >= ?), count(*) FILTER (WHERE created_at >= ?)
		FROM messages WHERE guild_id = 1 AND deleted_at IS NULL`, ms(startOfHours), ms(startOfHours.Add(24*time.Hour))).Scan(&hourly, &last24); err != nil {
		t.Fatal(err)
	}
	if d.Activity.MessagesHourly.Total() != hourly || d.MessagesLast24h != last24 || hourly == 0 {
		t.Fatalf("hourly total %d, last 24 h %d; raw rows %d, %d", d.Activity.MessagesHourly.Total(), d.MessagesLast24h, hourly, last24)
	}
}
