package proxy

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/fsm"
)

const cmdBody = `{"id":"1","application_id":"2","type":2,"token":"tok","guild_id":"42","data":{"name":"report"}}`

func TestSignatureMatrix(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	_, otherKey, _ := ed25519.GenerateKey(nil)

	tests := []struct {
		name      string
		body      string
		mutate    func(r *http.Request, body string)
		want      int
		forwarded int64
	}{
		{name: "missing signature header", body: cmdBody, mutate: func(r *http.Request, _ string) { r.Header.Del(HeaderSignature) }, want: 401},
		{name: "missing timestamp", body: cmdBody, mutate: func(r *http.Request, _ string) { r.Header.Del(HeaderTimestamp) }, want: 401},
		{name: "non-hex signature", body: cmdBody, mutate: func(r *http.Request, _ string) {
			r.Header.Set(HeaderSignature, strings.Repeat("zz", ed25519.SignatureSize))
		}, want: 401},
		{name: "short signature", body: cmdBody, mutate: func(r *http.Request, _ string) {
			r.Header.Set(HeaderSignature, r.Header.Get(HeaderSignature)[:64])
		}, want: 401},
		{name: "wrong key", body: cmdBody, mutate: func(r *http.Request, body string) {
			ts := r.Header.Get(HeaderTimestamp)
			r.Header.Set(HeaderSignature, hex.EncodeToString(ed25519.Sign(otherKey, []byte(ts+body))))
		}, want: 401},
		{name: "tampered body", body: cmdBody, mutate: func(r *http.Request, body string) {
			tampered := strings.Replace(body, `"report"`, `"banall"`, 1)
			r.Body = io.NopCloser(strings.NewReader(tampered))
			r.ContentLength = int64(len(tampered))
		}, want: 401},
		{name: "tampered timestamp", body: cmdBody, mutate: func(r *http.Request, _ string) {
			r.Header.Set(HeaderTimestamp, "1")
		}, want: 401},
		{name: "valid ping", body: `{"id":"1","type":1}`, want: 200},
		{name: "valid command", body: cmdBody, want: 200, forwarded: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := b.count.Load()
			req := e.signed(t, tc.body)
			if tc.mutate != nil {
				tc.mutate(req, tc.body)
			}
			res := do(t, req)
			if res.status != tc.want {
				t.Fatalf("status %d (%s), want %d", res.status, res.body, tc.want)
			}
			if got := b.count.Load() - before; got != tc.forwarded {
				t.Fatalf("backend got %d requests, want %d", got, tc.forwarded)
			}
		})
	}
}

func TestPingAnsweredWithoutBackend(t *testing.T) {
	e := newEnv(t, nil) // no pods at all
	res := do(t, e.signed(t, `{"id":"1","type":1}`))
	if res.status != 200 || strings.TrimSpace(res.body) != `{"type":1}` {
		t.Fatalf("PING got %d %q, want 200 {\"type\":1}", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
}

// TestFakeDiscordVerifiesEndpoint saves the proxy as the interactions URL of
// the fake Discord, which checks it the way Discord does (good PING → PONG,
// badly signed PING → 401).
func TestFakeDiscordVerifiesEndpoint(t *testing.T) {
	var h http.Handler = http.NotFoundHandler()
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hh := h
		mu.Unlock()
		hh.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	fd, err := fakediscord.New(fakediscord.Config{InteractionsURL: srv.URL + "/webhooks/discord"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fd.Close() })
	p, err := New(Config{Map: newMemMap(), PublicKey: fd.PublicKey(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	mu.Lock()
	h = p
	mu.Unlock()
	if err := fd.VerifyEndpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRoutesDashboardToOwner(t *testing.T) {
	e := newEnv(t, nil)
	a := newBackend(t, "gateway-0", nil)
	b := newBackend(t, "gateway-1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Pod", "gateway-1")
		w.Header().Set("Keep-Alive", "timeout=5") // hop-by-hop: must not reach the client
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, `{"owner":"gateway-1"}`)
	})
	e.m.addPod("gateway-0", 0, a.addr(), fsm.PodActive)
	e.m.addPod("gateway-1", 1, "http://"+b.addr(), fsm.PodActive)
	e.m.place(100, "gateway-0", fsm.GuildActive)
	e.m.place(200, "gateway-1", fsm.GuildActive)
	e.m.place(200, "gateway-1", fsm.GuildActive) // epoch 2

	tests := []struct {
		path       string
		wantPod    *backend
		wantStatus int
		wantEpoch  string
	}{
		{"/guild/100/dashboard", a, 200, "1"},
		{"/guild/100/reports?page=2", a, 200, "1"},
		{"/guild/200/dashboard", b, 418, "2"},
		{"/guild/200", b, 418, "2"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			na, nb := a.count.Load(), b.count.Load()
			req, _ := http.NewRequest(http.MethodGet, e.url+tc.path, nil)
			req.Header.Set("Accept", "application/json")
			req.Header.Set("Authorization", "Bearer "+testAdminToken)
			req.Header.Set(HeaderEpoch, "999")
			res := do(t, req)
			if res.status != tc.wantStatus {
				t.Fatalf("status %d %s, want %d", res.status, res.body, tc.wantStatus)
			}
			if got := res.header.Get("X-Pod"); got != tc.wantPod.name {
				t.Fatalf("answered by %q, want %s", got, tc.wantPod.name)
			}
			if res.header.Get("Keep-Alive") != "" {
				t.Fatal("hop-by-hop Keep-Alive header forwarded")
			}
			if a.count.Load()+b.count.Load()-na-nb != 1 {
				t.Fatal("want exactly one forwarded request")
			}
			r, _ := tc.wantPod.lastRequest()
			if got := r.URL.RequestURI(); got != tc.path {
				t.Fatalf("pod saw %q, want %q", got, tc.path)
			}
			if got := r.Header.Get("Authorization"); got != "Bearer "+testInternalToken {
				t.Fatalf("Authorization %q, want the internal token (never the client's admin token)", got)
			}
			if got := r.Header.Get(HeaderEpoch); got != tc.wantEpoch {
				t.Fatalf("epoch %q, want %s", got, tc.wantEpoch)
			}
			if got := r.Header.Get(HeaderRevision); got != strconv.FormatUint(e.m.Revision(), 10) {
				t.Fatalf("revision header %q, want %d", got, e.m.Revision())
			}
			if got := r.Header.Get("Accept"); got != "application/json" {
				t.Fatalf("Accept %q not passed on", got)
			}
		})
	}
}

func TestDashboardErrors(t *testing.T) {
	e := newEnv(t, nil)
	dead := deadAddr(t)
	e.m.addPod("gateway-0", 0, dead, fsm.PodActive)
	e.m.addPod("gateway-1", 1, "127.0.0.1:1", fsm.PodDown)
	e.m.place(1, "gateway-0", fsm.GuildActive)
	e.m.place(2, "gateway-1", fsm.GuildActive)
	e.m.place(3, "gateway-9", fsm.GuildActive)
	tests := []struct {
		path       string
		want       int
		retryAfter bool
	}{
		{"/guild/abc/dashboard", 400, false},
		{"/guild/0/dashboard", 400, false},
		{"/guild/77/dashboard", 404, false},
		{"/guild/1/dashboard", 502, false}, // connection refused
		{"/guild/2/dashboard", 503, true},  // owner marked down
		{"/guild/3/dashboard", 503, true},  // owner not in the map
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			res := get(t, e.url+tc.path)
			if res.status != tc.want {
				t.Fatalf("status %d %s, want %d", res.status, res.body, tc.want)
			}
			if res.took > 500*time.Millisecond {
				t.Fatalf("took %s; failures must be fast", res.took)
			}
			if (res.header.Get("Retry-After") != "") != tc.retryAfter {
				t.Fatalf("Retry-After %q, want present=%v", res.header.Get("Retry-After"), tc.retryAfter)
			}
			var eb errorBody
			if err := json.Unmarshal([]byte(res.body), &eb); err != nil || eb.Error == "" {
				t.Fatalf("error body %q is not a JSON error", res.body)
			}
		})
	}
}

func TestSlowOwnerTimesOut504(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e := newEnv(t, func(c *Config) { c.ResponseHeaderTimeout = 100 * time.Millisecond })
	b := newBackend(t, "gateway-0", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(1, "gateway-0", fsm.GuildActive)
	res := get(t, e.url+"/guild/1/dashboard")
	if res.status != 504 || res.took > 2*time.Second {
		t.Fatalf("status %d after %s, want 504 soon after the 100ms timeout", res.status, res.took)
	}
}

func TestFollowsMapChange(t *testing.T) {
	e := newEnv(t, nil)
	a := newBackend(t, "gateway-0", nil)
	b := newBackend(t, "gateway-1", nil)
	e.m.addPod("gateway-0", 0, a.addr(), fsm.PodActive)
	e.m.addPod("gateway-1", 1, b.addr(), fsm.PodActive)
	e.m.place(7, "gateway-0", fsm.GuildActive)
	for i, owner := range []string{"gateway-0", "gateway-1", "gateway-0"} {
		e.m.place(7, owner, fsm.GuildActive)
		if got := get(t, e.url+"/guild/7/dashboard").header.Get("X-Pod"); got != owner {
			t.Fatalf("dashboard answered by %s, want %s", got, owner)
		}
		// A new interaction each time (the same signed one twice is a replay).
		body := strings.Replace(strings.Replace(cmdBody, `"42"`, `"7"`, 1), `"id":"1"`, `"id":"`+strconv.Itoa(100+i)+`"`, 1)
		if got := do(t, e.signed(t, body)).body; !strings.Contains(got, owner) {
			t.Fatalf("interaction answered %s, want from %s", got, owner)
		}
	}
}

func TestMisdirectedRetriesOnceAfterMapCatchesUp(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-1", nil)
	var moved sync.Once
	a := newBackend(t, "gateway-0", func(w http.ResponseWriter, r *http.Request) {
		// The pod already knows the guild moved; the proxy's map learns it a
		// little later.
		var rev uint64
		moved.Do(func() {
			rev = e.m.Revision() + 1
			go e.m.place(7, "gateway-1", fsm.GuildActive)
		})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMisdirectedRequest)
		_, _ = io.WriteString(w, `{"error":"not the owner","owner":"gateway-1","revision":`+strconv.FormatUint(rev, 10)+`}`)
	})
	e.m.addPod("gateway-0", 0, a.addr(), fsm.PodActive)
	e.m.addPod("gateway-1", 1, b.addr(), fsm.PodActive)
	e.m.place(7, "gateway-0", fsm.GuildActive)
	res := get(t, e.url+"/guild/7/dashboard")
	if res.status != 200 || res.header.Get("X-Pod") != "gateway-1" {
		t.Fatalf("got %d from %q, want 200 from gateway-1", res.status, res.header.Get("X-Pod"))
	}
	if a.count.Load() != 1 || b.count.Load() != 1 {
		t.Fatalf("requests a=%d b=%d, want 1 and 1", a.count.Load(), b.count.Load())
	}
}

func TestMigratingGuildHeldThen503(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HoldTimeout = 200 * time.Millisecond; c.RetryAfter = 2 * time.Second })
	a := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, a.addr(), fsm.PodActive)
	e.m.place(9, "gateway-0", fsm.GuildMigrating)
	res := get(t, e.url+"/guild/9/dashboard")
	if res.status != 503 || res.header.Get("Retry-After") != "2" {
		t.Fatalf("got %d Retry-After=%q, want 503 with Retry-After 2", res.status, res.header.Get("Retry-After"))
	}
	if res.took < 200*time.Millisecond || res.took > 2*time.Second {
		t.Fatalf("answered after %s, want after the 200ms hold", res.took)
	}
	if a.count.Load() != 0 {
		t.Fatal("a migrating guild's request reached a pod")
	}
}

func TestMigratingGuildServedOnceActive(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HoldTimeout = 10 * time.Second })
	a := newBackend(t, "gateway-0", nil)
	b := newBackend(t, "gateway-1", nil)
	e.m.addPod("gateway-0", 0, a.addr(), fsm.PodActive)
	e.m.addPod("gateway-1", 1, b.addr(), fsm.PodActive)
	e.m.place(9, "gateway-0", fsm.GuildMigrating)
	done := make(chan result, 1)
	go func() { done <- get(t, e.url+"/guild/9/dashboard") }()
	<-e.m.subscribed // the request is held
	start := time.Now()
	e.m.place(9, "gateway-1", fsm.GuildActive)
	res := <-done
	if res.status != 200 || res.header.Get("X-Pod") != "gateway-1" {
		t.Fatalf("got %d from %q, want 200 from the new owner", res.status, res.header.Get("X-Pod"))
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("served %s after the move finished; the hold must wake on the change", d)
	}
	if a.count.Load() != 0 {
		t.Fatal("the old owner got the held request")
	}
}

func TestInteractionRouting(t *testing.T) {
	e := newEnv(t, nil)
	p1 := newBackend(t, "gateway-1", nil)
	p2 := newBackend(t, "gateway-2", nil)
	p3 := newBackend(t, "gateway-3", nil)
	e.m.addPod("gateway-3", 3, p3.addr(), fsm.PodActive)
	e.m.addPod("gateway-1", 1, p1.addr(), fsm.PodDown)
	e.m.addPod("gateway-2", 2, p2.addr(), fsm.PodActive)
	e.m.place(42, "gateway-3", fsm.GuildActive)
	tests := []struct {
		name string
		body string
		want *backend
	}{
		{"guild interaction goes to its owner", cmdBody, p3},
		{"DM goes to the lowest active ordinal", `{"id":"5","type":2,"token":"t","user":{"id":"9"},"data":{"name":"help"}}`, p2},
		{"unplaced guild goes to the default pod", strings.Replace(commandWithID(6), `"42"`, `"43"`, 1), p2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.want.count.Load()
			res := do(t, e.signed(t, tc.body))
			if res.status != 200 || res.body != `{"type":4,"data":{"content":"from `+tc.want.name+`"}}` {
				t.Fatalf("got %d %s, want the answer of %s verbatim", res.status, res.body, tc.want.name)
			}
			if tc.want.count.Load() != before+1 {
				t.Fatal("the pod did not get the interaction")
			}
			r, body := tc.want.lastRequest()
			if r.URL.Path != InternalInteractionsPath || string(body) != tc.body {
				t.Fatalf("pod got %s %q, want the raw body on %s", r.URL.Path, body, InternalInteractionsPath)
			}
			ms, err := strconv.Atoi(r.Header.Get(HeaderDeadlineMs))
			if err != nil || ms <= 0 || ms > 2500 {
				t.Fatalf("deadline header %q", r.Header.Get(HeaderDeadlineMs))
			}
			if got := r.Header.Get("Authorization"); got != "Bearer "+testInternalToken {
				t.Fatalf("Authorization %q, want the internal token", got)
			}
		})
	}
	if p1.count.Load() != 0 {
		t.Fatal("the down pod got an interaction")
	}
}

func TestSlowOwnerGetsDeferredResponse(t *testing.T) {
	cancelled := make(chan struct{})
	e := newEnv(t, func(c *Config) { c.InteractionBudget = 300 * time.Millisecond })
	b := newBackend(t, "gateway-0", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers; sees the proxy give up
		close(cancelled)
	})
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	res := do(t, e.signed(t, cmdBody))
	if res.status != 200 || strings.TrimSpace(res.body) != `{"type":5}` {
		t.Fatalf("got %d %q, want a deferred response", res.status, res.body)
	}
	if res.took < 300*time.Millisecond || res.took > time.Second {
		t.Fatalf("deferred after %s, want right after the 300ms budget", res.took)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the owner's request was not cancelled")
	}
	r, _ := b.lastRequest()
	if ms, _ := strconv.Atoi(r.Header.Get(HeaderDeadlineMs)); ms <= 0 || ms > 300 {
		t.Fatalf("deadline header %q, want ≤ 300", r.Header.Get(HeaderDeadlineMs))
	}
}

func TestMigratingGuildInteractionDeferredInTime(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.InteractionBudget = 400 * time.Millisecond
		c.InteractionHold = 150 * time.Millisecond
	})
	b := newBackend(t, "gateway-0", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildMigrating)
	res := do(t, e.signed(t, cmdBody))
	if res.status != 200 || strings.TrimSpace(res.body) != `{"type":5}` || res.took > time.Second {
		t.Fatalf("got %d %q after %s, want a deferred response within the budget", res.status, res.body, res.took)
	}
	if b.count.Load() != 1 {
		t.Fatal("the owner never got the interaction, so nobody can follow up")
	}
}

func TestInteractionOwnerDownFails(t *testing.T) {
	e := newEnv(t, nil)
	e.m.addPod("gateway-0", 0, deadAddr(t), fsm.PodActive)
	e.m.addPod("gateway-1", 1, "127.0.0.1:1", fsm.PodDown)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	e.m.place(43, "gateway-1", fsm.GuildActive)
	for _, tc := range []struct {
		guild string
		want  int
	}{{"42", 502}, {"43", 503}} {
		// Each a new interaction (the replay cache refuses a known id).
		res := do(t, e.signed(t, strings.Replace(commandWithID(int(tc.want)), `"42"`, `"`+tc.guild+`"`, 1)))
		if res.status != tc.want || res.took > 500*time.Millisecond {
			t.Fatalf("guild %s: %d after %s, want %d fast", tc.guild, res.status, res.took, tc.want)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	big := `{"type":2,"guild_id":"42","pad":"` + strings.Repeat("x", 2000) + `"}`
	if res := do(t, e.signed(t, big)); res.status != 413 {
		t.Fatalf("status %d, want 413", res.status)
	}
	// Without a Content-Length (chunked) too.
	req := e.signed(t, big)
	req.Body = io.NopCloser(strings.NewReader(big))
	req.ContentLength = -1
	if res := do(t, req); res.status != 413 {
		t.Fatalf("chunked: status %d, want 413", res.status)
	}
	if b.count.Load() != 0 {
		t.Fatal("an oversized body was forwarded")
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	m := newMemMap()
	m.synced = make(chan struct{})
	pub, _, _ := ed25519.GenerateKey(nil)
	p, err := New(Config{Map: m, PublicKey: pub, Token: testAdminToken, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	url, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if res := get(t, url+"/healthz"); res.status != 200 {
		t.Fatalf("healthz %d", res.status)
	}
	if res := get(t, url+"/readyz"); res.status != 503 {
		t.Fatalf("readyz before sync %d, want 503", res.status)
	}
	close(m.synced)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if res := get(t, url+"/readyz"); res.status != 200 {
		t.Fatalf("readyz after sync %d", res.status)
	}
	get(t, url+"/guild/5/dashboard") // 404
	res := get(t, url+"/metrics")
	for _, want := range []string{
		`modbot_http_request_duration_seconds_count{code="404",component="proxy",method="GET",route="/guild/{id}"} 1`,
		`modbot_proxy_map_revision 1`,
		`modbot_proxy_interactions_deferred_total 0`,
	} {
		if !strings.Contains(res.body, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
