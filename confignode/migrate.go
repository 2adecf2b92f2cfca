package confignode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
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
// fences off the target's copy; the target then drops it. A new leader aborts
// every move it finds in flight, because the old leader's orchestrator died
// with it: a move is never left with two owners or none.
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

// start validates and records the move, then runs it in the background.
func (m *mover) start(ctx context.Context, guild uint64, toRef string) (assignments.MoveResponse, error) {
	n := m.n
	var to *fsm.Pod
	var from string
	n.store.View(func(s *fsm.State) {
		if p, ok := s.ResolvePod(toRef); ok {
			cp := *p
			to = &cp
		}
		if g, ok := s.Guilds[guild]; ok {
			from = g.Owner
		}
	})
	if to == nil {
		return assignments.MoveResponse{}, &fsm.CommandError{Kind: fsm.ErrNotFound, Msg: fmt.Sprintf("no pod %q (an id like gateway-1 or an ordinal like 1)", toRef)}
	}
	res, err := n.propose(ctx, fsm.Command{Type: fsm.CmdStartMove, Guild: guild, To: to.ID})
	if err != nil {
		return assignments.MoveResponse{}, err
	}
	m.mu.Lock()
	m.running[guild] = true
	m.mu.Unlock()
	n.metrics.movesInFlight.Inc()
	out := assignments.MoveResponse{Guild: guild, From: from, To: to.ID, Epoch: res.Index, Revision: res.Index}
	go m.run(n.ctx, out)
	return out, nil
}

// run carries one move to CompleteMove or AbortMove.
func (m *mover) run(ctx context.Context, mv assignments.MoveResponse) {
	n := m.n
	start := time.Now()
	log := n.log.With("guild", mv.Guild, "from", mv.From, "to", mv.To, "epoch", mv.Epoch)
	defer func() {
		m.mu.Lock()
		delete(m.running, mv.Guild)
		m.mu.Unlock()
		n.metrics.movesInFlight.Dec()
	}()
	phase := func(p string) {
		_, _ = n.propose(ctx, fsm.Command{Type: fsm.CmdSetMovePhase, Guild: mv.Guild, Epoch: mv.Epoch, Phase: p})
	}
	err := func() error {
		phase("copying")
		target, ok := m.podAddr(mv.To)
		if !ok {
			return fmt.Errorf("target %s has no address", mv.To)
		}
		cctx, cancel := context.WithTimeout(ctx, n.cfg.MoveTimeout)
		defer cancel()
		url := fmt.Sprintf("http://%s/internal/guilds/%d/import?epoch=%d", target, mv.Guild, mv.Epoch)
		var imp struct {
			Rows     map[string]int `json:"rows"`
			Checksum string         `json:"checksum"`
			TookMs   int64          `json:"took_ms"`
		}
		if err := m.call(cctx, http.MethodPost, url, &imp); err != nil {
			return fmt.Errorf("copy to %s: %w", mv.To, err)
		}
		log.Info("guild copied", "rows", imp.Rows, "checksum", imp.Checksum, "took_ms", imp.TookMs)
		phase("committing")
		if _, err := n.propose(ctx, fsm.Command{Type: fsm.CmdCompleteMove, Guild: mv.Guild, Epoch: mv.Epoch}); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	}()
	if err == nil {
		n.metrics.moves.WithLabelValues("completed").Inc()
		n.metrics.moveDuration.Observe(time.Since(start).Seconds())
		log.Info("guild moved", "took", time.Since(start).Round(time.Millisecond))
		m.dropCopy(mv.From, mv.Guild, mv.Epoch, log)
		return
	}
	reason := err.Error()
	log.Warn("guild move failed; aborting", "err", err)
	n.metrics.moves.WithLabelValues("aborted").Inc()
	for attempt := 0; attempt < 50 && ctx.Err() == nil; attempt++ {
		_, aerr := n.propose(ctx, fsm.Command{Type: fsm.CmdAbortMove, Guild: mv.Guild, Epoch: mv.Epoch, Reason: reason})
		if aerr == nil || errors.Is(aerr, fsm.ErrStaleEpoch) || errors.Is(aerr, fsm.ErrConflict) || errors.Is(aerr, errNotLeader) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	m.dropCopy(mv.To, mv.Guild, mv.Epoch, log)
}

// dropCopy asks a pod to delete the copy it no longer owns (best effort:
// the copy is fenced off by the epoch either way).
func (m *mover) dropCopy(pod string, guild, epoch uint64, log interface{ Warn(string, ...any) }) {
	addr, ok := m.podAddr(pod)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(m.n.ctx, 60*time.Second)
	defer cancel()
	if err := m.call(ctx, http.MethodDelete, fmt.Sprintf("http://%s/internal/guilds/%d?epoch=%d", addr, guild, epoch), nil); err != nil {
		log.Warn("drop the old copy", "pod", pod, "err", err)
	}
}

func (m *mover) podAddr(id string) (string, bool) {
	var addr string
	m.n.store.View(func(s *fsm.State) {
		if p, ok := s.Pods[id]; ok {
			addr = p.Addr
		}
	})
	return addr, addr != ""
}

func (m *mover) call(ctx context.Context, method, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	if m.n.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+m.n.cfg.Token)
	}
	resp, err := m.n.pods.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// abortOrphans aborts moves left in flight by a previous leader.
func (m *mover) abortOrphans(ctx context.Context) {
	n := m.n
	type orphan struct {
		guild, epoch uint64
		to           string
	}
	var orphans []orphan
	n.store.View(func(s *fsm.State) {
		for id, g := range s.Guilds {
			if g.Migration != nil {
				orphans = append(orphans, orphan{id, g.Migration.Epoch, g.Migration.To})
			}
		}
	})
	for _, o := range orphans {
		m.mu.Lock()
		mine := m.running[o.guild]
		m.mu.Unlock()
		if mine {
			continue
		}
		if _, err := n.propose(ctx, fsm.Command{Type: fsm.CmdAbortMove, Guild: o.guild, Epoch: o.epoch, Reason: "the leader changed mid-move"}); err != nil {
			n.log.Warn("abort orphaned move", "guild", o.guild, "err", err)
			continue
		}
		n.metrics.moves.WithLabelValues("aborted").Inc()
		n.log.Warn("aborted a move left by the previous leader", "guild", o.guild, "epoch", o.epoch)
		go m.dropCopy(o.to, o.guild, o.epoch, n.log)
	}
}
