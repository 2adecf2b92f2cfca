package litestream_test

import (
	"context"
	"os"
	"path/filepath"
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
// the restore equals the source row for row.
//
// MODBOT_LS_LOAD=1 runs the 60 s at 5,000 writes/s variant.
func TestWALStaysBoundedUnderSustainedWrites(t *testing.T) {
	dur, rate, guilds := 8*time.Second, 1000, 4
	if os.Getenv("MODBOT_LS_LOAD") == "1" {
		dur, rate, guilds = 60*time.Second, 5000, 8
	}
	e := newEnv(t)
	db := filepath.Join(e.dir, "pod", "gateway.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	replica := "file://" + filepath.Join(e.dir, "replica")
	side := e.sidecar(db, replica)
	base := side.metricsURL()
	w := e.writer(db, guilds, rate, "MODBOT_LSTEST_PAYLOAD=1000")

	var maxWAL, halfWAL int64
	begin := time.Now()
	for time.Since(begin) < dur {
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
	t.Logf("%d rows in %s (%.0f/s), WAL written %.1f MB, max WAL file %.1f MB, %v Litestream checkpoints",
		n, dur, float64(n)/dur.Seconds(), walBytes/1e6, float64(maxWAL)/1e6, checkpoints)
	if strings := w.Stderr(); len(strings) > 0 {
		t.Logf("writer stderr: %s", strings)
	}

	// Bounded: the WAL file (which Litestream keeps with PERSIST_WAL, so
	// its size is its high-water mark) plateaus: the second half of the run
	// adds little to the first half's peak, and it stays a fraction of
	// what went through it. The plateau itself is Litestream's threshold
	// (1000 pages, 4 MB) plus what the store writes between two
	// checkpoints (about one sync round).
	perSecond := walBytes / dur.Seconds()
	t.Logf("WAL high-water mark: %.1f MB at half time, %.1f MB at the end; %.1f MB/s through the WAL", float64(halfWAL)/1e6, float64(maxWAL)/1e6, perSecond/1e6)
	if float64(maxWAL) > 1.5*float64(halfWAL)+4e6 {
		t.Fatalf("WAL still growing: %d bytes at half time, %d at the end", halfWAL, maxWAL)
	}
	// A loose absolute bound (this machine may be busy: slow rounds mean
	// more WAL between checkpoints); the plateau above is the invariant.
	if bound := 4e6 + 4*perSecond; float64(maxWAL) > bound {
		t.Fatalf("WAL reached %d bytes, want <= %.0f (4 MB + 4 s of writes)", maxWAL, bound)
	}
	if walBytes < 3*float64(maxWAL) {
		t.Fatalf("%.0f bytes went through the WAL, max file %d: not bounded by checkpoints (or load too small)", walBytes, maxWAL)
	}
	if checkpoints < 1 {
		t.Fatal("Litestream never checkpointed")
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
	if err := litestream.IntegrityCheck(context.Background(), db); err != nil {
		t.Fatal(err)
	}
}
