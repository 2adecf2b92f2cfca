package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/mux"
	dto "github.com/prometheus/client_model/go"

	"github.com/modbot/modbot/fsm"
)

// Unit tests of the invariants in doc.go, on the in-memory twins
// (inmem_test.go): real pods with real SQLite files, a real fsm.State as
// the map, no network.

// twoPods starts pods a and b with shards 0 and 1 (a holds shard 0, b
// holds shard 1) and returns a guild on shard 0 owned by owner.
func twoPods(t *testing.T, owner int) (*memWorld, uint64) {
	t.Helper()
	w := newMemWorld(t, 2)
	w.addPod("gateway-0")
	w.addPod("gateway-1")
	waitFor(t, 5*time.Second, "one shard per pod", func() bool {
		return w.cluster.ShardHolder(0) != "" && w.cluster.ShardHolder(1) != "" && w.cluster.ShardHolder(0) != w.cluster.ShardHolder(1)
	})
	// Make pod 0 the holder of shard 0 whatever the FSM chose.
	if w.cluster.ShardHolder(0) != "gateway-0" {
		w.pods[0], w.pods[1] = w.pods[1], w.pods[0]
	}
	g := guildOnShard(0, 2, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}})
	gi, _ := w.cluster.Lookup(g)
	if want := w.pods[owner].cfg.ID; gi.Owner != want {
		w.move(g, want)
	}
	w.waitSessions(0, 1)
	return w, g
}

// move runs a move's map steps (no data copy: these tests are about
// events), fencing the source at the move's epoch as its export does.
func (w *memWorld) move(g uint64, to string, between ...func()) {
	t := w.t
	t.Helper()
	idx := w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdStartMove, Guild: g, To: to})
	gi, _ := w.cluster.Lookup(g)
	if gi.Migration == nil || gi.Migration.Epoch != idx {
		t.Fatalf("guild %d not migrating at %d: %+v", g, idx, gi)
	}
	src := w.pod(gi.Migration.From)
	if err := src.store.Fence(context.Background(), g, idx); err != nil {
		t.Fatalf("fence the source: %v", err)
	}
	for _, f := range between {
		f()
	}
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdCompleteMove, Guild: g, Epoch: idx})
}

func (w *memWorld) pod(id string) *Node {
	for _, n := range w.pods {
		if n.cfg.ID == id {
			return n
		}
	}
	w.t.Fatalf("no pod %s", id)
	return nil
}

func (w *memWorld) waitSessions(shard, n int) {
	w.t.Helper()
	waitFor(w.t, 5*time.Second, fmt.Sprintf("%d session(s) on shard %d", n, shard), func() bool { return w.discord.liveSessions(shard) == n })
}

// sendMessages dispatches messages 1..n of guild g on its shard, pacing
// them so moves and faults interleave with the stream.
func (w *memWorld) sendMessages(g uint64, from, to int, pace time.Duration) {
	sc := w.cluster.ShardCount()
	for i := from; i <= to; i++ {
		w.discord.dispatch(fsm.ShardOf(g, sc), "MESSAGE_CREATE", msgCreate(g, uint64(i)))
		if pace > 0 {
			time.Sleep(pace)
		}
	}
}

// assertOrderedOnce checks that messages 1..n of g were each committed by
// the final owner, first in send order, and (with noDups) exactly once.
func (w *memWorld) assertOrderedOnce(g uint64, n int, noDups bool) {
	t := w.t
	t.Helper()
	var log []committed
	waitFor(t, 10*time.Second, fmt.Sprintf("all %d messages of guild %d committed", n, g), func() bool {
		log = w.commits.of(g)
		seen := map[uint64]bool{}
		for _, c := range log {
			seen[c.msg] = true
		}
		return len(seen) >= n
	})
	seen := map[uint64]int{}
	var hi uint64
	inversions, dups := 0, 0
	for _, c := range log {
		seen[c.msg]++
		if seen[c.msg] > 1 {
			dups++
			continue
		}
		if c.msg < hi {
			inversions++
			if inversions <= 3 {
				t.Errorf("message %d committed (on %s) after message %d", c.msg, c.pod, hi)
			}
		}
		hi = max(hi, c.msg)
	}
	if inversions > 0 {
		t.Errorf("per-guild order broken: %d of %d messages committed after a later one", inversions, n)
	}
	if noDups && dups > 0 {
		t.Errorf("%d messages committed twice", dups)
	}
	t.Logf("guild %d: %d messages, %d commits, %d inversions, %d duplicates", g, n, len(log), inversions, dups)
}

// Ack after commit: the holder acknowledges a dispatch only once it is
// committed somewhere durable. With the owner refusing every forward, the
// acknowledged events are all in the holder's durable outbox; nothing
// acknowledged is only in memory.
func TestAckAfterCommit(t *testing.T) {
	w, g := twoPods(t, 1)
	holder, owner := w.pods[0], w.pods[1]
	w.peers.setFault(func(string) error { return errors.New("owner unreachable (test)") })
	const n = 200
	w.sendMessages(g, 1, n, 0)
	waitFor(t, 5*time.Second, "every dispatch acknowledged", func() bool {
		holder.shards.mu.Lock()
		r := holder.shards.running[0]
		holder.shards.mu.Unlock()
		if r == nil {
			return false
		}
		sh, _ := r.session()
		return sh != nil && sh.Checkpoint().Seq >= n
	})
	held, err := holder.store.HeldCount(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	if held != n || len(w.commits.of(g)) != 0 {
		t.Fatalf("acknowledged %d dispatches: %d held on the holder, %d committed on the owner; want all %d held", n, held, len(w.commits.of(g)), n)
	}
	w.peers.setFault(nil)
	w.assertOrderedOnce(g, n, true)
	if c := w.commits.of(g); c[0].pod != owner.cfg.ID {
		t.Fatalf("committed on %s, want the owner %s", c[0].pod, owner.cfg.ID)
	}
}

// Per-guild order: a guild's events are committed in the order the shard
// delivered them, exactly once, across a move — whichever pod holds the
// shard, and when a forward fails or the source refuses mid-move. This is
// the table in docs/migration.md, checked on the twins.
func TestPerGuildOrderAcrossAMove(t *testing.T) {
	type tc struct {
		name  string
		owner int // pod owning the guild before the move; pod 0 holds the shard
		fault func(w *memWorld) func()
	}
	failForwards := func(w *memWorld) func() {
		w.peers.setFault(func(string) error { return errors.New("forward timed out (test)") })
		return func() { w.peers.setFault(nil) }
	}
	for _, c := range []tc{
		{name: "target-is-the-holder", owner: 1},
		{name: "source-is-the-holder", owner: 0},
		{name: "target-is-the-holder-forward-fails-mid-move", owner: 1, fault: failForwards},
		{name: "source-is-the-holder-forward-fails-mid-move", owner: 0, fault: failForwards},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, g := twoPods(t, c.owner)
			to := w.pods[1-c.owner].cfg.ID
			const n = 600
			done := make(chan struct{})
			go func() { defer close(done); w.sendMessages(g, 1, n, 200*time.Microsecond) }()
			time.Sleep(20 * time.Millisecond)
			w.move(g, to, func() {
				var heal func()
				if c.fault != nil {
					heal = c.fault(w)
				}
				time.Sleep(30 * time.Millisecond) // events arrive while the guild migrates
				if heal != nil {
					heal()
				}
			})
			<-done
			w.assertOrderedOnce(g, n, c.fault == nil)
		})
	}
}

// Per-guild order, third pod: the holder is neither source nor target.
func TestPerGuildOrderAcrossAMoveWithAThirdHolder(t *testing.T) {
	w, g := twoPods(t, 1)
	third := w.addPod("gateway-2")
	if h := w.cluster.ShardHolder(0); h != w.pods[0].cfg.ID {
		t.Fatalf("shard 0 moved to %s when a third pod joined", h)
	}
	const n = 400
	done := make(chan struct{})
	go func() { defer close(done); w.sendMessages(g, 1, n, 200*time.Microsecond) }()
	time.Sleep(10 * time.Millisecond)
	w.move(g, third.cfg.ID, func() { time.Sleep(30 * time.Millisecond) })
	<-done
	w.assertOrderedOnce(g, n, true)
}

// One delivery at a time: concurrent deliveries of one guild's held events
// (the outbox loop and any other caller) never hand an event over twice.
func TestOutboxDeliversEachHeldEventOnce(t *testing.T) {
	w, g := twoPods(t, 1)
	holder := w.pods[0]
	w.peers.setFault(func(string) error { return errors.New("down (test)") })
	const n = 300
	w.sendMessages(g, 1, n, 0)
	waitFor(t, 5*time.Second, "all held", func() bool {
		k, _ := holder.store.HeldCount(context.Background(), g)
		return k == n
	})
	var calls atomic.Int64
	w.peers.setFault(func(string) error { calls.Add(1); time.Sleep(time.Millisecond); return nil })
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _ = holder.outbox.deliver(context.Background(), g) }()
	}
	wg.Wait()
	w.assertOrderedOnce(g, n, true)
}

// Handoff without a gap: when a shard moves between live pods, the old
// holder keeps its session until the new holder has a checkpoint of its own
// session at its epoch, and loses nothing dispatched meanwhile.
func TestHandoffWithoutAGap(t *testing.T) {
	w := newMemWorld(t, 1)
	a := w.addPod("gateway-0")
	w.waitSessions(0, 1)
	g := guildOnShard(0, 1, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}})
	const n = 500
	done := make(chan struct{})
	go func() { defer close(done); w.sendMessages(g, 1, n, 200*time.Microsecond) }()
	time.Sleep(10 * time.Millisecond)
	b := w.addPod("gateway-1")
	// Hand shard 0 to b: drain a (it keeps owning its guilds).
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdDrainPod, PodID: a.cfg.ID})
	waitFor(t, 5*time.Second, "b holds the shard", func() bool { return w.cluster.ShardHolder(0) == b.cfg.ID })
	<-done
	w.assertOrderedOnce(g, n, false)
	waitFor(t, 5*time.Second, "a handed the shard over", func() bool {
		a.shards.mu.Lock()
		defer a.shards.mu.Unlock()
		return len(a.shards.leaving) == 0 && len(a.shards.running) == 0
	})
	if got := w.discord.liveSessions(0); got != 1 {
		t.Fatalf("%d live sessions on shard 0 after the handoff, want 1 (b's own): %v", got, w.discord.openLog())
	}
	sl, _ := w.cluster.ConsistentShards(context.Background())
	if cp := sl.Shards[0].Checkpoint; cp == nil || cp.Holder != b.cfg.ID || cp.Epoch != sl.Shards[0].Epoch {
		t.Fatalf("checkpoint %+v, want b's at epoch %d", cp, sl.Shards[0].Epoch)
	}
}

// One session holder: a live pod wrongly marked down loses its shard; the
// new holder resumes its session from the checkpoint; the old holder must
// let go of that session without a close 1000 (which would invalidate it
// for the new holder) and must not reopen it. Nothing dispatched is lost.
func TestWronglyDownPodNeverClosesTheSessionItsSuccessorResumed(t *testing.T) {
	w := newMemWorld(t, 1)
	a := w.addPod("gateway-0")
	w.waitSessions(0, 1)
	g := guildOnShard(0, 1, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}})
	b := w.addPod("gateway-1")
	w.move(g, b.cfg.ID) // b owns the guild, a holds the shard and forwards
	const n = 600
	done := make(chan struct{})
	go func() { defer close(done); w.sendMessages(g, 1, n, 200*time.Microsecond) }()
	waitFor(t, 5*time.Second, "a checkpoint of a's session", func() bool {
		sl, _ := w.cluster.ConsistentShards(context.Background())
		cp := sl.Shards[0].Checkpoint
		return cp != nil && cp.Holder == a.cfg.ID && cp.Seq > 50
	})
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdMarkPodDown, PodID: a.cfg.ID}) // a lives on
	waitFor(t, 5*time.Second, "b holds the shard", func() bool { return w.cluster.ShardHolder(0) == b.cfg.ID })
	<-done
	w.assertOrderedOnce(g, n, false)
	opens := w.discord.openLog()
	if len(opens) != 2 || opens[1] != "resume shard 0 session s1" {
		t.Fatalf("sessions opened: %v; want a's identify and b's resume of it", opens)
	}
	w.discord.mu.Lock()
	invalid := w.discord.sessions["s1"].invalid
	w.discord.mu.Unlock()
	if invalid {
		t.Fatal("the old holder closed (invalidated) the session its successor resumed")
	}
	if got := w.discord.liveSessions(0); got != 1 {
		t.Fatalf("%d live sessions on shard 0, want 1", got)
	}
}

// holderWithCheckpointedMessages: pod a holds the one shard, pod b owns
// guild g (a forwards to it); messages 1..100 are dispatched and a has saved
// a checkpoint of its session.
func holderWithCheckpointedMessages(t *testing.T) (*memWorld, *Node, uint64) {
	t.Helper()
	w := newMemWorld(t, 1)
	a := w.addPod("gateway-0")
	w.waitSessions(0, 1)
	g := guildOnShard(0, 1, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}})
	b := w.addPod("gateway-1")
	w.move(g, b.cfg.ID) // b owns the guild, a holds the shard and forwards
	w.sendMessages(g, 1, 100, 0)
	waitFor(t, 5*time.Second, "a checkpoint of a's session", func() bool {
		sl, _ := w.cluster.ConsistentShards(context.Background())
		cp := sl.Shards[0].Checkpoint
		return cp != nil && cp.Holder == a.cfg.ID && cp.Seq > 0
	})
	return w, a, g
}

// Every dispatched event is committed even when the shard's holder dies
// during a planned handoff. a holds shard 0 (b owns the guild) and is killed,
// but the map still says it is up; a is drained, so b identifies a session
// of its own and waits for a's release, which never comes. When a is marked
// down, what only a's session carries — what a had received and not
// committed, and what Discord dispatched to it after it died and before b's
// READY — must be recovered by resuming a's session from its last
// checkpoint, and committed before b's own events (chaos seed 69 lost
// exactly that gap).
func TestEveryEventSurvivesAHolderThatDiesBeforeReleasingTheShard(t *testing.T) {
	w, a, g := holderWithCheckpointedMessages(t)
	a.Kill()
	w.peers.remove(a.cfg.ID) // dead, and still up in the map
	w.sendMessages(g, 101, 200, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdDrainPod, PodID: a.cfg.ID})
	waitFor(t, 5*time.Second, "b identified a session of its own", func() bool {
		return slices.Contains(w.discord.openLog(), "identify shard 0 session s2")
	})
	w.sendMessages(g, 201, 300, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdMarkPodDown, PodID: a.cfg.ID})
	w.sendMessages(g, 301, 400, 0)
	w.assertOrderedOnce(g, 400, false)
	opens := w.discord.openLog()
	if want := []string{"identify shard 0 session s1", "identify shard 0 session s2", "resume shard 0 session s1"}; !slices.Equal(opens, want) {
		t.Fatalf("sessions opened: %v; want %v", opens, want)
	}
	waitFor(t, 5*time.Second, "one live session on shard 0 (b's own)", func() bool { return w.discord.liveSessions(0) == 1 })
}

// Every dispatched event is committed even when the shard's previous holder
// let go of its session without draining it — it crashed and the map still
// says it is up, or the shard went to nobody when every pod was marked down
// at once (chaos seed 5) — and then answers that it runs no session of the
// shard. "Released" is not "drained": the new holder must recover the
// checkpoint's session unless the old holder says it closed that session
// after committing its backlog.
func TestEveryEventSurvivesAHolderThatLetGoWithoutDraining(t *testing.T) {
	w, a, g := holderWithCheckpointedMessages(t)
	a.Kill() // still reachable: it answers that it runs no session of the shard
	w.sendMessages(g, 101, 200, 0)
	w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdDrainPod, PodID: a.cfg.ID})
	w.sendMessages(g, 201, 300, 0)
	w.assertOrderedOnce(g, 300, false)
	opens := w.discord.openLog()
	if want := []string{"identify shard 0 session s1", "identify shard 0 session s2", "resume shard 0 session s1"}; !slices.Equal(opens, want) {
		t.Fatalf("sessions opened: %v; want %v", opens, want)
	}
}

// A guild's rows live in its owner and nowhere else: a former owner whose
// copy was never dropped (the drop request was lost) deletes it by itself
// within its janitor interval, not minutes later (chaos seed 83).
func TestAFormerOwnersStrayCopyIsDroppedByItsJanitor(t *testing.T) {
	w, g := twoPods(t, 0)
	a, b := w.pods[0], w.pods[1]
	w.sendMessages(g, 1, 20, 0)
	w.assertOrderedOnce(g, 20, true)
	w.move(g, b.cfg.ID) // the map moves it; nobody asks a to drop its copy
	waitFor(t, 5*time.Second, "a's copy dropped by its janitor", func() bool {
		ids, err := a.store.GuildIDs(context.Background())
		return err == nil && !slices.Contains(ids, g)
	})
}

// No event is silently lost: one the handlers cannot take (here a
// MESSAGE_CREATE whose id is not a snowflake) is dead-lettered — stored, counted — and
// acknowledged, so the events after it flow; replaying it while it is still
// bad keeps it, with one more attempt.
func TestPoisonEventIsDeadLetteredNotLost(t *testing.T) {
	w, g := twoPods(t, 0)
	owner := w.pods[0]
	w.sendMessages(g, 1, 10, 0)
	w.discord.dispatch(0, "MESSAGE_CREATE", map[string]any{"id": "not-a-snowflake", "guild_id": fmt.Sprint(g), "channel_id": "7",
		"author": map[string]any{"id": "99"}, "content": "bad id"})
	w.sendMessages(g, 11, 20, 0)
	w.assertOrderedOnce(g, 20, true)
	ctx := context.Background()
	waitFor(t, 5*time.Second, "the poison event dead-lettered", func() bool {
		k, _ := owner.store.DeadLetterCount(ctx, g)
		return k == 1
	})
	var m dto.Metric
	if err := owner.metrics.deadLetters.Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		got := m.GetCounter().GetValue()
		t.Fatalf("modbot_gateway_dead_letters_total = %v, want 1", got)
	}
	list, err := owner.store.DeadLetters(ctx, g, 0, 10)
	if err != nil || len(list) != 1 || list[0].Type != "MESSAGE_CREATE" || list[0].Attempts != 1 {
		t.Fatalf("dead letters %+v (%v): want the one MESSAGE_CREATE, tried once (malformed: no retries)", list, err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", fmt.Sprintf("/internal/dead-letters/%d/replay", list[0].ID), nil)
	req = mux.SetURLVars(req, map[string]string{"id": fmt.Sprint(list[0].ID)})
	owner.handleReplayDeadLetter(rec, req)
	if rec.Code != 409 {
		t.Fatalf("replay of a still-bad event: %d %s, want 409", rec.Code, rec.Body)
	}
	again, _ := owner.store.DeadLetters(ctx, g, 0, 10)
	if len(again) != 1 || again[0].Attempts != 2 {
		t.Fatalf("after a failed replay: %+v, want the dead letter kept with 2 attempts", again)
	}
}
