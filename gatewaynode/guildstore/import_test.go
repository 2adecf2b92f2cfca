package guildstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// fillMessages gives guild g n messages (ids first, first+1, …) at epoch.
func fillMessages(t testing.TB, s *Store, g, epoch, first uint64, n int) {
	t.Helper()
	var ws []Write
	for i := 0; i < n; i++ {
		id := first + uint64(i)
		ws = append(ws, Write{Epoch: epoch, Op: MessageCreate{GuildID: g, MessageID: id, ChannelID: id % 3, AuthorID: id % 7, CreatedAt: t0, ContentLength: int(id % 50)}})
		if len(ws) == 2000 || i == n-1 {
			mustApply(t, s, ws...)
			ws = ws[:0]
		}
	}
}

// bigExport is an export of guild g with every op type and n more
// messages, at epoch 3.
func bigExport(t testing.TB, g uint64, n int) ([]byte, ExportInfo) {
	t.Helper()
	src := openTest(t, "src.db")
	mustApply(t, src, sampleWrites(g, 3)...)
	fillMessages(t, src, g, 3, 1_000_000, n)
	return exportOf(t, src, g)
}

func messageRows(t testing.TB, s *Store, g uint64) int64 {
	t.Helper()
	c, err := s.Counts(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	return c["messages"]
}

// TestAnImportIsPublishedInBoundedTransactions: the old copy is cleared and
// the export inserted in transactions of at most chunkRows rows each, and
// the result is the export.
func TestAnImportIsPublishedInBoundedTransactions(t *testing.T) {
	ctx := context.Background()
	const g = 77
	data, info := bigExport(t, g, 3*chunkRows)
	dst := openTest(t, "dst.db")
	fillMessages(t, dst, g, 2, 5_000_000, chunkRows+100) // an old, different copy
	steps := countBoundedSteps(t, dst, g, nil)
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); err != nil {
		t.Fatal(err)
	}
	assertBoundedSteps(t, steps)
	if got := mustChecksum(t, dst, g); got != info.Checksum {
		t.Fatalf("checksum after import %s, want %s", got, info.Checksum)
	}
}

// TestOtherGuildsWritesInterleaveWithAnImport: a write of another guild
// submitted while an import is under way commits before the import's last
// transaction (ordered by the import's own steps, not by timing); the same
// for a failover's copy from another store (ImportFrom).
func TestOtherGuildsWritesInterleaveWithAnImport(t *testing.T) {
	for _, via := range []string{"Import", "ImportFrom"} {
		t.Run(via, func(t *testing.T) {
			ctx := context.Background()
			const g, other = 77, 5
			data, info := bigExport(t, g, 3*chunkRows)
			src := copySource(t, g, 3*chunkRows, 0)
			dst := openTest(t, "dst.db")
			var order []string
			dst.imp.afterChunk = func(_ uint64, n int, step string) {
				order = append(order, step)
				if step == "insert" && !slices.Contains(order, "other committed") {
					wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					if _, err := dst.Apply(wctx, Write{Epoch: 1, Op: MessageCreate{GuildID: other, MessageID: 1, ChannelID: 1, AuthorID: 1, CreatedAt: t0}}); err != nil {
						t.Errorf("another guild's write during the import: %v", err)
						return
					}
					order = append(order, "other committed")
				}
			}
			var err error
			want := info.Checksum
			if via == "Import" {
				_, err = dst.Import(ctx, g, bytes.NewReader(data), info.Checksum)
			} else {
				want = mustChecksum(t, src, g)
				_, err = dst.ImportFrom(ctx, g, src)
			}
			if err != nil {
				t.Fatal(err)
			}
			i, last := slices.Index(order, "other committed"), slices.Index(order, "last")
			if i < 0 || last < i || !slices.Contains(order[i:], "insert") {
				t.Fatalf("steps %v: the other guild's write did not commit between two of the import's transactions", order)
			}
			if messageRows(t, dst, other) != 1 || mustChecksum(t, dst, g) != want {
				t.Fatal("the other guild's write or the import is missing")
			}
		})
	}
}

// TestAGuildMidImportIsNoCopyUntilItsLastCommit: until the last
// transaction, Export and Checksum refuse the guild and its epoch and
// settings are the old ones; from it, the guild is the export.
func TestAGuildMidImportIsNoCopyUntilItsLastCommit(t *testing.T) {
	ctx := context.Background()
	const g = 77
	data, info := bigExport(t, g, 2*chunkRows)
	dst := openTest(t, "dst.db")
	mustApply(t, dst, Write{Epoch: 2, Op: PutSettings{GuildID: g, ModRoleID: 99, Version: snowflakeAt(t0, 9), UpdatedAt: t0}})
	checked := 0
	dst.imp.afterChunk = func(_ uint64, _ int, step string) {
		if step == "last" {
			return
		}
		checked++
		if _, err := dst.Export(ctx, g, io.Discard); !errors.Is(err, ErrImporting) {
			t.Errorf("after %s: Export err = %v, want ErrImporting", step, err)
		}
		if _, err := dst.Checksum(ctx, g); !errors.Is(err, ErrImporting) {
			t.Errorf("after %s: Checksum err = %v, want ErrImporting", step, err)
		}
		if e, _ := dst.Epoch(ctx, g); e != 2 {
			t.Errorf("after %s: epoch %d, want the old 2", step, e)
		}
		if st, _ := dst.Settings(ctx, g); st.ModRoleID != 99 {
			t.Errorf("after %s: settings %+v, want the old ones", step, st)
		}
	}
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); err != nil {
		t.Fatal(err)
	}
	if checked < 3 {
		t.Fatalf("checked only %d transactions", checked)
	}
	if e, _ := dst.Epoch(ctx, g); e != 3 {
		t.Fatalf("epoch after import %d, want 3", e)
	}
	if st, _ := dst.Settings(ctx, g); st.ModRoleID != 11 {
		t.Fatalf("settings after import %+v, want the export's", st)
	}
	if mustChecksum(t, dst, g) != info.Checksum {
		t.Fatal("checksum after import differs")
	}
}

// TestAFailedPublishLeavesNothing: a fence above the export's epoch in the
// middle of the publish (the move was aborted) fails the import with
// ErrStaleEpoch and leaves none of the guild's data rows, the raised epoch
// kept; another guild is untouched.
func TestAFailedPublishLeavesNothing(t *testing.T) {
	ctx := context.Background()
	const g, other = 77, 5
	data, info := bigExport(t, g, 3*chunkRows)
	dst := openTest(t, "dst.db")
	mustApply(t, dst, sampleWrites(other, 1)...)
	otherSum := mustChecksum(t, dst, other)
	inserts := 0
	dst.imp.afterChunk = func(_ uint64, _ int, step string) {
		if step == "insert" {
			if inserts++; inserts == 2 {
				if messageRows(t, dst, g) == 0 {
					t.Error("no rows published before the fence")
				}
				if err := dst.Fence(ctx, g, 9); err != nil {
					t.Error(err)
				}
			}
		}
	}
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("import err = %v, want ErrStaleEpoch", err)
	}
	c, err := dst.Counts(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range exportTables[1:] {
		if c[tb.name] != 0 {
			t.Errorf("%d %s rows left by the failed import", c[tb.name], tb.name)
		}
	}
	if e, _ := dst.Epoch(ctx, g); e != 9 {
		t.Errorf("epoch %d, want the fence's 9", e)
	}
	if _, err := dst.Checksum(ctx, g); err != nil {
		t.Errorf("after the failed import the guild is still marked importing: %v", err)
	}
	if mustChecksum(t, dst, other) != otherSum {
		t.Error("the failed import touched another guild")
	}
}

// TestACrashMidImportLeavesNothing: the store stops between two of an
// import's transactions (its process died): the database then holds part
// of the guild and its guild_imports row, and the next Open deletes both
// before it returns; other guilds are untouched.
func TestACrashMidImportLeavesNothing(t *testing.T) {
	ctx := context.Background()
	const g, other = 77, 5
	data, info := bigExport(t, g, 3*chunkRows)
	path := filepath.Join(t.TempDir(), "dst.db")
	opts := Options{Logger: slog.New(slog.DiscardHandler)}
	dst, err := OpenWithOptions(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	mustApply(t, dst, sampleWrites(other, 1)...)
	otherSum := mustChecksum(t, dst, other)
	var once sync.Once
	dst.imp.afterChunk = func(_ uint64, n int, step string) {
		if step == "insert" {
			once.Do(func() { dst.Close() })
		}
	}
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); !errors.Is(err, ErrClosed) {
		t.Fatalf("import err = %v, want ErrClosed", err)
	}
	raw := openRaw(t, path)
	var marks, rows int
	if err := raw.QueryRow(`SELECT (SELECT count(*) FROM guild_imports WHERE guild_id = ?), (SELECT count(*) FROM messages WHERE guild_id = ?)`, g, g).Scan(&marks, &rows); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if marks != 1 || rows == 0 {
		t.Fatalf("after the crash: %d guild_imports rows, %d message rows; want 1 and some", marks, rows)
	}
	re, err := OpenWithOptions(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	assertNoCopyLeft(t, re, g, "after reopening")
	if mustChecksum(t, re, other) != otherSum {
		t.Error("the clean-up touched another guild")
	}
	// The import can be done again from the start.
	if _, err := re.Import(ctx, g, bytes.NewReader(data), info.Checksum); err != nil {
		t.Fatal(err)
	}
	if mustChecksum(t, re, g) != info.Checksum {
		t.Fatal("re-import after the crash differs")
	}
}

// TestAnExportIsOneSnapshotAndNeverHoldsTheWriter: while an export is
// stopped mid-stream (its reader is slow), writes of the guild and of
// another guild commit, and the export is still the guild as it was when
// it started.
func TestAnExportIsOneSnapshotAndNeverHoldsTheWriter(t *testing.T) {
	ctx := context.Background()
	const g, other = 77, 5
	src := openTest(t, "src.db")
	mustApply(t, src, sampleWrites(g, 3)...)
	fillMessages(t, src, g, 3, 1_000_000, 8000) // > the export's 256 KiB buffer
	before := mustChecksum(t, src, g)
	pr, pw := io.Pipe()
	done := make(chan ExportInfo, 1)
	go func() {
		info, err := src.Export(ctx, g, pw)
		pw.CloseWithError(err)
		done <- info
	}()
	first := make([]byte, 1)
	if _, err := io.ReadFull(pr, first); err != nil { // the export has begun and is now blocked on the pipe
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := src.Apply(wctx,
		Write{Epoch: 3, Op: MessageCreate{GuildID: g, MessageID: 1, ChannelID: 1, AuthorID: 1, CreatedAt: t0}},
		Write{Epoch: 1, Op: MessageCreate{GuildID: other, MessageID: 1, ChannelID: 1, AuthorID: 1, CreatedAt: t0}}); err != nil {
		t.Fatalf("a write while an export streams: %v", err)
	}
	rest, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	info := <-done
	if info.Checksum != before || info.Rows["messages"] != 8003 {
		t.Fatalf("export %v rows %s; want the snapshot before the write (%s, 8003 messages)", info.Rows, info.Checksum, before)
	}
	dst := openTest(t, "dst.db")
	if _, err := dst.Import(ctx, g, bytes.NewReader(append(first, rest...)), before); err != nil {
		t.Fatal(err)
	}
}

// openRaw opens the database file directly (what a crash left on disk).
func openRaw(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// assertNoCopyLeft fails unless s holds none of guild g's data rows (its
// epoch may stay) and no longer marks it importing.
func assertNoCopyLeft(t testing.TB, s *Store, g uint64, when string) {
	t.Helper()
	c, err := s.Counts(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range exportTables[1:] {
		if c[tb.name] != 0 {
			t.Errorf("%s: %d %s rows left", when, c[tb.name], tb.name)
		}
	}
	if _, err := s.Checksum(context.Background(), g); err != nil {
		t.Errorf("%s: the guild is still marked importing: %v", when, err)
	}
}

// countBoundedSteps counts the transactions of dst's next import of g by
// step, failing the test when one changes more than chunkRows message rows;
// also, when set, runs after each.
func countBoundedSteps(t testing.TB, dst *Store, g uint64, also func(step string)) map[string]int {
	last := messageRows(t, dst, g)
	steps := map[string]int{}
	dst.imp.afterChunk = func(_ uint64, _ int, step string) {
		steps[step]++
		n := messageRows(t, dst, g)
		if d := max(n-last, last-n); d > chunkRows {
			t.Errorf("one %s transaction changed %d message rows (bound %d)", step, d, chunkRows)
		}
		last = n
		if also != nil {
			also(step)
		}
	}
	return steps
}

// assertBoundedSteps: an import over an old copy of ≥ 3×chunkRows rows
// cleared and inserted in several transactions each.
func assertBoundedSteps(t testing.TB, steps map[string]int) {
	t.Helper()
	if steps["begin"] != 1 || steps["last"] != 1 || steps["clear"] < 2 || steps["insert"] < 3 {
		t.Fatalf("transactions by step = %v, want one begin and last, ≥ 2 clears, ≥ 3 inserts", steps)
	}
}
