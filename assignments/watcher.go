package assignments

// Watcher is the list+watch client of the config nodes' change stream (like a
// client-go informer): it lists GET /v1/snapshot, watches GET /v1/watch from
// the list's revision, and keeps the whole guild → pod map in memory so that
// Lookup never does I/O.
//
// Invariants (each has a test named after it, in watcher_test.go or
// confignode/watch_test.go):
//
//   - The revision never goes backwards. A change whose revision is <= the
//     current one (a duplicate, or out of order) is ignored and counted in
//     modbot_watcher_ignored_total; a list whose revision is below the current
//     one (a lagging follower) is refused and another node is asked.
//   - Changes apply atomically: all events of one revision become visible
//     together; a reader never sees half a revision.
//   - The map is never cleared. With every config node down the watcher keeps
//     answering from the last map it saw and retries with backoff and jitter;
//     only a newer list replaces the map, wholesale.
//   - No gaps: after a disconnect the watcher resumes with from=<its revision>
//     on the same or another node; when a node cannot serve that (410 Gone, or
//     `event: gone` after a snapshot install) it relists, and subscribers are
//     told so with a Relisted change.
//   - Subscribers see, per subscription, changes in strictly increasing
//     revision order, each at most once; whenever they might have missed one
//     (a relist, or their buffer was full) they get a Change with
//     Relisted=true at the current revision and must re-read what they need.
//     A slow subscriber never blocks the watcher.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/fsm"
)

// WatcherOptions configures a Watcher. Zero values take the defaults noted.
type WatcherOptions struct {
	Logger *slog.Logger // default slog.Default()
	// Registerer receives the watcher's metrics (optional).
	Registerer prometheus.Registerer
	// Name is the value of the metrics' `watcher` label, e.g. "gateway-1".
	Name string // default "default"
	// RetryMin and RetryMax bound the reconnect backoff (defaults 50 ms, 2 s);
	// each wait is jittered to between half and all of the current step.
	RetryMin, RetryMax time.Duration
	// StaleAfter: a stream that delivers no message (change or progress) for
	// this long is dropped and another node is tried. Default 10 s, five
	// times the config nodes' progress interval (2 s).
	StaleAfter time.Duration
	// ListTimeout bounds one GET /v1/snapshot (default 30 s).
	ListTimeout time.Duration
}

func (o *WatcherOptions) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = "default"
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 50 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 2 * time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 10 * time.Second
	}
	if o.ListTimeout <= 0 {
		o.ListTimeout = 30 * time.Second
	}
}

// Change is what subscribers receive: every event of one revision, or, with
// Relisted set, the news that the local map was replaced (or that this
// subscriber missed changes) and is now at Revision.
type Change struct {
	Revision uint64
	Events   []fsm.Event // nil when Relisted; shared, do not modify
	Relisted bool
}

// localMap is the watcher's copy of the FSM. Guild and Pod values are never
// modified in place once stored (events bring whole new values), so a
// Lookup's copy may share the Migration pointer safely.
type localMap struct {
	rev         uint64
	shardCount  int
	shards      []string
	pods        map[string]fsm.Pod
	guilds      map[uint64]*fsm.Guild
	configNodes map[string]fsm.ConfigNode
}

func newLocalMap() *localMap {
	return &localMap{pods: map[string]fsm.Pod{}, guilds: map[uint64]*fsm.Guild{}, configNodes: map[string]fsm.ConfigNode{}}
}

func mapFromSnapshot(s *Snapshot) *localMap {
	m := &localMap{
		rev:         s.Revision,
		shardCount:  s.ShardCount,
		shards:      make([]string, s.ShardCount),
		pods:        make(map[string]fsm.Pod, len(s.Pods)),
		guilds:      make(map[uint64]*fsm.Guild, len(s.Guilds)),
		configNodes: make(map[string]fsm.ConfigNode, len(s.ConfigNodes)),
	}
	for _, sh := range s.Shards {
		if sh.Shard >= 0 && sh.Shard < len(m.shards) {
			m.shards[sh.Shard] = sh.Holder
		}
	}
	for _, p := range s.Pods {
		m.pods[p.ID] = p
	}
	for i := range s.Guilds {
		m.guilds[s.Guilds[i].ID] = &s.Guilds[i]
	}
	for _, c := range s.ConfigNodes {
		m.configNodes[c.ID] = c
	}
	return m
}

// apply upserts (or deletes) every event of one revision. Events carry whole
// values, so applying is idempotent.
func (m *localMap) apply(rev uint64, events []fsm.Event) {
	for i := range events {
		e := &events[i]
		switch e.Type {
		case fsm.EventInit:
			if e.ShardCount > 0 {
				m.shardCount = e.ShardCount
				sh := make([]string, e.ShardCount)
				copy(sh, m.shards)
				m.shards = sh
			}
		case fsm.EventPod:
			if e.Pod != nil {
				m.pods[e.Pod.ID] = *e.Pod
			}
		case fsm.EventPodRemove:
			if e.Pod != nil {
				delete(m.pods, e.Pod.ID)
			}
		case fsm.EventShard:
			if e.Shard != nil && e.Shard.Shard >= 0 {
				if e.Shard.Shard >= len(m.shards) {
					sh := make([]string, e.Shard.Shard+1)
					copy(sh, m.shards)
					m.shards = sh
				}
				m.shards[e.Shard.Shard] = e.Shard.Holder
			}
		case fsm.EventGuild:
			if e.Guild != nil {
				m.guilds[e.Guild.ID] = e.Guild
			}
		case fsm.EventGuildGone:
			if e.Guild != nil {
				delete(m.guilds, e.Guild.ID)
			}
		case fsm.EventConfigNode:
			if e.ConfigNode != nil {
				m.configNodes[e.ConfigNode.ID] = *e.ConfigNode
			}
		case fsm.EventConfigNodeRemove:
			if e.ConfigNode != nil {
				delete(m.configNodes, e.ConfigNode.ID)
			}
		}
	}
	m.rev = rev
}

func podLess(a, b fsm.Pod) int {
	if a.Ordinal != b.Ordinal {
		return a.Ordinal - b.Ordinal
	}
	return strings.Compare(a.ID, b.ID)
}

// Watcher keeps a local copy of the assignment map, fed by list+watch. All
// methods are safe for concurrent use; Run must be called once.
type Watcher struct {
	c   *Client
	o   WatcherOptions
	log *slog.Logger
	m   *watcherMetrics

	mu      sync.RWMutex // guards state, synced, changed
	state   *localMap
	changed chan struct{} // closed and replaced on every revision change
	synced  chan struct{} // closed after the first list

	subsMu sync.Mutex // guards subs; taken after mu when both are held
	subs   map[*subscription]struct{}

	lastMsg   atomic.Int64 // unix nanos of the last message from a config node
	created   time.Time
	preferred int // index into endpoints() of the node to try first (Run only)
}

type subscription struct {
	ch chan Change
}

// NewWatcher returns a watcher that talks to the config nodes through c's
// URLs, token and HTTP client. Call Run to start it.
func NewWatcher(c *Client, o WatcherOptions) *Watcher {
	o.setDefaults()
	w := &Watcher{
		c:       c,
		o:       o,
		log:     o.Logger.With("watcher", o.Name),
		state:   newLocalMap(),
		changed: make(chan struct{}),
		synced:  make(chan struct{}),
		subs:    map[*subscription]struct{}{},
		created: time.Now(),
	}
	w.m = newWatcherMetrics(w, o.Name, o.Registerer, w.log)
	return w
}

// ---- reads (no I/O) ----

// Lookup returns a guild's placement from the local map.
func (w *Watcher) Lookup(guild uint64) (fsm.Guild, bool) {
	w.mu.RLock()
	g, ok := w.state.guilds[guild]
	var out fsm.Guild
	if ok {
		out = *g
	}
	w.mu.RUnlock()
	return out, ok
}

// Pod returns one pod.
func (w *Watcher) Pod(id string) (fsm.Pod, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	p, ok := w.state.pods[id]
	return p, ok
}

// Pods returns every pod, ordered by ordinal then id.
func (w *Watcher) Pods() []fsm.Pod {
	w.mu.RLock()
	out := make([]fsm.Pod, 0, len(w.state.pods))
	for _, p := range w.state.pods {
		out = append(out, p)
	}
	w.mu.RUnlock()
	slices.SortFunc(out, podLess)
	return out
}

// ConfigNodes returns the config nodes the map knows, by id.
func (w *Watcher) ConfigNodes() []fsm.ConfigNode {
	w.mu.RLock()
	out := make([]fsm.ConfigNode, 0, len(w.state.configNodes))
	for _, c := range w.state.configNodes {
		out = append(out, c)
	}
	w.mu.RUnlock()
	slices.SortFunc(out, func(a, b fsm.ConfigNode) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// ShardCount returns the cluster's shard count (0 before the first list).
func (w *Watcher) ShardCount() int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.state.shardCount
}

// ShardHolder returns the pod holding a shard's Discord session ("" if none
// or out of range).
func (w *Watcher) ShardHolder(shard int) string {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if shard < 0 || shard >= len(w.state.shards) {
		return ""
	}
	return w.state.shards[shard]
}

// GuildsOwnedBy returns the guilds a pod owns, ascending. It scans the map:
// O(guilds).
func (w *Watcher) GuildsOwnedBy(pod string) []uint64 {
	var out []uint64
	w.mu.RLock()
	for id, g := range w.state.guilds {
		if g.Owner == pod {
			out = append(out, id)
		}
	}
	w.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Revision returns the revision of the local map (0 before the first list).
func (w *Watcher) Revision() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.state.rev
}

// Staleness returns the time since the last message (change or progress)
// from a config node; before the first one, the time since NewWatcher.
func (w *Watcher) Staleness() time.Duration {
	last := w.lastMsg.Load()
	if last == 0 {
		return time.Since(w.created)
	}
	return time.Duration(time.Now().UnixNano() - last)
}

// Snapshot copies the whole local map in the shape of GET /v1/snapshot
// (pods by ordinal, guilds by id, config nodes by id).
func (w *Watcher) Snapshot() Snapshot {
	w.mu.RLock()
	m := w.state
	s := Snapshot{
		Revision:    m.rev,
		ShardCount:  m.shardCount,
		Pods:        make([]fsm.Pod, 0, len(m.pods)),
		Shards:      make([]fsm.ShardAssignment, len(m.shards)),
		Guilds:      make([]fsm.Guild, 0, len(m.guilds)),
		ConfigNodes: make([]fsm.ConfigNode, 0, len(m.configNodes)),
	}
	for _, p := range m.pods {
		s.Pods = append(s.Pods, p)
	}
	for i, h := range m.shards {
		s.Shards[i] = fsm.ShardAssignment{Shard: i, Holder: h}
	}
	for _, g := range m.guilds {
		s.Guilds = append(s.Guilds, *g)
	}
	for _, c := range m.configNodes {
		s.ConfigNodes = append(s.ConfigNodes, c)
	}
	w.mu.RUnlock()
	slices.SortFunc(s.Pods, podLess)
	slices.SortFunc(s.Guilds, func(a, b fsm.Guild) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	slices.SortFunc(s.ConfigNodes, func(a, b fsm.ConfigNode) int { return strings.Compare(a.ID, b.ID) })
	return s
}

// WaitSynced blocks until the first list has loaded or ctx ends.
func (w *Watcher) WaitSynced(ctx context.Context) error {
	select {
	case <-w.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the first list: %w", ctx.Err())
	}
}

// WaitRevision blocks until the local map is at rev or newer, or ctx ends.
func (w *Watcher) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		w.mu.RLock()
		cur, ch := w.state.rev, w.changed
		w.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// ---- subscriptions ----

// Subscribe returns a channel of changes and a function that ends the
// subscription (closing the channel). buffer (at least 1) is the channel's
// capacity.
//
// If the watcher has already synced, the first message is a Relisted change
// at the current revision, so the subscriber can read the map at a known
// point; after that it gets every change in order.
//
// Policy for a slow subscriber: the watcher never blocks on it. When its
// buffer is full, the buffered changes are dropped and replaced by one
// Relisted change at the current revision (coalescing): the subscriber has
// missed changes and must re-read what it needs from the watcher.
func (w *Watcher) Subscribe(buffer int) (<-chan Change, func()) {
	if buffer < 1 {
		buffer = 1
	}
	s := &subscription{ch: make(chan Change, buffer)}
	w.mu.RLock()
	w.subsMu.Lock()
	w.subs[s] = struct{}{}
	select {
	case <-w.synced:
		s.ch <- Change{Revision: w.state.rev, Relisted: true}
	default:
	}
	w.subsMu.Unlock()
	w.mu.RUnlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			w.subsMu.Lock()
			delete(w.subs, s)
			close(s.ch)
			w.subsMu.Unlock()
		})
	}
}

// deliver sends c to every subscriber without blocking. Called with subsMu
// held, by Run's goroutine only (so the channel has no other sender).
func (w *Watcher) deliver(c Change) {
	for s := range w.subs {
		select {
		case s.ch <- c:
			continue
		default:
		}
		// Full: drop what is buffered and coalesce into one Relisted change.
		w.m.overflows.Inc()
	drain:
		for {
			select {
			case <-s.ch:
			default:
				break drain
			}
		}
		select {
		case s.ch <- Change{Revision: c.Revision, Relisted: true}:
		default: // cannot happen: we are the only sender and just drained
		}
	}
}

// ---- the loop ----

// errRelist means the node cannot serve our revision: list again.
var errRelist = errors.New("relist needed")

// Run lists, watches and reconnects until ctx ends; it then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	needList := true
	failures := 0
	backoff := func() bool {
		failures++
		if failures == 1 {
			return true // fail over to the next node at once
		}
		step := w.o.RetryMin << min(failures-2, 20)
		if step > w.o.RetryMax || step <= 0 {
			step = w.o.RetryMax
		}
		d := step/2 + rand.N(step/2+1)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
loop:
	for ctx.Err() == nil {
		if needList {
			if err := w.list(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				w.log.Warn("list failed; keeping the last map", "err", err, "revision", w.Revision())
				if !backoff() {
					break loop
				}
				continue
			}
			needList = false
		}
		err := w.watch(ctx)
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, errRelist):
			w.log.Info("relisting", "reason", err, "revision", w.Revision())
			needList = true
			failures = 0
		default:
			if err != nil && !errors.Is(err, errStreamOK) {
				w.log.Warn("watch stream ended; reconnecting", "err", err, "revision", w.Revision())
			}
			if errors.Is(err, errStreamOK) {
				failures = 0
			}
			w.m.reconnects.Inc()
			w.preferred++
			if !backoff() {
				break loop
			}
		}
	}
	w.m.connected.Set(0)
	return nil
}

// endpoints is every configured URL plus the config nodes' HTTP addresses
// learnt from the map, without duplicates, in a stable order.
func (w *Watcher) endpoints() []string {
	out := w.c.URLs()
	seen := make(map[string]bool, len(out))
	for _, u := range out {
		seen[u] = true
	}
	for _, c := range w.ConfigNodes() {
		if c.HTTPAddr == "" {
			continue
		}
		u := "http://" + c.HTTPAddr
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out
}

func (w *Watcher) request(ctx context.Context, base, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if t := w.c.Token(); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := w.c.HTTP().Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s%s: %w", base, path, err)
	}
	return resp, nil
}

// list loads GET /v1/snapshot from the first node (starting at the preferred
// one) that answers with a revision not older than ours, and replaces the map.
func (w *Watcher) list(ctx context.Context) error {
	eps := w.endpoints()
	var errs []error
	for i := range eps {
		idx := (w.preferred + i) % len(eps)
		snap, err := w.listOne(ctx, eps[idx])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cur := w.Revision(); snap.Revision < cur {
			errs = append(errs, fmt.Errorf("%s is behind: its snapshot is at revision %d, we have %d", eps[idx], snap.Revision, cur))
			continue
		}
		w.preferred = idx
		w.m.relists.Inc()
		w.replace(mapFromSnapshot(&snap))
		w.log.Debug("listed", "node", eps[idx], "revision", snap.Revision, "guilds", len(snap.Guilds))
		return nil
	}
	return fmt.Errorf("list from %d config nodes: %w", len(eps), errors.Join(errs...))
}

func (w *Watcher) listOne(ctx context.Context, base string) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, w.o.ListTimeout)
	defer cancel()
	var s Snapshot
	resp, err := w.request(ctx, base, "/v1/snapshot")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, DecodeError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("decode snapshot from %s: %w", base, err)
	}
	w.touch()
	return s, nil
}

// errStreamOK marks a stream that delivered at least one change before it
// ended: the next attempt need not back off. (A stream that only ever sends
// progress and then closes counts as a failure, so a broken node cannot make
// the watcher spin.)
var errStreamOK = errors.New("stream ended after delivering")

// watch streams from the preferred node until the stream ends. It returns
// errRelist (wrapped) when the node cannot serve our revision.
func (w *Watcher) watch(ctx context.Context) error {
	eps := w.endpoints()
	base := eps[w.preferred%len(eps)]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stale := time.AfterFunc(w.o.StaleAfter, cancel)
	defer stale.Stop()

	from := w.Revision()
	resp, err := w.request(ctx, base, "/v1/watch?from="+strconv.FormatUint(from, 10))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusGone:
		err := DecodeError(resp)
		return fmt.Errorf("%w: %v", errRelist, err)
	case resp.StatusCode != http.StatusOK:
		return DecodeError(resp)
	}
	w.m.connected.Set(1)
	defer w.m.connected.Set(0)
	delivered := false
	rd := NewSSEReader(resp.Body)
	for {
		msg, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if ctx.Err() != nil && !stale.Stop() {
				err = fmt.Errorf("no message for %s", w.o.StaleAfter)
			}
			err = fmt.Errorf("watch %s from %d: %w", base, w.Revision(), err)
			if delivered {
				return errors.Join(errStreamOK, err)
			}
			return err
		}
		stale.Reset(w.o.StaleAfter)
		w.touch()
		switch msg.Event {
		case "change":
			var ch struct {
				Revision uint64      `json:"revision"`
				Events   []fsm.Event `json:"events"`
			}
			if err := json.Unmarshal([]byte(msg.Data), &ch); err != nil {
				return fmt.Errorf("decode change from %s (id %s): %w", base, msg.ID, err)
			}
			w.applyChange(ch.Revision, ch.Events)
			delivered = true
		case "gone":
			return fmt.Errorf("%w: %s: %s", errRelist, base, msg.Data)
		case "progress":
		default:
			w.log.Debug("unknown watch message", "event", msg.Event, "node", base)
		}
	}
}

func (w *Watcher) touch() { w.lastMsg.Store(time.Now().UnixNano()) }

// applyChange applies one revision atomically and tells subscribers. A
// revision not newer than ours is ignored (and counted).
func (w *Watcher) applyChange(rev uint64, events []fsm.Event) bool {
	w.mu.Lock()
	if rev <= w.state.rev {
		cur := w.state.rev
		w.mu.Unlock()
		w.m.ignored.Inc()
		w.log.Warn("ignoring a change not newer than the local map", "change", rev, "revision", cur)
		return false
	}
	w.state.apply(rev, events)
	close(w.changed)
	w.changed = make(chan struct{})
	w.subsMu.Lock()
	w.mu.Unlock()
	w.m.revision.Set(float64(rev))
	w.m.events.Add(float64(len(events)))
	w.deliver(Change{Revision: rev, Events: events})
	w.subsMu.Unlock()
	return true
}

// replace installs a freshly listed map and tells subscribers.
func (w *Watcher) replace(m *localMap) {
	w.mu.Lock()
	w.state = m
	close(w.changed)
	w.changed = make(chan struct{})
	select {
	case <-w.synced:
	default:
		close(w.synced)
	}
	w.subsMu.Lock()
	w.mu.Unlock()
	w.m.revision.Set(float64(m.rev))
	w.deliver(Change{Revision: m.rev, Relisted: true})
	w.subsMu.Unlock()
}
