package fakediscord

import (
	"fmt"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
)

// harness is a running fake plus the discordgo sessions a test opened; the
// sessions are closed in parallel before the fake (discordgo's Close sleeps 1s).
type harness struct {
	t    *testing.T
	srv  *Server
	base string

	mu       sync.Mutex
	sessions []*discordgo.Session
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 250 * time.Millisecond
	}
	if cfg.IdentifyInterval == 0 {
		cfg.IdentifyInterval = -1
	}
	if os.Getenv("FAKEDISCORD_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	base, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	h := &harness{t: t, srv: srv, base: base}
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		var wg sync.WaitGroup
		for _, s := range h.sessions {
			wg.Add(1)
			go func() { defer wg.Done(); s.ShouldReconnectOnError = false; _ = s.Close() }()
		}
		wg.Wait()
	})
	return h
}

// recorder collects a session's dispatches in order.
type recorder struct {
	mu     sync.Mutex
	events []*discordgo.Event
	signal chan struct{}
}

func (r *recorder) add(e *discordgo.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// of returns the recorded events of type t.
func (r *recorder) of(t string) []*discordgo.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*discordgo.Event
	for _, e := range r.events {
		if e.Type == t {
			out = append(out, e)
		}
	}
	return out
}

// waitFor waits until cond holds over the recorded events.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-r.signal:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (r *recorder) waitCount(t *testing.T, typ string, n int) []*discordgo.Event {
	t.Helper()
	r.waitFor(t, fmt.Sprintf("%d %s", n, typ), func() bool { return len(r.of(typ)) >= n })
	return r.of(typ)
}

// open connects a discordgo session to the fake; it is closed at cleanup.
func (h *harness) open(token string, shardID, shardCount int, compress bool) (*discordgo.Session, *recorder) {
	h.t.Helper()
	sess, rec, err := h.tryOpen(token, shardID, shardCount, compress)
	if err != nil {
		h.t.Fatalf("open session [%d, %d]: %v", shardID, shardCount, err)
	}
	return sess, rec
}

func (h *harness) tryOpen(token string, shardID, shardCount int, compress bool) (*discordgo.Session, *recorder, error) {
	sess, err := discordgo.New("Bot " + token)
	if err != nil {
		return nil, nil, err
	}
	if err := discordgw.ConfigureSession(sess, h.base); err != nil {
		return nil, nil, err
	}
	sess.ShardID, sess.ShardCount = shardID, shardCount
	sess.Compress = compress
	sess.SyncEvents = true // keep dispatch order in handlers
	sess.LogLevel = -1
	if os.Getenv("FAKEDISCORD_DEBUG") != "" {
		sess.LogLevel = discordgo.LogInformational
	}
	sess.Identify.Intents = discordgo.IntentsAllWithoutPrivileged | discordgo.IntentMessageContent | discordgo.IntentGuildMembers
	rec := &recorder{signal: make(chan struct{}, 1)}
	sess.AddHandler(func(_ *discordgo.Session, e *discordgo.Event) { rec.add(e) })
	if err := sess.Open(); err != nil {
		return nil, nil, err
	}
	h.mu.Lock()
	h.sessions = append(h.sessions, sess)
	h.mu.Unlock()
	return sess, rec, nil
}

// poll waits until cond is true.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for a condition
	}
}

func sessionFor(t *testing.T, srv *Server, shardID, shardCount int) SessionInfo {
	t.Helper()
	for _, s := range srv.Sessions() {
		if s.Shard == [2]int{shardID, shardCount} && s.Connected {
			return s
		}
	}
	t.Fatalf("no connected session for shard [%d, %d]", shardID, shardCount)
	return SessionInfo{}
}
