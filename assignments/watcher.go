package assignments

import (
	"bytes"
	"cmp"
	"context"
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
	// StaleAfter: a stream that brings no proof that the map is current (a
	// progress message passing Progress.CheckCurrent) for this long is
	// dropped and another node is tried. It is also the longest leader
	// contact a node may report and still count as current. Default 10 s,
	// five times the config nodes' progress interval (2 s).
	StaleAfter time.Duration
	// ListTimeout bounds each wait of one GET /v1/snapshot: for its
	// answer, then for every next byte of its body, not the whole list
	// (ten million guilds take minutes to send but never stall). Default
	// 30 s.
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

// localMap is the watcher's copy of the FSM. Stored values are never
// modified in place (events bring whole new values), so a Guild handed out
// may share its Migration pointer; a shard's Checkpoint is copied out.
type localMap struct {
	rev        uint64
	shardCount int
	shards     []fsm.ShardAssignment // index = shard id
	pods       map[string]fsm.Pod
	// guilds is compact (about a tenth of a map of *fsm.Guild at 1M
	// guilds), interns owners, counts guilds per owner and indexes them.
	guilds      *fsm.GuildTable
	configNodes map[string]fsm.ConfigNode
}

func newLocalMap() *localMap {
	return &localMap{pods: map[string]fsm.Pod{}, guilds: fsm.NewGuildTable(), configNodes: map[string]fsm.ConfigNode{}}
}

func mapFromSnapshot(s *Snapshot) *localMap {
	m := &localMap{
		rev:         s.Revision,
		shardCount:  s.ShardCount,
		pods:        make(map[string]fsm.Pod, len(s.Pods)),
		guilds:      fsm.BuildGuildTable(s.Guilds), // keeps nothing of s.Guilds but migrations
		configNodes: make(map[string]fsm.ConfigNode, len(s.ConfigNodes)),
	}
	m.resizeShards(s.ShardCount)
	for _, sh := range s.Shards {
		if sh.Shard >= 0 && sh.Shard < len(m.shards) {
			m.shards[sh.Shard] = sh
		}
	}
	for _, p := range s.Pods {
		m.pods[p.ID] = p
	}
	for _, c := range s.ConfigNodes {
		m.configNodes[c.ID] = c
	}
	return m
}

// resizeShards grows the shard table to n entries, keeping what it holds.
func (m *localMap) resizeShards(n int) {
	if n <= len(m.shards) {
		return
	}
	sh := make([]fsm.ShardAssignment, n)
	copy(sh, m.shards)
	for i := len(m.shards); i < n; i++ {
		sh[i].Shard = i
	}
	m.shards = sh
}

// apply upserts (or deletes) every event of one revision. Events carry whole
// values, so applying is idempotent.
func (m *localMap) apply(rev uint64, events []fsm.Event) {
	// A run of guild events (a placement is 10,000) goes into the table in
	// one SetMany; any other event is applied after the run before it.
	var run []fsm.Guild
	if len(events) > 1 {
		run = make([]fsm.Guild, 0, len(events))
	}
	for i := range events {
		e := &events[i]
		if e.Type == fsm.EventGuild {
			if e.Guild != nil {
				run = append(run, *e.Guild)
			}
			continue
		}
		if len(run) > 0 {
			m.guilds.SetMany(run)
			run = run[:0]
		}
		switch e.Type {
		case fsm.EventInit:
			if e.ShardCount > 0 {
				m.shardCount = e.ShardCount
				m.resizeShards(e.ShardCount)
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
				m.resizeShards(e.Shard.Shard + 1)
				sa := *e.Shard // the whole assignment: holder, epoch, …
				if sa.Checkpoint == nil {
					// Saving a checkpoint emits no event and a change of
					// holder leaves the FSM's checkpoint in place: keep the
					// one the list brought.
					sa.Checkpoint = m.shards[sa.Shard].Checkpoint
				}
				m.shards[sa.Shard] = sa
			}
		case fsm.EventGuildGone:
			if e.Guild != nil {
				m.guilds.Delete(e.Guild.ID)
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
	m.guilds.SetMany(run)
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

	provenAt atomic.Pointer[time.Time] // when the map was last proven current (nil: never)
	created  time.Time

	// Run's goroutine only.
	preferred int     // index into endpoints() of the node to try first
	learned   Learned // the newest revision and term any node showed
	proofs    []proof // progress that proves currency once the map reaches its revision
}

// proof says: the map is current as of at once it reaches rev.
type proof struct {
	rev uint64
	at  time.Time
}

// maxProofs bounds the pending proofs.
const maxProofs = 64

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

// View is the map at one revision, as a WaitFor condition sees it. It is
// valid only during the call that received it.
type View struct{ m *localMap }

// Revision is the view's revision.
func (v View) Revision() uint64 { return v.m.rev }

// Lookup returns a guild's placement.
func (v View) Lookup(guild uint64) (fsm.Guild, bool) {
	return v.m.guilds.Get(guild)
}

// GuildCount returns the number of guilds a pod owns.
func (v View) GuildCount(pod string) int { return v.m.guilds.Count(pod) }

// Pod returns one pod.
func (v View) Pod(id string) (fsm.Pod, bool) {
	p, ok := v.m.pods[id]
	return p, ok
}

// ShardCount is the cluster's shard count.
func (v View) ShardCount() int { return v.m.shardCount }

// Shard returns a shard's whole assignment (holder, holder epoch, last
// checkpoint known to the map); false when out of range.
func (v View) Shard(i int) (fsm.ShardAssignment, bool) {
	if i < 0 || i >= len(v.m.shards) {
		return fsm.ShardAssignment{}, false
	}
	sa := v.m.shards[i]
	if sa.Checkpoint != nil {
		cp := *sa.Checkpoint
		sa.Checkpoint = &cp
	}
	return sa, true
}

// ---- reads (no I/O) ----

// Lookup returns a guild's placement from the local map.
func (w *Watcher) Lookup(guild uint64) (fsm.Guild, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return View{w.state}.Lookup(guild)
}

// Pod returns one pod.
func (w *Watcher) Pod(id string) (fsm.Pod, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return View{w.state}.Pod(id)
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
	sa, _ := w.Shard(shard)
	return sa.Holder
}

// Shard returns a shard's whole assignment as the map has it: holder, holder
// epoch and the last checkpoint the map knows (from the list, or from shard
// events that carry one); false when out of range or before the first list.
func (w *Watcher) Shard(shard int) (fsm.ShardAssignment, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return View{w.state}.Shard(shard)
}

// GuildsOwnedBy returns the guilds a pod owns, ascending (nil when none),
// from the map's per-owner index: O(guilds the pod owns), not O(guilds).
func (w *Watcher) GuildsOwnedBy(pod string) []uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.state.guilds.OwnedBy(pod)
}

// GuildCount returns the number of guilds a pod owns, from the map's
// per-owner counters: O(1).
func (w *Watcher) GuildCount(pod string) int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.state.guilds.Count(pod)
}

// Revision returns the revision of the local map (0 before the first list).
func (w *Watcher) Revision() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.state.rev
}

// Staleness returns the time since the watcher last had proof that its map
// was the cluster's current one (see the package doc); before the first
// proof, the time since NewWatcher. It keeps growing while the watcher is
// connected to a node that cannot give that proof.
func (w *Watcher) Staleness() time.Duration {
	if at := w.provenAt.Load(); at != nil {
		return max(time.Since(*at), 0)
	}
	return time.Since(w.created)
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
		Guilds:      m.guilds.AppendTo(make([]fsm.Guild, 0, m.guilds.Len())), // by id
		ConfigNodes: make([]fsm.ConfigNode, 0, len(m.configNodes)),
	}
	for _, p := range m.pods {
		s.Pods = append(s.Pods, p)
	}
	for i := range m.shards {
		s.Shards[i], _ = View{m}.Shard(i)
	}
	for _, c := range m.configNodes {
		s.ConfigNodes = append(s.ConfigNodes, c)
	}
	w.mu.RUnlock()
	slices.SortFunc(s.Pods, podLess)
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

// WaitFor blocks until cond holds on the map, or ctx ends. cond is first
// evaluated once the first list has loaded, then once after every change of
// revision (a change or a relist) — it is woken by changes, never by a
// clock. It runs under the map's read lock, on a View of one revision: it
// must be quick, must not keep the View, and must not call the Watcher's
// methods (they take the lock it holds; read through the View instead).
func (w *Watcher) WaitFor(ctx context.Context, cond func(View) bool) error {
	if err := w.WaitSynced(ctx); err != nil {
		return err
	}
	for {
		w.mu.RLock()
		ok, rev, ch := cond(View{w.state}), w.state.rev, w.changed
		w.mu.RUnlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for a condition on the map (at revision %d): %w", rev, ctx.Err())
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
// held, so that nothing else sends on the channels meanwhile.
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
			if errors.Is(err, errStreamOK) {
				failures = 0
				w.log.Info("watch stream ended; reconnecting", "err", err, "revision", w.Revision())
			} else if err != nil {
				w.log.Warn("watch stream ended; reconnecting", "err", err, "revision", w.Revision())
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
		u := w.c.scheme() + "://" + c.HTTPAddr
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
		w.learned.Note(snap.Revision, 0)
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
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("%s sent nothing of its snapshot for %s", base, w.o.ListTimeout)
	stall := time.AfterFunc(w.o.ListTimeout, func() { cancel(stalled) })
	defer stall.Stop()
	var s Snapshot
	resp, err := w.request(ctx, base, "/v1/snapshot")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, DecodeError(resp)
	}
	var buf bytes.Buffer
	size := resp.ContentLength
	if n, err := strconv.ParseInt(resp.Header.Get(SnapshotGuildsHeader), 10, 64); size <= 0 && err == nil && n >= 0 {
		size = n*snapshotBytesPerGuild + snapshotChunk // streamed: sized from the guild count
	}
	if size > 0 && size < 4<<30 {
		buf.Grow(int(size) + bytes.MinRead) // one allocation, no regrowth
	}
	if _, err := buf.ReadFrom(progressReader{resp.Body, func() { stall.Reset(w.o.ListTimeout) }}); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return s, fmt.Errorf("read snapshot from %s: %w", base, err)
	}
	b := buf.Bytes()
	if err := DecodeSnapshot(b, &s); err != nil {
		return s, fmt.Errorf("decode snapshot from %s: %w", base, err)
	}
	return s, nil
}

// progressReader calls progress after every read that returned bytes.
type progressReader struct {
	r        io.Reader
	progress func()
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}

// errStreamOK marks a stream that delivered a change, or proved the map
// current for at least StaleAfter, before it ended: the next attempt need not
// back off. (Any other stream counts as a failure, so a broken or cut-off
// node cannot make the watcher spin.)
var errStreamOK = errors.New("stream ended after delivering")

// watch streams from the preferred node until the stream ends or breaks,
// the node sends nothing at all for StaleAfter, or it has sent no proof that
// the map is current for StaleAfter (checked at each progress message, so a
// large revision that takes long to arrive is not cut off). It returns
// errRelist (wrapped) when the node cannot serve our revision.
func (w *Watcher) watch(ctx context.Context) error {
	eps := w.endpoints()
	base := eps[w.preferred%len(eps)]
	// A silent node (no answer, or no byte for StaleAfter) ends the stream.
	from := w.Revision()
	s, err := w.c.OpenStream(ctx, base, StreamOptions{From: from, IdleTimeout: w.o.StaleAfter})
	if IsStatus(err, http.StatusGone) {
		return fmt.Errorf("%w: %v", errRelist, err)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	w.m.connected.Set(1)
	defer w.m.connected.Set(0)
	opened := time.Now()
	delivered, proved := false, false
	lastProof := opened // on this stream (or when it opened)
	warned := false     // logged that this node cannot prove currency
	end := func(err error) error {
		err = fmt.Errorf("watch %s from %d: %w", base, w.Revision(), err)
		// A stream that brought changes, or proof for a while, was worth
		// it: the next attempt need not back off. One that proves
		// currency and drops at once, again and again, must not spin.
		if delivered || (proved && time.Since(opened) >= w.o.StaleAfter) {
			return errors.Join(errStreamOK, err)
		}
		return err
	}
	for {
		msg, err := s.Next()
		if IsStatus(err, http.StatusGone) {
			return fmt.Errorf("%w: %v", errRelist, err)
		}
		if err != nil {
			return end(err)
		}
		switch {
		case msg.Change != nil:
			w.learned.Note(msg.Change.Revision, 0)
			w.applyChange(msg.Change.Revision, msg.Change.Events)
			delivered = true
		case msg.Progress != nil:
			p := *msg.Progress
			received := time.Now()
			cerr := p.CheckCurrent(w.learned, w.o.StaleAfter)
			w.learned.Note(p.StateRevision(), p.Term)
			if cerr != nil {
				if !warned {
					warned = true
					w.log.Warn("config node cannot prove the map is current; failing over unless it does", "node", base, "reason", cerr, "revision", w.Revision(), "stale_after", w.o.StaleAfter)
				}
				if time.Since(lastProof) >= w.o.StaleAfter {
					return end(fmt.Errorf("no proof for %s that the map is current (%w): failing over", w.o.StaleAfter, cerr))
				}
				continue
			}
			if warned {
				warned = false
				w.log.Info("config node proves the map current again", "node", base, "revision", w.Revision())
			}
			lastProof, proved = received, true
			w.addProof(proof{rev: max(p.StateRevision(), p.Revision), at: p.ProvenAt(received)})
		}
	}
}

// addProof records that the map is current as of p.at once it reaches
// p.rev. Proofs are kept by ascending revision; one that a newer proof of a
// lower or equal revision makes useless is dropped.
func (w *Watcher) addProof(p proof) {
	w.proofs = slices.DeleteFunc(w.proofs, func(q proof) bool { return q.rev >= p.rev && !q.at.After(p.at) })
	i, _ := slices.BinarySearchFunc(w.proofs, p.rev, func(q proof, rev uint64) int { return cmp.Compare(q.rev, rev) })
	w.proofs = slices.Insert(w.proofs, i, p)
	if len(w.proofs) > maxProofs {
		// Dropping the furthest proof can only make Staleness read higher.
		w.proofs = w.proofs[:maxProofs]
	}
	w.settleProofs(w.Revision())
}

// settleProofs moves Staleness to the newest proof a map at rev has
// reached. Run's goroutine only (it alone applies changes and lists).
func (w *Watcher) settleProofs(rev uint64) {
	n := 0
	for n < len(w.proofs) && w.proofs[n].rev <= rev {
		if at := w.proofs[n].at; w.provenAt.Load() == nil || at.After(*w.provenAt.Load()) {
			w.provenAt.Store(&at)
		}
		n++
	}
	w.proofs = append(w.proofs[:0], w.proofs[n:]...)
}

// applyChange applies one revision atomically and tells subscribers. A
// revision not newer than ours is ignored (and counted).
//
// Subscribers are told before the new revision becomes visible to readers
// and waiters: whoever sees revision r (Revision, WaitRevision, WaitFor)
// finds r's change already in every subscription's channel.
func (w *Watcher) applyChange(rev uint64, events []fsm.Event) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev <= w.state.rev {
		w.m.ignored.Inc()
		w.log.Warn("ignoring a change not newer than the local map", "change", rev, "revision", w.state.rev)
		return false
	}
	w.state.apply(rev, events)
	w.publish(Change{Revision: rev, Events: events})
	w.m.events.Add(float64(len(events)))
	return true
}

// replace installs a freshly listed map and tells subscribers.
func (w *Watcher) replace(m *localMap) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = m
	w.publish(Change{Revision: m.rev, Relisted: true})
	select {
	case <-w.synced:
	default:
		close(w.synced)
	}
}

// publish tells subscribers, then waiters, of a new map, and counts the
// proofs of currency it reaches. Called with mu held for writing; delivery
// never blocks.
func (w *Watcher) publish(c Change) {
	w.settleProofs(c.Revision)
	w.subsMu.Lock()
	w.deliver(c)
	w.subsMu.Unlock()
	close(w.changed)
	w.changed = make(chan struct{})
	w.m.revision.Set(float64(c.Revision))
}
