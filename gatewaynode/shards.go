package gatewaynode

import (
	"context"
	"fmt"
	"strconv"
	"sync"
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

	mu    sync.Mutex
	shard *discordgw.Shard // nil until open
	ready bool
}

func newShardSet(n *Node) *shardSet {
	return &shardSet{n: n, running: map[int]*shardRunner{}, leaving: map[int]*shardRunner{}, saved: map[int]fsm.Checkpoint{}}
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
	want := map[int]bool{}
	for i := 0; i < n.watch.ShardCount(); i++ {
		if n.watch.ShardHolder(i) == n.cfg.ID {
			want[i] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, r := range s.running {
		if !want[id] {
			delete(s.running, id)
			r.reclaim = make(chan struct{})
			s.leaving[id] = r
			go s.handoff(r, r.reclaim, n.watch.ShardHolder(id))
		}
	}
	for id := range want {
		if _, ok := s.running[id]; ok {
			continue
		}
		if r, ok := s.leaving[id]; ok {
			delete(s.leaving, id)
			s.running[id] = r
			close(r.reclaim)
			continue
		}
		ctx, cancel := context.WithCancel(n.ctx)
		r := &shardRunner{id: id, cancel: cancel, done: make(chan struct{}), reclaim: make(chan struct{})}
		s.running[id] = r
		go s.runShard(ctx, r)
	}
	n.metrics.shardsHeld.Set(float64(len(s.running)))
}

// handoff keeps the old session until the shard's current holder has saved
// a checkpoint of its own (its session is READY and committing), then closes
// it. There is no deadline: while no other pod has taken the shard over, the
// old session is the only one receiving its events, and closing it would
// lose them (events seen by both sessions meanwhile are deduplicated). A
// shard that nobody holds any more (no active pod) is detached at once so it
// stays resumable.
func (s *shardSet) handoff(r *shardRunner, reclaimed <-chan struct{}, newHolder string) {
	n := s.n
	lost := time.Now()
	warned := lost
	for newHolder != "" && n.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
		sl, err := n.client.Shards(ctx)
		cancel()
		if err == nil && r.id < len(sl.Shards) {
			sh := sl.Shards[r.id]
			if sh.Holder == "" {
				newHolder = ""
				break
			}
			if cp := sh.Checkpoint; cp != nil && cp.Holder == sh.Holder && cp.Holder != n.cfg.ID &&
				time.UnixMilli(cp.At).After(lost.Add(-time.Second)) {
				newHolder = sh.Holder
				break
			}
		}
		if time.Since(warned) > n.cfg.HandoffTimeout {
			warned = time.Now()
			n.log.Warn("still serving a shard that moved away: its new holder has not taken it over yet", "shard", r.id, "to", newHolder, "for", time.Since(lost).Round(time.Second))
		}
		select {
		case <-n.ctx.Done():
		case <-reclaimed:
			n.log.Info("shard came back before its handoff finished; keeping the session", "shard", r.id)
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
	if newHolder != "" {
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
	s.mu.Unlock()
	n.log.Info("handing shard over", "shard", r.id, "to", newHolder, "after", time.Since(lost).Round(time.Millisecond))
	r.stop(newHolder == "")
}

// stop ends the runner. Cancelling first makes the pump stop routing (an
// unacknowledged batch is replayed to whoever resumes or overlaps), then the
// session is closed — or detached, to stay resumable by the next holder.
// drain waits until the old session has committed every dispatch it had
// received when the new holder took over. The new session only carries
// events from its READY on; whatever the old one still had queued — e.g. the
// backlog a resume replayed — exists nowhere else once it closes.
func (s *shardSet) drain(r *shardRunner, reclaimed <-chan struct{}) {
	n := s.n
	r.mu.Lock()
	sh := r.shard
	r.mu.Unlock()
	if sh == nil {
		return
	}
	sid, target := sh.Received()
	start := time.Now()
	for n.ctx.Err() == nil {
		cp := sh.Checkpoint()
		if cp.SessionID != sid || cp.Seq >= target {
			return
		}
		if time.Since(start) > 2*time.Minute {
			n.log.Error("handing a shard over before its backlog was committed", "shard", r.id, "acked", cp.Seq, "received", target)
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
	gb, err := s.n.rest.GatewayBot()
	if err != nil {
		return "", 0, fmt.Errorf("GET /gateway/bot: %w", err)
	}
	mc = gb.SessionStartLimit.MaxConcurrency
	if mc < 1 {
		mc = 1
	}
	s.mu.Lock()
	s.gatewayURL, s.maxConcurrency = gb.URL, mc
	s.mu.Unlock()
	return gb.URL, mc, nil
}

// runShard opens the shard's session (resuming the previous holder's when it
// died, or our own after a restart) and routes its dispatches until stopped.
func (s *shardSet) runShard(ctx context.Context, r *shardRunner) {
	n := s.n
	defer close(r.done)
	log := n.log.With("shard", r.id)
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		sh, err := s.open(ctx, r.id)
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
		if ctx.Err() != nil {
			return // stop() closes or detaches the session
		}
		log.Warn("shard session ended; reopening", "err", sh.Err())
		_ = sh.Detach()
	}
}

func (s *shardSet) open(ctx context.Context, shardID int) (*discordgw.Shard, error) {
	n := s.n
	url, mc, err := s.gateway()
	if err != nil {
		return nil, err
	}
	cfg := discordgw.Config{
		Token: n.cfg.DiscordToken, ShardID: shardID, ShardCount: n.watch.ShardCount(), Intents: n.cfg.Intents,
		GatewayURL: url, Dialer: n.dialer, Logger: n.log.With("shard", shardID),
		IdentifyGate: func(ctx context.Context, shard int) error {
			slot, err := n.client.IdentifySlot(ctx, assignments.IdentifyRequest{Pod: n.cfg.ID, Shard: shard, MaxConcurrency: mc})
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
	if cp := s.resumePoint(ctx, shardID); cp != nil {
		cfg.Resume = &discordgw.Checkpoint{SessionID: cp.SessionID, Seq: cp.Seq, ResumeURL: cp.ResumeURL}
		n.log.Info("resuming shard from checkpoint", "shard", shardID, "session", cp.SessionID, "seq", cp.Seq, "previous_holder", cp.Holder)
	}
	return discordgw.Open(ctx, cfg)
}

// resumePoint returns the checkpoint to resume from: ours (we restarted) or a
// holder's that is no longer active (it died). A live previous holder keeps
// its session until we are up, so we identify afresh instead of stealing it.
// A draining holder is alive too: resuming its session would fight it for
// the connection and be invalidated when it closes the session at handoff.
func (s *shardSet) resumePoint(ctx context.Context, shardID int) *fsm.Checkpoint {
	n := s.n
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	sl, err := n.client.Shards(sctx)
	if err != nil || shardID >= len(sl.Shards) || sl.Shards[shardID].Checkpoint == nil {
		return nil
	}
	cp := sl.Shards[shardID].Checkpoint
	if cp.Holder == n.cfg.ID {
		return cp
	}
	if p, ok := n.watch.Pod(cp.Holder); !ok || p.State == fsm.PodDown {
		return cp
	}
	return nil
}

// pump routes the session's dispatches in batches and acknowledges each batch
// once it is committed.
func (s *shardSet) pump(ctx context.Context, r *shardRunner, sh *discordgw.Shard) {
	n := s.n
	events := sh.Events()
	for {
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
		for _, d := range batch {
			evs = append(evs, bot.WithGuild(bot.Event{Type: d.Type, Data: d.Data, DeliveryID: d.SessionID + ":" + strconv.FormatInt(d.Seq, 10)}))
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
		r.mu.Lock()
		sh := r.shard
		r.mu.Unlock()
		if sh == nil {
			continue
		}
		cp := sh.Checkpoint()
		if cp.SessionID == "" {
			continue
		}
		fc := fsm.Checkpoint{SessionID: cp.SessionID, Seq: cp.Seq, ResumeURL: cp.ResumeURL}
		prev, ok := s.saved[id]
		// Re-save at least every 10 s so a handoff partner sees a fresh At.
		if ok && prev.SessionID == fc.SessionID && prev.Seq == fc.Seq && time.Since(time.UnixMilli(prev.At)) < 10*time.Second {
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
		cp.At = time.Now().UnixMilli()
		s.mu.Lock()
		s.saved[id] = cp
		s.mu.Unlock()
		n.metrics.checkpoints.Inc()
	}
}
