package confignode

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/httpapi"
)

// watchWriteTimeout bounds the write of at most assignments.MaxFrameBytes
// (one frame at most) to a watcher (streamWriter); a slower watcher is
// dropped and resumes from its revision.
const watchWriteTimeout = 10 * time.Second

// handleWatch streams the change stream as Server-Sent Events, in the wire
// format of assignments/wire.go.
//
// Contract (DESIGN §6, tested in watch_test.go): every change after `from`
// (or Last-Event-ID) in revision order, none missing, none twice; one
// revision's events in one or more `change` frames written back to back, no
// line longer than assignments.MaxFrameBytes, `id:` = the revision on its
// last frame only, so a client resumes with Last-Event-ID; `progress`
// messages when the stream opens and at least every WatchProgress after,
// idle or busy, between revisions, saying which revision the client has
// everything up to and what this node knows of the leader, so that a client
// can tell a node that is current from one cut off from the majority; a
// `from` older than the retained history gets 410 Gone with the oldest
// revision a watch may start from — the client then lists (/v1/snapshot) and
// watches from the snapshot's revision. Served by every node from its own
// applied state, so followers serve watches too.
func (n *Node) handleWatch(w http.ResponseWriter, r *http.Request) {
	from := n.store.Revision()
	arg := r.URL.Query().Get("from")
	if arg == "" {
		arg = r.Header.Get("Last-Event-ID")
	}
	if arg != "" {
		v, err := strconv.ParseUint(arg, 10, 64)
		if err != nil {
			n.fail(w, r, badRequest("from must be a revision number, got %q", arg))
			return
		}
		from = v
	}
	_, _, oldest, ok := n.store.hist.since(from, 1)
	if !ok {
		httpapi.WriteJSON(w, http.StatusGone, assignments.ErrorBody{
			Error:          fmt.Sprintf("revision %d is older than this node's retained history (oldest %d): list /v1/snapshot and watch from its revision", from, oldest),
			OldestRevision: oldest,
		})
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Set(hdrRevision, strconv.FormatUint(from, 10))
	w.WriteHeader(http.StatusOK)

	n.metrics.watchers.Inc()
	defer n.metrics.watchers.Dec()

	sw := &streamWriter{w: w, rc: rc}
	progress := func(pos uint64) bool {
		sw.arm()
		return sw.write(assignments.AppendProgressFrame(nil, n.watchProgress(pos))) && sw.flush()
	}
	// A first progress message tells the client the stream is live.
	if !progress(from) {
		return
	}
	pos := from
	// Not reset by changes: progress comes at least every WatchProgress even
	// while changes flow, so a client always gets fresh proof of currency.
	ticker := time.NewTicker(n.cfg.WatchProgress)
	defer ticker.Stop()
	for {
		batches, wait, oldest, ok := n.store.hist.since(pos, watchBatchesPerFlush)
		if !ok {
			// The history was replaced by a snapshot install: the client must relist.
			sw.arm()
			sw.write(assignments.AppendGoneFrame(nil, assignments.ErrorBody{Error: "history compacted; relist", OldestRevision: oldest}))
			sw.flush()
			return
		}
		if len(batches) > 0 {
			// Write every ready batch, then flush once: one write syscall
			// for all the revisions that arrived since the last wake-up.
			sw.arm()
			for _, b := range batches {
				frame, _, err := b.encoded()
				if err != nil {
					// Never skip a revision: make the client relist instead.
					n.log.Error("cannot encode a revision for watchers; telling them to relist", "revision", b.revision, "err", err)
					sw.write(assignments.AppendGoneFrame(nil, assignments.ErrorBody{Error: fmt.Sprintf("revision %d cannot be streamed; relist", b.revision), OldestRevision: oldest}))
					sw.flush()
					return
				}
				if !sw.write(frame) {
					return
				}
				n.metrics.watchSent.Add(float64(len(b.events)))
				pos = b.revision
			}
			if !sw.flush() {
				return
			}
			select {
			case <-ticker.C:
				if !progress(pos) {
					return
				}
			default:
			}
			if len(batches) == watchBatchesPerFlush {
				continue // more may be ready already
			}
		}
		// wait came with the batches just written: it is closed as soon as
		// anything newer was appended, so one history lookup per wake-up
		// is enough (none to find out that nothing is left).
		select {
		case <-r.Context().Done():
			return
		case <-n.ctx.Done():
			return
		case <-wait:
		case <-ticker.C:
			if !progress(pos) {
				return
			}
		}
	}
}

// watchBatchesPerFlush is the most revisions a watch stream writes before it
// flushes (a watcher catching up gets them in flushes of this many).
const watchBatchesPerFlush = 256

// streamWriter writes a watch stream under write deadlines: arm sets one
// (watchWriteTimeout) at the start of each flush cycle, and write sets a
// fresh one after every assignments.MaxFrameBytes, so no more than one
// frame's worth of bytes (plus the buffered tail the flush sends) is ever
// written under one deadline, while a cycle of small frames costs one
// deadline, not one per frame and another per flush.
type streamWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	budget int // bytes that may still be written under the current deadline
}

func (s *streamWriter) arm() {
	_ = s.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	s.budget = assignments.MaxFrameBytes
}

// write sends b in pieces of at most MaxFrameBytes; false if the client is gone.
func (s *streamWriter) write(b []byte) bool {
	for len(b) > 0 {
		if s.budget == 0 {
			s.arm()
		}
		k := min(len(b), s.budget)
		if _, err := s.w.Write(b[:k]); err != nil {
			return false
		}
		s.budget -= k
		b = b[k:]
	}
	return true
}

// flush sends what is buffered, under the deadline of the last arm.
func (s *streamWriter) flush() bool { return s.rc.Flush() == nil }

// watchProgress is the progress message for a stream that has delivered
// everything up to pos: what this node knows of the leader and its own
// revision, so that the client can judge whether the node is current
// (assignments.Progress.CheckCurrent).
func (n *Node) watchProgress(pos uint64) assignments.Progress {
	p := assignments.Progress{
		Revision:        pos,
		Node:            n.cfg.ID,
		Leader:          n.leaderID(),
		NodeRevision:    n.store.Revision(),
		Term:            n.raft.CurrentTerm(),
		LeaderContactMs: -1,
	}
	switch {
	case n.raft.State() == raft.Leader:
		p.LeaderContactMs = 0
	case p.Leader != "":
		if lc := n.raft.LastContact(); !lc.IsZero() {
			p.LeaderContactMs = time.Since(lc).Milliseconds()
		}
	}
	return p
}
