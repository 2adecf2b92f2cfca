package discordgw

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/modbot/modbot/fakediscord"
)

const waitTimeout = 10 * time.Second

const testIntents = fakediscord.IntentGuilds | fakediscord.IntentGuildMessages | fakediscord.IntentMessageContent

// fake is a running fake Discord and how to reach it.
type fake struct {
	t          *testing.T
	srv        *fakediscord.Server
	dialer     *websocket.Dialer
	gatewayURL string
}

// newFake starts a fake Discord with short heartbeat and no identify spacing
// unless cfg says otherwise. Its cleanup (registered first, so it runs last)
// also checks that no goroutine of this package outlives the test.
func newFake(t *testing.T, cfg fakediscord.Config) *fake {
	t.Helper()
	t.Cleanup(func() { checkNoShardGoroutines(t) })
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 200 * time.Millisecond
	}
	if cfg.IdentifyInterval == 0 {
		cfg.IdentifyInterval = -1
	}
	srv, err := fakediscord.New(cfg)
	if err != nil {
		t.Fatalf("fakediscord.New: %v", err)
	}
	base, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakediscord.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("fakediscord.Close: %v", err)
		}
	})
	client, dialer, err := ClientFor(base)
	if err != nil {
		t.Fatalf("ClientFor: %v", err)
	}
	// The gateway URL comes from REST GET /gateway/bot, as in production.
	req, err := http.NewRequest(http.MethodGet, "https://discord.com/api/v9/gateway/bot", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bot "+srv.Config().Token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /gateway/bot: %v", err)
	}
	defer resp.Body.Close()
	var gw struct {
		URL string `json:"url"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&gw); err != nil || gw.URL == "" {
		t.Fatalf("GET /gateway/bot: status %d, url %q, err %v", resp.StatusCode, gw.URL, err)
	}
	client.CloseIdleConnections()
	return &fake{t: t, srv: srv, dialer: dialer, gatewayURL: gw.URL}
}

func (f *fake) config(shardID, shardCount int) Config {
	cfg := Config{
		Token:               f.srv.Config().Token,
		ShardID:             shardID,
		ShardCount:          shardCount,
		Intents:             testIntents,
		GatewayURL:          f.gatewayURL,
		Dialer:              f.dialer,
		InvalidSessionDelay: 20 * time.Millisecond,
		ReconnectBackoff:    20 * time.Millisecond,
		MaxReconnectBackoff: 200 * time.Millisecond,
	}
	if os.Getenv("DISCORDGW_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// open opens a shard whose Close is a cleanup, and records its events.
func (f *fake) open(cfg Config) (*Shard, *recorder) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	openCtx, stop := context.WithCancel(context.Background())
	f.t.Cleanup(stop)
	// Open's context bounds the shard's life; bound the wait separately.
	type res struct {
		s   *Shard
		err error
	}
	ch := make(chan res, 1)
	go func() { s, err := Open(openCtx, cfg); ch <- res{s, err} }()
	var r res
	select {
	case r = <-ch:
	case <-ctx.Done():
		stop()
		<-ch
		f.t.Fatalf("Open shard %d: timed out", cfg.ShardID)
	}
	if r.err != nil {
		f.t.Fatalf("Open shard %d: %v", cfg.ShardID, r.err)
	}
	f.t.Cleanup(func() { _ = r.s.Close() })
	return r.s, record(f.t, r.s)
}

// session returns the fake's only session of a shard.
func (f *fake) session(shardID, shardCount int) fakediscord.SessionInfo {
	f.t.Helper()
	var found []fakediscord.SessionInfo
	for _, s := range f.srv.Sessions() {
		if s.Shard == [2]int{shardID, shardCount} {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		f.t.Fatalf("want one session of shard [%d, %d], have %+v", shardID, shardCount, found)
	}
	return found[0]
}

func (f *fake) sessionByID(id string) (fakediscord.SessionInfo, bool) {
	for _, s := range f.srv.Sessions() {
		if s.SessionID == id {
			return s, true
		}
	}
	return fakediscord.SessionInfo{}, false
}

func (f *fake) send(guildID uint64, contents ...string) {
	f.t.Helper()
	for _, c := range contents {
		if _, err := f.srv.SendMessage(guildID, 0, 0, c); err != nil {
			f.t.Fatalf("SendMessage %q: %v", c, err)
		}
	}
}

func msgs(prefix string, from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

// recorder collects a shard's Events() in the background.
type recorder struct {
	mu      sync.Mutex
	events  []Dispatch
	closed  bool
	changed chan struct{}
}

func record(t *testing.T, s *Shard) *recorder {
	r := &recorder{changed: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range s.Events() {
			r.mu.Lock()
			r.events = append(r.events, d)
			r.mu.Unlock()
			r.signal()
		}
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.signal()
	}()
	t.Cleanup(func() {
		_ = s.Close()
		<-done
	})
	return r
}

func (r *recorder) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() ([]Dispatch, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events), r.closed
}

// wait waits until cond holds for the events recorded so far.
func (r *recorder) wait(t *testing.T, what string, cond func([]Dispatch) bool) []Dispatch {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		ev, closed := r.snapshot()
		if cond(ev) {
			return ev
		}
		if closed {
			t.Fatalf("Events() closed before %s; got %s", what, summary(ev))
		}
		select {
		case <-r.changed:
		case <-timer.C:
			t.Fatalf("timed out waiting for %s; got %s", what, summary(ev))
		}
	}
}

// waitContents waits until the MESSAGE_CREATE contents are exactly want.
func (r *recorder) waitContents(t *testing.T, want []string) []Dispatch {
	t.Helper()
	ev := r.wait(t, fmt.Sprintf("%d messages", len(want)), func(ev []Dispatch) bool {
		return len(contents(ev)) >= len(want)
	})
	if got := contents(ev); !slices.Equal(got, want) {
		t.Fatalf("messages:\n got %q\nwant %q", got, want)
	}
	return ev
}

// waitClosed waits until Events() is closed.
func (r *recorder) waitClosed(t *testing.T) []Dispatch {
	t.Helper()
	return r.wait(t, "Events() to close", func([]Dispatch) bool {
		_, closed := r.snapshot()
		return closed
	})
}

func ofType(ev []Dispatch, typ string) []Dispatch {
	var out []Dispatch
	for _, d := range ev {
		if d.Type == typ {
			out = append(out, d)
		}
	}
	return out
}

func contents(ev []Dispatch) []string {
	var out []string
	for _, d := range ofType(ev, "MESSAGE_CREATE") {
		var m struct {
			Content string `json:"content"`
		}
		if err := json.Unmarshal(d.Data, &m); err != nil {
			out = append(out, "<bad json: "+err.Error()+">")
			continue
		}
		out = append(out, m.Content)
	}
	return out
}

func guildID(d Dispatch) string {
	var g struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(d.Data, &g)
	return g.ID
}

func summary(ev []Dispatch) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d events [", len(ev))
	for i, d := range ev {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s#%d", d.Type, d.Seq)
	}
	b.WriteString("]")
	return b.String()
}

// seqOf returns the dispatch carrying message content c.
func seqOf(t *testing.T, ev []Dispatch, c string) Dispatch {
	t.Helper()
	for _, d := range ofType(ev, "MESSAGE_CREATE") {
		if got := contents([]Dispatch{d}); len(got) == 1 && got[0] == c {
			return d
		}
	}
	t.Fatalf("no MESSAGE_CREATE %q in %s", c, summary(ev))
	return Dispatch{}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// shardGoroutines lists the stacks of goroutines running this package's
// non-test code.
func shardGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, marker := range []string{"discordgw.(*Shard)", "discordgw.(*conn)", "discordgw.Open"} {
			if strings.Contains(g, marker) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

func checkNoShardGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		left := shardGoroutines()
		if len(left) == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Errorf("%d goroutines of the shard outlived it:\n%s", len(left), strings.Join(left, "\n\n"))
			return
		}
	}
}
