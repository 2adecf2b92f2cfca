package confignode

import (
	"context"
	"errors"
	"fmt"
	"github.com/modbot/modbot/internal/ctxsleep"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// The leader drives guild moves (DESIGN §7). The protocol's state lives in
// the FSM (migrating{from, to, epoch}, phase), the bulk data goes straight
// from the source pod to the target pod, and this file only sequences it:
//
//	StartMove (epoch E) → target imports (it pulls the export from the
//	source, which fences its store at E first) → CompleteMove(E) → the source
//	drops its copy.
//
// Any failure or timeout aborts: AbortMove(E) returns the guild to its
// source (whose data and held events are intact) at a newer epoch, which
// fences off the target's copy; the target then drops it. A CompleteMove
// whose outcome is ambiguous (its commit timed out, or leadership was lost
// after it was enqueued) is not a failure: the leader reads the guild back
// after a barrier and goes on as committed if it was (see commit).
//
// Every move runs as a task of the leader's term (leader.go): when
// leadership is lost it stops, calls no pod any more and leaves the move to
// the next leader, whose orphan sweep (sweepOrphans) aborts every move no
// task of its own runs — retrying until each is aborted or its term ends — so
// a move is never left with two owners, or none, or migrating forever.
type mover struct {
	n       *Node
	mu      sync.Mutex
	running map[uint64]bool
	perPod  map[string]int
	job     *rebalanceJob
}

func newMover(n *Node) *mover {
	return &mover{n: n, running: map[uint64]bool{}, perPod: map[string]int{}}
}

func (n *Node) handleMove(w http.ResponseWriter, r *http.Request) {
	id, err := fsm.ParseGuildID(mux.Vars(r)["id"])
	if err != nil {
		n.fail(w, r, badRequest("%v", err))
		return
	}
	var req assignments.MoveRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	if req.To == "" {
		n.fail(w, r, badRequest(`"to" is required: a pod id (gateway-1) or ordinal (1)`))
		return
	}
	res, err := n.mover.start(r.Context(), id, req.To)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusAccepted, res)
}

// start validates and records the move, then runs it as a task of the
// current term.
func (m *mover) start(ctx context.Context, guild uint64, toRef string) (assignments.MoveResponse, error) {
	return m.startMove(ctx, guild, toRef, nil)
}

// failoverSpec makes a move a failover: the owner is down, and the target
// imports the guild from the owner's replica.
type failoverSpec struct {
	replica      string
	lossWindowMs int64
}

func (m *mover) startMove(ctx context.Context, guild uint64, toRef string, fo *failoverSpec) (assignments.MoveResponse, error) {
	n := m.n
	t := n.leader.current()
	if t == nil {
		return assignments.MoveResponse{}, errNotLeaderf("move guild %d: this node does not lead", guild)
	}
	var to *fsm.Pod
	var from string
	n.store.View(func(s *fsm.State) {
		if p, ok := s.ResolvePod(toRef); ok {
			cp := *p
			to = &cp
		}
		if g, ok := s.Guilds.Get(guild); ok {
			from = g.Owner
		}
	})
	if to == nil {
		return assignments.MoveResponse{}, &fsm.CommandError{Kind: fsm.ErrNotFound, Msg: fmt.Sprintf("no pod %q (an id like gateway-1 or an ordinal like 1)", toRef)}
	}
	// Claim the guild before proposing, so the orphan sweep never takes a
	// move of ours for an orphan between its StartMove and its task.
	m.mu.Lock()
	if m.running[guild] {
		m.mu.Unlock()
		return assignments.MoveResponse{}, &fsm.CommandError{Kind: fsm.ErrConflict, Msg: fmt.Sprintf("a move of guild %d is still running on this leader", guild)}
	}
	m.running[guild] = true
	m.mu.Unlock()
	release := func() {
		m.mu.Lock()
		delete(m.running, guild)
		m.mu.Unlock()
	}
	cmd := fsm.Command{Type: fsm.CmdStartMove, Guild: guild, To: to.ID}
	replica := ""
	if fo != nil {
		cmd.Failover, cmd.LossWindowMs, replica = true, fo.lossWindowMs, fo.replica
	}
	res, err := n.propose(ctx, cmd)
	if err != nil {
		// An ambiguous failure may still commit the move: with nobody
		// running it, the orphan sweep aborts it.
		release()
		return assignments.MoveResponse{}, err
	}
	out := assignments.MoveResponse{Guild: guild, From: from, To: to.ID, Epoch: res.Index, Revision: res.Index}
	n.metrics.movesInFlight.Inc()
	if err := n.leader.spawn(t, "move", func(ctx context.Context) { m.run(ctx, out, replica) }); err != nil {
		// Leadership ended in between: the next leader aborts the move.
		n.metrics.movesInFlight.Dec()
		release()
		n.log.Warn("move recorded but leadership was lost before it ran; the next leader aborts it", "guild", guild, "epoch", out.Epoch)
	}
	return out, nil
}

// run carries one move to CompleteMove or AbortMove, on the term's context.
// When the term ends it stops where it is, without calling pods: the next
// leader's orphan sweep aborts the move (or finds it committed). A failover
// (replica set) has the target import from the dead owner's replica, and
// leaves the dead owner's copy to its own janitor when it returns.
func (m *mover) run(ctx context.Context, mv assignments.MoveResponse, replica string) {
	n := m.n
	start := time.Now()
	log := n.log.With("guild", mv.Guild, "from", mv.From, "to", mv.To, "epoch", mv.Epoch)
	// The guild is claimed until its move is settled (completed or
	// aborted), not until the old copy is dropped: that clean-up retries
	// for minutes against a dead pod, and the next move of the guild must
	// not wait for it (chaos seed 6). A drop is fenced by its epoch.
	var once sync.Once
	settled := func() {
		once.Do(func() {
			m.mu.Lock()
			delete(m.running, mv.Guild)
			m.mu.Unlock()
			n.metrics.movesInFlight.Dec()
		})
	}
	defer settled()
	phase := func(p string) {
		_, _ = n.propose(ctx, fsm.Command{Type: fsm.CmdSetMovePhase, Guild: mv.Guild, Epoch: mv.Epoch, Phase: p})
	}
	outcome, err := func() (commitOutcome, error) {
		phase("copying")
		target, ok := m.podAddr(mv.To)
		if !ok {
			return commitFailed, fmt.Errorf("target %s has no address", mv.To)
		}
		cctx, cancel := context.WithTimeout(ctx, n.cfg.MoveTimeout)
		defer cancel()
		var imp podapi.ImportResponse
		var err error
		if replica != "" {
			imp, err = m.api().ImportFromReplica(cctx, target, mv.Guild, mv.Epoch, replica)
		} else {
			imp, err = m.api().Import(cctx, target, mv.Guild, mv.Epoch)
		}
		if err != nil {
			return commitFailed, fmt.Errorf("copy to %s: %w", mv.To, err)
		}
		log.Info("guild copied", "rows", imp.Rows, "checksum", imp.Checksum, "took_ms", imp.TookMs)
		phase("committing")
		return m.commit(ctx, mv, log)
	}()
	if ctx.Err() != nil || outcome == commitUnknown {
		// Leadership is gone. Whatever this node still believes about the
		// move, the next leader decides it from the log; calling pods now
		// could only race it.
		log.Warn("leadership lost mid-move; the next leader settles it", "err", err)
		return
	}
	if outcome == commitDone {
		n.metrics.moves.WithLabelValues("completed").Inc()
		n.metrics.moveDuration.Observe(time.Since(start).Seconds())
		log.Info("guild moved", "took", time.Since(start).Round(time.Millisecond), "failover", replica != "")
		settled()
		if replica == "" {
			m.dropCopy(ctx, mv.From, mv.Guild, mv.Epoch, log)
		}
		return
	}
	reason := err.Error()
	log.Warn("guild move failed; aborting", "err", err)
	n.metrics.moves.WithLabelValues("aborted").Inc()
	backoff := 100 * time.Millisecond
	for attempt := 0; attempt < 50 && ctx.Err() == nil; attempt++ {
		_, aerr := n.propose(ctx, fsm.Command{Type: fsm.CmdAbortMove, Guild: mv.Guild, Epoch: mv.Epoch, Reason: reason})
		if aerr == nil || errors.Is(aerr, fsm.ErrStaleEpoch) || errors.Is(aerr, fsm.ErrConflict) || errors.Is(aerr, fsm.ErrNotFound) {
			break
		}
		if errors.Is(aerr, errNotLeader) {
			return // the next leader aborts it
		}
		// Still migrating after 50 attempts: the orphan sweep retries.
		log.Warn("abort the failed move; retrying", "err", aerr, "attempt", attempt+1)
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	if ctx.Err() == nil {
		settled()
		m.dropCopy(ctx, mv.To, mv.Guild, mv.Epoch, log)
	}
}

// commitOutcome is what became of a move's CompleteMove.
type commitOutcome int

const (
	commitFailed  commitOutcome = iota // not committed: abort the move
	commitDone                         // committed: the target owns the guild
	commitUnknown                      // leadership lost before the outcome was known
)

// commitRetries bounds how often a CompleteMove known not to have been
// applied is proposed again before the move is aborted.
const commitRetries = 3

// commit proposes CompleteMove(E). A rejection is a failure. An ambiguous
// error — a timeout, raft.ErrEnqueueTimeout, leadership lost after the entry
// was enqueued — says nothing about whether the entry commits, so it is
// settled by reading the guild back once a barrier has committed (every
// entry before it, ours included if it made it into the log, is then
// applied): owned by the target at E means committed; still migrating at E
// means not (propose again); anything else means the move was settled by
// someone else. Without leadership the outcome stays unknown, for the next
// leader to settle.
func (m *mover) commit(ctx context.Context, mv assignments.MoveResponse, log *slog.Logger) (commitOutcome, error) {
	n := m.n
	var err error
	for attempt := 1; ; attempt++ {
		_, err = n.propose(ctx, fsm.Command{Type: fsm.CmdCompleteMove, Guild: mv.Guild, Epoch: mv.Epoch})
		if err == nil {
			return commitDone, nil
		}
		var ce *fsm.CommandError
		if errors.As(err, &ce) {
			return commitFailed, fmt.Errorf("commit: %w", err)
		}
		if !errors.Is(err, errNoQuorum) {
			// Not leader before proposing: nothing was enqueued by this
			// attempt, but an earlier one may have been.
			return commitUnknown, fmt.Errorf("commit: %w", err)
		}
		n.metrics.ambiguousCommits.Inc()
		log.Warn("commit of the move is ambiguous; reading the guild back", "err", err, "attempt", attempt)
		st, serr := m.settle(ctx, mv)
		switch st {
		case moveCommitted:
			log.Info("the ambiguous commit was applied; the move is complete")
			return commitDone, nil
		case moveNotCommitted:
			if attempt < commitRetries {
				continue
			}
			return commitFailed, fmt.Errorf("commit: not applied after %d attempts: %w", attempt, err)
		case moveSettledElsewhere:
			return commitFailed, fmt.Errorf("commit: %w", serr)
		default:
			return commitUnknown, fmt.Errorf("commit: %w (and could not read it back: %v)", err, serr)
		}
	}
}

type moveState int

const (
	moveUnknown          moveState = iota // leadership lost: cannot tell
	moveCommitted                         // the target owns the guild at the move's epoch
	moveNotCommitted                      // still migrating at the move's epoch
	moveSettledElsewhere                  // aborted, removed or moved on by someone else
)

// settle reads the guild linearizably: after a barrier on this leader, the
// state reflects every entry proposed before, so whether an ambiguous
// CompleteMove was applied is decided.
func (m *mover) settle(ctx context.Context, mv assignments.MoveResponse) (moveState, error) {
	n := m.n
	backoff := 50 * time.Millisecond
	for {
		err := n.barrier(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || n.raft.State() != raft.Leader {
			return moveUnknown, err
		}
		if !sleepCtx(ctx, backoff) {
			return moveUnknown, ctx.Err()
		}
		backoff = min(2*backoff, time.Second)
	}
	var g *fsm.Guild
	n.store.View(func(s *fsm.State) {
		if x, ok := s.Guilds.Get(mv.Guild); ok {
			g = &x
		}
	})
	switch {
	case g == nil:
		return moveSettledElsewhere, fmt.Errorf("guild %d was removed", mv.Guild)
	case g.Migration == nil && g.Owner == mv.To && g.Epoch == mv.Epoch:
		return moveCommitted, nil
	case g.Migration != nil && g.Migration.Epoch == mv.Epoch:
		return moveNotCommitted, nil
	default:
		return moveSettledElsewhere, fmt.Errorf("guild %d is now owned by %s at epoch %d (migrating %v): the move at epoch %d was settled elsewhere", mv.Guild, g.Owner, g.Epoch, g.Migration != nil, mv.Epoch)
	}
}

// barrier waits until every entry before it is applied here, or ctx ends.
func (n *Node) barrier(ctx context.Context) error {
	f := n.raft.Barrier(n.cfg.WriteTimeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("barrier: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("barrier: %w", ctx.Err())
	}
}

// sleepCtx waits d; false when ctx ended first.
var sleepCtx = ctxsleep.Sleep

// dropCopy asks a pod to delete the copy it no longer owns. The copy is
// fenced off by the epoch either way, but it takes disk and the pod lists it,
// so a drop that failed for a reason that may pass (the pod is unreachable,
// its disk stalled: 5xx) is retried with backoff for up to dropCopyFor; a
// refusal (4xx: the guild came back, or is owned there) is final. It runs on
// the term's context: a leader that lost leadership drops nothing (the pod's
// janitor collects the copy).
func (m *mover) dropCopy(ctx context.Context, pod string, guild, epoch uint64, log interface{ Warn(string, ...any) }) {
	ctx, cancel := context.WithTimeout(ctx, dropCopyFor)
	defer cancel()
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		addr, ok := m.podAddr(pod)
		if !ok {
			return
		}
		err := m.api().DropCopy(ctx, addr, guild, epoch)
		if err == nil {
			return
		}
		if podapi.Refused(err) {
			log.Warn("the pod refused to drop its old copy", "pod", pod, "err", err)
			return
		}
		log.Warn("drop the old copy; retrying", "pod", pod, "attempt", attempt, "err", err)
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// dropCopyFor bounds the retries of one copy's drop.
const dropCopyFor = 2 * time.Minute

func (m *mover) podAddr(id string) (string, bool) {
	var addr string
	m.n.store.View(func(s *fsm.State) {
		if p, ok := s.Pods[id]; ok {
			addr = p.Addr
		}
	})
	return addr, addr != ""
}

// api is the pods' internal API, as this config node calls it.
func (m *mover) api() podapi.Client {
	return podapi.Client{HTTP: m.n.pods, Token: m.n.cfg.Tokens().Internal, Caller: m.n.cfg.ID, Scheme: m.n.cfg.TLS.Scheme()}
}

// orphanReason is the abort reason of a move no task of the leader runs.
const orphanReason = "orphaned: no task of the current leader runs this move (the leader changed mid-move)"

// sweepOrphans aborts moves that no task of this term runs — left in flight
// by a previous leader, or by an ambiguous StartMove or an abort that ran out
// of attempts here — for as long as the term lasts: right away, then every
// OrphanCheckInterval, and after a failed abort again with backoff until
// every orphan is aborted. Failures are counted
// (modbot_config_migration_orphan_abort_failures_total).
func (m *mover) sweepOrphans(t *term) {
	ctx := t.ctx
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		failed := m.abortOrphans(t)
		wait := m.n.cfg.OrphanCheckInterval
		if failed > 0 {
			wait = min(backoff, wait)
			backoff = min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
		}
		if !sleepCtx(ctx, wait) {
			return
		}
	}
}

// abortOrphans makes one pass and returns how many aborts failed.
func (m *mover) abortOrphans(t *term) (failed int) {
	n, ctx := m.n, t.ctx
	type orphan struct {
		guild, epoch uint64
		to           string
	}
	var orphans []orphan
	m.mu.Lock()
	running := len(m.running)
	m.mu.Unlock()
	n.store.View(func(s *fsm.State) {
		if s.Migrating() <= running {
			return // every migrating guild may be one of ours; look again later
		}
		for g := range s.Guilds.Migrations() {
			orphans = append(orphans, orphan{g.ID, g.Migration.Epoch, g.Migration.To})
		}
	})
	for _, o := range orphans {
		if ctx.Err() != nil {
			return failed
		}
		// Checked after reading the state: a move of ours that was in the
		// state is in running until it has settled.
		m.mu.Lock()
		mine := m.running[o.guild]
		m.mu.Unlock()
		if mine {
			continue
		}
		_, err := n.propose(ctx, fsm.Command{Type: fsm.CmdAbortMove, Guild: o.guild, Epoch: o.epoch, Reason: orphanReason})
		switch {
		case err == nil:
		case errors.Is(err, fsm.ErrStaleEpoch), errors.Is(err, fsm.ErrConflict), errors.Is(err, fsm.ErrNotFound):
			continue // settled meanwhile
		default:
			failed++
			n.metrics.orphanAbortFailures.Inc()
			n.log.Warn("abort orphaned move; retrying", "guild", o.guild, "epoch", o.epoch, "err", err)
			continue
		}
		n.metrics.moves.WithLabelValues("aborted").Inc()
		n.log.Warn("aborted an orphaned move", "guild", o.guild, "epoch", o.epoch)
		_ = n.leader.spawn(t, "drop-copy", func(ctx context.Context) { m.dropCopy(ctx, o.to, o.guild, o.epoch, n.log) })
	}
	return failed
}
