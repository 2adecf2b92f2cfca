package litestream_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modbot/modbot/litestream"
)

// Litestream owns checkpoints (see the package doc). Under sustained writes
// through the gateway's store, Litestream's PASSIVE checkpoints keep the WAL
// near its 1,000-page threshold (the gateway's own autocheckpoint is only a
// 10,000-page backstop, and Litestream's read transaction prevents the WAL
// from restarting unless Litestream checkpoints), and no frame is skipped:
// the restore equals the source row for row. All the while a move's
// export of a 100k-row guild runs once a second: each export is a read
// transaction that holds back the WAL's restart while it lasts.
//
// MODBOT_LS_LOAD=1 runs the 60 s at 5,000 writes/s variant.
func exportsSoFar(w *proc) []int { r, _ := w.exports(); return r }

func TestWALStaysBoundedUnderSustainedWrites(t *testing.T) {
	// The WAL's hard bound: a TRUNCATE checkpoint at truncatePages (100 MB),
	// a fifth of Litestream's default, so that this run reaches it.
	dur, rate, guilds, truncatePages := 8*time.Second, 1000, 4, 25_000
	if os.Getenv("MODBOT_LS_LOAD") == "1" {
		dur, rate, guilds = 60*time.Second, 5000, 8
	}
	e := newEnv(t)
	db := filepath.Join(e.dir, "pod", "gateway.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	replica := "file://" + filepath.Join(e.dir, "replica")
	const exportRows = 100_000
	e.seed(db, exportRows) // before the run: its WAL is gone when the run starts
	side := e.sidecar(db, replica, "--truncate-pages", strconv.Itoa(truncatePages))
	base := side.metricsURL()
	w := e.writer(db, guilds, rate, "MODBOT_LSTEST_PAYLOAD=1000", "MODBOT_LSTEST_EXPORT=1")

	var maxWAL, halfWAL int64
	begin := time.Now()
	// The run lasts dur, and on a loaded machine (CI runs this beside other
	// packages) until the writer finished two exports of the big guild,
	// bounded at 3×dur: the invariant is about writes during exports.
	for time.Since(begin) < dur || (len(exportsSoFar(w)) < 2 && time.Since(begin) < 3*dur) {
		if fi, err := os.Stat(db + "-wal"); err == nil {
			maxWAL = max(maxWAL, fi.Size())
		}
		if time.Since(begin) < dur/2 {
			halfWAL = maxWAL
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkpoints := scrape(t, base, "litestream_checkpoint_count")
	walBytes := scrape(t, base, "litestream_total_wal_bytes")
	w.signal(syscall.SIGTERM)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("writer exited %d:\n%s", code, w.Stderr())
	}
	side.signal(syscall.SIGTERM)
	if code := side.wait(60 * time.Second); code != 0 {
		t.Fatalf("replicate exited %d", code)
	}
	n := len(w.commits())
	exported, exportMs := w.exports()
	if len(exported) < 2 {
		t.Fatalf("the guild was exported %d times during the run, want at least 2", len(exported))
	}
	for _, r := range exported {
		if r != exportRows {
			t.Fatalf("an export under load had %d message rows, want %d", r, exportRows)
		}
	}
	t.Logf("%d exports of the %d-row guild during the run, %v ms each", len(exported), exportRows, exportMs)
	t.Logf("%d rows in %s (%.0f/s), WAL written %.1f MB, max WAL file %.1f MB, %v Litestream checkpoints",
		n, dur, float64(n)/dur.Seconds(), walBytes/1e6, float64(maxWAL)/1e6, checkpoints)
	if stderr := w.Stderr(); strings.Contains(stderr, "locked") || strings.Contains(stderr, "busy") {
		t.Fatalf("the writer saw a locked database:\n%s", stderr)
	} else if stderr != "" {
		t.Logf("writer stderr: %s", stderr)
	}

	// Bounded: the WAL file (which Litestream keeps with PERSIST_WAL, so
	// its size is its high-water mark) plateaus: the second half of the run
	// adds less to the first half's peak than 1.5 s of WAL traffic (an
	// unchecked WAL would add half the run's), and it stays a fraction of
	// what went through it. The plateau itself is Litestream's threshold
	// (1000 pages, 4 MB) plus what the store writes between two
	// checkpoints (about one sync round, longer while an export's read
	// transaction holds the WAL's restart back).
	perSecond := walBytes / dur.Seconds()
	t.Logf("WAL high-water mark: %.1f MB at half time, %.1f MB at the end; %.1f MB/s through the WAL", float64(halfWAL)/1e6, float64(maxWAL)/1e6, perSecond/1e6)
	if float64(maxWAL) > float64(halfWAL)+1.5*perSecond+4e6 {
		t.Fatalf("WAL still growing: %d bytes at half time, %d at the end (%.0f bytes/s through it)", halfWAL, maxWAL, perSecond)
	}
	// The hard bound: the truncate threshold, plus what is written while
	// the sync round that notices it comes round and waits out the readers.
	if bound := float64(truncatePages)*4096 + 2*perSecond; float64(maxWAL) > bound {
		t.Fatalf("WAL reached %d bytes, want <= %.0f (the %d-page truncate threshold + 2 s of writes)", maxWAL, bound, truncatePages)
	}
	// Checkpoints kept it bounded: several of them, and more went through
	// the WAL than it ever held (an export's read transaction — seconds on a
	// busy machine — holds its restart back, so the margin can be small).
	if checkpoints < 3 || walBytes < 1.5*float64(maxWAL) {
		t.Fatalf("%v Litestream checkpoints, %.0f bytes through the WAL, max file %d: not bounded by checkpoints (or load too small)", checkpoints, walBytes, maxWAL)
	}

	out := filepath.Join(e.dir, "restored", "gateway.db")
	if _, err := litestream.Restore(context.Background(), litestream.RestoreOptions{DBPath: out, ReplicaURL: replica}); err != nil {
		t.Fatal(err)
	}
	src, got := rows(t, db), rows(t, out)
	// The writer reports a row after its commit, so a SIGTERM can land
	// between the two: the source has at least what was reported.
	if len(src) < n || len(got) != len(src) {
		t.Fatalf("writer reported %d committed rows, source has %d, restore %d", n, len(src), len(got))
	}
	for k, v := range src {
		if got[k] != v {
			t.Fatalf("row %v differs after restore", k)
		}
	}
	srcMsgs, gotMsgs := messageRows(t, db), messageRows(t, out)
	if len(srcMsgs) != exportRows || len(gotMsgs) != len(srcMsgs) {
		t.Fatalf("message rows: source %d, restore %d, want %d", len(srcMsgs), len(gotMsgs), exportRows)
	}
	for k, v := range srcMsgs {
		if gotMsgs[k] != v {
			t.Fatalf("message row %v differs after restore", k)
		}
	}
	if err := litestream.IntegrityCheck(context.Background(), db); err != nil {
		t.Fatal(err)
	}
}
