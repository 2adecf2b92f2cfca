package proxy

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fakediscord"
)

func TestStatusIsForOperatorsOnly(t *testing.T) {
	e := newLoginEnv(t)
	e.p.cfg.Operators = []uint64{fakediscord.SeedModeratorID}
	e.p.cfg.ConfigStatus = func(context.Context) (assignments.Status, error) {
		return assignments.Status{Leader: "config-1", Term: 7, Revision: 42}, nil
	}
	e.p.cfg.RebalanceStatus = func(context.Context) (assignments.RebalanceJob, error) {
		return assignments.RebalanceJob{Kind: "rebalance", Total: 4, Done: 1, Running: 1}, nil
	}
	cases := []struct {
		name   string
		req    func() *http.Request
		status int
	}{
		{"anonymous JSON", func() *http.Request { r, _ := http.NewRequest(http.MethodGet, e.url+"/status", nil); return r }, http.StatusUnauthorized},
		{"admin token", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, e.url+"/status", nil)
			r.Header.Set("Authorization", "Bearer "+testAdminToken)
			return r
		}, http.StatusOK},
		{"the internal token", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, e.url+"/status", nil)
			r.Header.Set("Authorization", "Bearer "+testInternalToken)
			return r
		}, http.StatusUnauthorized},
	}
	for _, c := range cases {
		if res := do(t, c.req()); res.status != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, res.status, res.body, c.status)
		}
	}
	anon := newBrowser(t)
	if res := anon.get(e.url + "/status"); res.status != http.StatusFound || res.location != "/login?next=%2Fstatus" {
		t.Fatalf("anonymous browser: %d to %q, want 302 to /login", res.status, res.location)
	}
	bob := newBrowser(t)
	e.login(bob, "bob", "/status")
	if res := bob.get(e.url + "/status"); res.status != http.StatusForbidden {
		t.Fatalf("bob (not an operator): %d, want 403", res.status)
	}
	alice := newBrowser(t)
	e.login(alice, "alice", "/status")
	res := alice.get(e.url + "/status")
	for _, want := range []string{`data-pod="gateway-0">4<`, "EventSource", `<b id="leader">config-1</b> · term 7`, "rebalance in progress", "1/4 moves done"} {
		if res.status != http.StatusOK || !strings.Contains(res.body, want) {
			t.Fatalf("alice (operator): %d, the page lacks %q:\n%s", res.status, want, res.body)
		}
	}
}

// TestStatusEventsStreamAMoveAsItHappens: the SSE stream sends the
// current section at once, then a new one when a guild starts migrating
// and again when the move is done.
func TestStatusEventsStreamAMoveAsItHappens(t *testing.T) {
	e := newLoginEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/status/events", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	next := func() string {
		t.Helper()
		var b strings.Builder
		for sc.Scan() {
			line := sc.Text()
			if line == "" && b.Len() > 0 {
				return b.String()
			}
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				b.WriteString(d + "\n")
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return ""
	}
	until := func(what string, cond func(string) bool) {
		t.Helper()
		for {
			if cond(next()) {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("no status event with %s", what)
			}
		}
	}
	until("no moves", func(s string) bool { return strings.Contains(s, `id="no-moves"`) })
	g := e.guilds[2].ID
	e.m.place(g, "gateway-0", "migrating")
	until("the move", func(s string) bool { return strings.Contains(s, `class="move"`) })
	e.m.place(g, "gateway-0", "active")
	until("the move gone", func(s string) bool { return strings.Contains(s, `id="no-moves"`) })
}

// TestStatusStreamsEndWhenShutdownBegins: an open /status/events stream
// does not hold a graceful shutdown until its timeout.
func TestStatusStreamsEndWhenShutdownBegins(t *testing.T) {
	e := newEnv(t, nil)
	p, err := New(Config{Map: e.m, PublicKey: e.pub, Token: testAdminToken, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	base, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/status/events", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an open status stream: %v after %s", err, time.Since(start))
	}
}
