package confignode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// ---- helpers ----

// openWatch opens GET /v1/watch on one node; from or lastEventID may be "".
func openWatch(t *testing.T, base, from, lastEventID string) (*http.Response, *assignments.SSEReader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	u := base + "/v1/watch"
	if from != "" {
		u += "?from=" + from
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", u, err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp, assignments.NewSSEReader(resp.Body)
}

// readChanges reads messages until the change at revision last and returns
// every revision whole, checking the framing of each change frame: the
// fragments of one revision back to back, More on all but the last, `id:` =
// the revision on the last only, every event of the revision's; progress
// messages are skipped.
func readChanges(t *testing.T, rd *assignments.SSEReader, last uint64) []assignments.WatchChange {
	t.Helper()
	var out []assignments.WatchChange
	var cur *assignments.WatchChange
	for {
		m, err := rd.Next()
		if err != nil {
			t.Fatalf("read stream after %d changes: %v", len(out), err)
		}
		if m.Event == assignments.SSEProgress && cur == nil {
			continue
		}
		if m.Event != assignments.SSEChange {
			t.Fatalf("unexpected message %+v (inside revision: %v)", m, cur != nil)
		}
		var f assignments.ChangeFrame
		if err := json.Unmarshal([]byte(m.Data), &f); err != nil {
			t.Fatalf("decode %q: %v", m.Data, err)
		}
		if len(f.Chunk) > 0 {
			t.Fatalf("revision %d: an event sent in chunks", f.Revision)
		}
		switch {
		case cur == nil:
			cur = &assignments.WatchChange{Revision: f.Revision}
		case cur.Revision != f.Revision:
			t.Fatalf("a fragment of revision %d inside revision %d", f.Revision, cur.Revision)
		}
		cur.Events = append(cur.Events, f.Events...)
		if f.More {
			if m.ID != "" {
				t.Fatalf("id %q on a fragment of revision %d that is not its last", m.ID, f.Revision)
			}
			continue
		}
		if m.ID != strconv.FormatUint(f.Revision, 10) {
			t.Fatalf("id %q on the last frame of revision %d", m.ID, f.Revision)
		}
		for _, e := range cur.Events {
			if e.Revision != cur.Revision {
				t.Fatalf("event of revision %d in the message of revision %d", e.Revision, cur.Revision)
			}
		}
		out = append(out, *cur)
		if cur.Revision >= last {
			return out
		}
		cur = nil
	}
}

// historyRevisions returns the revisions node i's history holds after from.
func (tc *testCluster) historyRevisions(i int, from uint64) []uint64 {
	tc.t.Helper()
	batches, _, _, ok := tc.nodes[i].store.hist.since(from, 0)
	if !ok {
		tc.t.Fatalf("node %d no longer retains revision %d", i, from)
	}
	out := make([]uint64, len(batches))
	for k, b := range batches {
		out[k] = b.revision
	}
	return out
}

// changeLog records what one Subscribe channel delivers.
type changeLog struct {
	mu      sync.Mutex
	changes []assignments.Change
}

func (l *changeLog) snapshot() []assignments.Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]assignments.Change(nil), l.changes...)
}

// startWatcher runs a watcher over urls until the test ends, subscribed
// before it starts so that its log begins with the first list.
func startWatcher(t *testing.T, name string, urls []string) (*assignments.Watcher, *changeLog) {
	t.Helper()
	c, err := assignments.NewClient(urls, testToken)
	if err != nil {
		t.Fatal(err)
	}
	w := assignments.NewWatcher(c, assignments.WatcherOptions{
		Logger: testLogger().With("test", t.Name()), Name: name,
		RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, StaleAfter: 3 * time.Second,
	})
	ch, unsubscribe := w.Subscribe(1 << 16)
	log := &changeLog{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for c := range ch {
			log.mu.Lock()
			log.changes = append(log.changes, c)
			log.mu.Unlock()
		}
	}()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); unsubscribe(); wg.Wait() })
	return w, log
}

// assertGapFree checks a watcher's log: one Relisted change first (the first
// list), then exactly the revisions the leader's history has after it, in
// order, each once.
func assertGapFree(t *testing.T, tc *testCluster, leader int, what string, log []assignments.Change, upTo uint64) {
	t.Helper()
	if len(log) == 0 || !log[0].Relisted {
		t.Fatalf("%s: log does not start with the first list: %+v", what, log)
	}
	start := log[0].Revision
	var got []uint64
	for _, c := range log[1:] {
		if c.Relisted {
			t.Fatalf("%s: unexpected relist at %d", what, c.Revision)
		}
		for _, e := range c.Events {
			if e.Revision != c.Revision {
				t.Fatalf("%s: event of %d in change %d", what, e.Revision, c.Revision)
			}
		}
		if c.Revision <= upTo {
			got = append(got, c.Revision)
		}
	}
	want := tc.historyRevisions(leader, start)
	want = slices.DeleteFunc(want, func(r uint64) bool { return r > upTo })
	if !slices.Equal(got, want) {
		t.Fatalf("%s: revisions after %d differ from the leader's history:\n got %v\nwant %v", what, start, got, want)
	}
}

// normalize sorts what the server leaves in map order.
func normalize(s assignments.Snapshot) assignments.Snapshot {
	slices.SortFunc(s.ConfigNodes, func(a, b fsm.ConfigNode) int { return strings.Compare(a.ID, b.ID) })
	return s
}

func assertSameSnapshot(t *testing.T, what string, got, want assignments.Snapshot) {
	t.Helper()
	got, want = normalize(got), normalize(want)
	assertSameMap(t, got, want, what)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: maps differ at revision %d:\n got %+v\nwant %+v", what, got.Revision, got, want)
	}
}

// settle waits until every running node has applied the leader's revision and
// returns the leader and that revision.
func (tc *testCluster) settle() (int, uint64) {
	tc.t.Helper()
	var l int
	var rev uint64
	waitFor(tc.t, 10*time.Second, "every node at the leader's revision", func() bool {
		l = tc.leader()
		if l < 0 {
			return false
		}
		rev = tc.nodes[l].store.Revision()
		for _, n := range tc.nodes {
			if n != nil && n.store.Revision() != rev {
				return false
			}
		}
		return true
	})
	return l, rev
}

// ---- the server's stream contract ----

func TestWatchStreamContract(t *testing.T) {
	tc := newTestCluster(t, 1, func(_ int, c *Config) {
		c.WatchHistory = 60
		c.WatchProgress = 100 * time.Millisecond
	})
	tc.registerPods(2)
	c := tc.client()
	base := tc.urls()[0]
	_, from := tc.settle()
	for i := 0; i < 10; i++ {
		tc.place(c, i*2, 2)
	}
	_, last := tc.settle()
	want := tc.historyRevisions(0, from)

	t.Run("EventsAfterFromInOrderNoneMissingNoneTwice", func(t *testing.T) {
		resp, rd := openWatch(t, base, strconv.FormatUint(from, 10), "")
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var got []uint64
		for _, ch := range readChanges(t, rd, last) {
			got = append(got, ch.Revision)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("revisions\n got %v\nwant %v", got, want)
		}
	})

	t.Run("LastEventIDResumes", func(t *testing.T) {
		mid := want[len(want)/2]
		_, rd := openWatch(t, base, "", strconv.FormatUint(mid, 10))
		var got []uint64
		for _, ch := range readChanges(t, rd, last) {
			got = append(got, ch.Revision)
		}
		if !slices.Equal(got, want[len(want)/2+1:]) {
			t.Fatalf("resumed revisions\n got %v\nwant %v", got, want[len(want)/2+1:])
		}
	})

	t.Run("ProgressAtStartAndWhenIdle", func(t *testing.T) {
		_, rd := openWatch(t, base, strconv.FormatUint(last, 10), "")
		start := time.Now()
		for i := 0; i < 3; i++ {
			m, err := rd.Next()
			if err != nil {
				t.Fatal(err)
			}
			var p assignments.Progress
			if m.Event != assignments.SSEProgress || json.Unmarshal([]byte(m.Data), &p) != nil {
				t.Fatalf("message %d: %+v, want progress", i, m)
			}
			// The leader proves it is current: it is the leader, and at
			// the revision it says the stream is at.
			if p.Revision != last || p.Node != "config-0" || p.Leader != "config-0" || p.NodeRevision != last || p.Term == 0 || p.LeaderContactMs != 0 {
				t.Fatalf("progress %+v, want revision %d from config-0, the leader", p, last)
			}
			if err := p.CheckCurrent(assignments.Learned{Revision: last}, time.Second); err != nil {
				t.Fatalf("the leader's progress does not prove it current: %v", err)
			}
		}
		// Three progress messages (the first at once) within a generous
		// multiple of the 100 ms interval.
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("3 progress messages took %s with a 100 ms interval", d)
		}
	})

	t.Run("ProgressEvenWhileChangesFlow", func(t *testing.T) {
		// Changes without a pause longer than the progress interval: a
		// watcher still gets progress, so it can keep proving it is current.
		_, rd := openWatch(t, base, strconv.FormatUint(last, 10), "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		writes := make(chan error, 1)
		go func() {
			defer close(writes)
			c := tc.client()
			for k := 0; ctx.Err() == nil; k++ {
				if _, err := c.PlaceGuilds(ctx, guildIDs(10_000+k, 1)); err != nil && ctx.Err() == nil {
					writes <- err
					return
				}
			}
		}()
		var kinds []string
		amid := 0 // progress messages with changes before and after them
		pending := 0
		changes := 0
		for amid < 3 {
			m, err := rd.Next()
			if err != nil {
				t.Fatal(err)
			}
			kinds = append(kinds, m.Event)
			switch m.Event {
			case assignments.SSEChange:
				changes++
				amid += pending
				pending = 0
			case assignments.SSEProgress:
				if changes > 0 {
					pending++
				}
			}
			if changes > 2000 {
				t.Fatalf("%d changes and only %d progress messages amid them", changes, amid)
			}
		}
		cancel()
		if err := <-writes; err != nil {
			t.Fatal(err)
		}
		t.Logf("%d progress messages amid %d changes", amid, changes)
	})

	t.Run("GoneWithOldestRevisionBeforeRetainedHistory", func(t *testing.T) {
		for i := 0; i < 40; i++ {
			tc.place(c, 100+i*3, 3) // 120 events > WatchHistory 60
		}
		tc.settle()
		oldest := tc.nodes[0].store.hist.oldest()
		if oldest <= from {
			t.Fatalf("history still holds revision %d (oldest %d)", from, oldest)
		}
		resp, _ := openWatch(t, base, strconv.FormatUint(from, 10), "")
		if resp.StatusCode != http.StatusGone {
			t.Fatalf("status %d, want 410", resp.StatusCode)
		}
		var body assignments.ErrorBody
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.OldestRevision != oldest || body.Error == "" {
			t.Fatalf("body %+v (%v), want oldest_revision %d", body, err, oldest)
		}
		// From the oldest retained revision the stream is served.
		resp2, _ := openWatch(t, base, strconv.FormatUint(oldest, 10), "")
		if resp2.StatusCode != http.StatusOK {
			t.Fatalf("watch from oldest %d: status %d", oldest, resp2.StatusCode)
		}
	})
}

// ---- the watcher against real config nodes ----

func TestWatchersConvergeToLeaderSnapshotGapFreeUnderConcurrentWriters(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.registerPods(2)
	urls := tc.urls()
	type watched struct {
		w   *assignments.Watcher
		log *changeLog
	}
	var ws []watched
	for i := 0; i < 4; i++ {
		// Each watcher prefers a different node (followers included).
		rot := append(append([]string(nil), urls[i%3:]...), urls[:i%3]...)
		w, log := startWatcher(t, fmt.Sprintf("w%d", i), rot)
		ws = append(ws, watched{w, log})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, x := range ws {
		if err := x.w.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tc.client()
			for k := 0; k < 15; k++ {
				if _, err := c.PlaceGuilds(ctx, guildIDs(g*1000+k*4, 4)); err != nil {
					errc <- fmt.Errorf("writer %d: %w", g, err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := tc.client()
		for p := 2; p < 5; p++ {
			if _, err := c.RegisterPod(ctx, assignments.RegisterPodRequest{ID: fmt.Sprintf("gateway-%d", p), Addr: fmt.Sprintf("127.0.0.1:%d", 9000+p)}); err != nil {
				errc <- fmt.Errorf("register gateway-%d: %w", p, err)
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	l, rev := tc.settle()
	want := tc.state(l)
	for i, x := range ws {
		if err := x.w.WaitRevision(ctx, rev); err != nil {
			t.Fatal(err)
		}
		assertSameSnapshot(t, fmt.Sprintf("watcher %d", i), x.w.Snapshot(), want)
		waitFor(t, 5*time.Second, "the subscriber to drain", func() bool {
			log := x.log.snapshot()
			return len(log) > 0 && log[len(log)-1].Revision == rev
		})
		assertGapFree(t, tc, l, fmt.Sprintf("watcher %d", i), x.log.snapshot(), rev)
		if g := x.w.GuildsOwnedBy("gateway-0"); len(g) == 0 {
			t.Fatalf("watcher %d: gateway-0 owns nothing", i)
		}
		if len(x.w.Pods()) != 5 || x.w.ShardCount() != 8 {
			t.Fatalf("watcher %d: %d pods, %d shards", i, len(x.w.Pods()), x.w.ShardCount())
		}
	}
}

func TestWatcherFailsOverWithoutMissingAnEvent(t *testing.T) {
	for _, victim := range []string{"follower", "leader"} {
		t.Run("Kill"+strings.ToUpper(victim[:1])+victim[1:], func(t *testing.T) {
			tc := newTestCluster(t, 3, nil)
			tc.registerPods(2)
			l, _ := tc.settle()
			kill := (l + 1) % 3
			if victim == "leader" {
				kill = l
			}
			// The watcher is configured with the victim's URL only: it must
			// learn the other nodes from the map's config-node entries.
			w, log := startWatcher(t, "w", []string{tc.urls()[kill]})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := w.WaitSynced(ctx); err != nil {
				t.Fatal(err)
			}
			c := tc.client()
			write := func(from int) {
				// Retried: during an election writes are refused.
				waitFor(t, 10*time.Second, "a write to be accepted", func() bool {
					_, err := c.PlaceGuilds(ctx, guildIDs(from, 3))
					return err == nil
				})
			}
			for k := 0; k < 10; k++ {
				write(k * 3)
			}
			if err := w.WaitRevision(ctx, tc.nodes[l].store.Revision()); err != nil {
				t.Fatal(err)
			}
			tc.kill(kill)
			for k := 10; k < 30; k++ {
				write(k * 3)
			}
			l2, rev := tc.settle()
			if err := w.WaitRevision(ctx, rev); err != nil {
				t.Fatal(err)
			}
			assertSameSnapshot(t, "after failover", w.Snapshot(), tc.state(l2))
			waitFor(t, 5*time.Second, "the subscriber to drain", func() bool {
				lg := log.snapshot()
				return lg[len(lg)-1].Revision == rev
			})
			assertGapFree(t, tc, l2, "after failover", log.snapshot(), rev)
		})
	}
}

func TestWatcherRelistsAfterGoneAndConverges(t *testing.T) {
	tc := newTestCluster(t, 1, func(_ int, c *Config) { c.WatchHistory = 20 })
	tc.registerPods(2)
	c, err := assignments.NewClient(tc.urls(), testToken)
	if err != nil {
		t.Fatal(err)
	}
	w := assignments.NewWatcher(c, assignments.WatcherOptions{Logger: testLogger(), Name: "w", RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ch, unsubscribe := w.Subscribe(1 << 12)
	t.Cleanup(unsubscribe)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// First run: list and follow a few writes, then disconnect.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(runCtx) }()
	tc.place(tc.client(), 0, 3)
	if err := w.WaitRevision(ctx, tc.nodes[0].store.Revision()); err != nil {
		t.Fatal(err)
	}
	stop()
	<-done
	before := w.Revision()
	// Many writes while disconnected push its revision out of the history.
	for k := 0; k < 30; k++ {
		tc.place(tc.client(), 100+k*2, 2)
	}
	if oldest := tc.nodes[0].store.hist.oldest(); oldest <= before {
		t.Fatalf("history still holds %d (oldest %d)", before, oldest)
	}
	if g, ok := w.Lookup(mustGuild(t, guildIDs(0, 1)[0])); !ok || g.Owner == "" {
		t.Fatal("disconnected watcher lost its map")
	}
	// Second run: 410 → relist → converge.
	done2 := make(chan struct{})
	runCtx2, stop2 := context.WithCancel(ctx)
	go func() { defer close(done2); _ = w.Run(runCtx2) }()
	t.Cleanup(func() { stop2(); <-done2 })
	_, rev := tc.settle()
	if err := w.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	assertSameSnapshot(t, "after relist", w.Snapshot(), tc.state(0))
	relists := 0
	for len(ch) > 0 {
		if c := <-ch; c.Relisted {
			relists++
		}
	}
	if relists != 2 {
		t.Fatalf("subscriber saw %d relists, want 2 (first list and after 410)", relists)
	}
	// Writes after the relist arrive as changes.
	tc.place(tc.client(), 500, 1)
	select {
	case c := <-ch:
		if c.Relisted || c.Revision <= rev {
			t.Fatalf("after relist: %+v", c)
		}
	case <-ctx.Done():
		t.Fatal("no change after the relist")
	}
}

func mustGuild(t *testing.T, s string) uint64 {
	t.Helper()
	id, err := fsm.ParseGuildID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestWatcherWithEveryNodeDownKeepsItsMapThenCatchesUp(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.registerPods(2)
	tc.place(tc.client(), 0, 20)
	w, log := startWatcher(t, "w", tc.urls())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, rev := tc.settle()
	if err := w.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	before := w.Snapshot()
	for i := range tc.nodes {
		tc.kill(i)
	}
	// Lookups keep answering from the last map while every node is down, and
	// the watcher keeps trying.
	waitFor(t, 5*time.Second, "staleness to grow", func() bool { return w.Staleness() > 500*time.Millisecond })
	for _, id := range guildIDs(0, 20) {
		if g, ok := w.Lookup(mustGuild(t, id)); !ok || g.Owner == "" {
			t.Fatalf("guild %s gone from the map while the config plane is down", id)
		}
	}
	assertSameSnapshot(t, "while down", w.Snapshot(), before)

	for i := range tc.nodes {
		tc.start(i)
	}
	tc.waitLeader()
	c := tc.client()
	waitFor(t, 10*time.Second, "a write to the restarted cluster", func() bool {
		_, err := c.PlaceGuilds(ctx, guildIDs(1000, 5))
		return err == nil
	})
	l, rev2 := tc.settle()
	if err := w.WaitRevision(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	assertSameSnapshot(t, "after the cluster returned", w.Snapshot(), tc.state(l))
	waitFor(t, 5*time.Second, "the subscriber to drain", func() bool {
		lg := log.snapshot()
		return lg[len(lg)-1].Revision == rev2
	})
	assertGapFree(t, tc, l, "after the cluster returned", log.snapshot(), rev2)
	// The restarted cluster proves the map current within a progress
	// interval (2 s).
	waitFor(t, 10*time.Second, "proof of currency from the restarted cluster", func() bool { return w.Staleness() < 3*time.Second })
}

// ---- bounded frames (DESIGN §6: the largest command the API accepts must
// still reach every client) ----

// maxLine is the longest line of b.
func maxLine(b []byte) int {
	longest := 0
	for _, l := range bytes.Split(b, []byte("\n")) {
		longest = max(longest, len(l))
	}
	return longest
}

// From the review: POST /v1/guilds accepts 100,000 guilds in one command, one
// revision of 100,000 events; sent as one 16.9 MB SSE message it was past the
// watchers' 16 MiB line limit, and every watcher stopped there for good (with
// a large --watch-history), or until a later write evicted it (410, relist).
func TestEveryWatcherReceivesTheLargestAcceptedCommand(t *testing.T) {
	for _, hist := range []struct {
		name string
		size int
	}{{"default-history", 0}, {"history-1M", 1_000_000}} {
		t.Run(hist.name, func(t *testing.T) {
			tc := newTestCluster(t, 1, func(_ int, c *Config) { c.WatchHistory = hist.size })
			tc.registerPods(3)
			w, log := startWatcher(t, "big", tc.urls())
			ctx := context.Background()
			if err := w.WaitSynced(ctx); err != nil {
				t.Fatal(err)
			}
			c := tc.client()
			ids := guildIDs(0, 100_000)
			start := time.Now()
			res, err := c.PlaceGuilds(ctx, ids)
			if err != nil {
				t.Fatalf("place: %v", err)
			}
			placed := time.Since(start)
			batches, _, _, _ := tc.nodes[0].store.hist.since(res.Revision-1, 1)
			if len(batches) != 1 || batches[0].revision != res.Revision || len(batches[0].events) != 100_000 {
				t.Fatalf("history after the placement: %d batches", len(batches))
			}
			b := batches[0]
			frame, frames, err := b.encoded()
			if err != nil {
				t.Fatal(err)
			}
			if l := maxLine(frame); l > assignments.MaxFrameBytes {
				t.Fatalf("a line of %d bytes, limit %d", l, assignments.MaxFrameBytes)
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = w.WaitRevision(wctx, res.Revision)
			cancel()
			if err != nil {
				t.Fatalf("the watcher did not get the 100,000-guild revision: at %d, node at %d: %v", w.Revision(), tc.nodes[0].store.Revision(), err)
			}
			t.Logf("revision %d: %d events in %d frames, %d bytes, longest line %d (limit %d); placed in %s, the watcher had it %s after the write began",
				b.revision, len(b.events), frames, len(frame), maxLine(frame), assignments.MaxFrameBytes, placed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			if got := len(w.GuildsOwnedBy("gateway-0")) + len(w.GuildsOwnedBy("gateway-1")) + len(w.GuildsOwnedBy("gateway-2")); got != 100_000 {
				t.Fatalf("the watcher's pods own %d guilds, want 100000", got)
			}
			// It came as one change, not a relist.
			for _, ch := range log.snapshot()[1:] {
				if ch.Relisted {
					t.Fatalf("the watcher relisted at %d", ch.Revision)
				}
			}
			// And the stream goes on.
			res2, err := c.PlaceGuilds(ctx, guildIDs(200_000, 1))
			if err != nil {
				t.Fatal(err)
			}
			wctx, cancel = context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := w.WaitRevision(wctx, res2.Revision); err != nil {
				t.Fatalf("after one more write: watcher at %d: %v", w.Revision(), err)
			}
			assertSameSnapshot(t, "after the big placement", w.Snapshot(), tc.state(0))
		})
	}
}

func TestABigRevisionIsSentInBoundedFramesWithItsIDOnTheLastOnly(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	tc.registerPods(2)
	c := tc.client()
	_, before := tc.settle()
	res, err := c.PlaceGuilds(context.Background(), guildIDs(0, 20_000))
	if err != nil {
		t.Fatal(err)
	}
	tc.place(c, 30_000, 1)
	_, last := tc.settle()
	base := tc.urls()[0]
	read := func(rd *assignments.SSEReader) []assignments.WatchChange {
		t.Helper()
		got := readChanges(t, rd, last) // checks the framing of every frame
		if len(got) != 2 || got[0].Revision != res.Revision || len(got[0].Events) != 20_000 || got[1].Revision != last {
			t.Fatalf("changes %d, want revisions %d (20000 events) and %d", len(got), res.Revision, last)
		}
		return got
	}
	_, rd := openWatch(t, base, strconv.FormatUint(before, 10), "")
	read(rd)
	batches, _, _, _ := tc.nodes[0].store.hist.since(res.Revision-1, 1)
	if _, frames, _ := batches[0].encoded(); len(batches) != 1 || frames < 3 {
		t.Fatalf("20,000 guild events in %d frames; want them split", frames)
	}
	// Last-Event-ID names whole revisions: resuming from the one before the
	// big revision sends it again whole; from the big one, only what follows.
	_, rd = openWatch(t, base, "", strconv.FormatUint(before, 10))
	read(rd)
	_, rd = openWatch(t, base, "", strconv.FormatUint(res.Revision, 10))
	if got := readChanges(t, rd, last); len(got) != 1 || got[0].Revision != last {
		t.Fatalf("resumed after the big revision: %+v", got)
	}
}

// A follower cut off from the majority keeps serving its stream, with no
// leader in its progress: the watcher must not call the map fresh.
func TestWatcherOnAFollowerCutOffFromTheMajorityReportsItsRealStaleness(t *testing.T) {
	tc := newTestCluster(t, 3, func(_ int, c *Config) { c.WatchProgress = 100 * time.Millisecond })
	tc.registerPods(2)
	l, _ := tc.settle()
	f := (l + 1) % 3
	w, _ := startWatcher(t, "w", []string{tc.urls()[f]}) // StaleAfter 3 s
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "proof from the follower while the cluster is whole", func() bool { return w.Staleness() < time.Second })
	for i := range tc.nodes {
		if i != f {
			tc.kill(i)
		}
	}
	// The follower is up and streaming, but knows no leader.
	waitFor(t, 5*time.Second, "the follower to lose its leader", func() bool { return tc.nodes[f].leaderID() == "" })
	start := time.Now()
	waitFor(t, 10*time.Second, "staleness to pass StaleAfter", func() bool { return w.Staleness() > 3*time.Second })
	if s := w.Staleness(); s < time.Since(start) {
		t.Fatalf("staleness %s, less than the %s since the follower lost its leader", s, time.Since(start))
	}
}

// deadlineRecorder is a ResponseWriter that records, for each write
// deadline set, how many bytes were written under it.
type deadlineRecorder struct {
	header    http.Header
	underEach []int // bytes written under each deadline, in order
	flushes   int
}

func (d *deadlineRecorder) Header() http.Header {
	if d.header == nil {
		d.header = http.Header{}
	}
	return d.header
}
func (d *deadlineRecorder) WriteHeader(int) {}
func (d *deadlineRecorder) Write(b []byte) (int, error) {
	d.underEach[len(d.underEach)-1] += len(b)
	return len(b), nil
}
func (d *deadlineRecorder) SetWriteDeadline(time.Time) error {
	d.underEach = append(d.underEach, 0)
	return nil
}
func (d *deadlineRecorder) Flush() { d.flushes++ }

func TestStreamWriterWritesAtMostMaxFrameBytesUnderOneDeadline(t *testing.T) {
	for _, tc := range []struct {
		name      string
		frames    []int // sizes written in one flush cycle
		deadlines int
	}{
		{"small frames: one deadline per cycle", []int{200, 300, 150, 4000}, 1},
		{"a frame of exactly MaxFrameBytes", []int{assignments.MaxFrameBytes}, 1},
		{"frames adding up past MaxFrameBytes", []int{assignments.MaxFrameBytes - 10, 20, assignments.MaxFrameBytes}, 3},
		{"one large write", []int{3*assignments.MaxFrameBytes + 1}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &deadlineRecorder{}
			sw := &streamWriter{w: d, rc: http.NewResponseController(d)}
			sw.arm()
			total := 0
			for _, n := range tc.frames {
				if !sw.write(make([]byte, n)) {
					t.Fatal("write failed")
				}
				total += n
			}
			if !sw.flush() || d.flushes != 1 {
				t.Fatalf("flush: %d flushes", d.flushes)
			}
			sum := 0
			for i, b := range d.underEach {
				if b > assignments.MaxFrameBytes {
					t.Errorf("deadline %d: %d bytes written under it, more than %d", i, b, assignments.MaxFrameBytes)
				}
				sum += b
			}
			if sum != total {
				t.Errorf("%d bytes written, want %d", sum, total)
			}
			if len(d.underEach) != tc.deadlines {
				t.Errorf("%d deadlines set (%v), want %d", len(d.underEach), d.underEach, tc.deadlines)
			}
		})
	}
}
