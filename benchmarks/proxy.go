package benchmarks

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/proxy"
	"github.com/modbot/modbot/systest"
)

// ProxyBenchOptions sizes the proxy comparison.
type ProxyBenchOptions struct {
	Requests    int // measured requests per target (default 20000)
	Warmup      int // unmeasured requests per target first (default 2000)
	Concurrency int // concurrent keep-alive clients (default 16)
	Guilds      int // distinct guilds requested round-robin (default 64)
	// LatencyRequests are sent by a single client after the throughput run,
	// for unloaded latency (default 5000).
	LatencyRequests int
	// ModbotBinary runs the proxy as its own process (`modbot proxy`), like
	// nginx; default ./bin/modbot or modbot on PATH. When none is found the
	// proxy runs inside the benchmark process and the table says so.
	ModbotBinary string
	// ProxyProcs lists the GOMAXPROCS of the proxy process to measure,
	// mirroring nginx's worker_processes (default 1 and 2).
	ProxyProcs []int
	// Backend is the base URL of the server every target ends at. Empty
	// starts an in-process stand-in answering a ~500-byte JSON dashboard.
	// With a real gateway pod, set ConfigURLs (and Token) to its cluster so
	// the proxy routes by that cluster's map; guilds owned by the pod whose
	// address matches Backend are requested.
	Backend    string
	ConfigURLs []string
	Token      string
	// NginxWorkers lists the nginx worker_processes settings to measure
	// (default 1 and 2). Nginx is the Debian binary found on PATH or at
	// /usr/sbin/nginx; when missing its rows are skipped with a note, or the
	// comparison fails when CI=true.
	NginxWorkers []int
	Nginx        string
	// Log receives progress (default: discarded).
	Log *slog.Logger
}

func (o *ProxyBenchOptions) defaults() {
	if o.Requests <= 0 {
		o.Requests = 20000
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	} else if o.Warmup == 0 {
		o.Warmup = 2000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Guilds <= 0 {
		o.Guilds = 64
	}
	if o.LatencyRequests <= 0 {
		o.LatencyRequests = 5000
	}
	if len(o.ProxyProcs) == 0 {
		o.ProxyProcs = []int{1, 2}
	}
	if len(o.NginxWorkers) == 0 {
		o.NginxWorkers = []int{1, 2}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// ProxyBenchResult is one target's measurement.
type ProxyBenchResult struct {
	Name     string
	Requests int
	Errors   int
	Duration time.Duration
	Latency  Percentiles // under load (Concurrency clients)
	// Unloaded is the latency seen by a single client.
	Unloaded Percentiles
	Skipped  string // why the target was not measured ("" if it was)
}

// RPS is the measured throughput.
func (r ProxyBenchResult) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Duration.Seconds()
}

// Target names in the results.
const (
	TargetDirect       = "direct (no proxy)"
	TargetProxy        = "modbot proxy"
	TargetReverseProxy = "httputil.ReverseProxy (bare)"
	targetNginxPrefix  = "nginx"
)

// dashboardJSON is the stand-in backend's answer (~500 bytes, like a real
// dashboard in JSON).
func dashboardJSON(guild string) []byte {
	return []byte(`{"guild_id":"` + guild + `","owner":"gateway-0","messages":184467,"reports":23,"mod_actions":57,` +
		`"settings":{"moderator_role":"1100000000000000001","mod_log_channel":"1100000000000000002"},` +
		`"recent_reports":[{"id":"1200000000000000001","reporter":"1300000000000000001","reason":"spam links in #general","at":"2024-05-01T12:00:00Z"}],` +
		`"recent_actions":[{"type":"ban","target":"1400000000000000001","moderator":"1300000000000000003","at":"2024-05-01T12:10:00Z"}]}`)
}

// startStandIn serves GET /guild/{id}/dashboard on loopback.
func startStandIn() (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/") // "", "guild", id, "dashboard"
		if len(parts) < 3 || parts[1] != "guild" {
			http.NotFound(w, r)
			return
		}
		b := dashboardJSON(parts[2])
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return "http://" + l.Addr().String(), func() { _ = srv.Close() }, nil
}

// ProxyComparison drives the same load against the backend directly, through
// modbot's proxy, through a bare httputil.ReverseProxy and through nginx.
func ProxyComparison(ctx context.Context, o ProxyBenchOptions) ([]ProxyBenchResult, error) {
	o.defaults()
	backend := o.Backend
	if backend == "" {
		u, stop, err := startStandIn()
		if err != nil {
			return nil, fmt.Errorf("start the stand-in backend: %w", err)
		}
		defer stop()
		backend = u
	}
	bu, err := url.Parse(backend)
	if err != nil || bu.Host == "" {
		return nil, fmt.Errorf("backend %q is not a URL like http://127.0.0.1:9000", backend)
	}

	// The proxy's map: a real watcher on real config nodes.
	client, guilds, stopCluster, err := proxyBenchMap(ctx, o, bu.Host)
	if err != nil {
		return nil, err
	}
	defer stopCluster()
	paths := make([]string, len(guilds))
	for i, g := range guilds {
		paths[i] = "/guild/" + g + "/dashboard"
	}

	var results []ProxyBenchResult
	run := func(name, base string) error {
		o.Log.Info("measuring", "target", name, "url", base)
		r, err := loadGen(ctx, base, client.Token(), paths, o.Requests, o.Warmup, o.Concurrency)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		lr, err := loadGen(ctx, base, client.Token(), paths, o.LatencyRequests, o.Warmup/10, 1)
		if err != nil {
			return fmt.Errorf("%s (one client): %w", name, err)
		}
		r.Name, r.Unloaded = name, lr.Latency
		results = append(results, r)
		return nil
	}
	if err := run(TargetDirect, backend); err != nil {
		return results, err
	}

	bin := findModbot(o.ModbotBinary)
	if bin != "" {
		for _, procs := range o.ProxyProcs {
			name := fmt.Sprintf("%s (GOMAXPROCS %d)", TargetProxy, procs)
			u, stop, err := startProxyProcess(ctx, bin, client, procs)
			if err != nil {
				return results, err
			}
			err = run(name, u)
			stop()
			if err != nil {
				return results, err
			}
		}
	} else {
		u, stop, err := startProxyInProcess(ctx, client)
		if err != nil {
			return results, err
		}
		err = run(TargetProxy+" (in the bench process)", u)
		stop()
		if err != nil {
			return results, err
		}
	}
	rpURL, stopRP, err := startBareReverseProxy(bu)
	if err != nil {
		return results, err
	}
	err = run(TargetReverseProxy, rpURL)
	stopRP()
	if err != nil {
		return results, err
	}
	nginx := findNginx(o.Nginx)
	for _, workers := range o.NginxWorkers {
		name := fmt.Sprintf("%s (worker_processes %d)", targetNginxPrefix, workers)
		if nginx == "" {
			if os.Getenv("CI") == "true" {
				return results, errors.New("nginx not found (apt-get install -y nginx); required when CI=true")
			}
			results = append(results, ProxyBenchResult{Name: name, Skipped: "nginx not installed (apt-get install -y nginx)"})
			continue
		}
		nURL, stopNginx, err := startNginx(ctx, nginx, bu.Host, workers)
		if err != nil {
			return results, err
		}
		err = run(name, nURL)
		stopNginx()
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// startProxyInProcess runs the proxy inside the benchmark process (when no
// modbot binary is available).
func startProxyInProcess(ctx context.Context, client *assignments.Client) (string, func(), error) {
	quiet := slog.New(slog.DiscardHandler)
	w := assignments.NewWatcher(client, assignments.WatcherOptions{Logger: quiet, Name: "bench"})
	wctx, stopWatcher := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		_ = w.Run(wctx)
	}()
	stopW := func() {
		stopWatcher()
		<-watchDone
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		stopW()
		return "", nil, err
	}
	p, err := proxy.New(proxy.Config{Map: w, PublicKey: pub, Token: client.Token(), Logger: quiet})
	if err != nil {
		stopW()
		return "", nil, err
	}
	stop := func() {
		_ = p.Close()
		stopW()
	}
	u, err := p.Start("127.0.0.1:0")
	if err != nil {
		stop()
		return "", nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitReady(rctx); err != nil {
		stop()
		return "", nil, err
	}
	return u, stop, nil
}

// findModbot returns a modbot binary that has the proxy command, or "".
func findModbot(given string) string {
	var cands []string
	if given != "" {
		cands = append(cands, given)
	}
	cands = append(cands, filepath.Join("bin", "modbot"))
	if p, err := exec.LookPath("modbot"); err == nil {
		cands = append(cands, p)
	}
	for _, c := range cands {
		out, _ := exec.Command(c, "proxy", "--help").CombinedOutput()
		if strings.Contains(string(out), "discord-public-key") {
			return c
		}
	}
	return ""
}

// startProxyProcess runs `modbot proxy` as its own process with the given
// GOMAXPROCS and its request log off (like nginx's access_log off).
func startProxyProcess(ctx context.Context, bin string, client *assignments.Client, procs int) (string, func(), error) {
	port, err := systest.FreePort()
	if err != nil {
		return "", nil, err
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		return "", nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "proxy", "--http-addr", addr, "--config", strings.Join(client.URLs(), ","),
		"--discord-public-key", fmt.Sprintf("%x", []byte(pub)), "--token", client.Token())
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs), "MODBOT_LOG_LEVEL=warn")
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &syncWriter{w: &stderr}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s proxy: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := hc.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr, stop, nil
			}
		}
		select {
		case <-exited:
			return "", nil, fmt.Errorf("modbot proxy exited at start: %s", stderr.String())
		case <-ctx.Done():
			stop()
			return "", nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("modbot proxy not ready on %s within 15s", addr)
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// proxyBenchMap returns a config client whose map routes the returned guilds
// to the backend: an in-process config node with the backend registered as
// gateway-0, or the given cluster (guilds owned by the pod at backendHost).
func proxyBenchMap(ctx context.Context, o ProxyBenchOptions, backendHost string) (*assignments.Client, []string, func(), error) {
	if len(o.ConfigURLs) > 0 {
		cl, err := assignments.NewClient(o.ConfigURLs, o.Token)
		if err != nil {
			return nil, nil, nil, err
		}
		snap, err := cl.Snapshot(ctx)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read the map of %v: %w", o.ConfigURLs, err)
		}
		pod := ""
		for _, p := range snap.Pods {
			if strings.TrimPrefix(strings.TrimPrefix(p.Addr, "http://"), "https://") == backendHost {
				pod = p.ID
			}
		}
		var ids []string
		for _, g := range snap.Guilds {
			if g.Owner == pod && g.State == fsm.GuildActive && len(ids) < o.Guilds {
				ids = append(ids, strconv.FormatUint(g.ID, 10))
			}
		}
		if pod == "" || len(ids) == 0 {
			return nil, nil, nil, fmt.Errorf("no active guild owned by a pod at %s in the map of %v", backendHost, o.ConfigURLs)
		}
		return cl, ids, func() {}, nil
	}
	dir, cleanup, err := systest.TempDir("proxy")
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := systest.StartCluster(ctx, dir, 1, nil)
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	stop := func() {
		c.Close()
		cleanup()
	}
	cl := c.Client()
	if _, err := cl.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-0", Addr: backendHost}); err != nil {
		stop()
		return nil, nil, nil, err
	}
	ids := make([]string, o.Guilds)
	for i := range ids {
		ids[i] = guildID(i)
	}
	if _, err := cl.PlaceGuilds(ctx, ids); err != nil {
		stop()
		return nil, nil, nil, err
	}
	return cl, ids, stop, nil
}

// loadGen sends warmup then requests GETs from concurrency keep-alive
// clients and measures each request. Every target gets the same
// Authorization header: the proxy serves dashboards to the admin token
// only, the others ignore it.
func loadGen(ctx context.Context, base, token string, paths []string, requests, warmup, concurrency int) (ProxyBenchResult, error) {
	tr := &http.Transport{
		MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: time.Second}).DialContext,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var firstErr atomic.Value
	phase := func(n int, record bool) ([][]time.Duration, int, time.Duration) {
		var next, errs atomic.Int64
		lat := make([][]time.Duration, concurrency)
		var wg sync.WaitGroup
		start := time.Now()
		for wkr := 0; wkr < concurrency; wkr++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if record {
					lat[wkr] = make([]time.Duration, 0, n/concurrency+1)
				}
				for {
					i := next.Add(1) - 1
					if i >= int64(n) || ctx.Err() != nil {
						return
					}
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+paths[int(i)%len(paths)], nil)
					req.Header.Set("Accept", "application/json")
					if token != "" {
						req.Header.Set("Authorization", "Bearer "+token)
					}
					t0 := time.Now()
					resp, err := hc.Do(req)
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("HTTP %d from %s", resp.StatusCode, req.URL)
						}
					}
					d := time.Since(t0)
					if err != nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err)
						continue
					}
					if record {
						lat[wkr] = append(lat[wkr], d)
					}
				}
			}()
		}
		wg.Wait()
		return lat, int(errs.Load()), time.Since(start)
	}
	phase(warmup, false)
	lat, errs, dur := phase(requests, true)
	if err := ctx.Err(); err != nil {
		return ProxyBenchResult{}, err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	r := ProxyBenchResult{Requests: requests, Errors: errs, Duration: dur, Latency: percentiles(all)}
	if errs > requests/100 {
		return r, fmt.Errorf("%d of %d requests failed, first: %v", errs, requests, firstErr.Load())
	}
	return r, nil
}

// startBareReverseProxy is the standard library's reverse proxy with the
// same transport settings as modbot's proxy, no routing: the floor for a Go
// forwarder.
func startBareReverseProxy(target *url.URL) (string, func(), error) {
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = proxy.NewTransport(time.Second, 10*time.Second, 512)
	rp.ErrorLog = nil
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return "http://" + l.Addr().String(), func() { _ = srv.Close() }, nil
}

func findNginx(given string) string {
	if given != "" {
		return given
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	return ""
}

// startNginx runs nginx as a plain keep-alive reverse proxy in front of
// upstream, in the foreground, from a scratch prefix directory.
func startNginx(ctx context.Context, bin, upstream string, workers int) (string, func(), error) {
	dir, err := os.MkdirTemp("", "modbot-bench-nginx-")
	if err != nil {
		return "", nil, err
	}
	port, err := systest.FreePort()
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n" // workers must reach the scratch directory
	}
	conf := fmt.Sprintf(`%sworker_processes %d;
daemon off;
master_process on;
pid %[3]s/nginx.pid;
error_log %[3]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[3]s/body;
    proxy_temp_path %[3]s/proxy;
    fastcgi_temp_path %[3]s/fastcgi;
    uwsgi_temp_path %[3]s/uwsgi;
    scgi_temp_path %[3]s/scgi;
    keepalive_requests 1000000;
    upstream backend {
        server %[4]s;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:%[5]d;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, user, workers, dir, upstream, port)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, fmt.Errorf("start nginx: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT) // graceful: master stops its workers
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = os.RemoveAll(dir)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return "http://" + addr, stop, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			_ = os.RemoveAll(dir)
			return "", nil, fmt.Errorf("nginx exited at start: %s", strings.TrimSpace(string(log)))
		case <-ctx.Done():
			stop()
			return "", nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("nginx did not listen on %s within 10s", addr)
		}
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1000) }

// PrintProxyComparison prints the results side by side with the ratios the
// targets are about: latency the proxy adds at p50 over direct (one client,
// unloaded), and its throughput relative to nginx's.
func PrintProxyComparison(w io.Writer, results []ProxyBenchResult) {
	fmt.Fprintln(w, "Proxy comparison: GET /guild/{id}/dashboard (Accept: application/json), keep-alive clients, loopback")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\trequests\terrors\treq/s\tp50\tp99\tp50 (1 client)\tp99 (1 client)\t")
	var direct *ProxyBenchResult
	var proxies, nginx []ProxyBenchResult
	for i := range results {
		r := results[i]
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\tskipped: %s\t\t\t\t\t\t\t\n", r.Name, r.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t\n", r.Name, r.Requests, r.Errors, r.RPS(),
			us(r.Latency.P50), us(r.Latency.P99), us(r.Unloaded.P50), us(r.Unloaded.P99))
		switch {
		case r.Name == TargetDirect:
			direct = &results[i]
		case strings.HasPrefix(r.Name, TargetProxy):
			proxies = append(proxies, r)
		case strings.HasPrefix(r.Name, targetNginxPrefix):
			nginx = append(nginx, r)
		}
	}
	_ = tw.Flush()
	for _, p := range proxies {
		if direct != nil {
			add := p.Unloaded.P50 - direct.Unloaded.P50
			verdict := "target < 100 µs: met"
			if add >= 100*time.Microsecond {
				verdict = "target < 100 µs: NOT met"
			}
			fmt.Fprintf(w, "%s adds %s at p50 over direct with one client (%s); %s at p50 under load\n",
				p.Name, us(add), verdict, us(p.Latency.P50-direct.Latency.P50))
		}
		for _, n := range nginx {
			ratio := p.RPS() / n.RPS()
			verdict := "target ≥ 1: met"
			if ratio < 1 {
				verdict = "target ≥ 1: NOT met"
			}
			fmt.Fprintf(w, "  throughput / %s = %.2f (%s)\n", n.Name, ratio, verdict)
		}
	}
}
