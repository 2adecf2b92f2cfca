package assignments

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
)

// scripted is a config node whose answers a test writes: snapshot returns the
// list, watch writes one watch stream (it runs once per GET /v1/watch, and the
// stream ends when it returns).
type scripted struct {
	snapshot func() Snapshot
	watch    func(ctx context.Context, from uint64, out *sseOut)
	lists    atomic.Int32
	watches  atomic.Int32
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/snapshot":
		s.lists.Add(1)
		_ = json.NewEncoder(w).Encode(s.snapshot())
	case "/v1/watch":
		s.watches.Add(1)
		from, err := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		s.watch(r.Context(), from, &sseOut{w: w, ctx: r.Context()})
	default:
		http.NotFound(w, r)
	}
}

func serve(t *testing.T, s *scripted) string {
	t.Helper()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv.URL
}

// sseOut writes frames on one stream.
type sseOut struct {
	w   http.ResponseWriter
	ctx context.Context
}

func (o *sseOut) send(b []byte) bool {
	if _, err := o.w.Write(b); err != nil {
		return false
	}
	o.w.(http.Flusher).Flush()
	return o.ctx.Err() == nil
}

func (o *sseOut) progress(p Progress) bool { return o.send(AppendProgressFrame(nil, p)) }

func (o *sseOut) change(rev uint64, evs []fsm.Event) bool {
	b, _, err := AppendChangeFrames(nil, rev, evs)
	if err != nil {
		panic(err)
	}
	return o.send(b)
}

// every calls f every d until it returns false or the stream ends.
func (o *sseOut) every(d time.Duration, f func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for f() {
		select {
		case <-o.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func emptySnapshot(rev uint64) Snapshot {
	return Snapshot{Revision: rev, ShardCount: 1, Shards: []fsm.ShardAssignment{{Shard: 0}},
		Pods: []fsm.Pod{}, Guilds: []fsm.Guild{}, ConfigNodes: []fsm.ConfigNode{}}
}

// leaderProgress is what a healthy node at rev sends.
func leaderProgress(pos, rev uint64) Progress {
	return Progress{Revision: pos, Node: "config-0", Leader: "config-0", NodeRevision: rev, Term: 3}
}

// runWatcher runs w until the test ends.
func runWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func fastWatcher(t *testing.T, staleAfter time.Duration, urls ...string) *Watcher {
	t.Helper()
	c, err := NewClient(urls, "t")
	if err != nil {
		t.Fatal(err)
	}
	return NewWatcher(c, WatcherOptions{Logger: quietLogger(), Name: t.Name(), StaleAfter: staleAfter,
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
}

// eventually waits for cond, checked every few milliseconds, for at most d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A follower in a minority partition keeps the stream open and sends only
// progress, with no leader, at a revision that does not grow (from the
// review: the watcher stayed on it forever, its map frozen, Staleness ~0).
// The watcher must leave it for the node that can prove it is current, and
// must have reported the real staleness meanwhile.
func TestWatcherLeavesANodeThatKnowsNoLeader(t *testing.T) {
	const staleAfter = 300 * time.Millisecond
	stuck := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(5) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			out.every(20*time.Millisecond, func() bool {
				return out.progress(Progress{Revision: from, Node: "config-2", Leader: "", NodeRevision: 5, Term: 3, LeaderContactMs: -1})
			})
		},
	}
	var w *Watcher
	var stalenessAtFailover atomic.Int64
	fresh := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(50) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			stalenessAtFailover.CompareAndSwap(0, int64(w.Staleness()))
			if !out.progress(leaderProgress(from, 50)) {
				return
			}
			for rev := from + 1; rev <= 50; rev++ {
				if !out.change(rev, placementFrom(rev, int(rev), 1)) {
					return
				}
			}
			out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(50, 50)) })
		},
	}
	w = fastWatcher(t, staleAfter, serve(t, stuck), serve(t, fresh))
	runWatcher(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WaitRevision(ctx, 50); err != nil {
		t.Fatalf("the watcher stayed on the node that knows no leader: %v (revision %d, staleness %s)", err, w.Revision(), w.Staleness())
	}
	if stuck.lists.Load() != 1 || stuck.watches.Load() < 1 {
		t.Fatalf("the watcher did not start on the stuck node: %d lists, %d watches", stuck.lists.Load(), stuck.watches.Load())
	}
	if s := time.Duration(stalenessAtFailover.Load()); s < staleAfter {
		t.Errorf("staleness %s when the watcher left the stuck node, want at least StaleAfter %s: its progress proved nothing", s, staleAfter)
	}
	if _, ok := w.Lookup(snowflake(50)); !ok {
		t.Error("the change of revision 50 is not in the map")
	}
	// Proof from the fresh node brings Staleness down.
	eventually(t, 5*time.Second, "staleness to drop", func() bool { return w.Staleness() < staleAfter })
}

// A node that knows a leader but is behind what another node already showed
// (a follower replaying its log, or one that has not applied the last
// entries) cannot prove the map current either.
func TestWatcherLeavesANodeThatLagsWhatOthersShowed(t *testing.T) {
	const staleAfter = 300 * time.Millisecond
	var w *Watcher
	var aheadStreams atomic.Int32
	back := make(chan time.Duration, 1) // the staleness when the watcher came back
	ahead := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(50) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			if aheadStreams.Add(1) == 1 {
				// The first stream proves the map current and ends (the
				// node restarts): the watcher fails over to the lagging node.
				out.progress(leaderProgress(from, 50))
				return
			}
			select {
			case back <- w.Staleness():
			default:
			}
			out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(50, 50)) })
		},
	}
	lagging := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(10) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			out.every(20*time.Millisecond, func() bool {
				return out.progress(Progress{Revision: from, Node: "config-1", Leader: "config-0", NodeRevision: 10, Term: 3, LeaderContactMs: 5})
			})
		},
	}
	w = fastWatcher(t, staleAfter, serve(t, ahead), serve(t, lagging))
	runWatcher(t, w)
	var s time.Duration
	select {
	case s = <-back:
	case <-time.After(10 * time.Second):
		t.Fatalf("the watcher did not come back from the lagging node: %d watches on it, revision %d", lagging.watches.Load(), w.Revision())
	}
	if lagging.watches.Load() < 1 || lagging.lists.Load() != 0 {
		t.Fatalf("lagging node: %d watches, %d lists; want a watch and no list", lagging.watches.Load(), lagging.lists.Load())
	}
	if s < staleAfter {
		t.Errorf("staleness %s after StaleAfter on the lagging node, want at least %s", s, staleAfter)
	}
	if w.Revision() != 50 {
		t.Errorf("revision %d, want 50", w.Revision())
	}
}

// Staleness is the time since the watcher last had proof its map was
// current: progress from a node that knows a leader (less the node's time
// since it heard from it), counted once the map has reached the node's
// revision. Changes alone, and progress that proves nothing, do not reset it.
func TestStalenessIsTheTimeSinceTheLastProofOfCurrency(t *testing.T) {
	script := make(chan []byte)
	node := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(5) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			for {
				select {
				case b := <-script:
					if !out.send(b) {
						return
					}
				case <-ctx.Done():
					return
				}
			}
		},
	}
	w := fastWatcher(t, time.Minute, serve(t, node))
	runWatcher(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	created := w.Staleness()
	// step sends a progress and then the change rev, and returns the
	// watcher's Staleness once it has applied that change (so has read
	// the progress before it).
	step := func(p *Progress, rev uint64) time.Duration {
		t.Helper()
		var b []byte
		if p != nil {
			b = AppendProgressFrame(b, *p)
		}
		b = must(AppendChangeFrames(b, rev, placementFrom(rev, int(rev), 1)))
		select {
		case script <- b:
		case <-ctx.Done():
			t.Fatal("the watcher does not read its stream")
		}
		if err := w.WaitRevision(ctx, rev); err != nil {
			t.Fatal(err)
		}
		return w.Staleness()
	}

	// A change without proof: staleness still counts from NewWatcher.
	if s := step(nil, 6); s < created {
		t.Fatalf("after a change without proof: staleness %s, below its %s since NewWatcher", s, created)
	}
	// A follower's proof is as old as its last contact with the leader.
	before := time.Now()
	p := Progress{Revision: 6, Node: "config-1", Leader: "config-0", NodeRevision: 6, Term: 3, LeaderContactMs: 400}
	s1 := step(&p, 7)
	if s1 < 400*time.Millisecond || s1 > time.Since(before)+400*time.Millisecond {
		t.Fatalf("after a follower's proof with 400 ms since its leader contact: staleness %s", s1)
	}
	// The leader's proof that it is at revision 10 counts once the map
	// reaches 10, not before, and is as old as the message then.
	before = time.Now()
	p = leaderProgress(7, 10)
	if s := step(&p, 8); s < s1 {
		t.Fatalf("at revision 8, a proof of revision 10 lowered staleness from %s to %s", s1, s)
	}
	if s := step(nil, 9); s < s1 {
		t.Fatalf("at revision 9, a proof of revision 10 lowered staleness from %s to %s", s1, s)
	}
	s2 := step(nil, 10)
	if s2 > time.Since(before) {
		t.Fatalf("at revision 10, staleness %s, older than the %s since the leader's proof of revision 10", s2, time.Since(before))
	}
	// Progress from a node that knows no leader proves nothing.
	p = Progress{Revision: 10, Node: "config-2", Leader: "", NodeRevision: 10, Term: 3, LeaderContactMs: -1}
	if s3 := step(&p, 11); s3 < s2 {
		t.Fatalf("progress without a leader lowered staleness from %s to %s", s2, s3)
	}
}

// A revision split over several frames is applied whole or not at all: a
// stream that breaks between its fragments leaves the map at the revision
// before, without any of its events, and the next stream resumes from there.
func TestNoHalfAppliedRevisionWhenAStreamBreaksBetweenFragments(t *testing.T) {
	big := placementFrom(6, 0, 7_000)
	frames, n, err := AppendChangeFrames(nil, 6, big)
	if err != nil || n < 2 {
		t.Fatalf("%d frames, %v", n, err)
	}
	allButLast := frames[:nthFrameEnd(frames, n-1)] // all but the last
	var w *Watcher
	type seen struct {
		from     uint64
		rev      uint64
		anyOfRev bool
	}
	var streams atomic.Int32
	second := make(chan seen, 1)
	node := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(5) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			if !out.progress(leaderProgress(from, 6)) {
				return
			}
			if streams.Add(1) == 1 {
				out.send(allButLast) // and the connection drops
				return
			}
			_, first := w.Lookup(big[0].Guild.ID)
			_, last := w.Lookup(big[len(big)-1].Guild.ID)
			select {
			case second <- seen{from: from, rev: w.Revision(), anyOfRev: first || last}:
			default:
			}
			if out.send(frames) {
				out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(6, 6)) })
			}
		},
	}
	w = fastWatcher(t, time.Minute, serve(t, node))
	runWatcher(t, w)
	var s seen
	select {
	case s = <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("no second stream")
	}
	if s.from != 5 || s.rev != 5 || s.anyOfRev {
		t.Fatalf("after a stream broke inside revision 6: resumed from %d at revision %d, events of revision 6 in the map: %v; want 5, 5, none", s.from, s.rev, s.anyOfRev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WaitRevision(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if got := len(w.Snapshot().Guilds); got != len(big) {
		t.Fatalf("%d guilds at revision 6, want %d", got, len(big))
	}
}

// nthFrameEnd is the offset just after the n-th frame of b.
func nthFrameEnd(b []byte, n int) int {
	off := 0
	for i := 0; i < n; i++ {
		off += bytes.Index(b[off:], []byte("\n\n")) + 2
	}
	return off
}

// Readers only ever see the map at a revision: every guild of every applied
// revision, none of a later one, whatever the frames the revisions came in.
func TestMapIsAlwaysAStateAtSomeRevision(t *testing.T) {
	const perRev, last = 6_500, 11 // 6,500 guild events: two frames per revision
	node := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(5) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			if !out.progress(leaderProgress(from, last)) {
				return
			}
			for rev := from + 1; rev <= last; rev++ {
				if !out.change(rev, placementFrom(rev, int(rev)*perRev, perRev)) {
					return
				}
			}
			out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(last, last)) })
		},
	}
	w := fastWatcher(t, time.Minute, serve(t, node))
	checks, bad := 0, ""
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- w.WaitFor(ctx, func(v View) bool {
			checks++
			rev := v.Revision()
			if want := int(rev-5) * perRev; v.m.guilds.Len() != want {
				bad = "guild count " + strconv.Itoa(v.m.guilds.Len()) + " at revision " + strconv.FormatUint(rev, 10) + ", want " + strconv.Itoa(want)
				return true
			}
			for r := uint64(6); r <= last; r++ {
				_, first := v.Lookup(snowflake(int(r) * perRev))
				_, end := v.Lookup(snowflake(int(r)*perRev + perRev - 1))
				if first != (r <= rev) || end != (r <= rev) {
					bad = "at revision " + strconv.FormatUint(rev, 10) + " revision " + strconv.FormatUint(r, 10) + " is half there"
					return true
				}
			}
			return rev == last
		})
	}()
	runWatcher(t, w)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if bad != "" {
		t.Fatal(bad)
	}
	if checks < 2 {
		t.Fatalf("the map was checked %d times", checks)
	}
	t.Logf("the map was checked at %d revisions", checks)
}

// A node that accepts the watch but never answers, or answers and then sends
// nothing, is left after StaleAfter.
func TestWatcherLeavesANodeThatSendsNothing(t *testing.T) {
	for _, headers := range []bool{false, true} {
		t.Run(map[bool]string{false: "no answer", true: "no byte after the headers"}[headers], func(t *testing.T) {
			silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/snapshot" {
					_ = json.NewEncoder(w).Encode(emptySnapshot(5))
					return
				}
				if headers {
					w.Header().Set("Content-Type", "text/event-stream")
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
				}
				<-r.Context().Done()
			}))
			t.Cleanup(silent.Close)
			fresh := &scripted{
				snapshot: func() Snapshot { return emptySnapshot(50) },
				watch: func(ctx context.Context, from uint64, out *sseOut) {
					if from < 50 && !out.change(50, placementFrom(50, 50, 1)) {
						return
					}
					out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(50, 50)) })
				},
			}
			w := fastWatcher(t, 200*time.Millisecond, silent.URL, serve(t, fresh))
			runWatcher(t, w)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := w.WaitRevision(ctx, 50); err != nil {
				t.Fatalf("the watcher stayed on the silent node: %v", err)
			}
		})
	}
}

// A revision that takes longer than StaleAfter to arrive, its fragments
// flowing, is not cut off: the node is busy, not silent, and it proves
// currency again after the revision.
func TestWatcherKeepsAStreamThatIsSlowlySendingALargeRevision(t *testing.T) {
	const staleAfter = 150 * time.Millisecond
	frames, n, err := AppendChangeFrames(nil, 6, placementFrom(6, 0, 7_000))
	if err != nil || n < 2 {
		t.Fatalf("%d frames, %v", n, err)
	}
	node := &scripted{
		snapshot: func() Snapshot { return emptySnapshot(5) },
		watch: func(ctx context.Context, from uint64, out *sseOut) {
			if !out.progress(leaderProgress(from, 6)) || from >= 6 {
				out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(6, 6)) })
				return
			}
			// In pieces of 256 KiB, 40 ms apart: the revision takes longer
			// than StaleAfter to arrive.
			rest := frames
			for len(rest) > 0 {
				k := min(len(rest), 256<<10)
				if !out.send(rest[:k]) {
					return
				}
				rest = rest[k:]
				select {
				case <-ctx.Done():
					return
				case <-time.After(40 * time.Millisecond):
				}
			}
			out.every(20*time.Millisecond, func() bool { return out.progress(leaderProgress(6, 6)) })
		},
	}
	w := fastWatcher(t, staleAfter, serve(t, node))
	start := time.Now()
	runWatcher(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WaitRevision(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < staleAfter {
		t.Fatalf("the revision arrived in %s, not slowly", took)
	}
	if got := node.watches.Load(); got != 1 {
		t.Fatalf("%d watch streams, want the first to have delivered the revision", got)
	}
}
