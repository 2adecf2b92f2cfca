package litestream_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modbot/modbot/litestream"
)

const syncInterval = time.Second

// killAndRestore runs the core scenario against one replica: the gateway's
// store writes under load next to its sidecar; both are killed with SIGKILL;
// the database is deleted; a restore brings back every row committed more
// than one sync interval before the kill, and passes integrity_check.
//
// That bound holds while sync rounds are fast (wal+upload+checkpoint within
// half the interval: rounds start every half interval). The sidecar times
// every round phase in modbot_replication_round_duration_seconds; scraped
// just before the kill, it says whether this run met that condition. When a
// starved machine (CI runs test packages in parallel on two cores) made a
// round slower, the test checks the bound the same rounds imply instead,
// max(interval/2, wal+upload+checkpoint) + wal+upload, and says so: a row
// missing beyond that is a lost change, never a slow machine.
func killAndRestore(t *testing.T, e *env, replica string) {
	db := filepath.Join(e.dir, "pod", "gateway.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	side := e.sidecar(db, replica)
	w := e.writer(db, 4, 2000)
	time.Sleep(4 * time.Second)

	base := side.metricsURL()
	walMax, upMax, ckMax := slowestRound(t, base, "wal"), slowestRound(t, base, "upload"), slowestRound(t, base, "checkpoint")
	killAt := time.Now()
	_ = side.cmd.Process.Kill()
	_ = w.cmd.Process.Kill()
	side.wait(10 * time.Second)
	w.wait(10 * time.Second)
	for _, line := range strings.Split(side.Stderr(), "\n") {
		if strings.Contains(line, "sync round slower") {
			t.Logf("sidecar: %s", line)
		}
	}
	bound := syncInterval
	if implied := max(syncInterval/2, walMax+upMax+ckMax) + walMax + upMax; implied > bound {
		t.Logf("this machine made sync rounds slow (slowest wal ≤ %s, upload ≤ %s, checkpoint ≤ %s): checking the %s bound those rounds imply, not %s",
			walMax, upMax, ckMax, implied, syncInterval)
		bound = implied
	}
	commits := w.commits()
	if len(commits) < 1000 {
		t.Fatalf("writer committed only %d rows", len(commits))
	}
	removeDB(t, db)

	if code, stderr := e.restoreCmd("--db", db, "--replica", replica); code != 0 {
		t.Fatalf("modbot restore exited %d:\n%s", code, stderr)
	}
	if err := litestream.IntegrityCheck(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	got := rows(t, db)
	cutoff := killAt.Add(-bound)
	var must, missing, newer, newerPresent int
	for _, c := range commits {
		_, ok := got[[2]int64{c.guild, c.seq}]
		if c.at.Before(cutoff) {
			must++
			if !ok {
				missing++
				if missing <= 5 {
					t.Errorf("row guild=%d seq=%d committed %s before the kill is missing", c.guild, c.seq, killAt.Sub(c.at))
				}
			}
		} else {
			newer++
			if ok {
				newerPresent++
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d rows committed more than %s before the kill are missing", missing, must, bound)
	}
	t.Logf("restored %d rows: all %d committed more than %s before the kill, and %d of the %d newer ones", len(got), must, bound, newerPresent, newer)
}

func TestKilledPodRestoresEveryRowOlderThanOneSyncIntervalFromFileReplica(t *testing.T) {
	e := newEnv(t)
	killAndRestore(t, e, "file://"+filepath.Join(e.dir, "replica"))
}

func TestKilledPodRestoresEveryRowOlderThanOneSyncIntervalFromS3(t *testing.T) {
	e := newEnv(t)
	s3 := newFakeS3(t)
	killAndRestore(t, e, s3.replica(testBucket, "pods/pod-0/gateway.db"))
}

// A pod whose disk is gone comes back with its data: --restore-if-missing
// restores before replicating (healthz stays 503 until then), replication
// then continues from the restored state, and SIGTERM makes a final sync so a
// clean shutdown loses nothing.
func TestRestoreIfMissingThenSIGTERMLosesNothing(t *testing.T) {
	e := newEnv(t)
	replica := "file://" + filepath.Join(e.dir, "replica")
	podDir := filepath.Join(e.dir, "pod")
	db := filepath.Join(podDir, "gateway.db")
	os.MkdirAll(podDir, 0o755)

	side := e.sidecar(db, replica, "--restore-if-missing") // nothing to restore yet: starts fresh
	w := e.writer(db, 2, 500)
	time.Sleep(1500 * time.Millisecond)
	w.signal(syscall.SIGTERM)
	if code := w.wait(20 * time.Second); code != 0 {
		t.Fatalf("writer exited %d", code)
	}
	side.signal(syscall.SIGTERM)
	if code := side.wait(40 * time.Second); code != 0 {
		t.Fatalf("replicate exited %d after SIGTERM, want 0:\n%s", code, side.Stderr())
	}
	if !strings.Contains(side.Stderr(), "final sync done") {
		t.Fatalf("no final sync logged:\n%s", side.Stderr())
	}
	first := w.commits()

	// The disk is gone, meta directory included.
	if err := os.RemoveAll(podDir); err != nil {
		t.Fatal(err)
	}
	side = e.sidecar(db, replica, "--restore-if-missing")
	// /healthz answers 503 ("restoring") until the restore is done and
	// replication runs: the gateway waits for 200.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(side.metricsURL() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz after restore: %v %v, want 200 within 10 s", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("database not restored before replication started: %v", err)
	}
	w = e.writer(db, 2, 500)
	time.Sleep(1500 * time.Millisecond)
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
	side.signal(syscall.SIGTERM)
	if code := side.wait(40 * time.Second); code != 0 {
		t.Fatalf("replicate exited %d after SIGTERM:\n%s", code, side.Stderr())
	}
	second := w.commits()

	out := filepath.Join(e.dir, "check", "gateway.db")
	if _, err := litestream.Restore(context.Background(), litestream.RestoreOptions{DBPath: out, ReplicaURL: replica}); err != nil {
		t.Fatal(err)
	}
	got := rows(t, out)
	for _, c := range append(first, second...) {
		if _, ok := got[[2]int64{c.guild, c.seq}]; !ok {
			t.Fatalf("row guild=%d seq=%d (committed before a clean shutdown) missing", c.guild, c.seq)
		}
	}
	if want := len(rows(t, db)); len(got) != want {
		t.Fatalf("restored %d rows, the pod has %d", len(got), want)
	}
	t.Logf("%d + %d rows survived restore-if-missing and two clean shutdowns", len(first), len(second))
}

// makeReplica replicates a small database and returns its replica URL, the
// time just before its first backup, and the source path.
func makeReplica(t *testing.T, e *env, replica string) (before time.Time, src string) {
	t.Helper()
	src = filepath.Join(e.dir, "src", "gateway.db")
	os.MkdirAll(filepath.Dir(src), 0o755)
	before = time.Now().Add(-time.Second)
	side := e.sidecar(src, replica)
	w := e.writer(src, 1, 200)
	time.Sleep(1200 * time.Millisecond)
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
	side.signal(syscall.SIGTERM)
	if code := side.wait(40 * time.Second); code != 0 {
		t.Fatalf("replicate exited %d", code)
	}
	return before, src
}

func sha(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertUntouched: a failed restore leaves no file at target and no
// temporary file next to it.
func assertNothingWritten(t *testing.T, target string) {
	t.Helper()
	for _, s := range []string{"", "-wal", "-shm"} {
		if _, err := os.Stat(target + s); !os.IsNotExist(err) {
			t.Fatalf("%s exists after a failed restore (%v)", target+s, err)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(target))
	for _, en := range ents {
		if strings.Contains(en.Name(), ".restore-") || strings.HasSuffix(en.Name(), ".tmp") {
			t.Fatalf("temporary %s left behind", en.Name())
		}
	}
}

func TestRestoreNeverOverwritesAnExistingDatabase(t *testing.T) {
	e := newEnv(t)
	replica := "file://" + filepath.Join(e.dir, "replica")
	_, src := makeReplica(t, e, replica)
	target := filepath.Join(e.dir, "pod", "gateway.db")
	os.MkdirAll(filepath.Dir(target), 0o755)
	if err := os.WriteFile(target, []byte("not yours to overwrite"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stderr := e.restoreCmd("--db", target, "--replica", replica)
	if code != 1 || !strings.Contains(stderr, "database already exists") || !strings.Contains(stderr, "never overwrites") {
		t.Fatalf("restore onto an existing file: exit %d, %q", code, stderr)
	}
	if sha(t, target) != "not yours to overwrite" {
		t.Fatal("existing database was modified")
	}
	code, stderr = e.restoreCmd("--db", target, "--replica", replica, "--if-db-not-exists")
	if code != 0 || sha(t, target) != "not yours to overwrite" {
		t.Fatalf("--if-db-not-exists: exit %d, %q; file changed: %v", code, stderr, sha(t, target) != "not yours to overwrite")
	}
	// A leftover -wal without its database is someone's: refuse too.
	other := filepath.Join(e.dir, "pod", "other.db")
	os.WriteFile(other+"-wal", []byte("wal"), 0o644)
	if code, stderr := e.restoreCmd("--db", other, "--replica", replica); code != 1 || !strings.Contains(stderr, "leftover") {
		t.Fatalf("restore next to a leftover -wal: exit %d, %q", code, stderr)
	}
	// And the happy path still works, row for row.
	fresh := filepath.Join(e.dir, "fresh", "gateway.db")
	if code, stderr := e.restoreCmd("--db", fresh, "--replica", replica); code != 0 {
		t.Fatalf("restore: %d %s", code, stderr)
	}
	if a, b := rows(t, fresh), rows(t, src); len(a) != len(b) || len(a) == 0 {
		t.Fatalf("restored %d rows, source has %d", len(a), len(b))
	}
}

// Each bad input is a clear error (exit 1, a message naming the problem) and
// writes nothing.
func TestBadRestoreInputIsAClearErrorAndWritesNothing(t *testing.T) {
	e := newEnv(t)
	s3 := newFakeS3(t)
	fileReplica := "file://" + filepath.Join(e.dir, "replica")
	before, _ := makeReplica(t, e, fileReplica)
	s3Replica := s3.replica(testBucket, "pods/p0/gateway.db")
	makeReplica(t, &env{t: t, dir: filepath.Join(e.dir, "s3src"), vars: e.vars}, s3Replica)

	corrupt := filepath.Join(e.dir, "corrupt")
	if err := os.CopyFS(corrupt, os.DirFS(filepath.Join(e.dir, "replica"))); err != nil {
		t.Fatal(err)
	}
	var flipped int
	filepath.WalkDir(corrupt, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ltx") {
			b, _ := os.ReadFile(p)
			if len(b) > 200 {
				for i := 100; i < len(b)-20; i += 97 {
					b[i] ^= 0xff
				}
				os.WriteFile(p, b, 0o644)
				flipped++
			}
		}
		return nil
	})
	if flipped == 0 {
		t.Fatal("no LTX file to corrupt")
	}

	cases := []struct {
		name    string
		replica string
		env     []string
		args    []string
		want    string
	}{
		{"unknown scheme", "ftp://host/db", nil, nil, `unsupported scheme "ftp"`},
		{"no scheme", "/var/lib/replica", nil, nil, "missing scheme"},
		{"relative file path", "file://replica/dir", nil, nil, "three slashes"},
		{"unreachable s3", "s3://" + testBucket + "/p?endpoint=http://" + closedPort(t) + "&region=us-east-1", nil, nil, "unreachable"},
		{"wrong credentials", s3Replica, []string{"AWS_ACCESS_KEY_ID=someone-else"}, nil, "credentials refused"},
		{"missing bucket", s3.replica("no-such-bucket", "p"), nil, nil, "bucket does not exist"},
		{"replica does not exist", "file://" + filepath.Join(e.dir, "nothing-here"), nil, nil, "replica has no backup"},
		{"s3 replica does not exist", s3.replica(testBucket, "pods/never"), nil, nil, "replica has no backup"},
		{"timestamp before first backup", fileReplica, nil, []string{"--timestamp", before.Add(-time.Hour).UTC().Format(time.RFC3339)}, "before the first backup"},
		{"bad timestamp", fileReplica, nil, []string{"--timestamp", "yesterday"}, "want RFC 3339"},
		{"corrupted replica file", "file://" + corrupt, nil, nil, "nothing was written"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := filepath.Join(e.dir, "targets", strings.ReplaceAll(c.name, " ", "-"), "gateway.db")
			os.MkdirAll(filepath.Dir(target), 0o755)
			ce := &env{t: t, dir: e.dir, vars: e.with(c.env...)}
			code, stderr := ce.restoreCmd(append([]string{"--db", target, "--replica", c.replica}, c.args...)...)
			if code != 1 || !strings.Contains(stderr, c.want) {
				t.Fatalf("case %d: exit %d, want 1 with %q in:\n%s", i, code, c.want, stderr)
			}
			assertNothingWritten(t, target)
			t.Logf("%s", strings.TrimSpace(stderr))
		})
	}

	t.Run("missing replica is fine with --if-replica-exists", func(t *testing.T) {
		target := filepath.Join(e.dir, "targets", "ifreplica", "gateway.db")
		os.MkdirAll(filepath.Dir(target), 0o755)
		code, stderr := e.restoreCmd("--db", target, "--replica", "file://"+filepath.Join(e.dir, "nothing-here"), "--if-replica-exists")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		assertNothingWritten(t, target)
	})
	t.Run("errors are typed for callers", func(t *testing.T) {
		_, err := litestream.Restore(context.Background(), litestream.RestoreOptions{DBPath: filepath.Join(e.dir, "x.db"), ReplicaURL: "file://" + filepath.Join(e.dir, "nothing-here")})
		if !errors.Is(err, litestream.ErrReplicaNotFound) {
			t.Fatalf("got %v", err)
		}
		_, err = litestream.Restore(context.Background(), litestream.RestoreOptions{DBPath: filepath.Join(e.dir, "y.db"), ReplicaURL: fileReplica, Timestamp: before.Add(-time.Hour)})
		if !errors.Is(err, litestream.ErrTimestampBeforeFirstBackup) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestReplicateRefusesBadReplicaURLs(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct{ url, want string }{
		{"gs://bucket/db", `unsupported scheme "gs"`},
		{"s3:///path", "missing bucket"},
		{"s3://bucket", "missing path inside the bucket"},
		{"s3://bucket/p?endpoint=localhost:9000", "must be an http:// or https:// URL"},
		{"s3://bucket/p?bogus=1", `unknown query parameter "bogus"`},
		{"file:///", "absolute path other than /"},
	} {
		cmd := execModbot(e, "replicate", "--db", filepath.Join(e.dir, "x.db"), "--replica", c.url)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), c.want) {
			t.Errorf("replicate --replica %s: exit %d, want %q in %s", c.url, cmd.ProcessState.ExitCode(), c.want, out)
		}
	}
}
