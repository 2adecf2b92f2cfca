package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/discordgw"
)

// shardSet runs one session per shard this pod holds, following the map.
type shardSet struct {
	n  *Node
	mu sync.Mutex
	// running shards by id; a shard being handed off is in leaving instead.
	running map[int]*shardRunner
	leaving map[int]*shardRunner
	saved   map[int]fsm.Checkpoint // last checkpoint written to the FSM
	// stopping counts sessions being closed or detached; released is
	// closed (and replaced) whenever one finished, for shardReleased.
	stopping map[int]int
	released chan struct{}
	// closed is, per shard, the last session this pod closed after
	// committing everything it had received (a drained handoff); any other
	// session it let go of stayed resumable with its backlog.
	closed map[int]string

	gatewayURL     string
	maxConcurrency int
}

type shardRunner struct {
	id     int
	cancel context.CancelFunc
	done   chan struct{}
	// reclaim is closed when a shard being handed off comes back to this
	// pod before the handoff finished: the session just keeps running.
	reclaim chan struct{}
	// leaving is set while the shard is being handed off: a session that
	// ends then is not reopened (the shard is no longer ours to touch).
	leaving atomic.Bool
	// ended is set (and endedCh closed) when the session stopped
	// delivering for good during a handoff.
	ended   atomic.Bool
	endedCh chan struct{}

	mu    sync.Mutex
	shard session // nil until open
	ready bool
	// epoch is the holder epoch the FSM gave this pod for the shard; every
	// checkpoint is saved under it and refused once the shard moved on.
	epoch uint64
	// after is the live previous holder whose session overlaps ours: no
	// dispatch is routed until it has released the shard (see awaitRelease).
	// afterCP is its checkpoint when we identified: should it go down
	// without releasing, its backlog is recovered from there
	// (recoverBacklog).
	after   string
	afterCP *fsm.Checkpoint
}

func newShardSet(n *Node) *shardSet {
	return &shardSet{n: n, running: map[int]*shardRunner{}, leaving: map[int]*shardRunner{}, saved: map[int]fsm.Checkpoint{},
		stopping: map[int]int{}, released: make(chan struct{}), closed: map[int]string{}}
}

// run reconciles running sessions with the map whenever it changes.
func (s *shardSet) run() {
	n := s.n
	if err := n.watch.WaitSynced(n.ctx); err != nil {
		return
	}
	ch, cancel := n.watch.Subscribe(64)
	defer cancel()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		s.reconcile()
		select {
		case <-n.ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
	}
}

// ready reports whether every shard this pod holds has a live session.
func (s *shardSet) ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < s.n.watch.ShardCount(); i++ {
		if s.n.watch.ShardHolder(i) != s.n.cfg.ID {
			continue
		}
		r, ok := s.running[i]
		if !ok {
			return false
		}
		r.mu.Lock()
		ok = r.ready
		r.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// busy counts the shards this pod still runs a session of: held, being
// handed over, or being closed.
func (s *shardSet) busy() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.running) + len(s.leaving)
	for _, c := range s.stopping {
		n += c
	}
	return n
}

func (s *shardSet) held() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for id := range s.running {
		out = append(out, id)
	}
	return out
}

func (s *shardSet) reconcile() {
	n := s.n
	want := map[int]uint64{} // shard → our holder epoch
	for i := 0; i < n.watch.ShardCount(); i++ {
		if sa, ok := n.watch.Shard(i); ok && sa.Holder == n.cfg.ID {
			want[i] = sa.Epoch
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, r := range s.running {
		if _, ok := want[id]; !ok {
			delete(s.running, id)
			r.reclaim = make(chan struct{})
			r.leaving.Store(true)
			s.leaving[id] = r
			go s.handoff(r, r.reclaim)
		}
	}
	for id, epoch := range want {
		if r, ok := s.running[id]; ok {
			r.setEpoch(epoch)
			continue
		}
		if r, ok := s.leaving[id]; ok && !r.ended.Load() {
			delete(s.leaving, id)
			r.setEpoch(epoch)
			r.leaving.Store(false)
			s.running[id] = r
			close(r.reclaim)
			continue
		}
		ctx, cancel := context.WithCancel(n.ctx)
		r := &shardRunner{id: id, cancel: cancel, done: make(chan struct{}), reclaim: make(chan struct{}), endedCh: make(chan struct{}), epoch: epoch}
		s.running[id] = r
		go s.runShard(ctx, r)
	}
	n.metrics.shardsHeld.Set(float64(len(s.running)))
}

func (r *shardRunner) setEpoch(e uint64) {
	r.mu.Lock()
	r.epoch = e
	r.mu.Unlock()
}

func (r *shardRunner) session() (session, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shard, r.epoch
}

// handoff gives up a shard that the map gave to another pod (or to none).
// One session per shard holder, fenced by the holder epoch:
//
//   - If the new holder resumed *our* session (its checkpoint at its epoch
//     names our session id), the session is theirs now: we detach without a
//     close frame — a close 1000 would invalidate it for them.
//   - If this pod is marked down in the map, the new holder resumes our
//     session from the last checkpoint: we detach at once instead of
//     fighting it for the connection (what we routed after the checkpoint is
//     replayed to it, and handlers deduplicate).
//   - Otherwise we keep the old session — with no deadline — until the new
//     holder has saved a checkpoint of its own session at its epoch (READY
//     and committing), then commit everything our session had received
//     (drain) and close it.
//   - A shard nobody holds (no active pod) is detached at once, to stay
//     resumable.
//
// It learns of the new holder's checkpoint from the change stream (the FSM
// announces the first checkpoint of every session), waking on map changes
// only; a checkpoint on the stream is committed, so acting on it is safe.
// No clocks are compared: the holder epoch names the tenure.
func (s *shardSet) handoff(r *shardRunner, reclaimed <-chan struct{}) {
	n := s.n
	lost := time.Now()
	newHolder := n.watch.ShardHolder(r.id)
	// Wake on the map's changes, on a reclaim and when our session ends.
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	go func() {
		select {
		case <-reclaimed:
		case <-r.endedCh:
		case <-ctx.Done():
		}
		cancel()
	}()
	how := ""
	decide := func() bool {
		// Marked down, we still wait for the new holder's first checkpoint
		// and go by what it did, not by what we expect it to do: it may
		// have seen us alive again and identified a session of its own (a
		// planned handoff), and then only our session still carries what
		// Discord sent us and we have not committed. Detaching there lost
		// it (chaos seeds 140 and 184: a frozen holder, marked down and back).
		if r.ended.Load() {
			how = "ended"
			return true
		}
		sa, ok := n.watch.Shard(r.id)
		if !ok {
			return false
		}
		newHolder = sa.Holder
		switch cp := sa.Checkpoint; {
		case sa.Holder == "":
			how = "released"
		case sa.Holder == n.cfg.ID:
			// It came back: reconcile reclaims it.
		case cp != nil && cp.Holder == sa.Holder && cp.Epoch == sa.Epoch:
			how = "closed"
			if sess, _ := r.session(); sess != nil {
				if sid, _ := sess.Received(); sid == cp.SessionID {
					how = "detached" // they resumed our session: it is theirs now
				}
			}
		}
		return how != ""
	}
	for how == "" && n.ctx.Err() == nil {
		wctx, wcancel := context.WithTimeout(ctx, n.cfg.HandoffTimeout)
		err := waitMap(wctx, n.watch, decide)
		wcancel()
		select {
		case <-reclaimed:
			n.log.Info("shard came back before its handoff finished; keeping the session", "shard", r.id)
			return
		default:
		}
		if err != nil && how == "" && ctx.Err() == nil {
			n.log.Warn("still serving a shard that moved away: its new holder has not taken it over yet", "shard", r.id, "to", newHolder, "for", time.Since(lost).Round(time.Second))
		}
		if r.ended.Load() && how == "" {
			how = "ended"
		}
	}
	if how == "detached" {
		n.log.Warn("leaving the shard's session to its new holder without closing it", "shard", r.id, "to", newHolder,
			"reason", "this pod is marked down, or the new holder resumed this pod's session")
	}
	if how == "closed" {
		s.drain(r, reclaimed)
	}
	// Leave the handoff set under the lock, so a reclaim either happened
	// before (and we keep the session) or starts a new runner after.
	s.mu.Lock()
	if s.leaving[r.id] != r {
		s.mu.Unlock()
		return
	}
	delete(s.leaving, r.id)
	if how == "" { // the pod is stopping: stopAll detaches
		how = "detached"
	}
	s.stopping[r.id]++
	if how == "closed" {
		if sh, _ := r.session(); sh != nil {
			s.closed[r.id], _ = sh.Received()
		}
	}
	s.mu.Unlock()
	n.log.Info("handing shard over", "shard", r.id, "to", newHolder, "how", how, "after", time.Since(lost).Round(time.Millisecond))
	n.metrics.handoffs.WithLabelValues(how).Inc()
	r.stop(how != "closed")
	s.mu.Lock()
	s.stopping[r.id]--
	close(s.released)
	s.released = make(chan struct{})
	s.mu.Unlock()
}

// closedSession returns the last session of the shard this pod closed
// after committing its backlog ("" if none).
func (s *shardSet) closedSession(shard int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed[shard]
}

// shardReleased waits up to wait for this pod to run no session of the
// shard (none running, none being handed off or closed): the new holder's
// barrier (awaitRelease).
func (s *shardSet) shardReleased(ctx context.Context, shard int, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		_, run := s.running[shard]
		_, leave := s.leaving[shard]
		busy, ch := run || leave || s.stopping[shard] > 0, s.released
		s.mu.Unlock()
		if !busy {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		case <-ch:
		}
	}
}

// awaitRelease is the new holder's side of a planned handoff: its session
// and the old holder's both receive the shard's dispatches until the old one
// closes, and the old holder commits everything its session received before
// closing. Routing ours meanwhile would commit newer events before the old
// holder's older ones; so the new holder routes nothing (its session buffers,
// and its checkpoint — seq 0 of its own session — tells the old holder it is
// up) until the old holder has released the shard, is down, or 2 minutes
// passed (then it goes on and says so: nothing is lost, order may not hold).
// recover reports that the old holder's session may still carry events
// nobody committed — it went down without releasing the shard, or it let go
// of the checkpoint's session without closing it after a drain (it was
// marked down, the shard went to nobody, or it restarted) — so its backlog
// is recovered first (recoverBacklog).
func (s *shardSet) awaitRelease(ctx context.Context, r *shardRunner, prev string, prevCP *fsm.Checkpoint) (recover bool) {
	n := s.n
	start := time.Now()
	for ctx.Err() == nil {
		p, ok := n.watch.Pod(prev)
		if !ok || p.State == fsm.PodDown {
			n.log.Info("previous holder is gone without releasing the shard", "shard", r.id, "previous", prev, "waited", time.Since(start).Round(time.Millisecond))
			return true
		}
		res, err := n.peers.Released(ctx, p, r.id, 10*time.Second)
		if err == nil && res.Released {
			drained := prevCP == nil || res.ClosedSession == prevCP.SessionID
			n.log.Info("previous holder released the shard", "shard", r.id, "previous", prev, "drained", drained, "waited", time.Since(start).Round(time.Millisecond))
			return !drained
		}
		if time.Since(start) > 2*time.Minute {
			n.log.Error("previous holder did not release the shard within 2 minutes; routing anyway (events stay exactly once, their order across the two sessions may not)",
				"shard", r.id, "previous", prev, "err", err)
			return false
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return false
}

// errResumeOnly stops a recovery session from identifying afresh.
var errResumeOnly = errors.New("recovering a previous holder's backlog: resume only, never identify")

// recoverBacklog runs when the previous holder's session may carry events
// nobody committed although we identified a session of our own: the old
// holder went down without releasing the shard (a planned handoff to us,
// then it was killed or froze before it drained — chaos seed 69), or it let
// go of that session without draining it (the shard went to nobody when
// every pod was marked down at once, or it restarted — chaos seed 5). What
// that session received after its last checkpoint and had not committed,
// and what Discord dispatched to it after its holder let go and before our
// READY, exist only in that session: our own carries events from its READY
// on. So we resume the old session from the checkpoint read when we
// identified — resume only, never identify — route everything it replays,
// and let it go (detached: if the old holder is alive after all, it is
// marked down and hands over by what we did). Our own session's events,
// buffered meanwhile, follow; the overlap is deduplicated by the handlers
// (every write is idempotent). A session Discord refuses to resume was
// closed — by a holder that drained it before restarting — or expired.
func (s *shardSet) recoverBacklog(ctx context.Context, r *shardRunner, prev string, cp fsm.Checkpoint) {
	n := s.n
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	url, _, err := s.gateway()
	var old session
	if err == nil {
		old, err = n.discord.Open(rctx, discordgw.Config{
			Token: n.cfg.DiscordToken, ShardID: r.id, ShardCount: n.watch.ShardCount(), Intents: n.cfg.Intents,
			GatewayURL: url, Logger: n.log.With("shard", r.id, "recovering", cp.SessionID),
			Resume:              &discordgw.Checkpoint{SessionID: cp.SessionID, Seq: cp.Seq, ResumeURL: cp.ResumeURL},
			IdentifyGate:        func(context.Context, int) error { cancel(); return errResumeOnly },
			InvalidSessionDelay: time.Millisecond, // refused: give up at once
		})
	}
	if err != nil && ctx.Err() == nil && rctx.Err() == context.Canceled {
		n.log.Warn("the previous holder's session can no longer be resumed: it was closed (after a drain) or expired; nothing to recover from it",
			"shard", r.id, "previous", prev, "session", cp.SessionID, "seq", cp.Seq)
		return
	}
	if err != nil {
		n.metrics.resumeFailed.Inc()
		n.log.Error("could not resume the session of a previous holder to recover its backlog: what it had not committed is lost",
			"shard", r.id, "previous", prev, "session", cp.SessionID, "seq", cp.Seq, "err", err)
		return
	}
	_, target := old.Received() // the replay ends at RESUMED, before Open returns
	s.routeSession(rctx, r, old, func() bool { return old.Checkpoint().Seq >= target })
	_ = old.Detach()
	acked := old.Checkpoint().Seq
	if acked < target {
		n.metrics.resumeFailed.Inc()
		n.log.Error("recovering a previous holder's backlog ended before it was committed", "shard", r.id, "previous", prev,
			"session", cp.SessionID, "acked", acked, "replayed_to", target, "err", old.Err())
		return
	}
	n.metrics.handoffs.WithLabelValues("recovered").Inc()
	n.log.Info("recovered the backlog of a previous holder's session", "shard", r.id, "previous", prev,
		"session", cp.SessionID, "from_seq", cp.Seq, "to_seq", target, "took", time.Since(start).Round(time.Millisecond))
}

// drain waits until the old session has committed every dispatch it had
// received when the new holder took over, and until this pod's outbox holds
// nothing more of the shard's guilds. The new session only carries events
// from its READY on; whatever the old one still had queued — e.g. the
// backlog a resume replayed — exists nowhere else once it closes, and a
// held event delivered after the new holder's live ones would be out of
// order. Both waits are bounded (2 minutes): an owner that stays down keeps
// its events in the outbox, to be delivered when it returns.
func (s *shardSet) drain(r *shardRunner, reclaimed <-chan struct{}) {
	n := s.n
	sh, _ := r.session()
	if sh == nil {
		return
	}
	sid, target := sh.Received()
	start := time.Now()
	for n.ctx.Err() == nil && !r.ended.Load() {
		cp := sh.Checkpoint()
		committed := cp.SessionID != sid || cp.Seq >= target
		if committed && n.outbox.pendingInShard(r.id, n.watch.ShardCount()) == 0 {
			return
		}
		if time.Since(start) > 2*time.Minute {
			n.log.Error("handing a shard over before its backlog was committed and its held events delivered", "shard", r.id,
				"acked", cp.Seq, "received", target, "held_guilds", n.outbox.pendingInShard(r.id, n.watch.ShardCount()))
			return
		}
		select {
		case <-n.ctx.Done():
		case <-reclaimed:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the runner. Cancelling first makes the pump stop routing (an
// unacknowledged batch is replayed to whoever resumes or overlaps), then the
// session is closed — or detached, to stay resumable by the next holder.
func (r *shardRunner) stop(detach bool) {
	r.cancel()
	<-r.done
	r.mu.Lock()
	sh := r.shard
	r.mu.Unlock()
	if sh != nil {
		if detach {
			_ = sh.Detach()
		} else {
			_ = sh.Close()
		}
	}
}

func (s *shardSet) stopAll(detach bool) {
	s.mu.Lock()
	var all []*shardRunner
	for _, r := range s.running {
		all = append(all, r)
	}
	for _, r := range s.leaving {
		all = append(all, r)
	}
	s.running, s.leaving = map[int]*shardRunner{}, map[int]*shardRunner{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range all {
		wg.Add(1)
		go func() { defer wg.Done(); r.stop(true) }()
	}
	wg.Wait()
}

// gateway learns the gateway URL and max_concurrency once.
func (s *shardSet) gateway() (string, int, error) {
	s.mu.Lock()
	url, mc := s.gatewayURL, s.maxConcurrency
	s.mu.Unlock()
	if url != "" {
		return url, mc, nil
	}
	gi, err := s.n.discord.Gateway()
	if err != nil {
		return "", 0, err
	}
	url, mc = gi.URL, max(gi.MaxConcurrency, 1)
	s.mu.Lock()
	s.gatewayURL, s.maxConcurrency = url, mc
	s.mu.Unlock()
	return url, mc, nil
}

// runShard opens the shard's session (resuming the previous holder's when it
// died, or our own after a restart) and routes its dispatches until stopped.
// A session that ends while the shard is being handed off is not reopened.
func (s *shardSet) runShard(ctx context.Context, r *shardRunner) {
	n := s.n
	defer close(r.done)
	log := n.log.With("shard", r.id)
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil && !r.leaving.Load() {
		sh, err := s.open(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("open shard session failed; retrying", "err", err, "in", backoff)
			n.metrics.sessionErrors.Inc()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		r.mu.Lock()
		r.shard, r.ready = sh, true
		r.mu.Unlock()
		log.Info("shard session up", "session", sh.Checkpoint().SessionID)
		s.pump(ctx, r, sh)
		r.mu.Lock()
		r.ready = false
		r.mu.Unlock()
		if sh.ResumeFailed() {
			s.resumeFailed(r.id, sh)
		}
		if ctx.Err() != nil {
			return // stop() closes or detaches the session
		}
		if r.leaving.Load() {
			r.ended.Store(true)
			close(r.endedCh)
			log.Info("shard session ended during its handoff; not reopening it", "err", sh.Err())
			_ = sh.Detach()
			return
		}
		log.Warn("shard session ended; reopening", "err", sh.Err())
		_ = sh.Detach()
	}
}

// resumeFailed records a RESUME that Discord refused: the shard identified
// afresh, and what was dispatched between the checkpoint and the new READY
// was not replayed. It is counted and logged as an error (never only a log
// line) so an operator can alert on it.
func (s *shardSet) resumeFailed(shard int, sh session) {
	s.n.metrics.resumeFailed.Inc()
	cp := sh.Checkpoint()
	s.n.log.Error("RESUME refused: the shard identified afresh and dispatches since its checkpoint were not replayed",
		"shard", shard, "new_session", cp.SessionID)
}

func (s *shardSet) open(ctx context.Context, r *shardRunner) (session, error) {
	n := s.n
	shardID := r.id
	url, mc, err := s.gateway()
	if err != nil {
		return nil, err
	}
	cfg := discordgw.Config{
		Token: n.cfg.DiscordToken, ShardID: shardID, ShardCount: n.watch.ShardCount(), Intents: n.cfg.Intents,
		GatewayURL: url, Logger: n.log.With("shard", shardID),
		IdentifyGate: func(ctx context.Context, shard int) error {
			_, epoch := r.session()
			req := assignments.IdentifyRequest{Pod: n.cfg.ID, Shard: shard, MaxConcurrency: mc, Epoch: epoch}
			// Report Discord's identify budget as read just now, so the
			// leader's reserve check uses Discord's own count.
			if gi, err := n.discord.Gateway(); err == nil && gi.Limit != nil {
				req.SessionStartLimit, req.SessionStartLimitAt = gi.Limit, time.Now().UnixMilli()
			}
			slot, err := n.client.IdentifySlot(ctx, req)
			if assignments.IsStatus(err, http.StatusTooManyRequests) {
				// Below the day's reserve: wait (the leader says how long),
				// then ask again; never identify without a slot.
				n.metrics.identifyRefused.Inc()
				n.log.Error("identify refused: Discord's daily identify budget is at its reserve", "shard", shard, "err", err)
				wait := time.Minute
				var ae *assignments.APIError
				if errors.As(err, &ae) && ae.RetryAfter > 0 {
					wait = ae.RetryAfter
				}
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
				return fmt.Errorf("identify slot: %w", err)
			}
			if err != nil {
				return fmt.Errorf("identify slot: %w", err)
			}
			n.metrics.identifies.Inc()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(slot.WaitMs) * time.Millisecond):
				return nil
			}
		},
	}
	cp, prev, err := s.resumePoint(ctx, shardID)
	if err != nil {
		return nil, err
	}
	var prevCP *fsm.Checkpoint
	if prev != "" {
		prevCP, cp = cp, nil
	}
	if cp != nil {
		cfg.Resume = &discordgw.Checkpoint{SessionID: cp.SessionID, Seq: cp.Seq, ResumeURL: cp.ResumeURL}
		n.log.Info("resuming shard from checkpoint", "shard", shardID, "session", cp.SessionID, "seq", cp.Seq, "previous_holder", cp.Holder)
	}
	r.mu.Lock()
	r.after, r.afterCP = prev, prevCP
	r.mu.Unlock()
	return n.discord.Open(ctx, cfg)
}

// resumePoint reads the shard's checkpoint (linearizably) and decides how
// to open: resume ours (we restarted) or a holder's that is no longer active
// (it died, or was marked down); otherwise identify afresh — a live previous
// holder keeps its own session until we are up, so stealing it would fight
// it for the connection — and return that holder (with its checkpoint, not
// to be resumed now), whose release the new session waits for before
// routing. An error means "cannot tell yet": the caller retries rather than
// identify and lose a dead holder's backlog.
func (s *shardSet) resumePoint(ctx context.Context, shardID int) (cp *fsm.Checkpoint, livePrev string, err error) {
	n := s.n
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	sl, err := n.client.ConsistentShards(sctx)
	if err != nil {
		return nil, "", fmt.Errorf("read shard %d's checkpoint: %w", shardID, err)
	}
	if shardID >= len(sl.Shards) || sl.Shards[shardID].Checkpoint == nil {
		return nil, "", nil
	}
	cp = sl.Shards[shardID].Checkpoint
	if cp.Holder == n.cfg.ID {
		return cp, "", nil
	}
	if p, ok := n.watch.Pod(cp.Holder); !ok || p.State == fsm.PodDown {
		return cp, "", nil
	}
	return cp, cp.Holder, nil
}

// pump routes the session's dispatches once any previous holder whose
// session overlaps ours has released the shard — or, gone without releasing
// it, had its backlog recovered.
func (s *shardSet) pump(ctx context.Context, r *shardRunner, sh session) {
	r.mu.Lock()
	after, afterCP := r.after, r.afterCP
	r.mu.Unlock()
	if after != "" {
		if s.awaitRelease(ctx, r, after, afterCP) && afterCP != nil {
			s.recoverBacklog(ctx, r, after, *afterCP)
		}
	}
	s.routeSession(ctx, r, sh, nil)
}

// routeSession routes a session's dispatches in batches, acknowledging each
// batch once it is committed, until ctx ends, the session ends or done
// (checked before every batch) reports true.
func (s *shardSet) routeSession(ctx context.Context, r *shardRunner, sh session, done func() bool) {
	n := s.n
	events := sh.Events()
	for done == nil || !done() {
		var batch []discordgw.Dispatch
		select {
		case <-ctx.Done():
			return
		case d, ok := <-events:
			if !ok {
				return
			}
			batch = append(batch, d)
		}
	drain:
		for len(batch) < 512 {
			select {
			case d, ok := <-events:
				if !ok {
					break drain
				}
				batch = append(batch, d)
			default:
				break drain
			}
		}
		evs := make([]bot.Event, 0, len(batch))
		now := time.Now()
		for _, d := range batch {
			evs = append(evs, bot.WithGuild(bot.Event{Type: d.Type, Data: d.Data, DeliveryID: d.SessionID + ":" + strconv.FormatInt(d.Seq, 10), ReceivedAt: now}))
		}
		start := time.Now()
		for {
			err := n.route(ctx, evs)
			if err == nil {
				break
			}
			n.log.Error("routing a batch failed; retrying (not acknowledged)", "shard", r.id, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		n.metrics.batchDuration.Observe(time.Since(start).Seconds())
		n.metrics.dispatches.Add(float64(len(batch)))
		sh.AckDispatch(batch[len(batch)-1])
	}
}

// checkpointLoop saves the acknowledged resume points of held shards.
func (s *shardSet) checkpointLoop() {
	n := s.n
	t := time.NewTicker(n.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		s.saveCheckpoints()
	}
}

func (s *shardSet) saveCheckpoints() {
	n := s.n
	req := assignments.CheckpointRequest{Pod: n.cfg.ID, Checkpoints: map[string]fsm.Checkpoint{}}
	s.mu.Lock()
	for id, r := range s.running {
		sh, epoch := r.session()
		if sh == nil {
			continue
		}
		cp := sh.Checkpoint()
		if cp.SessionID == "" {
			continue
		}
		fc := fsm.Checkpoint{SessionID: cp.SessionID, Seq: cp.Seq, ResumeURL: cp.ResumeURL, Epoch: epoch}
		if prev, ok := s.saved[id]; ok && prev.SessionID == fc.SessionID && prev.Seq == fc.Seq && prev.Epoch == fc.Epoch {
			continue
		}
		req.Checkpoints[strconv.Itoa(id)] = fc
	}
	s.mu.Unlock()
	if len(req.Checkpoints) == 0 {
		return
	}
	// One request per shard: a shard that just moved away is refused (409)
	// without holding back the others.
	for k, cp := range req.Checkpoints {
		ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
		err := n.client.SaveCheckpoints(ctx, assignments.CheckpointRequest{Pod: n.cfg.ID, Checkpoints: map[string]fsm.Checkpoint{k: cp}})
		cancel()
		if err != nil {
			n.log.Debug("save checkpoint", "shard", k, "err", err)
			continue
		}
		id, _ := strconv.Atoi(k)
		s.mu.Lock()
		s.saved[id] = cp
		s.mu.Unlock()
		n.metrics.checkpoints.Inc()
	}
}
