package litestream_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func healthz(t *testing.T, base string) (int, map[string]any) {
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// The lag gauge is the age of the oldest change not on the replica: above
// 0 under load, 0 once idle; the TXID lag and last
// sync time follow; Litestream's own series are exported too.
func TestLagMetricsAreBoundedUnderLoadAndZeroWhenInSync(t *testing.T) {
	e := newEnv(t)
	db := filepath.Join(e.dir, "pod", "gateway.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	side := e.sidecar(db, "file://"+filepath.Join(e.dir, "replica"))
	base := side.metricsURL()
	w := e.writer(db, 4, 1000)
	var maxLag float64
	for i := 0; i < 30; i++ { // 3 s of load
		time.Sleep(100 * time.Millisecond)
		maxLag = max(maxLag, scrape(t, base, "modbot_replication_lag_seconds"))
	}
	// The value under load is a speed figure (make bench reports its
	// p50/p99): here the gauge must move, and stay far from a stuck,
	// ever-growing age (3 s of load cannot make a lag of 15 s).
	t.Logf("lag under load peaked at %.3fs (sync interval %s)", maxLag, syncInterval)
	if maxLag <= 0 || maxLag > 15 {
		t.Fatalf("lag under load peaked at %.3fs, want in (0, 15s]", maxLag)
	}
	for _, name := range []string{"litestream_txid", "litestream_db_size", "litestream_sync_count", "modbot_replication_lag_txids", "modbot_replication_sync_errors_total", "modbot_replication_restore_errors_total", "go_goroutines"} {
		if scrape(t, base, name) < 0 {
			t.Errorf("metric %s missing", name)
		}
	}
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
	waitFor(t, 5*time.Second, "lag 0 once idle", func() bool {
		return scrape(t, base, "modbot_replication_lag_seconds") == 0 && scrape(t, base, "modbot_replication_lag_txids") == 0
	})
	if last := scrape(t, base, "modbot_replication_last_sync_timestamp_seconds"); time.Since(time.Unix(int64(last), 0)) > 3*syncInterval {
		t.Fatalf("last sync %v ago", time.Since(time.Unix(int64(last), 0)))
	}
	if code, body := healthz(t, base); code != 200 || body["status"] != "replicating" {
		t.Fatalf("healthz %d %v", code, body)
	}
	if n := scrape(t, base, "modbot_replication_sync_errors_total"); n != 0 {
		t.Fatalf("%v sync errors against a healthy replica", n)
	}
	t.Logf("peak lag under 1000 writes/s: %.3fs", maxLag)
}

// Against an unreachable replica the sidecar stays up, counts failed rounds
// and the lag grows past the sync interval.
func TestUnreachableReplicaCountsSyncErrorsAndLagGrows(t *testing.T) {
	e := newEnv(t)
	db := filepath.Join(e.dir, "pod", "gateway.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	side := e.sidecar(db, "s3://"+testBucket+"/p?endpoint=http://"+closedPort(t)+"&region=us-east-1")
	base := side.metricsURL()
	w := e.writer(db, 1, 200)
	waitFor(t, 20*time.Second, "sync errors counted", func() bool {
		return scrape(t, base, "modbot_replication_sync_errors_total") >= 1
	})
	waitFor(t, 20*time.Second, "lag past the sync interval", func() bool {
		return scrape(t, base, "modbot_replication_lag_seconds") > syncInterval.Seconds()
	})
	if _, body := healthz(t, base); !strings.Contains(body["last_error"].(string), "unreachable") && !strings.Contains(body["last_error"].(string), "connection refused") {
		t.Fatalf("healthz last_error %v", body)
	}
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
}

// A --restore-if-missing restore that fails is retried and counted, and
// replication does not start meanwhile (healthz 503).
func TestFailedRestoreIfMissingIsCountedAndBlocksReplication(t *testing.T) {
	e := newEnv(t)
	s3 := newFakeS3(t)
	db := filepath.Join(e.dir, "pod", "gateway.db")
	e2 := &env{t: t, dir: e.dir, vars: e.with("AWS_ACCESS_KEY_ID=wrong")}
	cmd := execModbot(e2, "replicate", "--db", db, "--replica", s3.replica(testBucket, "p"), "--metrics-addr", "127.0.0.1:0", "--restore-if-missing")
	p := start(t, "replicate", cmd)
	waitFor(t, 20*time.Second, "metrics up", func() bool { return p.metricsURL() != "" })
	base := p.metricsURL()
	waitFor(t, 20*time.Second, "restore error counted", func() bool {
		return scrape(t, base, "modbot_replication_restore_errors_total") >= 1
	})
	if code, body := healthz(t, base); code != http.StatusServiceUnavailable || body["status"] != "restoring" || !strings.Contains(body["last_error"].(string), "credentials refused") {
		t.Fatalf("healthz while restore fails: %d %v", code, body)
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Fatalf("database created while restore fails: %v", err)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 1 {
		t.Fatalf("exit %d", code)
	}
}
