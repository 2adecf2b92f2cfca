package assignments

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/fsm"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestWatcher(t *testing.T, urls ...string) *Watcher {
	t.Helper()
	if len(urls) == 0 {
		urls = []string{"http://127.0.0.1:1"}
	}
	c, err := NewClient(urls, "tok")
	if err != nil {
		t.Fatal(err)
	}
	return NewWatcher(c, WatcherOptions{Logger: quietLogger(), Name: t.Name(), RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond})
}

func guildEv(rev, id uint64, owner string) fsm.Event {
	return fsm.Event{Revision: rev, Type: fsm.EventGuild, Guild: &fsm.Guild{ID: id, Owner: owner, State: fsm.GuildActive, Epoch: rev, Revision: rev}}
}

func TestLocalMapAppliesEveryEventTypeByUpsert(t *testing.T) {
	m := mapFromSnapshot(&Snapshot{
		Revision: 10, ShardCount: 2,
		Pods:        []fsm.Pod{{ID: "gateway-0", Ordinal: 0, State: fsm.PodActive}},
		Shards:      []fsm.ShardAssignment{{Shard: 0, Holder: "gateway-0"}, {Shard: 1, Holder: "gateway-0"}},
		Guilds:      []fsm.Guild{{ID: 1, Owner: "gateway-0"}},
		ConfigNodes: []fsm.ConfigNode{{ID: "config-0", HTTPAddr: "127.0.0.1:1"}},
	})
	steps := []struct {
		name  string
		ev    fsm.Event
		check func(*localMap) bool
	}{
		{"pod upsert", fsm.Event{Type: fsm.EventPod, Pod: &fsm.Pod{ID: "gateway-1", Ordinal: 1, State: fsm.PodActive}},
			func(m *localMap) bool { return m.pods["gateway-1"].Ordinal == 1 }},
		{"shard holder", fsm.Event{Type: fsm.EventShard, Shard: &fsm.ShardAssignment{Shard: 1, Holder: "gateway-1"}},
			func(m *localMap) bool { return m.shards[1].Holder == "gateway-1" }},
		{"guild place", guildEv(0, 2, "gateway-1"),
			func(m *localMap) bool { g, _ := m.guilds.Get(2); return g.Owner == "gateway-1" }},
		{"guild move", guildEv(0, 1, "gateway-1"),
			func(m *localMap) bool { g, _ := m.guilds.Get(1); return g.Owner == "gateway-1" }},
		{"guild remove", fsm.Event{Type: fsm.EventGuildGone, Guild: &fsm.Guild{ID: 2}},
			func(m *localMap) bool { _, ok := m.guilds.Get(2); return !ok }},
		{"pod remove", fsm.Event{Type: fsm.EventPodRemove, Pod: &fsm.Pod{ID: "gateway-0"}},
			func(m *localMap) bool { _, ok := m.pods["gateway-0"]; return !ok }},
		{"config node add", fsm.Event{Type: fsm.EventConfigNode, ConfigNode: &fsm.ConfigNode{ID: "config-1", HTTPAddr: "127.0.0.1:2"}},
			func(m *localMap) bool { return m.configNodes["config-1"].HTTPAddr == "127.0.0.1:2" }},
		{"config node remove", fsm.Event{Type: fsm.EventConfigNodeRemove, ConfigNode: &fsm.ConfigNode{ID: "config-0"}},
			func(m *localMap) bool { _, ok := m.configNodes["config-0"]; return !ok }},
		{"init keeps holders", fsm.Event{Type: fsm.EventInit, ShardCount: 4},
			func(m *localMap) bool {
				return m.shardCount == 4 && len(m.shards) == 4 && m.shards[1].Holder == "gateway-1"
			}},
	}
	rev := uint64(10)
	for _, s := range steps {
		rev++
		m.apply(rev, []fsm.Event{s.ev})
		if !s.check(m) || m.rev != rev {
			t.Fatalf("%s: not applied (rev %d)", s.name, m.rev)
		}
	}
}

func TestRevisionNeverGoesBackwardsDuplicatesAreIgnored(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, _ := NewClient([]string{"http://127.0.0.1:1"}, "")
	w := NewWatcher(c, WatcherOptions{Logger: quietLogger(), Registerer: reg, Name: "w"})
	w.replace(mapFromSnapshot(&Snapshot{Revision: 5}))
	cases := []struct {
		rev     uint64
		applied bool
	}{{6, true}, {6, false}, {4, false}, {9, true}, {7, false}, {10, true}}
	for _, tc := range cases {
		if got := w.applyChange(tc.rev, []fsm.Event{guildEv(tc.rev, 1, fmt.Sprint("pod-", tc.rev))}); got != tc.applied {
			t.Fatalf("rev %d: applied=%v, want %v", tc.rev, got, tc.applied)
		}
	}
	if w.Revision() != 10 {
		t.Fatalf("revision %d, want 10", w.Revision())
	}
	if g, _ := w.Lookup(1); g.Owner != "pod-10" {
		t.Fatalf("owner %q, want pod-10", g.Owner)
	}
	if got := metricValue(t, w.m.ignored); got != 3 {
		t.Fatalf("ignored_total %v, want 3", got)
	}
	if got := metricValue(t, w.m.revision); got != 10 {
		t.Fatalf("revision gauge %v, want 10", got)
	}
}

func TestSlowSubscriberNeverBlocksAndGetsOneRelistedChange(t *testing.T) {
	w := newTestWatcher(t)
	w.replace(mapFromSnapshot(&Snapshot{Revision: 1}))
	ch, cancel := w.Subscribe(2)
	t.Cleanup(cancel)
	if c := <-ch; !c.Relisted || c.Revision != 1 {
		t.Fatalf("first message %+v, want Relisted at 1", c)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for rev := uint64(2); rev <= 100; rev++ {
			w.applyChange(rev, []fsm.Event{guildEv(rev, rev, "p")})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher blocked on a subscriber that does not read")
	}
	var got []Change
	for len(ch) > 0 {
		got = append(got, <-ch)
	}
	last := got[len(got)-1]
	if last.Revision != 100 && !(got[0].Relisted && got[0].Revision >= 99) {
		t.Fatalf("subscriber did not learn it missed changes: %+v", got)
	}
	relisted := false
	prev := uint64(0)
	for _, c := range got {
		if c.Revision <= prev {
			t.Fatalf("out of order: %+v", got)
		}
		prev = c.Revision
		relisted = relisted || c.Relisted
	}
	if !relisted {
		t.Fatalf("no Relisted change after overflow: %+v", got)
	}
	if metricValue(t, w.m.overflows) == 0 {
		t.Fatal("overflow not counted")
	}
}

func TestSubscribersSeeEveryChangeInOrderOnce(t *testing.T) {
	w := newTestWatcher(t)
	ch, cancel := w.Subscribe(1000)
	w.replace(mapFromSnapshot(&Snapshot{Revision: 3}))
	for rev := uint64(4); rev < 50; rev++ {
		w.applyChange(rev, []fsm.Event{guildEv(rev, rev, "p")})
		w.applyChange(rev, []fsm.Event{guildEv(rev, rev, "dup")})
	}
	cancel()
	want := uint64(3)
	for c := range ch {
		if c.Revision != want || c.Relisted != (want == 3) {
			t.Fatalf("got %+v, want revision %d", c, want)
		}
		want++
	}
	if want != 50 {
		t.Fatalf("stopped at %d", want)
	}
}

func TestWaitRevisionAndWaitSynced(t *testing.T) {
	w := newTestWatcher(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.WaitSynced(ctx); err == nil {
		t.Fatal("WaitSynced returned before any list")
	}
	errc := make(chan error, 1)
	go func() { errc <- w.WaitRevision(context.Background(), 7) }()
	w.replace(mapFromSnapshot(&Snapshot{Revision: 5}))
	w.applyChange(7, nil)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := w.WaitSynced(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// fakeNode is a scripted config node for the watcher's failure handling.
type fakeNode struct {
	mu       sync.Mutex
	snap     Snapshot
	gone     bool // answer watches with 410
	watches  atomic.Int32
	lists    atomic.Int32
	froms    []string
	changes  []string // SSE frames to send on the next watch
	holdOpen bool
}

func (f *fakeNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case "/v1/snapshot":
		f.lists.Add(1)
		_ = json.NewEncoder(w).Encode(f.snap)
	case "/v1/watch":
		f.watches.Add(1)
		f.froms = append(f.froms, r.URL.Query().Get("from"))
		if f.gone {
			w.WriteHeader(http.StatusGone)
			_ = json.NewEncoder(w).Encode(ErrorBody{Error: "gone", OldestRevision: f.snap.Revision})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "event: progress\ndata: {}\n\n")
		for _, c := range f.changes {
			_, _ = io.WriteString(w, c)
		}
		f.changes = nil
	default:
		http.NotFound(w, r)
	}
}

func frame(rev uint64, events ...fsm.Event) string {
	b, _ := json.Marshal(map[string]any{"revision": rev, "events": events})
	return fmt.Sprintf("id: %d\nevent: change\ndata: %s\n\n", rev, b)
}

func TestLaggingNodeNeverMakesTheRevisionGoBackwards(t *testing.T) {
	ahead := &fakeNode{snap: Snapshot{Revision: 20, Guilds: []fsm.Guild{{ID: 1, Owner: "new"}}}}
	lagging := &fakeNode{snap: Snapshot{Revision: 10, Guilds: []fsm.Guild{{ID: 1, Owner: "old"}}}, gone: true}
	sa, sl := httptest.NewServer(ahead), httptest.NewServer(lagging)
	t.Cleanup(sa.Close)
	t.Cleanup(sl.Close)
	// The lagging node is listed first, but is refused; the watcher lists the
	// other one; the lagging node's 410 then triggers a relist that again
	// must not go backwards.
	w := newTestWatcher(t, sl.URL, sa.URL)
	w.replace(mapFromSnapshot(&Snapshot{Revision: 15, Guilds: []fsm.Guild{{ID: 1, Owner: "mid"}}}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for ahead.lists.Load() == 0 || lagging.lists.Load() == 0 || ahead.watches.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("lists ahead=%d lagging=%d watches ahead=%d", ahead.lists.Load(), lagging.lists.Load(), ahead.watches.Load())
		}
		if w.Revision() < 15 {
			t.Fatalf("revision went back to %d", w.Revision())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g, _ := w.Lookup(1); g.Owner != "new" || w.Revision() != 20 {
		t.Fatalf("owner %q at %d, want new at 20", g.Owner, w.Revision())
	}
	ahead.mu.Lock()
	defer ahead.mu.Unlock()
	for _, f := range ahead.froms {
		if f != "20" {
			t.Fatalf("watched from %s, want 20 (froms %v)", f, ahead.froms)
		}
	}
}

func TestEveryNodeDownKeepsTheLastMapAndRetries(t *testing.T) {
	n := &fakeNode{snap: Snapshot{Revision: 3, Guilds: []fsm.Guild{{ID: 9, Owner: "gateway-0"}}}}
	n.changes = []string{frame(4, guildEv(4, 9, "gateway-1")), frame(4, guildEv(4, 9, "dup")), frame(5, guildEv(5, 10, "gateway-1"))}
	srv := httptest.NewServer(n)
	w := newTestWatcher(t, srv.URL)
	reg := prometheus.NewRegistry()
	w.m = newWatcherMetrics(w, "x", reg, quietLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := w.WaitRevision(ctx, 5); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	before := n.watches.Load()
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, w.m.reconnects) < 5 {
		if time.Now().After(deadline) {
			t.Fatal("no retries")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g, ok := w.Lookup(9); !ok || g.Owner != "gateway-1" || w.Revision() != 5 {
		t.Fatalf("lookup %+v %v at %d", g, ok, w.Revision())
	}
	if n.watches.Load() != before {
		t.Fatal("closed server was reached")
	}
	if got := metricValue(t, w.m.ignored); got != 1 {
		t.Fatalf("ignored %v, want 1", got)
	}
	if got := metricValue(t, w.m.connected); got != 0 {
		t.Fatalf("connected %v while every node is down", got)
	}
	if s := metricValue(t, w.m.staleness); s <= 0 {
		t.Fatalf("staleness %v", s)
	}
	fams, err := reg.Gather()
	if err != nil || len(fams) != 8 {
		t.Fatalf("gathered %d metric families: %v", len(fams), err)
	}
	for _, f := range fams {
		if l := f.GetMetric()[0].GetLabel(); len(l) != 1 || l[0].GetName() != "watcher" || l[0].GetValue() != "x" {
			t.Fatalf("%s: labels %v", f.GetName(), l)
		}
	}
}

// metricValue reads one collector's single value.
func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 || len(fams[0].GetMetric()) != 1 {
		t.Fatalf("gather: %v (%d families)", err, len(fams))
	}
	m := fams[0].GetMetric()[0]
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	t.Fatalf("%s: neither counter nor gauge", fams[0].GetName())
	return 0
}

// WaitFor evaluates its condition once when the map is first listed and
// once per change after that: a waiting gateway is woken by the change it
// waits for, never by a clock.
func TestWaitForIsWokenByChangesNotByPolling(t *testing.T) {
	w := newTestWatcher(t)
	var evals atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- w.WaitFor(context.Background(), func(v View) bool {
			evals.Add(1)
			sa, _ := v.Shard(1)
			return sa.Holder == "gateway-2"
		})
	}()
	// Before the first list nothing is evaluated.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.WaitFor(ctx, func(View) bool { return true }); err == nil {
		t.Fatal("WaitFor returned before the first list")
	}
	w.replace(mapFromSnapshot(&Snapshot{Revision: 5, ShardCount: 2, Shards: []fsm.ShardAssignment{{Shard: 0, Holder: "gateway-0"}, {Shard: 1, Holder: "gateway-1"}}}))
	waitEvals := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for evals.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d evaluations, want %d", evals.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitEvals(1)
	for rev := uint64(6); rev < 10; rev++ {
		w.applyChange(rev, []fsm.Event{guildEv(rev, rev, "gateway-0")})
		waitEvals(int32(rev - 4))
	}
	select {
	case err := <-done:
		t.Fatalf("WaitFor returned %v before its condition held", err)
	default:
	}
	w.applyChange(10, []fsm.Event{{Revision: 10, Type: fsm.EventShard, Shard: &fsm.ShardAssignment{Shard: 1, Holder: "gateway-2", Epoch: 10}}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// One evaluation per map: the list and revisions 6 to 10.
	if got := evals.Load(); got != 6 {
		t.Fatalf("the condition was evaluated %d times over 6 maps", got)
	}
	// And it ends with its context.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := w.WaitFor(ctx2, func(View) bool { return false }); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitFor with a cancelled context: %v", err)
	}
}

// Shard returns the whole assignment as the map holds it (holder, epoch,
// checkpoint) — the values whole as events and lists bring them.
func TestShardReturnsTheWholeAssignmentOfTheLatestRevision(t *testing.T) {
	w := newTestWatcher(t)
	if _, ok := w.Shard(0); ok {
		t.Fatal("a shard before the first list")
	}
	cp := &fsm.Checkpoint{SessionID: "s1", Seq: 42, ResumeURL: "wss://r", Holder: "gateway-1", At: 1}
	w.replace(mapFromSnapshot(&Snapshot{Revision: 5, ShardCount: 2, Shards: []fsm.ShardAssignment{
		{Shard: 0, Holder: "gateway-0"}, {Shard: 1, Holder: "gateway-1", Checkpoint: cp}}}))
	want := fsm.ShardAssignment{Shard: 1, Holder: "gateway-1", Checkpoint: cp}
	if got, ok := w.Shard(1); !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("shard 1 from the list: %+v, want %+v", got, want)
	}
	// The caller's copy does not alias the map.
	got, _ := w.Shard(1)
	got.Checkpoint.Seq = 0
	if again, _ := w.Shard(1); again.Checkpoint.Seq != 42 {
		t.Fatal("modifying a returned checkpoint changed the map")
	}
	// A change of holder brings the whole assignment; the checkpoint (saved
	// without an event) stays what the map knew.
	moved := fsm.ShardAssignment{Shard: 1, Holder: "gateway-2", Epoch: 6}
	w.applyChange(6, []fsm.Event{{Revision: 6, Type: fsm.EventShard, Shard: &moved}})
	want = moved
	want.Checkpoint = cp
	if got, _ := w.Shard(1); !reflect.DeepEqual(got, want) || w.ShardHolder(1) != "gateway-2" {
		t.Fatalf("shard 1 after its holder changed: %+v, want %+v", got, want)
	}
	// An event that carries a checkpoint replaces it.
	cp2 := &fsm.Checkpoint{SessionID: "s2", Seq: 7, Holder: "gateway-2", At: 2}
	w.applyChange(7, []fsm.Event{{Revision: 7, Type: fsm.EventShard, Shard: &fsm.ShardAssignment{Shard: 1, Holder: "gateway-2", Checkpoint: cp2}}})
	if got, _ := w.Shard(1); got.Checkpoint == nil || *got.Checkpoint != *cp2 {
		t.Fatalf("shard 1 after an event with a checkpoint: %+v", got)
	}
	if snap := w.Snapshot(); len(snap.Shards) != 2 || snap.Shards[1].Holder != "gateway-2" || snap.Shards[1].Checkpoint == nil || *snap.Shards[1].Checkpoint != *cp2 {
		t.Fatalf("snapshot shards %+v", snap.Shards)
	}
	if _, ok := w.Shard(2); ok {
		t.Fatal("shard 2 of 2")
	}
	if _, ok := w.Shard(-1); ok {
		t.Fatal("shard -1")
	}
}

func TestSubscribersAreToldBeforeWaitersWake(t *testing.T) {
	w := newTestWatcher(t)
	ch, cancel := w.Subscribe(64)
	t.Cleanup(cancel)
	w.replace(mapFromSnapshot(&Snapshot{Revision: 1}))
	<-ch // the list
	for rev := uint64(2); rev <= 20; rev++ {
		woke := make(chan int, 1)
		go func() {
			_ = w.WaitRevision(context.Background(), rev)
			woke <- len(ch)
		}()
		w.applyChange(rev, []fsm.Event{guildEv(rev, rev, "p")})
		if n := <-woke; n != 1 {
			t.Fatalf("a waiter on revision %d woke with %d changes in the subscription, want 1", rev, n)
		}
		if c := <-ch; c.Revision != rev {
			t.Fatalf("change %+v, want revision %d", c, rev)
		}
	}
}

// TestListTimesOutOnAStallNotOnASlowList: ListTimeout bounds each wait
// for the next bytes of a snapshot, not the whole body: a list that takes
// several timeouts to arrive but keeps coming is read whole; one that
// stops mid-body is refused after one timeout, saying so.
func TestListTimesOutOnAStallNotOnASlowList(t *testing.T) {
	snap := Snapshot{Revision: 7, ShardCount: 1, Pods: []fsm.Pod{}, Shards: []fsm.ShardAssignment{}, ConfigNodes: []fsm.ConfigNode{}}
	for i := range 400 {
		snap.Guilds = append(snap.Guilds, fsm.Guild{ID: uint64(1+i) << 22, Owner: "gateway-0", State: fsm.GuildActive, Epoch: 3, Revision: 3})
	}
	body, err := AppendSnapshotJSON(nil, &snap)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	serve := func(pieces int, gap time.Duration, stallAt int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			for k := range pieces {
				if k == stallAt {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * timeout):
					}
					return
				}
				_, _ = w.Write(body[k*len(body)/pieces : (k+1)*len(body)/pieces])
				w.(http.Flusher).Flush()
				time.Sleep(gap)
			}
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	slow := serve(8, timeout/3, -1) // ~0.8 s in all: 2.7 timeouts
	w := newTestWatcher(t, slow.URL)
	w.o.ListTimeout = timeout
	start := time.Now()
	got, err := w.listOne(context.Background(), slow.URL)
	if err != nil || len(got.Guilds) != len(snap.Guilds) || got.Revision != 7 {
		t.Fatalf("a slow list that never stalls: %d guilds at %d, %v", len(got.Guilds), got.Revision, err)
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("the slow list took %s: the test did not outlast one timeout", took)
	}
	stalled := serve(8, 0, 4)
	start = time.Now()
	_, err = w.listOne(context.Background(), stalled.URL)
	if err == nil || !strings.Contains(err.Error(), "sent nothing of its snapshot") {
		t.Fatalf("a list that stalls mid-body: %v", err)
	}
	if took := time.Since(start); took > 5*timeout {
		t.Fatalf("the stalled list was given up after %s, want about %s", took, timeout)
	}
}
