package confignode

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/httpapi"
)

// handleWatch streams the change stream as Server-Sent Events.
//
// Contract (DESIGN §6, tested in watch_test.go): every change after `from`
// (or Last-Event-ID) in revision order, none missing, none twice; each SSE
// message carries one revision's events and `id:` = that revision, so a client
// resumes with Last-Event-ID; `event: progress` messages carry the revision
// the client has seen everything up to, at least every WatchProgress when
// idle; a `from` older than the retained history gets 410 Gone with the
// oldest revision a watch may start from — the client then lists
// (/v1/snapshot) and watches from the snapshot's revision. Served by every
// node from its own applied state, so followers serve watches too.
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

	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	progress := func(rev uint64) bool {
		b, _ := json.Marshal(map[string]any{"revision": rev, "node": n.cfg.ID, "leader": n.leaderID()})
		return write([]byte("event: progress\ndata: " + string(b) + "\n\n"))
	}
	// A first progress message tells the client the stream is live.
	if !progress(from) {
		return
	}
	pos := from
	ticker := time.NewTicker(n.cfg.WatchProgress)
	defer ticker.Stop()
	for {
		batches, wait, oldest, ok := n.store.hist.since(pos, 256)
		if !ok {
			// The history was replaced by a snapshot install: the client must relist.
			b, _ := json.Marshal(assignments.ErrorBody{Error: "history compacted; relist", OldestRevision: oldest})
			write([]byte("event: gone\ndata: " + string(b) + "\n\n"))
			return
		}
		if len(batches) > 0 {
			// Write every ready batch, then flush once.
			_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			for _, b := range batches {
				if _, err := w.Write(b.frame); err != nil {
					return
				}
				n.metrics.watchSent.Add(float64(len(b.events)))
			}
			if rc.Flush() != nil {
				return
			}
			pos = batches[len(batches)-1].revision
			ticker.Reset(n.cfg.WatchProgress)
			continue
		}
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
