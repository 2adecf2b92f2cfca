package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// copySource is a store holding guild g at epoch 3 with every op type,
// n more messages and m more moderation actions (many sharing a time, so
// the copy's key ranges split on the text half of their key).
func copySource(t testing.TB, g uint64, n, m int) *Store {
	t.Helper()
	src := openTest(t, "src.db")
	mustApply(t, src, sampleWrites(g, 3)...)
	mustApply(t, src, Write{Epoch: 3, Op: MessageDelete{GuildID: g, MessageID: 500, DeletedAt: t0}}) // a tombstone
	fillMessages(t, src, g, 3, 1_000_000, n)
	var ws []Write
	for i := 0; i < m; i++ {
		ws = append(ws, Write{Epoch: 3, Op: AddModAction{ModAction{GuildID: g, Kind: ActionKick, UserID: uint64(i),
			CreatedAt: t0.Add(time.Duration(i/700) * time.Second), DedupeKey: fmt.Sprintf("kick:%d", i)}}})
	}
	if len(ws) > 0 {
		mustApply(t, src, ws...)
	}
	if err := src.Fence(context.Background(), g, 4); err != nil {
		t.Fatal(err)
	}
	return src
}

// attachedDatabases lists the schemas attached to s's writer connection.
func attachedDatabases(t testing.TB, s *Store) []string {
	t.Helper()
	var names []string
	err := s.w.connJob(context.Background(), func(ctx context.Context, c *sql.Conn) error {
		rows, err := c.QueryContext(ctx, `SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp')`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			names = append(names, n)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestImportFromCopiesTheSourceInBoundedTransactions: ImportFrom over a
// target holding an old copy of the guild and another guild leaves the
// guild exactly as the source holds it (checksum, epoch, settings, rollups,
// dashboard), in transactions of at most chunkRows rows, the other guild
// untouched and the source detached.
func TestImportFromCopiesTheSourceInBoundedTransactions(t *testing.T) {
	ctx := context.Background()
	const g, other = 77, 5
	src := copySource(t, g, 3*chunkRows, 2500)
	want, err := src.Checksum(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	dst := openTest(t, "dst.db")
	mustApply(t, dst, sampleWrites(other, 1)...)
	otherSum := mustChecksum(t, dst, other)
	fillMessages(t, dst, g, 2, 5_000_000, chunkRows+100) // an old, different copy
	steps := countBoundedSteps(t, dst, g, func(step string) {
		if step != "last" {
			if _, err := dst.Checksum(ctx, g); !errors.Is(err, ErrImporting) {
				t.Errorf("after %s: Checksum err = %v, want ErrImporting", step, err)
			}
		}
	})
	got, err := dst.ImportFrom(ctx, g, src)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ImportFrom = %+v, want the source's %+v", got, want)
	}
	assertBoundedSteps(t, steps)
	if sum := mustChecksum(t, dst, g); sum != want.Checksum {
		t.Fatalf("target checksum %s, want the source's %s", sum, want.Checksum)
	}
	if e, _ := dst.Epoch(ctx, g); e != 4 {
		t.Fatalf("epoch after the copy %d, want the source's 4", e)
	}
	assertRollupsEqualRawCounts(t, dst, 0, "after ImportFrom")
	if a, b := rollupRows(t, dst.rdb, g), rollupRows(t, src.rdb, g); !reflect.DeepEqual(a, b) {
		t.Fatalf("rollups differ from the source's:\n got %q\nwant %q", a, b)
	}
	ds, _ := src.Dashboard(ctx, g)
	dd, _ := dst.Dashboard(ctx, g)
	if !reflect.DeepEqual(ds, dd) {
		t.Fatalf("dashboards differ:\nsrc %+v\ndst %+v", ds, dd)
	}
	if mustChecksum(t, dst, other) != otherSum {
		t.Fatal("the copy touched another guild")
	}
	if a := attachedDatabases(t, dst); len(a) != 0 {
		t.Fatalf("still attached after the copy: %v", a)
	}
}

// TestImportFromASourceThatChangedLeavesNothing: the source is written
// after the copy took its snapshot (a row the copy then copies that the
// snapshot lacks): the copy fails with ErrChecksumMismatch and leaves none
// of the guild's rows, nor a guild_imports row, nor rollups; the source is
// detached.
func TestImportFromASourceThatChangedLeavesNothing(t *testing.T) {
	ctx := context.Background()
	const g = 77
	src := copySource(t, g, 2*chunkRows, 0)
	dst := openTest(t, "dst.db")
	changed := false
	dst.imp.afterChunk = func(_ uint64, _ int, step string) {
		if step == "begin" && !changed {
			changed = true
			mustApply(t, src, Write{Epoch: 4, Op: MessageCreate{GuildID: g, MessageID: 9_000_000, ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
		}
	}
	if _, err := dst.ImportFrom(ctx, g, src); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("ImportFrom err = %v, want ErrChecksumMismatch", err)
	}
	assertNoCopyLeft(t, dst, g, "after the failed copy")
	assertRollupsEqualRawCounts(t, dst, 0, "after the failed copy")
	if rows := rollupRows(t, dst.rdb, g)["rollup_messages"]; len(rows) != 0 {
		t.Fatalf("rollups left by a failed copy: %q", rows)
	}
	if a := attachedDatabases(t, dst); len(a) != 0 {
		t.Fatalf("still attached after the failed copy: %v", a)
	}
	// The next copy, of the source as it is now, succeeds.
	if _, err := dst.ImportFrom(ctx, g, src); err != nil {
		t.Fatal(err)
	}
	if mustChecksum(t, dst, g) != mustChecksum(t, src, g) {
		t.Fatal("the second copy differs from the source")
	}
}

// TestImportFromBelowTheStoredEpochChangesNothing: a target fenced above
// the source's epoch refuses the copy with ErrStaleEpoch before writing.
func TestImportFromBelowTheStoredEpochChangesNothing(t *testing.T) {
	ctx := context.Background()
	const g = 77
	src := copySource(t, g, 10, 0)
	dst := openTest(t, "dst.db")
	mustApply(t, dst, sampleWrites(g, 5)...)
	if err := dst.Fence(ctx, g, 9); err != nil {
		t.Fatal(err)
	}
	before := mustChecksum(t, dst, g)
	if _, err := dst.ImportFrom(ctx, g, src); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("ImportFrom err = %v, want ErrStaleEpoch", err)
	}
	if mustChecksum(t, dst, g) != before {
		t.Fatal("a refused copy changed the guild")
	}
}

// BenchmarkImportFrom copies a guild of 100k message rows from another
// store (ImportFrom, what a failover runs), beside BenchmarkImport's
// export → import. ns/op is per row.
func BenchmarkImportFrom(b *testing.B) {
	ctx := context.Background()
	src, dst := openTest(b, "src.db"), openTest(b, "dst.db")
	seedMessages(b, src, 1, benchRows)
	rounds := (b.N + benchRows - 1) / benchRows
	b.ResetTimer()
	start := time.Now()
	for r := 0; r < rounds; r++ {
		if _, err := dst.ImportFrom(ctx, 1, src); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(rounds*benchRows)/elapsed.Seconds(), "rows/s")
}
