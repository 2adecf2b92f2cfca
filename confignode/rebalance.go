package confignode

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
)

// rebalanceJob is a plan of moves being executed with a cap on concurrent
// moves overall and per pod; GET /v1/rebalance reports its progress.
type rebalanceJob = assignments.RebalanceJob

func (n *Node) plan(kind, pod string) []assignments.Move {
	var moves []assignments.Move
	n.store.View(func(s *fsm.State) {
		guilds := s.Guilds.AppendTo(nil)
		pods := make([]fsm.Pod, 0, len(s.Pods))
		for _, p := range s.Pods {
			pods = append(pods, *p)
		}
		if kind == "drain" {
			moves = assignments.PlanDrain(pod, guilds, pods, s.HolderOf)
		} else {
			moves = assignments.PlanRebalance(guilds, pods, s.HolderOf)
		}
	})
	return moves
}

func (n *Node) handleRebalance(w http.ResponseWriter, r *http.Request) {
	var req assignments.RebalanceRequest
	if r.ContentLength != 0 {
		if err := n.decodeBody(w, r, &req); err != nil {
			n.fail(w, r, err)
			return
		}
	}
	moves := n.plan("rebalance", "")
	if req.DryRun {
		httpapi.WriteJSON(w, http.StatusOK, rebalanceJob{Kind: "rebalance", Total: len(moves), Moves: moves})
		return
	}
	job, err := n.mover.runJob("rebalance", "", moves)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusAccepted, job)
}

func (n *Node) handleRebalanceStatus(w http.ResponseWriter, r *http.Request) {
	job := n.mover.jobStatus()
	if job == nil {
		httpapi.WriteError(w, http.StatusNotFound, "no rebalance or drain has run since this node became leader")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, job)
}

func (n *Node) handleDrain(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	var pod string
	n.store.View(func(s *fsm.State) {
		if p, ok := s.ResolvePod(id); ok {
			pod = p.ID
		}
	})
	if pod == "" {
		httpapi.WriteError(w, http.StatusNotFound, "unknown pod %q", id)
		return
	}
	if _, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdDrainPod, PodID: pod}); err != nil {
		n.fail(w, r, err)
		return
	}
	moves := n.plan("drain", pod)
	job, err := n.mover.runJob("drain", pod, moves)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusAccepted, job)
}

func (m *mover) jobStatus() *rebalanceJob {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.job == nil {
		return nil
	}
	cp := *m.job
	cp.Moves = append([]assignments.Move(nil), m.job.Moves...)
	cp.Errors = append([]string(nil), m.job.Errors...)
	return &cp
}

// runJob starts executing moves unless a job is already running.
func (m *mover) runJob(kind, pod string, moves []assignments.Move) (rebalanceJob, error) {
	m.mu.Lock()
	if m.job != nil && m.job.FinishedAt.IsZero() {
		m.mu.Unlock()
		return rebalanceJob{}, &fsm.CommandError{Kind: fsm.ErrConflict, Msg: fmt.Sprintf("a %s is already running (%d of %d moves done)", m.job.Kind, m.job.Done, m.job.Total)}
	}
	t := m.n.leader.current()
	if t == nil {
		m.mu.Unlock()
		return rebalanceJob{}, errNotLeaderf("%s: this node does not lead", kind)
	}
	job := &rebalanceJob{Kind: kind, Pod: pod, Total: len(moves), Moves: moves, StartedAt: time.Now()}
	if len(moves) == 0 {
		job.FinishedAt = time.Now()
	}
	m.job = job
	out := *job
	m.mu.Unlock()
	if len(moves) > 0 {
		// A task of the term: it stops (and stops starting moves) when
		// leadership is lost.
		if err := m.n.leader.spawn(t, kind, func(ctx context.Context) { m.execute(ctx, job) }); err != nil {
			m.mu.Lock()
			job.FinishedAt = time.Now()
			m.mu.Unlock()
			return rebalanceJob{}, err
		}
	}
	return out, nil
}

// jobFailover is the kind of the job that moves a dead pod's guilds.
const jobFailover = "failover"

// execute runs the job's moves, at most MaxMoves at once and at most
// MaxMovesPerPod touching any one pod (as source or target). A failover's
// source is down and does none of the work (each target reads the dead
// pod's replica): only its targets count.
func (m *mover) execute(ctx context.Context, job *rebalanceJob) {
	n := m.n
	var wg sync.WaitGroup
	cond := sync.NewCond(&m.mu)
	// Wake the waiter if ctx ends while it waits.
	stop := context.AfterFunc(ctx, func() { m.mu.Lock(); cond.Broadcast(); m.mu.Unlock() })
	defer stop()
	for _, mv := range job.Moves {
		busy := []string{mv.From, mv.To}
		if job.Kind == jobFailover {
			busy = busy[1:]
		}
		full := func() bool {
			for _, p := range busy {
				if m.perPod[p] >= n.cfg.MaxMovesPerPod {
					return true
				}
			}
			return job.Running >= n.cfg.MaxMoves
		}
		m.mu.Lock()
		for ctx.Err() == nil && full() {
			cond.Wait()
		}
		if ctx.Err() != nil {
			m.mu.Unlock()
			break
		}
		job.Running++
		for _, p := range busy {
			m.perPod[p]++
		}
		m.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := m.moveAndWait(ctx, mv, job)
			m.mu.Lock()
			job.Running--
			for _, p := range busy {
				m.perPod[p]--
			}
			if err != nil {
				job.Failed++
				if len(job.Errors) < 50 {
					job.Errors = append(job.Errors, fmt.Sprintf("guild %d: %v", mv.Guild, err))
				}
			} else {
				job.Done++
			}
			cond.Broadcast()
			m.mu.Unlock()
		}()
	}
	wg.Wait()
	m.mu.Lock()
	job.FinishedAt = time.Now()
	m.mu.Unlock()
	n.log.Info(job.Kind+" finished", "moves", job.Total, "done", job.Done, "failed", job.Failed, "took", time.Since(job.StartedAt).Round(time.Millisecond))
}

// moveAndWait starts one move and waits until the guild settles.
func (m *mover) moveAndWait(ctx context.Context, mv assignments.Move, job *rebalanceJob) error {
	n := m.n
	var fo *failoverSpec
	if job.Kind == jobFailover {
		fo = m.n.failoverSpec(job.Pod)
	}
	res, err := m.startMove(ctx, mv.Guild, mv.To, fo)
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		var g fsm.Guild
		n.store.View(func(s *fsm.State) {
			if x, ok := s.Guilds.Get(mv.Guild); ok {
				g = x
			}
		})
		if g.Migration == nil || g.Migration.Epoch != res.Epoch {
			if g.Owner == mv.To {
				return nil
			}
			return fmt.Errorf("move aborted; still on %s", g.Owner)
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			break
		}
	}
	return ctx.Err()
}

// resumeDrainGrace bounds how long resumeDrains waits for the previous
// term's moves to settle before it plans anyway.
const resumeDrainGrace = 30 * time.Second

// resumeDrains, a task of every term, carries on the drains a previous
// leader left unfinished. A drain is the pod's state (draining), not the
// leader's memory: when the term that ran it ends, its in-flight moves stop
// and the next leader settles them as orphans. This task then gives every
// draining pod that still owns guilds a new drain job, once per term, so a
// drain survives a leader change and GET /v1/rebalance reports it again. It
// waits until no guild is migrating (at most resumeDrainGrace), so the plan
// includes the guilds whose moves the old term left in flight.
func (m *mover) resumeDrains(ctx context.Context) {
	n := m.n
	resumed := map[string]bool{}
	start := time.Now()
	for sleepCtx(ctx, time.Second) {
		var pending []string
		var migrating int
		n.store.View(func(s *fsm.State) {
			migrating = s.Migrating()
			for _, p := range s.SortedPods() {
				if p.State == fsm.PodDraining && !resumed[p.ID] && s.GuildCount(p.ID) > 0 {
					pending = append(pending, p.ID)
				}
			}
		})
		if len(pending) == 0 {
			return
		}
		if migrating > 0 && time.Since(start) < resumeDrainGrace {
			continue
		}
		pod := pending[0]
		moves := n.plan("drain", pod)
		if _, err := m.runJob("drain", pod, moves); err != nil {
			continue // a job is running; look again next tick
		}
		resumed[pod] = true
		n.log.Info("resuming the drain a previous leader left unfinished", "pod", pod, "moves", len(moves))
	}
}

// autoRebalance (with --auto-rebalance) starts a rebalance when the set of
// active pods changes — a pod joined, left, drained or went down — and the
// guild counts of the active pods then differ by more than 20 % of the mean.
// A new leader looks once at start-up too.
func (m *mover) autoRebalance(ctx context.Context) {
	n := m.n
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var key string
		var lo, hi, total, k int
		n.store.View(func(s *fsm.State) {
			lo = -1
			for _, p := range s.SortedPods() {
				if p.State != fsm.PodActive {
					continue
				}
				key += p.ID + ","
				c := s.GuildCount(p.ID)
				total += c
				k++
				if lo < 0 || c < lo {
					lo = c
				}
				hi = max(hi, c)
			}
		})
		// The first look after becoming leader counts as a change: the
		// previous leader may have died before it could react.
		if key == last {
			continue
		}
		if k < 2 || total == 0 {
			last = key
			continue
		}
		mean := float64(total) / float64(k)
		if float64(hi-lo) <= 0.2*mean {
			last = key
			continue
		}
		moves := n.plan("rebalance", "")
		if _, err := m.runJob("rebalance", "", moves); err != nil {
			continue // a job is running; look again next tick
		}
		last = key
		n.log.Info("pods changed and guild counts are uneven; rebalancing", "pods", k, "min", lo, "max", hi, "moves", len(moves))
	}
}
