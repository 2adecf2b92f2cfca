package discordgw

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
)

func TestIdentifyDeliversReadyThenGuildCreatesThenMessagesInOrder(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	guilds := f.srv.Seed(3)
	s, rec := f.open(f.config(0, 1))

	ev := rec.wait(t, "READY and 3 GUILD_CREATEs", func(ev []Dispatch) bool { return len(ev) >= 4 })
	if ev[0].Type != "READY" || ev[0].Seq != 1 {
		t.Fatalf("first dispatch = %s#%d, want READY#1", ev[0].Type, ev[0].Seq)
	}
	for i, g := range guilds {
		if d := ev[i+1]; d.Type != "GUILD_CREATE" || guildID(d) != strconv.FormatUint(g.ID, 10) {
			t.Errorf("dispatch %d = %s for guild %s, want GUILD_CREATE for %d", i+1, d.Type, guildID(d), g.ID)
		}
	}
	sess := f.session(0, 1)
	cp := s.Checkpoint()
	if cp.SessionID != sess.SessionID || cp.Seq != 0 || cp.ResumeURL == "" {
		t.Errorf("checkpoint before any Ack = %+v, want session %s seq 0 and a resume URL", cp, sess.SessionID)
	}

	want := msgs("m", 1, 50)
	f.send(guilds[1].ID, want...)
	ev = rec.waitContents(t, want)
	for i, d := range ev {
		if d.Seq != int64(i+1) || d.SessionID != sess.SessionID {
			t.Fatalf("dispatch %d = %s#%d of session %s, want seq %d of %s", i, d.Type, d.Seq, d.SessionID, i+1, sess.SessionID)
		}
	}
	ids := f.srv.Identifies()
	if len(ids) != 1 || ids[0].Result != "ok" || ids[0].Shard != [2]int{0, 1} {
		t.Errorf("identifies = %+v, want one ok identify of [0, 1]", ids)
	}
}

func TestIdentifyFourShardsEachReceivesOnlyItsGuilds(t *testing.T) {
	f := newFake(t, fakediscord.Config{Shards: 4})
	guilds := f.srv.Seed(8)
	recs := make([]*recorder, 4)
	for i := range 4 {
		_, recs[i] = f.open(f.config(i, 4))
	}
	for i, rec := range recs {
		var wantIDs []string
		for _, g := range guilds {
			if g.Shard == i {
				wantIDs = append(wantIDs, strconv.FormatUint(g.ID, 10))
			}
		}
		if len(wantIDs) == 0 {
			t.Fatalf("no guild on shard %d; the fake spreads Seed over shards", i)
		}
		ev := rec.wait(t, "READY and the shard's GUILD_CREATEs", func(ev []Dispatch) bool { return len(ev) >= 1+len(wantIDs) })
		if ev[0].Type != "READY" {
			t.Errorf("shard %d: first dispatch %s", i, ev[0].Type)
		}
		var got []string
		for _, d := range ofType(ev, "GUILD_CREATE") {
			got = append(got, guildID(d))
		}
		if !slices.Equal(got, wantIDs) {
			t.Errorf("shard %d GUILD_CREATEs = %v, want %v", i, got, wantIDs)
		}
	}
	// One message per guild, several rounds; each shard sees its guilds' messages in order.
	want := make([][]string, 4)
	for round := range 3 {
		for gi, g := range guilds {
			c := "g" + strconv.Itoa(gi) + "-r" + strconv.Itoa(round)
			f.send(g.ID, c)
			want[g.Shard] = append(want[g.Shard], c)
		}
	}
	for i, rec := range recs {
		rec.waitContents(t, want[i])
	}
}

func TestDroppedConnectionResumesWithoutLossOrDuplicates(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	g := f.srv.CreateGuild(0, "drop")
	s, rec := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID

	f.send(g.ID, msgs("m", 1, 10)...)
	rec.waitContents(t, msgs("m", 1, 10))
	if err := f.srv.DropSession(sid); err != nil {
		t.Fatal(err)
	}
	f.send(g.ID, msgs("m", 11, 20)...) // while the shard reconnects
	rec.waitContents(t, msgs("m", 1, 20))
	eventually(t, "the resumed connection", func() bool { i, ok := f.sessionByID(sid); return ok && i.Connected })
	f.send(g.ID, msgs("m", 21, 30)...)
	ev := rec.waitContents(t, msgs("m", 1, 30))

	info, _ := f.sessionByID(sid)
	if info.Resumes < 1 {
		t.Errorf("session resumes = %d, want >= 1", info.Resumes)
	}
	if len(f.srv.Identifies()) != 1 {
		t.Errorf("identifies = %+v, want only the first", f.srv.Identifies())
	}
	if len(ofType(ev, "RESUMED")) < 1 {
		t.Errorf("no RESUMED in %s", summary(ev))
	}
	var last int64
	for _, d := range ev {
		if d.SessionID != sid {
			t.Errorf("dispatch %s#%d has session %s, want %s", d.Type, d.Seq, d.SessionID, sid)
		}
		if d.Type == "RESUMED" {
			continue
		}
		if d.Seq != last+1 {
			t.Errorf("dispatch %s#%d after #%d: not contiguous", d.Type, d.Seq, last)
		}
		last = d.Seq
	}
	if cp := s.Checkpoint(); cp.SessionID != sid {
		t.Errorf("checkpoint session = %s, want unchanged %s", cp.SessionID, sid)
	}
}

// The reason for the package: pod A dies (detached, or simply gone without a
// close frame) after acknowledging only part of what it received; pod B
// resumes A's session from A's checkpoint and receives everything after it.
func TestTakeoverResumesFromCheckpointWithoutLoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(*Shard)
	}{
		{"detached", func(s *Shard) {
			if err := s.Detach(); err != nil {
				t.Errorf("Detach: %v", err)
			}
		}},
		{"vanished without close frame", func(s *Shard) { s.abandon() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, fakediscord.Config{})
			g := f.srv.CreateGuild(0, "takeover")
			a, recA := f.open(f.config(0, 1))
			sid := f.session(0, 1).SessionID

			f.send(g.ID, msgs("m", 1, 10)...)
			evA := recA.waitContents(t, msgs("m", 1, 10))
			acked := seqOf(t, evA, "m-5")
			a.AckDispatch(acked) // m-6…m-10 received by A but never committed
			tc.stop(a)
			recA.waitClosed(t)
			checkNoShardGoroutines(t) // A's goroutines are gone before B starts
			if err := a.Err(); err != nil {
				t.Errorf("A.Err() = %v, want nil after a deliberate stop", err)
			}

			// The checkpoint travels through durable storage as JSON.
			raw, err := json.Marshal(a.Checkpoint())
			if err != nil {
				t.Fatal(err)
			}
			var cp Checkpoint
			if err := json.Unmarshal(raw, &cp); err != nil {
				t.Fatal(err)
			}
			if cp.SessionID != sid || cp.Seq != acked.Seq || cp.ResumeURL == "" {
				t.Fatalf("checkpoint = %+v, want session %s seq %d with a resume URL", cp, sid, acked.Seq)
			}
			eventually(t, "the fake to see A disconnected", func() bool { i, ok := f.sessionByID(sid); return ok && !i.Connected })

			f.send(g.ID, msgs("m", 11, 15)...) // nobody is connected

			gateCalls := atomic.Int32{}
			cfg := f.config(0, 1)
			cfg.Resume = &cp
			cfg.IdentifyGate = func(context.Context, int) error { gateCalls.Add(1); return nil }
			b, recB := f.open(cfg)
			evB := recB.waitContents(t, msgs("m", 6, 15))
			if !b.Resumed() || b.ResumeFailed() {
				t.Errorf("B Resumed=%v ResumeFailed=%v, want true/false", b.Resumed(), b.ResumeFailed())
			}
			if evB[0].Seq != cp.Seq+1 {
				t.Errorf("B's first dispatch = %s#%d, want seq %d", evB[0].Type, evB[0].Seq, cp.Seq+1)
			}
			if len(ofType(evB, "READY")) != 0 {
				t.Errorf("B got a READY: it identified instead of resuming: %s", summary(evB))
			}
			if n := gateCalls.Load(); n != 0 {
				t.Errorf("identify gate called %d times on a resume", n)
			}
			if n := len(f.srv.Identifies()); n != 1 {
				t.Errorf("identifies = %d, want 1 (B must not identify)", n)
			}
			if got := b.Checkpoint(); got.SessionID != sid || got.Seq != cp.Seq {
				t.Errorf("B's checkpoint before any Ack = %+v, want %s/%d", got, sid, cp.Seq)
			}
			recB.wait(t, "RESUMED", func(ev []Dispatch) bool { return len(ofType(ev, "RESUMED")) == 1 })

			f.send(g.ID, "m-16")
			evB = recB.waitContents(t, msgs("m", 6, 16))
			b.AckDispatch(seqOf(t, evB, "m-16"))
			if got := b.Checkpoint(); got.Seq != seqOf(t, evB, "m-16").Seq {
				t.Errorf("B's checkpoint after Ack = %+v", got)
			}
		})
	}
}

func TestExpiredCheckpointFallsBackToIdentifyAndReportsIt(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	g := f.srv.CreateGuild(0, "expired")
	a, recA := f.open(f.config(0, 1))
	f.send(g.ID, "m-1")
	a.Ack(seqOf(t, recA.waitContents(t, []string{"m-1"}), "m-1").Seq)
	cp := a.Checkpoint()
	if err := a.Close(); err != nil { // close 1000: Discord invalidates the session
		t.Fatal(err)
	}
	eventually(t, "the fake to drop the closed session", func() bool { _, ok := f.sessionByID(cp.SessionID); return !ok })
	f.send(g.ID, "lost")

	var gateCalls atomic.Int32
	cfg := f.config(0, 1)
	cfg.Resume = &cp
	cfg.IdentifyGate = func(context.Context, int) error { gateCalls.Add(1); return nil }
	b, recB := f.open(cfg)
	ev := recB.wait(t, "READY", func(ev []Dispatch) bool { return len(ev) > 0 })
	if ev[0].Type != "READY" || ev[0].SessionID == cp.SessionID {
		t.Errorf("first dispatch = %s of session %s, want READY of a new session", ev[0].Type, ev[0].SessionID)
	}
	if b.Resumed() || !b.ResumeFailed() {
		t.Errorf("Resumed=%v ResumeFailed=%v, want false/true", b.Resumed(), b.ResumeFailed())
	}
	if n := gateCalls.Load(); n != 1 {
		t.Errorf("identify gate calls = %d, want 1", n)
	}
	if got := b.Checkpoint(); got.SessionID != ev[0].SessionID || got.Seq != 0 {
		t.Errorf("checkpoint = %+v, want the new session at seq 0", got)
	}
	f.send(g.ID, "m-2")
	recB.waitContents(t, []string{"m-2"})
}

func TestReconnectOpcodeMakesShardResume(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	g := f.srv.CreateGuild(0, "op7")
	_, rec := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID
	f.send(g.ID, "m-1")
	rec.waitContents(t, []string{"m-1"})
	if err := f.srv.Reconnect(sid); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a resume", func() bool { i, ok := f.sessionByID(sid); return ok && i.Resumes == 1 && i.Connected })
	f.send(g.ID, "m-2")
	ev := rec.waitContents(t, []string{"m-1", "m-2"})
	if len(ofType(ev, "RESUMED")) != 1 || len(ofType(ev, "READY")) != 1 {
		t.Errorf("want one READY and one RESUMED: %s", summary(ev))
	}
	if n := len(f.srv.Identifies()); n != 1 {
		t.Errorf("identifies = %d, want 1", n)
	}
}

func TestResumableInvalidSessionResumes(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	g := f.srv.CreateGuild(0, "op9-true")
	_, rec := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID
	if err := f.srv.InvalidateSession(sid, true); err != nil {
		t.Fatal(err)
	}
	f.send(g.ID, "m-1")
	eventually(t, "a resume", func() bool { i, ok := f.sessionByID(sid); return ok && i.Resumes == 1 && i.Connected })
	rec.waitContents(t, []string{"m-1"})
	if n := len(f.srv.Identifies()); n != 1 {
		t.Errorf("identifies = %d, want 1", n)
	}
}

func TestNonResumableInvalidSessionIdentifiesAgainThroughGate(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	g := f.srv.CreateGuild(0, "op9-false")
	var gateCalls atomic.Int32
	cfg := f.config(0, 1)
	cfg.IdentifyGate = func(ctx context.Context, shardID int) error {
		if shardID != 0 {
			t.Errorf("gate called for shard %d", shardID)
		}
		gateCalls.Add(1)
		return nil
	}
	s, rec := f.open(cfg)
	old := f.session(0, 1).SessionID
	f.send(g.ID, "m-1")
	ev := rec.waitContents(t, []string{"m-1"})
	s.AckDispatch(seqOf(t, ev, "m-1"))
	if n := gateCalls.Load(); n != 1 {
		t.Fatalf("gate calls after Open = %d, want 1", n)
	}

	if err := f.srv.InvalidateSession(old, false); err != nil {
		t.Fatal(err)
	}
	ev = rec.wait(t, "a second READY", func(ev []Dispatch) bool { return len(ofType(ev, "READY")) == 2 })
	ready := ofType(ev, "READY")[1]
	if ready.SessionID == old || ready.Seq != 1 {
		t.Errorf("second READY = seq %d of session %s, want seq 1 of a new session", ready.Seq, ready.SessionID)
	}
	if n := gateCalls.Load(); n != 2 {
		t.Errorf("gate calls = %d, want 2", n)
	}
	if s.ResumeFailed() {
		t.Error("ResumeFailed without Config.Resume")
	}
	if cp := s.Checkpoint(); cp.SessionID != ready.SessionID || cp.Seq != 0 {
		t.Errorf("checkpoint = %+v, want the new session at seq 0", cp)
	}
	// A late Ack of the old session must not move the new session's checkpoint.
	s.AckDispatch(seqOf(t, ev, "m-1"))
	if cp := s.Checkpoint(); cp.Seq != 0 {
		t.Errorf("old-session ack moved the checkpoint: %+v", cp)
	}
	f.send(g.ID, "m-2")
	ev = rec.waitContents(t, []string{"m-1", "m-2"})
	if d := seqOf(t, ev, "m-2"); d.SessionID != ready.SessionID {
		t.Errorf("m-2 from session %s, want %s", d.SessionID, ready.SessionID)
	}
}

func TestZombieConnectionIsClosedAndResumed(t *testing.T) {
	f := newFake(t, fakediscord.Config{HeartbeatInterval: 100 * time.Millisecond})
	g := f.srv.CreateGuild(0, "zombie")
	_, rec := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID
	f.send(g.ID, "m-1")
	rec.waitContents(t, []string{"m-1"})

	const stall = 5 * time.Second // far longer than two heartbeat intervals
	start := time.Now()
	if err := f.srv.StallSession(sid, stall); err != nil {
		t.Fatal(err)
	}
	f.send(g.ID, "m-2") // held by the stalled connection
	eventually(t, "a resume after the missing ACK", func() bool {
		i, ok := f.sessionByID(sid)
		return ok && i.Resumes >= 1 && i.Connected
	})
	rec.waitContents(t, []string{"m-1", "m-2"})
	if d := time.Since(start); d >= stall {
		t.Errorf("resumed after %v: the stall ended before the zombie was detected", d)
	}
}

func TestServerHeartbeatRequestIsAnsweredImmediately(t *testing.T) {
	// A long interval: the periodic heartbeat is unlikely to fall in the
	// test, and if it does the test passes anyway (it cannot fail spuriously).
	f := newFake(t, fakediscord.Config{HeartbeatInterval: time.Minute})
	s, _ := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID
	before := f.session(0, 1).LastHeartbeat
	if err := f.srv.RequestHeartbeat(sid); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the answering heartbeat", func() bool { return f.session(0, 1).LastHeartbeat.After(before) })
	eventually(t, "a latency measurement", func() bool { return s.Latency() > 0 })
}

func TestBadTokenFailsOpenWithoutRetrying(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	cfg := f.config(0, 1)
	cfg.Token = "not-the-token"
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err == nil {
		_ = s.Close()
		t.Fatal("Open with a bad token succeeded")
	}
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 4004 {
		t.Fatalf("Open error = %v, want a *CloseError with code 4004", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Open only returned when its context ended")
	}
	ids := f.srv.Identifies()
	if len(ids) != 1 || ids[0].Result != "bad_token" {
		t.Errorf("identifies = %+v, want exactly one bad_token attempt", ids)
	}
}

func TestShardingRequiredIsFatal(t *testing.T) {
	f := newFake(t, fakediscord.Config{MaxGuildsPerShard: 1})
	f.srv.Seed(2)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := Open(ctx, f.config(0, 1))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 4011 {
		t.Fatalf("Open error = %v, want close 4011", err)
	}
}

func TestIdentifyRateLimitedByGatewayIsRetried(t *testing.T) {
	// max_concurrency 1: both shards share a bucket, the second identify is
	// too early and gets op 9 d:false; the shard waits and identifies again.
	f := newFake(t, fakediscord.Config{MaxConcurrency: 1, IdentifyInterval: 300 * time.Millisecond})
	f.open(f.config(0, 2))
	cfg := f.config(1, 2)
	cfg.InvalidSessionDelay = 100 * time.Millisecond
	_, rec := f.open(cfg)
	rec.wait(t, "READY", func(ev []Dispatch) bool { return len(ofType(ev, "READY")) == 1 })
	var results []string
	for _, a := range f.srv.Identifies() {
		if a.Shard == [2]int{1, 2} {
			results = append(results, a.Result)
		}
	}
	if len(results) < 2 || results[0] != "rate_limited" || results[len(results)-1] != "ok" {
		t.Errorf("shard 1 identify results = %v, want rate_limited … ok", results)
	}
}

func TestCloseEndsSessionClosesEventsAndStopsGoroutines(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	s, rec := f.open(f.config(0, 1))
	sid := f.session(0, 1).SessionID
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.waitClosed(t)
	checkNoShardGoroutines(t)
	if err := s.Err(); err != nil {
		t.Errorf("Err() after Close = %v", err)
	}
	eventually(t, "the fake to invalidate the session", func() bool { _, ok := f.sessionByID(sid); return !ok })
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestContextEndDetachesAndReportsIt(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Open(ctx, f.config(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	rec := record(t, s)
	sid := f.session(0, 1).SessionID
	cancel()
	rec.waitClosed(t)
	if !errors.Is(s.Err(), context.Canceled) {
		t.Errorf("Err() = %v, want context.Canceled", s.Err())
	}
	eventually(t, "the fake to see the shard gone", func() bool { i, ok := f.sessionByID(sid); return ok && !i.Connected })
	checkNoShardGoroutines(t) // nobody called Close: they end on their own
}

func TestAckNeverMovesCheckpointBackwardOrBeyondReceived(t *testing.T) {
	s := &Shard{sessionID: "s1", lastSeq: 10, acked: 4}
	s.log = slog.New(slog.DiscardHandler)
	s.Ack(3)
	if s.acked != 4 {
		t.Errorf("Ack(3) moved acked back to %d", s.acked)
	}
	s.Ack(11)
	if s.acked != 4 {
		t.Errorf("Ack(11) beyond the last received moved acked to %d", s.acked)
	}
	s.AckDispatch(Dispatch{Seq: 9, SessionID: "other"})
	if s.acked != 4 {
		t.Errorf("AckDispatch of another session moved acked to %d", s.acked)
	}
	s.AckDispatch(Dispatch{Seq: 9, SessionID: "s1"})
	if cp := s.Checkpoint(); cp.Seq != 9 || cp.SessionID != "s1" {
		t.Errorf("checkpoint = %+v, want s1/9", cp)
	}
}

func TestReplayedDispatchesAreDeliveredOnce(t *testing.T) {
	s := &Shard{sessionID: "s1", lastSeq: 5, wake: make(chan struct{}, 1)}
	s.log = slog.New(slog.DiscardHandler)
	for _, seq := range []int64{4, 5, 6, 5, 7} {
		if _, err := s.handleDispatch(seq, "MESSAGE_CREATE", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.handleDispatch(7, "RESUMED", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range s.queue {
		got = append(got, d.Type+"#"+strconv.FormatInt(d.Seq, 10))
	}
	if want := []string{"MESSAGE_CREATE#6", "MESSAGE_CREATE#7", "RESUMED#7"}; !slices.Equal(got, want) {
		t.Errorf("queued %v, want %v", got, want)
	}
}

func TestLimiterHoldsCommandsBeyondTheWindowBudget(t *testing.T) {
	l := newLimiter(4, 300*time.Millisecond)
	ctx := context.Background()
	start := time.Now()
	for range 4 {
		if err := l.wait(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("the first 4 commands waited %v", d)
	}
	if err := l.wait(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("the 5th command went out after %v, within the window", d)
	}
	closed := make(chan struct{})
	close(closed)
	for range 4 {
		_ = l.wait(ctx, closed)
	}
	if err := l.wait(ctx, closed); !errors.Is(err, errConnClosed) {
		t.Errorf("wait on a closed connection = %v", err)
	}
}

func TestCompressedBinaryPayloadIsInflated(t *testing.T) {
	var b bytes.Buffer
	zw := zlib.NewWriter(&b)
	_, _ = zw.Write([]byte(`{"op":11}`))
	_ = zw.Close()
	out, err := inflate(b.Bytes())
	if err != nil || string(out) != `{"op":11}` {
		t.Fatalf("inflate = %q, %v", out, err)
	}
	if _, err := inflate([]byte("not zlib")); err == nil {
		t.Error("inflate accepted garbage")
	}
}

func TestConfigIsValidated(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no token":     {ShardCount: 1, GatewayURL: "wss://gateway.discord.gg"},
		"bad shard":    {Token: "t", ShardID: 2, ShardCount: 2, GatewayURL: "wss://gateway.discord.gg"},
		"no URL":       {Token: "t", ShardCount: 1},
		"http URL":     {Token: "t", ShardCount: 1, GatewayURL: "https://discord.com"},
		"negative seq": {Token: "t", ShardCount: 1, GatewayURL: "wss://x", Resume: &Checkpoint{SessionID: "a", Seq: -1}},
	} {
		if _, err := Open(context.Background(), cfg); err == nil {
			t.Errorf("%s: Open accepted %+v", name, cfg)
		}
	}
	u, err := gatewayURL("wss://gateway.discord.gg/?v=9")
	if err != nil || u != "wss://gateway.discord.gg/?encoding=json&v=10" {
		t.Errorf("gatewayURL = %q, %v", u, err)
	}
}

func TestSendWritesCommandsButNotTheShardsOwn(t *testing.T) {
	f := newFake(t, fakediscord.Config{})
	s, _ := f.open(f.config(0, 1))
	ctx := context.Background()
	presence := map[string]any{"since": nil, "activities": []any{}, "status": "online", "afk": false}
	if err := s.Send(ctx, 3, presence); err != nil {
		t.Fatalf("Send presence update: %v", err)
	}
	for _, op := range []int{opHeartbeat, opIdentify, opResume} {
		if err := s.Send(ctx, op, nil); err == nil {
			t.Errorf("Send(op %d) accepted", op)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctx, 3, presence); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send after Close = %v, want ErrNotConnected", err)
	}
}
