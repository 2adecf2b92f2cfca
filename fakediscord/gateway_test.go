package fakediscord

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/gorilla/websocket"
)

func TestShardsReceiveExactlyTheirGuilds(t *testing.T) {
	t.Parallel()
	for _, shards := range []int{1, 4} {
		t.Run(fmt.Sprintf("%d shards", shards), func(t *testing.T) {
			h := newHarness(t, Config{Shards: shards})
			guilds := h.srv.Seed(12)
			want := map[int][]string{}
			for _, g := range guilds {
				if g.Shard != ShardFor(g.ID, shards) {
					t.Fatalf("guild %d reports shard %d, want %d", g.ID, g.Shard, ShardFor(g.ID, shards))
				}
				want[g.Shard] = append(want[g.Shard], idStr(g.ID))
			}
			if shards == 4 && len(want) != 4 {
				t.Fatalf("seeded guilds do not spread over 4 shards: %v", want)
			}
			type opened struct {
				rec  *recorder
				sess *discordgo.Session
			}
			sessions := make([]opened, shards)
			var wg sync.WaitGroup
			errs := make(chan error, shards)
			for i := 0; i < shards; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sess, rec, err := h.tryOpen(h.srv.Config().Token, i, shards, i%2 == 0)
					if err != nil {
						errs <- fmt.Errorf("shard %d: %w", i, err)
						return
					}
					sessions[i] = opened{rec, sess}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			for i, o := range sessions {
				o.rec.waitCount(t, "GUILD_CREATE", len(want[i]))
				// A marker message per shard: anything sent before it has arrived.
				if _, err := h.srv.SendMessage(guilds[0].ID, 0, 0, "marker"); err != nil {
					t.Fatal(err)
				}
			}
			for i, o := range sessions {
				var marker int
				if ShardFor(guilds[0].ID, shards) == i {
					marker = shards
				}
				o.rec.waitCount(t, "MESSAGE_CREATE", marker)
				var got []string
				for _, e := range o.rec.of("GUILD_CREATE") {
					got = append(got, e.Struct.(*discordgo.GuildCreate).ID)
				}
				sort.Strings(got)
				sort.Strings(want[i])
				if strings.Join(got, ",") != strings.Join(want[i], ",") {
					t.Errorf("shard %d got guilds %v, want %v", i, got, want[i])
				}
				ready := o.rec.of("READY")[0].Struct.(*discordgo.Ready)
				if len(ready.Guilds) != len(want[i]) || ready.SessionID == "" || ready.User.ID != h.srv.Config().ApplicationID {
					t.Errorf("shard %d READY: %d guilds, session %q, user %v", i, len(ready.Guilds), ready.SessionID, ready.User)
				}
				if len(o.sess.State.Guilds) != len(want[i]) {
					t.Errorf("shard %d discordgo state holds %d guilds, want %d", i, len(o.sess.State.Guilds), len(want[i]))
				}
			}
			// A guild created later goes to its shard's session only.
			g := h.srv.CreateGuild(0, "late")
			sessions[g.Shard].rec.waitFor(t, "late GUILD_CREATE", func() bool {
				for _, e := range sessions[g.Shard].rec.of("GUILD_CREATE") {
					if e.Struct.(*discordgo.GuildCreate).ID == idStr(g.ID) {
						return true
					}
				}
				return false
			})
		})
	}
}

func TestTwoSessionsOnOneShardBothGetDispatches(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 2})
	guilds := h.srv.Seed(4)
	var g Guild
	for _, gg := range guilds {
		if gg.Shard == 1 {
			g = gg
		}
	}
	_, a := h.open(h.srv.Config().Token, 1, 2, false)
	_, b := h.open(h.srv.Config().Token, 1, 2, true) // zlib-compressed binary frames
	mid, err := h.srv.SendMessage(g.ID, 0, 42, "hello both")
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*recorder{"a": a, "b": b} {
		m := r.waitCount(t, "MESSAGE_CREATE", 1)[0].Struct.(*discordgo.MessageCreate)
		if m.ID != idStr(mid) || m.Content != "hello both" || m.GuildID != idStr(g.ID) || m.Author.ID != "42" {
			t.Errorf("session %s got %+v", name, m.Message)
		}
	}
	if n := len(h.srv.Sessions()); n != 2 {
		t.Errorf("want 2 sessions, got %d", n)
	}
}

func TestResumeAfterDropLosesNothing(t *testing.T) {
	t.Parallel()
	// A long heartbeat interval, and the fault is injected only after discordgo's
	// first heartbeat: discordgo v0.29.0 races its heartbeat goroutine against
	// its own 1s close during a reconnect; when a heartbeat falls in that second,
	// it may close the freshly resumed connection with 1000, which invalidates
	// the session (as on Discord). See docs/fakediscord.md.
	h := newHarness(t, Config{HeartbeatInterval: 5 * time.Second})
	g := h.srv.CreateGuild(0, "resume")
	sess, rec := h.open(h.srv.Config().Token, 0, 1, false)
	_ = sess
	send := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := h.srv.SendMessage(g.ID, 0, 7, fmt.Sprintf("m%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(1, 3)
	rec.waitCount(t, "MESSAGE_CREATE", 3)
	info := waitFirstHeartbeat(t, h.srv)
	if err := h.srv.DropSession(info.SessionID); err != nil {
		t.Fatal(err)
	}
	send(4, 8) // while the client is away
	poll(t, "discordgo to resume", func() bool {
		for _, s := range h.srv.Sessions() {
			if s.SessionID == info.SessionID && s.Connected && s.Resumes == 1 {
				return true
			}
		}
		return false
	})
	send(9, 10)
	msgs := rec.waitCount(t, "MESSAGE_CREATE", 10)
	var got []string
	var lastSeq int64
	for _, e := range msgs {
		got = append(got, e.Struct.(*discordgo.MessageCreate).Content)
		if e.Sequence <= lastSeq {
			t.Errorf("sequence went from %d to %d", lastSeq, e.Sequence)
		}
		lastSeq = e.Sequence
	}
	if want := "m1 m2 m3 m4 m5 m6 m7 m8 m9 m10"; strings.Join(got, " ") != want {
		t.Fatalf("messages after resume: %v, want %s", got, want)
	}
	if len(rec.of("RESUMED")) != 1 {
		t.Errorf("want exactly one RESUMED, got %d", len(rec.of("RESUMED")))
	}
	var ok int
	for _, a := range h.srv.Identifies() {
		if a.Result == "ok" {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("discordgo identified %d times, want 1 (it must resume)", ok)
	}
}

func TestReconnectOp7Resumes(t *testing.T) {
	t.Parallel()
	// A long heartbeat interval, and the fault is injected only after discordgo's
	// first heartbeat: discordgo v0.29.0 races its heartbeat goroutine against
	// its own 1s close during a reconnect; when a heartbeat falls in that second,
	// it may close the freshly resumed connection with 1000, which invalidates
	// the session (as on Discord). See docs/fakediscord.md.
	h := newHarness(t, Config{HeartbeatInterval: 5 * time.Second})
	g := h.srv.CreateGuild(0, "op7")
	_, rec := h.open(h.srv.Config().Token, 0, 1, false)
	info := waitFirstHeartbeat(t, h.srv)
	if err := h.srv.Reconnect(info.SessionID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.SendMessage(g.ID, 0, 7, "after op7"); err != nil {
		t.Fatal(err)
	}
	poll(t, "resume after op 7", func() bool {
		for _, s := range h.srv.Sessions() {
			if s.SessionID == info.SessionID && s.Connected && s.Resumes == 1 {
				return true
			}
		}
		return false
	})
	if m := rec.waitCount(t, "MESSAGE_CREATE", 1); len(m) != 1 {
		t.Fatalf("got %d messages, want exactly 1", len(m))
	}
}

func TestBadTokenGatewayCloses4004(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	_, _, err := h.tryOpen("wrong-token", 0, 1, false)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != CloseAuthenticationFail {
		t.Fatalf("Open with a bad token: %v, want close 4004", err)
	}
	ids := h.srv.Identifies()
	if len(ids) != 1 || ids[0].Result != "bad_token" {
		t.Fatalf("identifies: %+v", ids)
	}
}

// rawGateway is a minimal gateway client for protocol-level assertions.
type rawGateway struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialRaw(t *testing.T, base string) *rawGateway {
	t.Helper()
	_, dialer, err := discordgw.ClientFor(base)
	if err != nil {
		t.Fatal(err)
	}
	// Discord's real gateway URL, routed to the fake by the dialer.
	ws, _, err := dialer.Dial("wss://gateway.discord.gg/?v=9&encoding=json", nil)
	if err != nil {
		t.Fatalf("dial gateway: %v", err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	r := &rawGateway{t: t, ws: ws}
	if hello := r.read(); hello["op"].(float64) != opHello {
		t.Fatalf("first payload %v, want HELLO", hello)
	}
	return r
}

func (r *rawGateway) send(v any) {
	r.t.Helper()
	if err := r.ws.WriteJSON(v); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawGateway) read() map[string]any {
	r.t.Helper()
	_ = r.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	var m map[string]any
	if err := r.ws.ReadJSON(&m); err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return m
}

func (r *rawGateway) identify(token string, shard [2]int) map[string]any {
	r.send(map[string]any{"op": 2, "d": map[string]any{"token": token, "intents": 513, "shard": shard,
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"}}})
	return r.read()
}

func TestIdentifyTooFastGetsInvalidSession(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 4, MaxConcurrency: 2, IdentifyInterval: time.Hour})
	tok := h.srv.Config().Token
	if m := dialRaw(t, h.base).identify(tok, [2]int{0, 4}); m["t"] != "READY" {
		t.Fatalf("first identify got %v, want READY", m)
	}
	// Shard 2 is in bucket 2 % 2 = 0, like shard 0: too early.
	m := dialRaw(t, h.base).identify(tok, [2]int{2, 4})
	if m["op"].(float64) != opInvalidSession || m["d"] != false {
		t.Fatalf("identify in a busy bucket got %v, want op 9 d:false", m)
	}
	// Shard 1 is in bucket 1: allowed.
	if m := dialRaw(t, h.base).identify(tok, [2]int{1, 4}); m["t"] != "READY" {
		t.Fatalf("identify in a free bucket got %v, want READY", m)
	}
	var got []string
	for _, a := range h.srv.Identifies() {
		got = append(got, fmt.Sprintf("%d/%d:%s", a.Shard[0], a.Bucket, a.Result))
	}
	if want := "0/0:ok 2/0:rate_limited 1/1:ok"; strings.Join(got, " ") != want {
		t.Fatalf("identify log %v, want %s", got, want)
	}
	// The same log over the control API.
	var log []IdentifyAttempt
	getJSON(t, h.base+"/_fake/identifies", &log)
	if len(log) != 3 || log[1].Result != "rate_limited" {
		t.Fatalf("/_fake/identifies: %+v", log)
	}
}

func TestGatewayProtocolErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 2})
	tok := h.srv.Config().Token
	expectClose := func(r *rawGateway, code int) {
		t.Helper()
		_ = r.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := r.ws.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != code {
					t.Fatalf("got %v, want close %d", err, code)
				}
				return
			}
		}
	}
	r := dialRaw(t, h.base)
	r.send(map[string]any{"op": 2, "d": map[string]any{"token": tok, "intents": 1, "shard": []int{2, 2}}})
	expectClose(r, CloseInvalidShard)

	r = dialRaw(t, h.base)
	r.send(map[string]any{"op": 3, "d": map[string]any{}})
	expectClose(r, CloseNotAuthenticated)

	r = dialRaw(t, h.base)
	r.send(map[string]any{"op": 1, "d": nil})
	if m := r.read(); m["op"].(float64) != opHeartbeatACK {
		t.Fatalf("heartbeat got %v, want ACK", m)
	}
	r.send(map[string]any{"op": 6, "d": map[string]any{"token": tok, "session_id": "nope", "seq": 1}})
	if m := r.read(); m["op"].(float64) != opInvalidSession {
		t.Fatalf("resume of an unknown session got %v, want op 9", m)
	}
	if m := r.identify(tok, [2]int{0, 2}); m["t"] != "READY" {
		t.Fatalf("identify after op 9 got %v", m)
	}
	sid := sessionFor(t, h.srv, 0, 2).SessionID
	// Server-requested heartbeat (op 1), the client answers with op 1 and gets an ACK.
	if err := h.srv.RequestHeartbeat(sid); err != nil {
		t.Fatal(err)
	}
	if m := r.read(); m["op"].(float64) != opHeartbeat {
		t.Fatalf("got %v, want op 1", m)
	}
	r.send(map[string]any{"op": 5, "d": nil})
	expectClose(r, CloseUnknownOpcode)
}

func TestStallHoldsDispatchesThenDelivers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	g := h.srv.CreateGuild(0, "stall")
	r := dialRaw(t, h.base)
	if m := r.identify(h.srv.Config().Token, [2]int{0, 1}); m["t"] != "READY" {
		t.Fatal(m)
	}
	if m := r.read(); m["t"] != "GUILD_CREATE" {
		t.Fatal(m)
	}
	sid := sessionFor(t, h.srv, 0, 1).SessionID
	if err := h.srv.StallSession(sid, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := h.srv.SendMessage(g.ID, 0, 1, "late"); err != nil {
		t.Fatal(err)
	}
	msg := r.read()
	if msg["t"] != "MESSAGE_CREATE" || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("got %v after %v, want MESSAGE_CREATE after the stall", msg["t"], time.Since(start))
	}
	var d struct {
		Content string `json:"content"`
	}
	b, _ := json.Marshal(msg["d"])
	_ = json.Unmarshal(b, &d)
	if d.Content != "" {
		t.Errorf("content %q sent to a session without the MESSAGE_CONTENT intent", d.Content)
	}
}

// waitFirstHeartbeat waits until the only shard-0 session has heartbeated.
func waitFirstHeartbeat(t *testing.T, srv *Server) SessionInfo {
	t.Helper()
	var info SessionInfo
	poll(t, "first heartbeat", func() bool {
		info = sessionFor(t, srv, 0, 1)
		return !info.LastHeartbeat.IsZero()
	})
	return info
}
