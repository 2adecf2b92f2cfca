package confignode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/podapi"
)

// metricValue reads one sample (counter or gauge) from a registry; labels
// must match exactly. It returns -1 when the sample does not exist.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// podCall is one request a config node made to a pod.
type podCall struct {
	from, method, path string
}

// recordingPod is a gateway's internal API for moves that records who called
// it; with block set, an import hangs until its caller gives up (the
// request's context ends).
type recordingPod struct {
	mu        sync.Mutex
	calls     []podCall
	block     bool
	started   chan struct{} // closed when a blocked import arrives
	cancelled chan struct{} // closed when its caller gave up on it
	once      sync.Once
	srv       *httptest.Server
}

func newRecordingPod(t *testing.T, block bool) *recordingPod {
	p := &recordingPod{block: block, started: make(chan struct{}), cancelled: make(chan struct{})}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.calls = append(p.calls, podCall{r.Header.Get(podapi.HeaderConfigNode), r.Method, r.URL.Path})
		p.mu.Unlock()
		if r.Method == http.MethodPost && p.block {
			p.once.Do(func() { close(p.started) })
			<-r.Context().Done()
			close(p.cancelled)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"rows":{},"checksum":"sha256:x"}`))
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *recordingPod) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *recordingPod) callsFrom(node string) []podCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []podCall
	for _, c := range p.calls {
		if node == "" || c.from == node {
			out = append(out, c)
		}
	}
	return out
}

func (p *recordingPod) deleted(by string) bool {
	for _, c := range p.callsFrom(by) {
		if c.method == http.MethodDelete {
			return true
		}
	}
	return false
}

func waitClosed(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// movePods registers two recording pods and places one guild; it returns the
// guild, its owner's pod and the other pod (the move's target) with its id.
func movePods(t *testing.T, tc *testCluster, blockImports bool) (g fsm.Guild, src, dst *recordingPod, dstID string) {
	t.Helper()
	ctx := context.Background()
	a, b := newRecordingPod(t, blockImports), newRecordingPod(t, blockImports)
	c := tc.client()
	tc.registerPodsAt(a.addr(), b.addr())
	res, err := c.PlaceGuilds(ctx, guildIDs(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	g = res.Guilds[0]
	if g.Owner == "gateway-0" {
		return g, a, b, "gateway-1"
	}
	return g, b, a, "gateway-0"
}

// ambiguousError is what propose returns when a commit timed out after the
// entry may have been enqueued.
func ambiguousError(cmd fsm.Command) error {
	return fmt.Errorf("%w: %s was not committed within 5s; it may still be applied later: %w", errNoQuorum, cmd.Type, raft.ErrEnqueueTimeout)
}

// TestAmbiguousCompleteMoveThatCommittedCompletesTheMove: the CompleteMove
// entry is applied but its proposer sees a timeout. The leader reads the
// guild back and finishes the move — the target owns the guild at the move's
// epoch, the source is told to drop its copy — instead of aborting it and
// deleting the new owner's data.
func TestAmbiguousCompleteMoveThatCommittedCompletesTheMove(t *testing.T) {
	var completes, aborts atomic.Int32
	tc := newTestCluster(t, 1, func(i int, c *Config) {
		c.hooks = &testHooks{propose: func(ctx context.Context, cmd fsm.Command, next func() (proposeResult, error)) (proposeResult, error) {
			switch cmd.Type {
			case fsm.CmdCompleteMove:
				completes.Add(1)
				if _, err := next(); err != nil {
					return proposeResult{}, err
				}
				return proposeResult{}, ambiguousError(cmd) // applied, but the proposer cannot tell
			case fsm.CmdAbortMove:
				aborts.Add(1)
			}
			return next()
		}}
	})
	g, src, dst, dstID := movePods(t, tc, false)
	mv, err := tc.client().Move(context.Background(), itoa64(g.ID), dstID)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the source told to drop its copy", func() bool { return src.deleted("") })
	n := tc.nodes[0]
	after := guildOn(t, tc, g.ID)
	if after.Owner != dstID || after.Epoch != mv.Epoch || after.Migration != nil {
		t.Fatalf("after an applied but ambiguous commit: %+v, want owner %s at epoch %d", after, dstID, mv.Epoch)
	}
	if dst.deleted("") || aborts.Load() != 0 || completes.Load() != 1 {
		t.Fatalf("the new owner was told to drop its copy (%v) or the move aborted (%d aborts, %d completes)", dst.deleted(""), aborts.Load(), completes.Load())
	}
	reg := n.Registry()
	if metricValue(t, reg, "modbot_config_migrations_total", map[string]string{"result": "completed"}) != 1 ||
		metricValue(t, reg, "modbot_config_migrations_total", map[string]string{"result": "aborted"}) > 0 ||
		metricValue(t, reg, "modbot_config_migration_ambiguous_commits_total", nil) != 1 {
		t.Fatal("metrics do not show one completed move and one ambiguous commit")
	}
}

// TestAmbiguousCompleteMoveThatDidNotCommitIsProposedAgain: the first
// CompleteMove never reaches the log (enqueue timeout). Read back, the guild
// is still migrating at the move's epoch, so the leader proposes it again and
// the move completes.
func TestAmbiguousCompleteMoveThatDidNotCommitIsProposedAgain(t *testing.T) {
	var completes atomic.Int32
	tc := newTestCluster(t, 1, func(i int, c *Config) {
		c.hooks = &testHooks{propose: func(ctx context.Context, cmd fsm.Command, next func() (proposeResult, error)) (proposeResult, error) {
			if cmd.Type == fsm.CmdCompleteMove && completes.Add(1) == 1 {
				return proposeResult{}, ambiguousError(cmd) // dropped before the log
			}
			return next()
		}}
	})
	g, src, dst, dstID := movePods(t, tc, false)
	mv, err := tc.client().Move(context.Background(), itoa64(g.ID), dstID)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the source told to drop its copy", func() bool { return src.deleted("") })
	after := guildOn(t, tc, g.ID)
	if after.Owner != dstID || after.Epoch != mv.Epoch || after.Migration != nil || completes.Load() != 2 || dst.deleted("") {
		t.Fatalf("after a lost commit and a retry: %+v (%d completes), want owner %s at epoch %d", after, completes.Load(), dstID, mv.Epoch)
	}
}

// TestLostLeadershipStopsInFlightMoves: a leader that loses leadership
// mid-move cancels the move's calls to pods and calls no pod again (no
// abort, no drop of a copy: it no longer decides), all its leader tasks
// end, and the new leader settles the orphaned move (aborts it, drops the
// target's copy).
func TestLostLeadershipStopsInFlightMoves(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	g, src, dst, dstID := movePods(t, tc, true)
	l := tc.leader()
	old := tc.cfgs[l].ID
	mv, err := tc.client().Move(context.Background(), itoa64(g.ID), dstID)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, dst.started, 10*time.Second, "the target's import")
	tc.moveLeadershipAway(l)
	waitClosed(t, dst.cancelled, 10*time.Second, "the old leader to give up the import")
	waitFor(t, 10*time.Second, "the old leader's tasks to end", func() bool { return tc.nodes[l].leader.Running() == 0 })
	nl := tc.waitLeader()
	waitFor(t, 15*time.Second, "the new leader to abort the orphaned move", func() bool {
		var after fsm.Guild
		tc.nodes[nl].store.View(func(s *fsm.State) { after, _ = s.Guilds.Get(g.ID) })
		return after.Migration == nil && after.Epoch > mv.Epoch
	})
	waitFor(t, 10*time.Second, "the new leader to drop the target's copy", func() bool { return dst.deleted(tc.cfgs[nl].ID) })
	var after fsm.Guild
	tc.nodes[nl].store.View(func(s *fsm.State) { after, _ = s.Guilds.Get(g.ID) })
	if after.Owner != g.Owner || after.Epoch <= mv.Epoch {
		t.Fatalf("after the orphan was aborted: %+v (move epoch %d)", after, mv.Epoch)
	}
	if calls := append(src.callsFrom(old), dst.callsFrom(old)...); len(calls) != 1 || calls[0].method != http.MethodPost {
		t.Fatalf("the old leader called pods %+v; want only the import it gave up", calls)
	}
}

// TestCloseWaitsForLeaderTasks: Close cancels the leader's in-flight move and
// returns only once the move's task has ended.
func TestCloseWaitsForLeaderTasks(t *testing.T) {
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	tc := newTestCluster(t, 1, func(i int, c *Config) {
		c.hooks = &testHooks{taskDone: func(task string) {
			if task == "move" {
				once.Do(func() { close(reached) })
				<-release
			}
		}}
	})
	g, _, dst, dstID := movePods(t, tc, true)
	if _, err := tc.client().Move(context.Background(), itoa64(g.ID), dstID); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, dst.started, 10*time.Second, "the target's import")
	n := tc.nodes[0]
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	waitClosed(t, reached, 10*time.Second, "the move task to end")
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the move task was still ending", err)
	default:
	}
	close(release)
	select {
	case err := <-closed:
		if err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return after the move task ended")
	}
	if r := n.leader.Running(); r != 0 {
		t.Fatalf("%d leader tasks still running after Close", r)
	}
	if err := n.leader.spawnCurrent("late", func(context.Context) {}); !errors.Is(err, errNotLeader) {
		t.Fatalf("a task started after Close: %v", err)
	}
}

// TestOrphanedMovesAreAbortedDespiteFailures: a move left in flight by a
// leader that lost leadership is aborted by the next one even though its
// first aborts fail: it retries with backoff, counting each failure.
func TestOrphanedMovesAreAbortedDespiteFailures(t *testing.T) {
	var attempts atomic.Int32
	tc := newTestCluster(t, 3, func(i int, c *Config) {
		c.OrphanCheckInterval = time.Hour // only the sweep at the start of a term
		c.hooks = &testHooks{propose: func(ctx context.Context, cmd fsm.Command, next func() (proposeResult, error)) (proposeResult, error) {
			if cmd.Type == fsm.CmdAbortMove && cmd.Reason == orphanReason && attempts.Add(1) <= 3 {
				return proposeResult{}, ambiguousError(cmd)
			}
			return next()
		}}
	})
	g, _, _, dstID := movePods(t, tc, false)
	l := tc.leader()
	// A move the leader records but never runs: what a leader that dies
	// right after StartMove leaves behind.
	res, err := tc.nodes[l].proposeRaft(context.Background(), fsm.Command{Type: fsm.CmdStartMove, Guild: g.ID, To: dstID})
	if err != nil {
		t.Fatal(err)
	}
	tc.moveLeadershipAway(l)
	nl := tc.waitLeader()
	waitFor(t, 20*time.Second, "the orphan aborted", func() bool {
		var after fsm.Guild
		tc.nodes[nl].store.View(func(s *fsm.State) { after, _ = s.Guilds.Get(g.ID) })
		return after.Migration == nil && after.Epoch > res.Index
	})
	var after fsm.Guild
	tc.nodes[nl].store.View(func(s *fsm.State) { after, _ = s.Guilds.Get(g.ID) })
	if after.Owner != g.Owner || after.Epoch <= res.Index {
		t.Fatalf("after the abort: %+v (move epoch %d)", after, res.Index)
	}
	if a := attempts.Load(); a != 4 {
		t.Fatalf("%d abort attempts, want 3 failures and 1 success", a)
	}
	if f := metricValue(t, tc.nodes[nl].Registry(), "modbot_config_migration_orphan_abort_failures_total", nil); f != 3 {
		t.Fatalf("orphan abort failures metric %v, want 3", f)
	}
}
