package confignode

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// stubPod answers the gateway side of a move (import/export/delete) the way
// a gateway's internal API does, recording the calls; fail makes imports fail.
type stubPod struct {
	mu    sync.Mutex
	calls []string
	fail  bool
	// failDelete makes drops answer 503 (a pod that cannot be reached).
	failDelete bool
	// hold makes an import that arrives while it is set hang until its
	// caller gives up (the request's context ends): a move stuck in flight.
	hold bool
	srv  *httptest.Server
}

func newStubPod(t *testing.T) *stubPod {
	p := &stubPod{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.calls = append(p.calls, r.Method+" "+r.URL.Path)
		fail, failDelete, hold := p.fail, p.failDelete, p.hold
		p.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, `{"error":"token"}`, 401)
			return
		}
		if failDelete && r.Method == http.MethodDelete {
			http.Error(w, `{"error":"unreachable"}`, 503)
			return
		}
		if hold && r.Method == http.MethodPost {
			<-r.Context().Done()
			return
		}
		if fail && r.Method == http.MethodPost {
			http.Error(w, `{"error":"import failed: disk full"}`, 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"rows":{},"checksum":"sha256:x"}`))
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *stubPod) setHold(on bool) {
	p.mu.Lock()
	p.hold = on
	p.mu.Unlock()
}

func (p *stubPod) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *stubPod) called(prefix string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.calls {
		if strings.HasPrefix(c, prefix) {
			return true
		}
	}
	return false
}

func guildOn(t *testing.T, tc *testCluster, id uint64) fsm.Guild {
	t.Helper()
	var g fsm.Guild
	tc.nodes[tc.leader()].store.View(func(s *fsm.State) { g, _ = s.Guilds.Get(id) })
	return g
}

// TestMoveAbortsWhenTheCopyFails: a failed import aborts the move, the guild
// stays on its source at a newer epoch, and the target is told to drop its
// copy.
func TestMoveAbortsWhenTheCopyFails(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	a, b := newStubPod(t), newStubPod(t)
	c := tc.client()
	ctx := context.Background()
	tc.registerPodsAt(a.addr(), b.addr())
	res, err := c.PlaceGuilds(ctx, guildIDs(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	g := res.Guilds[0]
	target := map[string]*stubPod{"gateway-0": b, "gateway-1": a}[g.Owner]
	other := map[string]string{"gateway-0": "gateway-1", "gateway-1": "gateway-0"}[g.Owner]
	target.mu.Lock()
	target.fail = true
	target.mu.Unlock()
	mv, err := c.Move(ctx, itoa64(g.ID), other)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the move aborted", func() bool { return guildOn(t, tc, g.ID).Migration == nil })
	after := guildOn(t, tc, g.ID)
	if after.Owner != g.Owner || after.Epoch <= mv.Epoch {
		t.Fatalf("after abort: owner %s epoch %d (move epoch %d), want owner %s and a newer epoch", after.Owner, after.Epoch, mv.Epoch, g.Owner)
	}
	waitFor(t, 5*time.Second, "the target told to drop its copy", func() bool { return target.called("DELETE /internal/guilds/") })
	// Refusals.
	if _, err := c.Move(ctx, itoa64(g.ID), g.Owner); !isStatus(err, 409) {
		t.Fatalf("move to the owner: %v", err)
	}
	if _, err := c.Move(ctx, "42", other); !isStatus(err, 404) {
		t.Fatalf("move of an unknown guild: %v", err)
	}
	if _, err := c.Move(ctx, itoa64(g.ID), "gateway-9"); !isStatus(err, 404) {
		t.Fatalf("move to an unknown pod: %v", err)
	}
}

// A settled move releases its guild at once: the old copy's drop, retried
// for minutes while the old owner cannot be reached, never holds up the next
// move of the guild (chaos seed 6: 409 "still running" after the move had
// completed).
func TestAGuildMovesAgainWhileItsOldCopysDropIsRetried(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	a, b := newStubPod(t), newStubPod(t)
	c := tc.client()
	ctx := context.Background()
	for i, p := range []*stubPod{a, b} {
		if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-" + itoa(i), Addr: p.addr()}); err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		p.failDelete = true
		p.mu.Unlock()
	}
	res, err := c.PlaceGuilds(ctx, guildIDs(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	g := res.Guilds[0]
	source := map[string]*stubPod{"gateway-0": a, "gateway-1": b}[g.Owner]
	other := map[string]string{"gateway-0": "gateway-1", "gateway-1": "gateway-0"}[g.Owner]
	if _, err := c.Move(ctx, itoa64(g.ID), other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the move completed", func() bool {
		x := guildOn(t, tc, g.ID)
		return x.Migration == nil && x.Owner == other
	})
	waitFor(t, 5*time.Second, "the old owner asked to drop its copy", func() bool { return source.called("DELETE /internal/guilds/") })
	if _, err := c.Move(ctx, itoa64(g.ID), g.Owner); err != nil {
		t.Fatalf("moving the guild back while the old copy's drop is retried: %v", err)
	}
	waitFor(t, 10*time.Second, "the move back completed", func() bool {
		x := guildOn(t, tc, g.ID)
		return x.Migration == nil && x.Owner == g.Owner
	})
}

// TestAutoRebalanceEvensOutWhenAPodJoins: with --auto-rebalance, a pod that
// joins a skewed cluster gets its share without an operator.
func TestAutoRebalanceEvensOutWhenAPodJoins(t *testing.T) {
	tc := newTestCluster(t, 3, func(i int, c *Config) { c.AutoRebalance = true })
	a, b := newStubPod(t), newStubPod(t)
	c := tc.client()
	ctx := context.Background()
	if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-0", Addr: a.addr()}); err != nil {
		t.Fatal(err)
	}
	tc.place(c, 0, 100)
	if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-1", Addr: b.addr()}); err != nil {
		t.Fatal(err)
	}
	var job assignments.RebalanceJob
	waitFor(t, 30*time.Second, "the automatic rebalance to finish", func() bool {
		var err error
		job, err = c.RebalanceStatus(ctx)
		return err == nil && !job.FinishedAt.IsZero()
	})
	if job.Kind != "rebalance" || job.Done != 50 || job.Failed != 0 {
		t.Fatalf("rebalance job: %d done, %d failed of %d", job.Done, job.Failed, job.Total)
	}
	pods, err := c.Pods(ctx)
	if err != nil || pods.Pods[0].Guilds != 50 || pods.Pods[1].Guilds != 50 {
		t.Fatalf("after the automatic rebalance: %+v %v", pods.Pods, err)
	}
}

// TestADrainSurvivesALeaderChange: the leader that started a drain loses
// its term while the drain's moves are in flight. The next leader settles
// those moves and carries the drain on by itself: the pod ends owning no
// guild, and GET /v1/rebalance on the new leader reports a drain of that pod
// finished with no move failed.
func TestADrainSurvivesALeaderChange(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	a, b := newStubPod(t), newStubPod(t)
	c := tc.client()
	ctx := context.Background()
	tc.registerPodsAt(a.addr(), b.addr())
	tc.place(c, 0, 20)
	owned := func() int {
		var n int
		tc.nodes[tc.waitLeader()].store.View(func(s *fsm.State) { n = s.GuildCount("gateway-0") })
		return n
	}
	before := owned()
	if before == 0 {
		t.Fatal("gateway-0 owns no guild to drain")
	}
	a.setHold(true)
	b.setHold(true)
	l := tc.leader()
	job, err := c.Drain(ctx, "gateway-0")
	if err != nil {
		t.Fatal(err)
	}
	if job.Total != before {
		t.Fatalf("the drain plans %d moves, want %d", job.Total, before)
	}
	waitFor(t, 10*time.Second, "an import of the drain in flight", func() bool { return b.called("POST ") })
	a.setHold(false)
	b.setHold(false)
	tc.moveLeadershipAway(l)
	waitFor(t, 60*time.Second, "the new leader to finish the drain", func() bool {
		j, err := tc.nodeClient(tc.waitLeader()).RebalanceStatus(ctx)
		if err != nil || j.Kind != "drain" || j.Pod != "gateway-0" || j.FinishedAt.IsZero() {
			return false
		}
		job = j
		return true
	})
	if job.Failed != 0 || job.Done != job.Total {
		t.Fatalf("the resumed drain: %d of %d done, %d failed: %v", job.Done, job.Total, job.Failed, job.Errors)
	}
	if n := owned(); n != 0 {
		t.Fatalf("gateway-0 owns %d guilds after the resumed drain", n)
	}
}

func itoa64(v uint64) string { return strconv.FormatUint(v, 10) }

// A pod's reported replication lag is the loss window of its failover: the
// leader keeps the last value each heartbeat carried; a malformed value is
// refused with 400 and changes nothing; a pod that reported none is -1.
func TestFailoverLossWindowIsThePodsLastReportedLag(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	p := newStubPod(t)
	c := tc.client()
	ctx := context.Background()
	if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-0", Addr: p.addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-1", Addr: p.addr()}); err != nil {
		t.Fatal(err)
	}
	if err := c.HeartbeatWithLag(ctx, "gateway-0", 1234); err != nil {
		t.Fatal(err)
	}
	err := c.Do(ctx, http.MethodPost, "/v1/pods/gateway-0/heartbeat?replication_lag_ms=soon", nil, nil)
	if !isStatus(err, 400) {
		t.Fatalf("heartbeat with a malformed lag: %v, want 400", err)
	}
	leader := tc.nodes[tc.leader()]
	if got := leader.failoverSpec("gateway-0").lossWindowMs; got != 1234 {
		t.Fatalf("loss window of gateway-0: %d, want 1234", got)
	}
	if got := leader.failoverSpec("gateway-1").lossWindowMs; got != -1 {
		t.Fatalf("loss window of a pod that reported no lag: %d, want -1", got)
	}
	if err := c.Heartbeat(ctx, "gateway-0"); err != nil { // no sidecar answer: unknown again
		t.Fatal(err)
	}
	if got := leader.failoverSpec("gateway-0").lossWindowMs; got != -1 {
		t.Fatalf("loss window after a heartbeat without a lag: %d, want -1", got)
	}
}

// blockingPod holds every import until released, counting how many run at
// once.
type blockingPod struct {
	mu        sync.Mutex
	running   int
	maxAtOnce int
	release   chan struct{}
	srv       *httptest.Server
}

func newBlockingPod(t *testing.T) *blockingPod {
	p := &blockingPod{release: make(chan struct{})}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			p.mu.Lock()
			p.running++
			p.maxAtOnce = max(p.maxAtOnce, p.running)
			p.mu.Unlock()
			select {
			case <-p.release:
			case <-r.Context().Done():
			}
			p.mu.Lock()
			p.running--
			p.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"rows":{},"checksum":"sha256:x"}`))
	}))
	t.Cleanup(p.srv.Close)
	t.Cleanup(func() { p.open() })
	return p
}

func (p *blockingPod) open() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

func (p *blockingPod) atOnce() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxAtOnce
}

// A failover's source is down and does none of the work: its moves are
// capped per target (MaxMovesPerPod each), not by the dead source, so the
// targets import at full width at once.
func TestAFailoversMovesAreCappedPerTargetNotByTheDeadSource(t *testing.T) {
	const perPod = 3
	tc := newTestCluster(t, 1, func(_ int, c *Config) {
		c.PodTimeout = time.Second
		c.FailoverGrace = 500 * time.Millisecond
		c.FailoverReplica = "file:///replicas/{pod}"
		c.MaxMovesPerPod = perPod
	})
	c := tc.client()
	ctx := context.Background()
	dead := newStubPod(t)
	if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-0", Addr: dead.addr()}); err != nil {
		t.Fatal(err)
	}
	const guilds = perPod + 1 // more than the dead source's cap would let run at once
	if _, err := c.PlaceGuilds(ctx, guildIDs(0, guilds)); err != nil {
		t.Fatal(err)
	}
	targets := []*blockingPod{newBlockingPod(t), newBlockingPod(t)}
	hbCtx, stop := context.WithCancel(ctx)
	defer stop()
	for i, p := range targets {
		id := "gateway-" + itoa(i+1)
		if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: id, Addr: strings.TrimPrefix(p.srv.URL, "http://")}); err != nil {
			t.Fatal(err)
		}
		go func() {
			for hbCtx.Err() == nil {
				_ = c.Heartbeat(hbCtx, id)
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
	migrating := func() (n int, to map[string]int) {
		to = map[string]int{}
		tc.nodes[tc.leader()].store.View(func(s *fsm.State) {
			for g := range s.Guilds.Migrations() {
				n++
				to[g.Migration.To]++
			}
		})
		return n, to
	}
	waitFor(t, 20*time.Second, "every failover move running at once", func() bool {
		n, _ := migrating()
		return n == guilds && targets[0].atOnce()+targets[1].atOnce() == guilds
	})
	_, to := migrating()
	for i, p := range targets {
		if got := p.atOnce(); got > perPod {
			t.Fatalf("gateway-%d imported %d guilds at once, MaxMovesPerPod is %d (planned to it: %v)", i+1, got, perPod, to)
		}
		p.open()
	}
	waitFor(t, 10*time.Second, "the dead pod's guilds owned by the live ones", func() bool {
		n := 0
		tc.nodes[tc.leader()].store.View(func(s *fsm.State) { n = s.GuildCount("gateway-0") })
		return n == 0
	})
}
