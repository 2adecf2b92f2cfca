package gatewaynode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"github.com/modbot/modbot/internal/podapi"
)

// The in-memory twins of the pod's seams (seams.go). They are not mocks:
// memCluster applies real fsm commands to a real fsm.State, memPeers calls
// the owner pod's real acceptForwarded, memDiscord keeps sessions with
// Discord's resume and close semantics. Only the network is gone.

// ---- memCluster: the control plane and every pod's map ----

type memCluster struct {
	mu    sync.Mutex
	st    *fsm.State
	index uint64
	subs  map[chan assignments.Change]bool
	wake  chan struct{} // closed and replaced on every applied change
	// failCheckpoints, if set, fails SaveCheckpoints of that pod.
	failCheckpoints map[string]bool
}

func newMemCluster(t *testing.T, shards int) *memCluster {
	c := &memCluster{st: fsm.New(), subs: map[chan assignments.Change]bool{}, wake: make(chan struct{}), failCheckpoints: map[string]bool{}}
	c.mustApply(t, fsm.Command{Type: fsm.CmdInit, ShardCount: shards})
	return c
}

func (c *memCluster) apply(cmd fsm.Command) (uint64, []fsm.Event, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd.At = time.Now().UnixMilli()
	if cmd.Version == 0 {
		cmd.Version = fsm.CommandVersion
	}
	idx := c.index + 1
	evs, err := c.st.Apply(idx, cmd)
	if err != nil {
		return 0, nil, err
	}
	c.index = idx
	if len(evs) > 0 {
		ch := assignments.Change{Revision: idx, Events: evs}
		for s := range c.subs {
			select {
			case s <- ch:
			default:
			}
		}
	}
	close(c.wake)
	c.wake = make(chan struct{})
	return idx, evs, nil
}

func (c *memCluster) mustApply(t *testing.T, cmd fsm.Command) uint64 {
	t.Helper()
	idx, _, err := c.apply(cmd)
	if err != nil {
		t.Fatalf("apply %s: %v", cmd.Type, err)
	}
	return idx
}

// mapView

func (c *memCluster) Lookup(g uint64) (fsm.Guild, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Guilds.Get(g)
}

func (c *memCluster) Pod(id string) (fsm.Pod, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.st.Pods[id]
	if !ok {
		return fsm.Pod{}, false
	}
	return *p, true
}

func (c *memCluster) Pods() []fsm.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []fsm.Pod
	for _, p := range c.st.SortedPods() {
		out = append(out, *p)
	}
	return out
}

func (c *memCluster) ShardCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.ShardCount
}

func (c *memCluster) ShardHolder(i int) string {
	sa, _ := c.Shard(i)
	return sa.Holder
}

func (c *memCluster) Shard(i int) (fsm.ShardAssignment, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= c.st.ShardCount {
		return fsm.ShardAssignment{}, false
	}
	sa := c.st.Shard(i)
	return sa, true
}

func (c *memCluster) GuildCount(pod string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.GuildCount(pod)
}

func (c *memCluster) GuildsOwnedBy(pod string) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Guilds.OwnedBy(pod)
}

func (c *memCluster) Revision() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index
}

func (c *memCluster) Staleness() time.Duration             { return 0 }
func (c *memCluster) WaitSynced(ctx context.Context) error { return ctx.Err() }

func (c *memCluster) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		c.mu.Lock()
		idx, wake := c.index, c.wake
		c.mu.Unlock()
		if idx >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

func (c *memCluster) Subscribe(buffer int) (<-chan assignments.Change, func()) {
	ch := make(chan assignments.Change, max(buffer, 1))
	c.mu.Lock()
	c.subs[ch] = true
	ch <- assignments.Change{Revision: c.index, Relisted: true}
	c.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			c.mu.Lock()
			delete(c.subs, ch)
			c.mu.Unlock()
		})
	}
}

// controlPlane

func (c *memCluster) RegisterPod(_ context.Context, r assignments.RegisterPodRequest) (assignments.WriteResult, error) {
	ord := fsm.OrdinalFromID(r.ID)
	if r.Ordinal != nil {
		ord = *r.Ordinal
	}
	idx, _, err := c.apply(fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: r.ID, Ordinal: ord, Addr: r.Addr}})
	return assignments.WriteResult{Revision: idx, Index: idx}, err
}

func (c *memCluster) HeartbeatWithLag(context.Context, string, int64) error { return nil }

func (c *memCluster) Leave(_ context.Context, pod string) error {
	_, _, err := c.apply(fsm.Command{Type: fsm.CmdMarkPodDown, PodID: pod})
	return err
}

func (c *memCluster) PlaceGuilds(_ context.Context, ids []string) (assignments.PlaceResponse, error) {
	var gs []uint64
	for _, s := range ids {
		g, err := fsm.ParseGuildID(s)
		if err != nil {
			return assignments.PlaceResponse{}, err
		}
		gs = append(gs, g)
	}
	idx, _, err := c.apply(fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: gs})
	return assignments.PlaceResponse{Revision: idx}, err
}

func (c *memCluster) ConsistentShards(context.Context) (assignments.ShardList, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := assignments.ShardList{Revision: c.index, ShardCount: c.st.ShardCount}
	for i := 0; i < c.st.ShardCount; i++ {
		sa := c.st.Shard(i)
		if cp, ok := c.st.Checkpoints[i]; ok {
			cp := cp
			sa.Checkpoint = &cp
		}
		out.Shards = append(out.Shards, sa)
	}
	return out, nil
}

func (c *memCluster) SaveCheckpoints(_ context.Context, r assignments.CheckpointRequest) error {
	c.mu.Lock()
	fail := c.failCheckpoints[r.Pod]
	c.mu.Unlock()
	if fail {
		return errors.New("checkpoint refused (test)")
	}
	cps := map[int]fsm.Checkpoint{}
	for k, cp := range r.Checkpoints {
		id, err := strconv.Atoi(k)
		if err != nil {
			return err
		}
		cps[id] = cp
	}
	_, _, err := c.apply(fsm.Command{Type: fsm.CmdSaveCheckpoints, PodID: r.Pod, Checkpoints: cps})
	return err
}

func (c *memCluster) IdentifySlot(context.Context, assignments.IdentifyRequest) (assignments.IdentifySlot, error) {
	return assignments.IdentifySlot{}, nil
}

// ---- memPeers: forwarding straight into the owner's acceptForwarded ----

type memPeers struct {
	mu    sync.Mutex
	pods  map[string]*Node
	fault func(owner string) error // non-nil error: the forward fails
}

func (p *memPeers) add(n *Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pods == nil {
		p.pods = map[string]*Node{}
	}
	p.pods[n.cfg.ID] = n
}

// remove makes a pod unreachable, as a killed process is: forwards to it
// and release queries about it fail.
func (p *memPeers) remove(id string) {
	p.mu.Lock()
	delete(p.pods, id)
	p.mu.Unlock()
}

func (p *memPeers) setFault(f func(owner string) error) {
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

func (p *memPeers) Forward(ctx context.Context, owner fsm.Pod, evs []bot.Event) ([]int, error) {
	p.mu.Lock()
	n, fault := p.pods[owner.ID], p.fault
	p.mu.Unlock()
	if fault != nil {
		if err := fault(owner.ID); err != nil {
			return nil, err
		}
	}
	if n == nil {
		return nil, fmt.Errorf("no pod %s", owner.ID)
	}
	// What travels is the wire form, as over HTTP.
	cp := make([]bot.Event, len(evs))
	for i, ev := range evs {
		d, err := decodeEvent(encodeEvent(ev))
		if err != nil {
			return nil, err
		}
		cp[i] = d
	}
	return n.acceptForwarded(ctx, cp)
}

func (p *memPeers) Released(ctx context.Context, pod fsm.Pod, shard int, wait time.Duration) (podapi.ReleasedResponse, error) {
	p.mu.Lock()
	n := p.pods[pod.ID]
	p.mu.Unlock()
	if n == nil {
		return podapi.ReleasedResponse{}, fmt.Errorf("no pod %s", pod.ID)
	}
	released := n.shards.shardReleased(ctx, shard, wait)
	return podapi.ReleasedResponse{Shard: shard, Released: released, ClosedSession: n.shards.closedSession(shard)}, nil
}

// ---- memDiscord: sessions with Discord's resume and close semantics ----

type memDiscord struct {
	mu       sync.Mutex
	next     int
	sessions map[string]*memSessionState // by session id
	conns    map[int][]*memConn          // shard → live connections
	opens    []string                    // "identify shard S session ID" / "resume shard S session ID"
}

// memSessionState is one Discord session: its dispatch history (for
// resumes) and whether a close 1000 invalidated it.
type memSessionState struct {
	id      string
	shard   int
	history []discordgw.Dispatch
	invalid bool
	conn    *memConn // the connection currently attached, if any
}

// memConn is one connection (one discordgw.Shard) attached to a session.
type memConn struct {
	d     *memDiscord
	s     *memSessionState
	out   chan discordgw.Dispatch
	mu    sync.Mutex
	acked int64
	last  int64
	ended bool
	how   string // "closed", "detached", "kicked" (another connection resumed the session)
	err   error
}

func newMemDiscord() *memDiscord {
	return &memDiscord{sessions: map[string]*memSessionState{}, conns: map[int][]*memConn{}}
}

func (d *memDiscord) Gateway() (gatewayInfo, error) {
	return gatewayInfo{URL: "ws://mem", MaxConcurrency: 16, Limit: &assignments.SessionStartLimit{Total: 1000, Remaining: 1000, MaxConcurrency: 16}}, nil
}

func (d *memDiscord) Open(ctx context.Context, cfg discordgw.Config) (session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if r := cfg.Resume; cfg.IdentifyGate != nil && (r == nil || !d.resumable(r.SessionID)) {
		// As discordgw does: an identify (also after a refused resume)
		// waits for the gate, which may refuse it.
		if err := cfg.IdentifyGate(ctx, cfg.ShardID); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := cfg.Resume; r != nil {
		if s, ok := d.sessions[r.SessionID]; ok && !s.invalid {
			if old := s.conn; old != nil {
				old.endLocked("kicked", errors.New("session resumed by another connection"))
			}
			c := &memConn{d: d, s: s, out: make(chan discordgw.Dispatch, 1<<16), acked: r.Seq, last: r.Seq}
			s.conn = c
			d.conns[cfg.ShardID] = append(d.conns[cfg.ShardID], c)
			for _, ev := range s.history {
				if ev.Seq > r.Seq {
					c.out <- ev
					c.last = ev.Seq
				}
			}
			d.opens = append(d.opens, fmt.Sprintf("resume shard %d session %s", cfg.ShardID, s.id))
			return c, nil
		}
	}
	d.next++
	s := &memSessionState{id: fmt.Sprintf("s%d", d.next), shard: cfg.ShardID}
	d.sessions[s.id] = s
	c := &memConn{d: d, s: s, out: make(chan discordgw.Dispatch, 1<<16)}
	s.conn = c
	d.conns[cfg.ShardID] = append(d.conns[cfg.ShardID], c)
	d.opens = append(d.opens, fmt.Sprintf("identify shard %d session %s", cfg.ShardID, s.id))
	return c, nil
}

func (d *memDiscord) resumable(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sessions[id]
	return ok && !s.invalid
}

// dispatch delivers one event to every live session of the shard, as
// Discord does when several sessions identified with the same shard.
func (d *memDiscord) dispatch(shard int, typ string, data any) {
	b, _ := json.Marshal(data)
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[*memSessionState]bool{}
	for _, s := range d.sessions {
		if s.shard != shard || s.invalid || seen[s] {
			continue
		}
		seen[s] = true
		ev := discordgw.Dispatch{Seq: int64(len(s.history) + 1), Type: typ, Data: b, SessionID: s.id}
		s.history = append(s.history, ev)
		if c := s.conn; c != nil && !c.ended {
			c.out <- ev
			c.last = ev.Seq
		}
	}
}

// liveSessions counts valid sessions of a shard with a connection attached.
func (d *memDiscord) liveSessions(shard int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := 0
	for _, s := range d.sessions {
		if s.shard == shard && !s.invalid && s.conn != nil && !s.conn.ended {
			k++
		}
	}
	return k
}

func (d *memDiscord) openLog() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.opens...)
}

func (c *memConn) endLocked(how string, err error) {
	if c.ended {
		return
	}
	c.ended, c.how, c.err = true, how, err
	close(c.out)
	if c.s.conn == c {
		c.s.conn = nil
	}
}

func (c *memConn) Events() <-chan discordgw.Dispatch { return c.out }

func (c *memConn) AckDispatch(ev discordgw.Dispatch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev.SessionID == c.s.id && ev.Seq > c.acked {
		c.acked = ev.Seq
	}
}

func (c *memConn) Checkpoint() discordgw.Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return discordgw.Checkpoint{SessionID: c.s.id, Seq: c.acked}
}

func (c *memConn) Received() (string, int64) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return c.s.id, c.last
}

func (c *memConn) ResumeFailed() bool { return false }

func (c *memConn) Err() error {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return c.err
}

// Close sends close 1000: Discord invalidates the session, whoever is
// attached to it now.
func (c *memConn) Close() error {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.s.invalid = true
	if cur := c.s.conn; cur != nil && cur != c {
		cur.endLocked("invalidated", errors.New("session invalidated by a close 1000 from another connection"))
	}
	c.endLocked("closed", nil)
	return nil
}

// Detach drops the connection without a close frame: the session stays
// resumable.
func (c *memConn) Detach() error {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	if c.s.conn == c {
		c.endLocked("detached", nil)
	} else if !c.ended {
		c.ended, c.how = true, "detached"
		close(c.out)
	}
	return nil
}

// ---- a pod on the twins ----

type memPod struct {
	*Node
	commits *commitLog
}

// commitLog records, per guild, every event committed by any pod.
type commitLog struct {
	mu  sync.Mutex
	log map[uint64][]committed
}

type committed struct {
	pod string
	msg uint64 // message id (MESSAGE_CREATE) — the send order in tests
}

func (l *commitLog) record(pod string, evs []bot.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		if ev.Type != bot.EventMessageCreate {
			continue
		}
		var m struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(ev.Data, &m)
		id, _ := strconv.ParseUint(m.ID, 10, 64)
		g, _ := bot.GuildOf(ev)
		l.log[g] = append(l.log[g], committed{pod: pod, msg: id})
	}
}

func (l *commitLog) of(g uint64) []committed {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]committed(nil), l.log[g]...)
}

type memWorld struct {
	t       *testing.T
	cluster *memCluster
	peers   *memPeers
	discord *memDiscord
	commits *commitLog
	pods    []*Node
	tweak   func(*Config) // applied to each pod's config by addPod
}

func newMemWorld(t *testing.T, shards int) *memWorld {
	return &memWorld{t: t, cluster: newMemCluster(t, shards), peers: &memPeers{}, discord: newMemDiscord(),
		commits: &commitLog{log: map[uint64][]committed{}}}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// addPod builds a pod on the twins, registers it and starts its loops.
func (w *memWorld) addPod(id string) *Node {
	w.t.Helper()
	cfg := Config{ID: id, Ordinal: -1, DataDir: w.t.TempDir(), ConfigURLs: []string{"mem"}, Token: "t",
		CheckpointInterval: 20 * time.Millisecond, JanitorInterval: 200 * time.Millisecond, Logger: quietLogger()}
	cfg.OnCommit = func(evs []bot.Event) { w.commits.record(id, evs) }
	if w.tweak != nil {
		w.tweak(&cfg)
	}
	n, err := newNode(cfg, deps{watch: w.cluster, client: w.cluster, peers: w.peers, discord: w.discord})
	if err != nil {
		w.t.Fatal(err)
	}
	n.addr = id + ".mem"
	w.peers.add(n)
	if _, err := w.cluster.RegisterPod(context.Background(), assignments.RegisterPodRequest{ID: id, Addr: n.addr}); err != nil {
		w.t.Fatal(err)
	}
	n.startLoops()
	w.pods = append(w.pods, n)
	w.t.Cleanup(func() { n.Close() })
	return n
}

// waitFor polls cond (the twins have no network: polls end in ms).
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// guildOnShard returns a guild id that lands on the shard.
func guildOnShard(shard, shardCount int, k int) uint64 {
	for g := uint64(1 << 22); ; g += 1 << 22 {
		if fsm.ShardOf(g, shardCount) == shard {
			if k == 0 {
				return g
			}
			k--
		}
	}
}

func msgCreate(g, id uint64) map[string]any {
	return map[string]any{"id": strconv.FormatUint(id, 10), "guild_id": strconv.FormatUint(g, 10), "channel_id": "7",
		"author": map[string]any{"id": "99", "username": "u"}, "content": "m" + strconv.FormatUint(id, 10)}
}
