package litestream_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// The test binary links both SQLite libraries, but no process ever uses both
// on one file: the writer (mattn, via the real gateway store) is this binary
// re-executed with MODBOT_LSTEST_WRITER set, the sidecar is bin/modbot, and
// the test process itself only opens databases nobody else has open.

var modbotBin string

func TestMain(m *testing.M) {
	if db := os.Getenv("MODBOT_LSTEST_WRITER"); db != "" {
		os.Exit(writerMain(db))
	}
	dir, err := os.MkdirTemp("", "modbot-lstest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	modbotBin = filepath.Join(dir, "modbot")
	build := exec.Command("go", "build", "-o", modbotBin, "github.com/modbot/modbot/cmd/modbot")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		// Never a skip: without bin/modbot nothing here can run.
		fmt.Fprintf(os.Stderr, "litestream tests: go build ./cmd/modbot: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// writerMain is the writer process: G goroutines, one guild each, append
// held events through the gateway's own store at a total rate (0: as fast
// as it goes) and print "guild seq unixnano" after each commit returns.
// SIGTERM stops it cleanly; it never runs longer than MODBOT_LSTEST_MAX.
func writerMain(path string) int {
	envInt := func(k string, def int) int {
		if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
			return v
		}
		return def
	}
	guilds := envInt("MODBOT_LSTEST_GUILDS", 4)
	rate := envInt("MODBOT_LSTEST_RATE", 0)
	payload := bytes.Repeat([]byte("x"), envInt("MODBOT_LSTEST_PAYLOAD", 200))
	maxDur := time.Duration(envInt("MODBOT_LSTEST_MAX_SECONDS", 120)) * time.Second
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, maxDur)
	defer cancel()
	s, err := guildstore.OpenWithOptions(context.Background(), path, guildstore.Options{Synchronous: "NORMAL"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		return 1
	}
	var mu sync.Mutex
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	// MODBOT_LSTEST_SEED_ROWS=N: give guild exportGuild N message rows
	// and exit (closing the store checkpoints and removes the WAL).
	if n := envInt("MODBOT_LSTEST_SEED_ROWS", 0); n > 0 {
		err := seedExportGuild(s, n)
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "writer: seed the exported guild:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(out, "ready")
	out.Flush()
	var wg sync.WaitGroup
	// MODBOT_LSTEST_EXPORT=1: export guild exportGuild the way a move's
	// source does, once a second, while the others write.
	if os.Getenv("MODBOT_LSTEST_EXPORT") == "1" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				info, err := s.Export(ctx, exportGuild, io.Discard)
				if err != nil {
					if ctx.Err() == nil {
						fmt.Fprintln(os.Stderr, "writer: export:", err)
					}
					return
				}
				mu.Lock()
				fmt.Fprintf(out, "export %d %d\n", info.Rows["messages"], time.Since(start).Milliseconds())
				out.Flush()
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	for g := 1; g <= guilds; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var every time.Duration
			if rate > 0 {
				every = time.Duration(float64(time.Second) * float64(guilds) / float64(rate))
			}
			next := time.Now()
			for ctx.Err() == nil {
				if every > 0 {
					next = next.Add(every)
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				}
				seq, err := s.Hold(ctx, uint64(g), "TEST", payload)
				if err != nil {
					if ctx.Err() == nil {
						fmt.Fprintln(os.Stderr, "writer:", err)
					}
					return
				}
				now := time.Now().UnixNano()
				mu.Lock()
				// One write(2) per line: what was printed survives kill -9.
				fmt.Fprintf(out, "%d %d %d\n", g, seq, now)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "writer close:", err)
		return 1
	}
	return 0
}

// exportGuild is the guild the writer exports under MODBOT_LSTEST_EXPORT_ROWS.
const exportGuild = 1000

func seedExportGuild(s *guildstore.Store, n int) error {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i += 5000 {
		unit := make([]guildstore.Write, 0, 5000)
		for j := i; j < min(n, i+5000); j++ {
			id := uint64(j + 1)
			unit = append(unit, guildstore.Write{Op: guildstore.MessageCreate{GuildID: exportGuild, MessageID: id, ChannelID: id % 50,
				AuthorID: id % 1000, CreatedAt: t0.Add(time.Duration(j) * time.Millisecond), ContentLength: int(id % 300)}})
		}
		if _, err := s.Apply(context.Background(), unit...); err != nil {
			return err
		}
	}
	return nil
}

// exports parses the writer's export lines: rows and milliseconds of each.
func (p *proc) exports() (rows []int, ms []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		var r, m int
		if n, _ := fmt.Sscanf(l, "export %d %d", &r, &m); n == 2 {
			rows, ms = append(rows, r), append(ms, m)
		}
	}
	return rows, ms
}

// commit is one row the writer reported committed.
type commit struct {
	guild, seq int64
	at         time.Time
}

// proc is a child process whose output is collected.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	lines  []string // stdout
	done   chan struct{}
	err    error
	ready  chan struct{}
	url    string // sidecar: metrics base URL
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

func start(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: cmd, done: make(chan struct{}), ready: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	var once sync.Once
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			if l == "ready" {
				once.Do(func() { close(p.ready) })
				continue
			}
			p.mu.Lock()
			p.lines = append(p.lines, l)
			p.mu.Unlock()
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			p.Write([]byte(l + "\n"))
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil {
				if rec["msg"] == "metrics listening" {
					p.mu.Lock()
					p.url = strings.TrimSuffix(fmt.Sprint(rec["url"]), "/metrics")
					p.mu.Unlock()
				}
				if rec["msg"] == "replicating" {
					once.Do(func() { close(p.ready) })
				}
			}
		}
	}()
	go func() {
		readers.Wait()
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s stderr:\n%s", name, p.Stderr())
		}
	})
	return p
}

func (p *proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func (p *proc) waitReady(d time.Duration) {
	p.t.Helper()
	select {
	case <-p.ready:
	case <-p.done:
		p.t.Fatalf("%s exited before it was ready: %v\n%s", p.name, p.err, p.Stderr())
	case <-time.After(d):
		p.t.Fatalf("%s not ready after %s\n%s", p.name, d, p.Stderr())
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("%s did not exit within %s\n%s", p.name, d, p.Stderr())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

// commits parses the writer's output.
func (p *proc) commits() []commit {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []commit
	for _, l := range p.lines {
		var c commit
		var ns int64
		if n, _ := fmt.Sscan(l, &c.guild, &c.seq, &ns); n == 3 {
			c.at = time.Unix(0, ns)
			out = append(out, c)
		}
	}
	return out
}

func (p *proc) metricsURL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.url
}

// env is a test's environment: a directory, and the AWS settings that make
// Litestream's S3 client work against the in-process server.
type env struct {
	t    *testing.T
	dir  string
	vars []string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	e := &env{t: t, dir: dir}
	e.vars = append(os.Environ(),
		"AWS_CA_BUNDLE=", // set in this environment; breaks the S3 client's setup
		"AWS_REQUEST_CHECKSUM_CALCULATION=when_required",
		"AWS_RESPONSE_CHECKSUM_VALIDATION=when_required",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+filepath.Join(dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "no-aws-credentials"),
		"AWS_PROFILE=",
		"AWS_ACCESS_KEY_ID="+fakeKey,
		"AWS_SECRET_ACCESS_KEY=fake-secret",
		"MODBOT_LOG_FORMAT=json",
		"MODBOT_LOG_LEVEL=info",
	)
	// The same for Restore called in this process.
	t.Setenv("AWS_CA_BUNDLE", "")
	t.Setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
	t.Setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-aws-credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", fakeKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	return e
}

func (e *env) with(kv ...string) []string { return append(append([]string(nil), e.vars...), kv...) }

// seed gives the database's guild exportGuild n message rows, in a writer
// process that exits when done.
func (e *env) seed(db string, n int) {
	e.t.Helper()
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = e.with("MODBOT_LSTEST_WRITER="+db, "MODBOT_LSTEST_SEED_ROWS="+strconv.Itoa(n))
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("seed %d rows: %v\n%s", n, err, out)
	}
}

// writer starts the writer process on db.
func (e *env) writer(db string, guilds, rate int, extra ...string) *proc {
	e.t.Helper()
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = e.with(append([]string{"MODBOT_LSTEST_WRITER=" + db,
		"MODBOT_LSTEST_GUILDS=" + strconv.Itoa(guilds), "MODBOT_LSTEST_RATE=" + strconv.Itoa(rate)}, extra...)...)
	p := start(e.t, "writer", cmd)
	p.waitReady(30 * time.Second)
	return p
}

// sidecar starts modbot replicate on db.
func (e *env) sidecar(db, replica string, args ...string) *proc {
	e.t.Helper()
	cmd := exec.Command(modbotBin, append([]string{"replicate", "--db", db, "--replica", replica, "--sync-interval", "1s", "--metrics-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = e.vars
	p := start(e.t, "replicate", cmd)
	p.waitReady(30 * time.Second)
	return p
}

// restoreCmd runs modbot restore and returns its exit code and stderr.
func (e *env) restoreCmd(args ...string) (int, string) {
	e.t.Helper()
	cmd := exec.Command(modbotBin, append([]string{"restore", "--timeout", "30s"}, args...)...)
	cmd.Env = e.vars
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		<-ctx.Done()
		if cmd.Process != nil && ctx.Err() == context.DeadlineExceeded {
			_ = cmd.Process.Kill()
		}
	}()
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		e.t.Fatalf("modbot restore: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

const (
	fakeKey    = "modbot-test-key"
	testBucket = "replicas"
)

// fakeS3 is an in-process S3 (gofakes3, path style, plain HTTP on loopback)
// that, unlike gofakes3 alone, refuses requests signed with another access key.
type fakeS3 struct {
	url     string
	backend *s3mem.Backend
}

func newFakeS3(t *testing.T) *fakeS3 {
	t.Helper()
	be := s3mem.New()
	if err := be.CreateBucket(testBucket); err != nil {
		t.Fatal(err)
	}
	faker := gofakes3.New(be, gofakes3.WithAutoBucket(false))
	h := faker.Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if _, rest, ok := strings.Cut(auth, "Credential="); !ok || !strings.HasPrefix(rest, fakeKey+"/") {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>`)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &fakeS3{url: srv.URL, backend: be}
}

func (s *fakeS3) replica(bucket, path string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&region=us-east-1", bucket, path, s.url)
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// messageRows reads the message rows of a database nobody else has open.
func messageRows(t *testing.T, path string) map[[2]int64]string {
	return query(t, path, `SELECT guild_id, message_id, channel_id || ':' || author_id || ':' || created_at || ':' || content_length FROM messages`)
}

// rows reads the held events of a database nobody else has open.
func rows(t *testing.T, path string) map[[2]int64]string {
	t.Helper()
	return query(t, path, `SELECT guild_id, seq, type || ':' || hex(payload) FROM held_events`)
}

// query reads rows of (key, key, value) from a database nobody else has open.
func query(t *testing.T, path, q string) map[[2]int64]string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs, err := db.Query(q)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	defer rs.Close()
	out := map[[2]int64]string{}
	for rs.Next() {
		var g, s int64
		var v string
		if err := rs.Scan(&g, &s, &v); err != nil {
			t.Fatal(err)
		}
		out[[2]int64{g, s}] = v
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// scrape returns one metric's value (the sum over its series) or -1.
func scrape(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	v, found := 0.0, false
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		x, err := strconv.ParseFloat(f[1], 64)
		if err == nil {
			v += x
			found = true
		}
	}
	if !found {
		return -1
	}
	return v
}

func removeDB(t *testing.T, db string) {
	t.Helper()
	for _, s := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(db + s); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
}

func execModbot(e *env, args ...string) *exec.Cmd {
	cmd := exec.Command(modbotBin, args...)
	cmd.Env = e.vars
	return cmd
}

// slowestRound bounds the sidecar's slowest sync round phase from above: the
// smallest bucket bound of modbot_replication_round_duration_seconds{phase}
// that holds every observation (+Inf if some exceed the last bucket).
func slowestRound(t *testing.T, base, phase string) time.Duration {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	prefix := `modbot_replication_round_duration_seconds_bucket{phase="` + phase + `",le="`
	type bucket struct{ le, n float64 }
	var buckets []bucket
	for _, l := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(l, prefix)
		if !ok {
			continue
		}
		le, count, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		b, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(count, 64)
		if err1 == nil && err2 == nil {
			buckets = append(buckets, bucket{b, n})
		}
	}
	if len(buckets) == 0 {
		t.Fatalf("no modbot_replication_round_duration_seconds{phase=%q} on %s", phase, base)
	}
	total := buckets[len(buckets)-1].n // le="+Inf", printed last
	for _, b := range buckets {
		if b.n == total {
			if math.IsInf(b.le, 1) {
				return time.Duration(math.MaxInt64)
			}
			return time.Duration(b.le * float64(time.Second))
		}
	}
	return time.Duration(math.MaxInt64)
}
