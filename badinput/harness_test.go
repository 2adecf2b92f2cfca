// Package badinput throws bad input at every component of a running system
// (config nodes, gateway pods, the proxy) and checks, for each input, that
// the answer is a clear refusal and that nothing changed. The results are
// the table in docs/bad-input.md (go test ./badinput/ -run TestBadInputTable
// -update rewrites it; without -update the test fails if it is out of date).
package badinput

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/proxy"
	"github.com/modbot/modbot/systest"
)

const token = systest.Token

// neverPlaced is a valid snowflake no test ever places.
const neverPlaced uint64 = 1234567890123456789

// env is one running system prepared for the table: three config nodes,
// gateway-0 and gateway-1 (each owning guilds with rows), gateway-2
// draining, and a proxy of our own whose forwarding transport counts every
// request it sends to a pod. Every pod's advertised address is an
// interceptor in front of its real listener, so a test can see (and, for
// exports, cut) the traffic between the components.
type env struct {
	t   testing.TB
	ctx context.Context
	sys *systest.System

	mu    sync.Mutex
	inter map[string]*interceptor // by pod id

	proxy       *proxy.Proxy
	stopWatcher func()
	proxyURL    string
	proxyHits   atomic.Int64 // requests the proxy sent to any pod
	// validForwards counts the valid requests rows sent through the proxy
	// on purpose (the first of a replay).
	validForwards atomic.Int64

	// guilds: g0 is owned by gateway-0 and g1 by gateway-1; all has every
	// seeded guild.
	g0, g1 uint64
	all    []uint64

	http *http.Client
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
	sharedStop func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedStop != nil {
		sharedStop()
	}
	os.Exit(code)
}

// system returns the package's one running system, starting it on first use.
func system(t testing.TB) *env {
	t.Helper()
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "modbot-badinput-")
		if err != nil {
			sharedErr = err
			return
		}
		e, err := startEnv(dir)
		sharedStop = func() {
			if e != nil {
				e.close()
			}
			_ = os.RemoveAll(dir)
		}
		shared, sharedErr = e, err
	})
	if sharedErr != nil {
		t.Fatalf("start the system: %v", sharedErr)
	}
	shared.t = t
	return shared
}

func quiet() *slog.Logger {
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startEnv(dir string) (*env, error) {
	ctx := context.Background()
	e := &env{ctx: ctx, inter: map[string]*interceptor{}, http: &http.Client{Timeout: 20 * time.Second}}
	var err error
	e.sys, err = systest.StartSystem(ctx, dir, systest.SystemOptions{
		Logger: quiet(),
		// Long enough that no pod is marked down while the test pauses.
		PodTimeout:   5 * time.Second,
		TweakGateway: e.interpose,
		// A shared, busy machine (two cores) can stall a process for a few
		// hundred milliseconds; with the default 250 ms lease the leader
		// would then step down in the middle of the table. Elections are not
		// what this package tests.
		TweakConfig: func(c *confignode.Config) {
			c.RaftHeartbeatTimeout, c.RaftElectionTimeout = 2*time.Second, 2*time.Second
		},
	})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*env, error) { e.close(); return nil, err }
	s := e.sys
	for _, g := range s.Discord.Seed(4) {
		e.all = append(e.all, g.ID)
	}
	// gateway-0 starts alone and places every guild; gateway-1 and -2 then
	// take shards over.
	for i := 0; i < 3; i++ {
		if _, err := s.AddGateway(); err != nil {
			return fail(err)
		}
		if err := s.WaitSettled(ctx, 60*time.Second); err != nil {
			return fail(fmt.Errorf("after starting gateway-%d: %w", i, err))
		}
	}
	e.g0, e.g1 = e.all[0], e.all[1]
	if _, err := s.Client.Move(ctx, fmt.Sprint(e.g1), "gateway-1"); err != nil {
		return fail(fmt.Errorf("move a guild to gateway-1: %w", err))
	}
	if err := systest.Poll(ctx, 30*time.Second, "the move to gateway-1", func() bool {
		v, err := s.Owner(ctx, e.g1)
		return err == nil && v.Owner == "gateway-1" && v.State == fsm.GuildActive
	}); err != nil {
		return fail(err)
	}
	// gateway-2 owns nothing: draining it only gives its shards back.
	if _, err := s.Client.Drain(ctx, "gateway-2"); err != nil {
		return fail(fmt.Errorf("drain gateway-2: %w", err))
	}
	// (systest's WaitSettled wants every pod ready; a draining pod is not.)
	if err := systest.Poll(ctx, 60*time.Second, "shards back on gateway-0 and -1", func() bool {
		sl, err := s.Client.Shards(ctx)
		if err != nil {
			return false
		}
		for _, sh := range sl.Shards {
			if sh.Holder == "" || sh.Holder == "gateway-2" || sh.Checkpoint == nil || sh.Checkpoint.Holder != sh.Holder || sh.Checkpoint.Epoch != sh.Epoch {
				return false
			}
		}
		return systest.Ready("http://"+s.Gateways[0].Addr()) && systest.Ready("http://"+s.Gateways[1].Addr())
	}); err != nil {
		return fail(err)
	}
	// Rows in every guild's owner.
	for round := 0; round < 3; round++ {
		for _, g := range e.all {
			if _, err := s.Discord.SendMessage(g, 0, uint64(1000+round), fmt.Sprintf("hello %d", round)); err != nil {
				return fail(err)
			}
		}
	}
	if err := systest.Poll(ctx, 30*time.Second, "every message stored", func() bool {
		for _, g := range e.all {
			v, err := s.Owner(ctx, g)
			if err != nil {
				return false
			}
			n, err := s.MessageRows(ctx, s.PodIndex(v.Owner), g)
			if err != nil || n != 3 {
				return false
			}
		}
		return true
	}); err != nil {
		return fail(err)
	}
	if err := e.startProxy(ctx); err != nil {
		return fail(err)
	}
	return e, nil
}

func (e *env) close() {
	if e.proxy != nil {
		_ = e.proxy.Close()
		e.stopWatcher()
	}
	if e.sys != nil {
		e.sys.Close()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, in := range e.inter {
		in.close()
	}
}

// countingTransport counts the requests the proxy forwards to pods.
type countingTransport struct {
	http.RoundTripper
	n *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.RoundTripper.RoundTrip(r)
}

func (e *env) startProxy(ctx context.Context) error {
	w := assignments.NewWatcher(e.sys.Client, assignments.WatcherOptions{Logger: quiet(), Name: "badinput-proxy"})
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	p, err := proxy.New(proxy.Config{Map: w, PublicKey: e.sys.Discord.PublicKey(), Token: token, Logger: quiet(),
		Transport: countingTransport{proxy.NewTransport(time.Second, 10*time.Second, 16), &e.proxyHits}})
	if err != nil {
		stop()
		<-done
		return err
	}
	e.proxy = p
	e.stopWatcher = func() { stop(); <-done }
	if e.proxyURL, err = p.Start("127.0.0.1:0"); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.WaitReady(rctx)
}

// interceptor is a reverse proxy in front of one pod's internal API, at the
// address the pod advertises: pods, the proxy and the config leader all
// reach the pod through it.
type interceptor struct {
	ln     net.Listener
	srv    *http.Server
	target string // the pod's real listen address

	// cut, when set, is applied to the body of the next export the pod
	// serves (then cleared).
	cut atomic.Pointer[func([]byte) []byte]

	mu    sync.Mutex
	calls []call // the pod's answers to imports and deletes of guild copies
}

// call is one move step a pod answered.
type call struct {
	method, path string
	answer
}

// interpose puts an interceptor in front of a gateway (SystemOptions.TweakGateway).
func (e *env) interpose(cfg *gatewaynode.Config) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("interceptor listen: %v", err))
	}
	in := &interceptor{ln: ln, target: cfg.HTTPAddr}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", in.target
		},
		FlushInterval:  -1,
		ModifyResponse: in.modify,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	in.srv = &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = in.srv.Serve(ln) }()
	cfg.Advertise = ln.Addr().String()
	e.mu.Lock()
	if old := e.inter[cfg.ID]; old != nil {
		old.close() // a start retried on fresh ports
	}
	e.inter[cfg.ID] = in
	e.mu.Unlock()
}

func (in *interceptor) close() { _ = in.srv.Close() }

func (in *interceptor) modify(resp *http.Response) error {
	p := resp.Request.URL.Path
	switch {
	case strings.HasSuffix(p, "/export") && resp.StatusCode == http.StatusOK:
		cut := in.cut.Swap(nil)
		if cut == nil {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		b = (*cut)(b)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", fmt.Sprint(len(b)))
	case strings.HasSuffix(p, "/import") || resp.Request.Method == http.MethodDelete && strings.HasPrefix(p, "/internal/guilds/"):
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		in.mu.Lock()
		in.calls = append(in.calls, call{method: resp.Request.Method, path: p, answer: answer{Status: resp.StatusCode, Body: b}})
		in.mu.Unlock()
		resp.Body = io.NopCloser(bytes.NewReader(b))
	}
	return nil
}

// callsSince returns the calls recorded after the first n.
func (in *interceptor) callsSince(n int) []call {
	in.mu.Lock()
	defer in.mu.Unlock()
	if n >= len(in.calls) {
		return nil
	}
	return append([]call(nil), in.calls[n:]...)
}

func (in *interceptor) callCount() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.calls)
}

func (e *env) interceptorOf(pod string) *interceptor {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inter[pod]
}

// answer is one HTTP answer (or the failure to get one).
type answer struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error
	Took   time.Duration
}

// errorText is the "error" of a JSON error body ("" if there is none).
func (a answer) errorText() string {
	var b struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(a.Body, &b) != nil {
		return ""
	}
	return b.Error
}

// field is a string field of a JSON body ("" if there is none).
func (a answer) field(name string) string {
	var b map[string]any
	if json.Unmarshal(a.Body, &b) != nil {
		return ""
	}
	s, _ := b[name].(string)
	return s
}

// req is one request to send.
type req struct {
	method string
	url    string
	body   []byte
	header map[string]string
	// noAuth sends no Authorization header (else the token is sent unless
	// header sets one).
	noAuth bool
	// opaque, when set, is the request target sent verbatim (a path that
	// url.Parse would refuse or normalise).
	opaque string
}

func (e *env) send(r req) answer {
	var body io.Reader = http.NoBody
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return answer{Err: err}
	}
	if r.opaque != "" {
		hr.URL.Opaque = r.opaque
	}
	if r.body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if !r.noAuth {
		hr.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range r.header {
		if v == "" {
			hr.Header.Del(k)
			continue
		}
		hr.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := e.http.Do(hr)
	if err != nil {
		return answer{Err: err, Took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return answer{Status: resp.StatusCode, Header: resp.Header, Body: b, Err: err, Took: time.Since(start)}
}

// Base URLs.

func (e *env) configURL(i int) string { return "http://" + e.sys.Cluster.Cfgs[i].HTTPAddr }

// leader is the config leader's index, waiting (up to 10 s) for one.
func (e *env) leader() int {
	l := -1
	_ = e.poll(10*time.Second, func() bool { l = e.sys.Cluster.Leader(); return l >= 0 })
	if l < 0 {
		e.t.Errorf("no config leader")
		return 0
	}
	return l
}

func (e *env) follower() int { return (e.leader() + 1) % len(e.sys.Cluster.Nodes) }

// podURL is gateway i's real internal API (not through its interceptor).
func (e *env) podURL(i int) string { return "http://" + e.sys.Cfgs[i].HTTPAddr }

// guildView reads a guild's placement linearizably.
func (e *env) guildView(g uint64) (fsm.Guild, error) {
	var out assignments.GuildView
	err := e.sys.Client.Do(e.ctx, http.MethodGet, fmt.Sprintf("/v1/guilds/%d?consistent=true", g), nil, &out)
	return out.Guild, err
}

// shards reads the shard assignments linearizably.
func (e *env) shards() (assignments.ShardList, error) {
	var out assignments.ShardList
	err := e.sys.Client.Do(e.ctx, http.MethodGet, "/v1/shards?consistent=true", nil, &out)
	return out, err
}

// poll checks cond every 20 ms until it holds or d has passed.
func (e *env) poll(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// slowloris opens a connection to addr and sends a request's headers one
// byte a second. It returns how long the server let it go on before closing
// the connection, and whether the server answered anything.
func slowloris(addr string, maxWait time.Duration) (time.Duration, string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	start := time.Now()
	head := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 64) + "\r\n"
	closed := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c) // returns when the server closes
		closed <- string(b)
	}()
	for i := 0; ; i++ {
		select {
		case got := <-closed:
			return time.Since(start), got, nil
		case <-time.After(time.Second):
		}
		if time.Since(start) > maxWait {
			return time.Since(start), "", fmt.Errorf("still open after %s", maxWait)
		}
		if _, err := c.Write([]byte{head[i%len(head)]}); err != nil {
			// The server closed; the reader reports it.
			select {
			case got := <-closed:
				return time.Since(start), got, nil
			case <-time.After(2 * time.Second):
				return time.Since(start), "", nil
			}
		}
	}
}

// hostOf is the host:port of a base URL.
func hostOf(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	return u.Host
}
