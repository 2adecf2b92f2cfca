package benchmarks

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// ReplicationOptions size the replication benchmarks. This process writes
// through the gateway's store (mattn); the sidecar (`modbot replicate`) and
// the restores (`modbot restore`) are their own processes, as in production
// (Litestream's SQLite must never share a process with mattn).
type ReplicationOptions struct {
	// ModbotBinary is bin/modbot (default ./bin/modbot or modbot on PATH).
	ModbotBinary string
	// Rates are the write rates (writes/s) whose lag is measured; default 1000, 10000.
	Rates []int
	// Duration of each lag run (default 10 s).
	Duration time.Duration
	// RestoreMB are the database sizes restored (default 100; 1024 with make bench-large).
	RestoreMB []int
	// SyncInterval of the sidecar (default 1 s).
	SyncInterval time.Duration
}

func (o *ReplicationOptions) defaults() {
	if len(o.Rates) == 0 {
		o.Rates = []int{1000, 10000}
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if len(o.RestoreMB) == 0 {
		o.RestoreMB = []int{100}
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = time.Second
	}
}

// LagResult is one lag run.
type LagResult struct {
	Target   int     // writes/s asked for
	Achieved float64 // writes/s committed
	// Lag samples modbot_replication_lag_seconds (age of the oldest change
	// not on the replica) every 50 ms.
	Lag      Percentiles
	MaxWALMB float64
	Errors   float64 // modbot_replication_sync_errors_total
}

// RestoreResult is one timed restore.
type RestoreResult struct {
	Replica  string // "file" or "s3 (gofakes3)"
	MB       float64
	Duration time.Duration // modbot restore process, start to exit (integrity check included)
}

// ReplicationResult is the whole benchmark.
type ReplicationResult struct {
	SyncInterval time.Duration
	Lag          []LagResult
	Restores     []RestoreResult
}

type replEnv struct {
	bin  string
	dir  string
	vars []string
	s3   string // gofakes3 URL
}

func (e *replEnv) s3Replica(path string) string {
	return fmt.Sprintf("s3://bench/%s?endpoint=%s&region=us-east-1", path, e.s3)
}

// Replication runs the lag and restore benchmarks.
func Replication(ctx context.Context, o ReplicationOptions) (ReplicationResult, error) {
	o.defaults()
	res := ReplicationResult{SyncInterval: o.SyncInterval}
	bin := o.ModbotBinary
	if bin == "" {
		bin = filepath.Join("bin", "modbot")
		if _, err := os.Stat(bin); err != nil {
			if p, err := exec.LookPath("modbot"); err == nil {
				bin = p
			}
		}
	}
	if out, err := exec.Command(bin, "replicate", "--help").CombinedOutput(); !strings.Contains(string(out), "--replica") {
		return res, fmt.Errorf("%s has no replicate command (%v): run make build first", bin, err)
	}
	dir, err := os.MkdirTemp("", "modbot-replbench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	be := s3mem.New()
	if err := be.CreateBucket("bench"); err != nil {
		return res, err
	}
	srv := httptest.NewServer(gofakes3.New(be).Server()) // plain HTTP: see DESIGN §9
	defer srv.Close()
	e := &replEnv{bin: bin, dir: dir, s3: srv.URL, vars: append(os.Environ(),
		"AWS_CA_BUNDLE=", "AWS_REQUEST_CHECKSUM_CALCULATION=when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_ACCESS_KEY_ID=bench", "AWS_SECRET_ACCESS_KEY=bench",
		"AWS_CONFIG_FILE="+filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "none"),
		"MODBOT_LOG_FORMAT=json")}

	for i, rate := range o.Rates {
		r, err := e.lagRun(ctx, fmt.Sprintf("lag%d", i), rate, o.Duration, o.SyncInterval)
		if err != nil {
			return res, fmt.Errorf("lag at %d writes/s: %w", rate, err)
		}
		res.Lag = append(res.Lag, r)
	}
	for _, mb := range o.RestoreMB {
		rs, err := e.restoreRun(ctx, mb, o.SyncInterval)
		if err != nil {
			return res, fmt.Errorf("restore of %d MB: %w", mb, err)
		}
		res.Restores = append(res.Restores, rs...)
	}
	return res, nil
}

// sidecar runs modbot replicate and returns its metrics URL and a stop
// function (SIGTERM, wait for the final sync).
func (e *replEnv) sidecar(ctx context.Context, db, replica string, interval time.Duration) (string, func() error, error) {
	cmd := exec.CommandContext(ctx, e.bin, "replicate", "--db", db, "--replica", replica, "--metrics-addr", "127.0.0.1:0", "--sync-interval", interval.String())
	cmd.Env = e.vars
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	urlc := make(chan string, 1)
	var logBuf bytes.Buffer
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			mu.Lock()
			logBuf.WriteString(sc.Text() + "\n")
			mu.Unlock()
			var rec map[string]any
			if !sent && json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "metrics listening" {
				urlc <- strings.TrimSuffix(fmt.Sprint(rec["url"]), "/metrics")
				sent = true
			}
		}
	}()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				mu.Lock()
				defer mu.Unlock()
				return fmt.Errorf("replicate: %v\n%s", err, logBuf.String())
			}
			return nil
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("replicate did not exit within 60 s of SIGTERM")
		}
	}
	select {
	case u := <-urlc:
		return u, stop, nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		mu.Lock()
		defer mu.Unlock()
		return "", nil, fmt.Errorf("replicate not up after 30 s:\n%s", logBuf.String())
	}
}

func scrapeMetric(base, name string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	v := -1.0
	for _, l := range strings.Split(string(body), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && (f[0] == name || strings.HasPrefix(f[0], name+"{")) {
			if x, err := strconv.ParseFloat(f[1], 64); err == nil {
				v = max(v, 0) + x
			}
		}
	}
	return v
}

func (e *replEnv) lagRun(ctx context.Context, name string, rate int, dur, interval time.Duration) (LagResult, error) {
	r := LagResult{Target: rate}
	db := filepath.Join(e.dir, name, "gateway.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		return r, err
	}
	base, stop, err := e.sidecar(ctx, db, "file://"+filepath.Join(e.dir, name, "replica"), interval)
	if err != nil {
		return r, err
	}
	s, err := guildstore.OpenWithOptions(ctx, db, guildstore.Options{Synchronous: "NORMAL"})
	if err != nil {
		_ = stop()
		return r, err
	}
	// Many paced writers, so group commit can reach the rate.
	writers := max(4, min(128, rate/100))
	every := time.Duration(float64(time.Second) * float64(writers) / float64(rate))
	wctx, cancel := context.WithTimeout(ctx, dur)
	var n sync.WaitGroup
	var mu sync.Mutex
	committed := 0
	payload := bytes.Repeat([]byte("p"), 200)
	start := time.Now()
	for g := 0; g < writers; g++ {
		n.Add(1)
		go func() {
			defer n.Done()
			next := time.Now()
			c := 0
			for wctx.Err() == nil {
				next = next.Add(every)
				if d := time.Until(next); d > 0 {
					select {
					case <-wctx.Done():
					case <-time.After(d):
					}
				}
				if _, err := s.Hold(wctx, uint64(g+1), "BENCH", payload); err != nil {
					break
				}
				c++
			}
			mu.Lock()
			committed += c
			mu.Unlock()
		}()
	}
	var samples []time.Duration
	var maxWAL int64
	t := time.NewTicker(50 * time.Millisecond)
	for wctx.Err() == nil {
		select {
		case <-wctx.Done():
		case <-t.C:
			if v := scrapeMetric(base, "modbot_replication_lag_seconds"); v >= 0 && time.Since(start) > interval {
				samples = append(samples, time.Duration(v*float64(time.Second)))
			}
			if fi, err := os.Stat(db + "-wal"); err == nil {
				maxWAL = max(maxWAL, fi.Size())
			}
		}
	}
	t.Stop()
	n.Wait()
	cancel()
	elapsed := time.Since(start)
	r.Errors = scrapeMetric(base, "modbot_replication_sync_errors_total")
	cerr := s.Close()
	serr := stop()
	r.Achieved = float64(committed) / elapsed.Seconds()
	r.Lag = percentiles(samples)
	r.MaxWALMB = float64(maxWAL) / 1e6
	return r, errors.Join(cerr, serr)
}

// restoreRun builds a database of about mb MB, replicates it to a file
// replica and to gofakes3, and times `modbot restore` from each.
func (e *replEnv) restoreRun(ctx context.Context, mb int, interval time.Duration) ([]RestoreResult, error) {
	name := fmt.Sprintf("restore%d", mb)
	db := filepath.Join(e.dir, name, "gateway.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		return nil, err
	}
	s, err := guildstore.OpenWithOptions(ctx, db, guildstore.Options{Synchronous: "NORMAL"})
	if err != nil {
		return nil, err
	}
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i*7 + i/13) // not trivially compressible
	}
	rows := mb << 20 / 4096 // one 3000-byte row per 4 KiB page
	for done := 0; done < rows; {
		var units [][]guildstore.Write
		for i := 0; i < 500 && done < rows; i++ {
			units = append(units, []guildstore.Write{{Op: guildstore.HoldEvent{GuildID: uint64(done%50 + 1), Type: "FILL", Payload: payload, ReceivedAt: time.Now()}}})
			done++
		}
		if _, err := s.ApplyBatch(ctx, units); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(db)
	if err != nil {
		return nil, err
	}
	size := float64(fi.Size()) / (1 << 20)

	var out []RestoreResult
	for _, rep := range []struct{ kind, url string }{
		{"file", "file://" + filepath.Join(e.dir, name, "replica")},
		{"s3 (gofakes3)", e.s3Replica(name)},
	} {
		// Replicate (snapshot), then a clean stop: the final sync.
		if _, stop, err := e.sidecar(ctx, db, rep.url, interval); err != nil {
			return nil, err
		} else {
			time.Sleep(2 * interval)
			if err := stop(); err != nil {
				return nil, err
			}
		}
		// Each sidecar run has its own local state; drop it so the next
		// replica starts from a fresh snapshot.
		_ = os.RemoveAll(filepath.Join(filepath.Dir(db), ".gateway.db-litestream"))
		target := filepath.Join(e.dir, name, "restored-"+strings.Fields(rep.kind)[0], "gateway.db")
		cmd := exec.CommandContext(ctx, e.bin, "restore", "--db", target, "--replica", rep.url, "--timeout", "30m")
		cmd.Env = e.vars
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("modbot restore from %s: %v\n%s", rep.kind, err, b)
		}
		out = append(out, RestoreResult{Replica: rep.kind, MB: size, Duration: time.Since(start)})
		_ = os.RemoveAll(filepath.Dir(target))
	}
	return out, nil
}

// PrintReplication writes the replication tables.
func PrintReplication(w io.Writer, r ReplicationResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "REPLICATION LAG (gateway store → modbot replicate → file replica, sync interval %s)\twrites/s asked\tcommitted/s\tlag p50\tlag p99\tlag max\tmax WAL\tsync errors\ttarget\t\n", r.SyncInterval)
	for _, l := range r.Lag {
		fmt.Fprintf(tw, "\t%d\t%.0f\t%s\t%s\t%s\t%.1f MB\t%.0f\tp99 < 1 s\t\n", l.Target, l.Achieved, ms(l.Lag.P50), ms(l.Lag.P99), ms(l.Lag.Max), l.MaxWALMB, l.Errors)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "RESTORE (modbot restore: download, integrity_check, link into place)\treplica\tdatabase\ttime\tMB/s\t")
	for _, x := range r.Restores {
		fmt.Fprintf(tw, "\t%s\t%.0f MB\t%s\t%.0f\t\n", x.Replica, x.MB, x.Duration.Round(time.Millisecond), x.MB/x.Duration.Seconds())
	}
	_ = tw.Flush()
}
