package confignode

import (
	"sync"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// history keeps the most recent change events so that watchers can resume
// from a revision. It is bounded: once more than size events were recorded the
// oldest revisions are dropped, and a watch from before the oldest retained
// revision is answered 410 Gone (the client then relists).
//
// Invariants: batches are stored in revision order; all events of one
// revision are one batch and are always delivered together (in one or more
// frames, written back to back); base is the newest revision that is no
// longer (or never was) retained, so a watcher at revision >= base can be
// served without a gap.
type history struct {
	mu      sync.Mutex
	size    int
	batches []batch // ascending revision
	events  int     // events held in batches
	base    uint64
	notify  chan struct{} // closed and replaced on every append/reset
}

type batch struct {
	revision uint64
	events   []fsm.Event
	enc      *encodedBatch // shared by every copy of the batch
}

// encodedBatch is a revision's SSE frames, encoded once, by the first watcher
// that needs them — not on the Raft apply path, which holds the store's lock.
type encodedBatch struct {
	once sync.Once
	// frame is the revision's frames (assignments.AppendChangeFrames: no
	// line longer than assignments.MaxFrameBytes, the id on the last);
	// frames counts them.
	frame  []byte
	frames int
	// err is set when the events could not be encoded (a bug): watchers
	// reaching this batch are told to relist rather than skip it.
	err error
}

// encoded returns the batch's frames, encoding them on first use.
func (b batch) encoded() (frame []byte, frames int, err error) {
	e := b.enc
	e.once.Do(func() { e.frame, e.frames, e.err = assignments.AppendChangeFrames(nil, b.revision, b.events) })
	return e.frame, e.frames, e.err
}

func newHistory(size int) *history {
	if size <= 0 {
		size = 100_000
	}
	return &history{size: size, notify: make(chan struct{})}
}

func (h *history) append(events []fsm.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.batches = append(h.batches, batch{revision: events[0].Revision, events: events, enc: &encodedBatch{}})
	h.events += len(events)
	drop := 0
	for h.events > h.size && drop < len(h.batches)-1 {
		h.events -= len(h.batches[drop].events)
		h.base = h.batches[drop].revision
		drop++
	}
	if drop > 0 {
		h.batches = append(h.batches[:0:0], h.batches[drop:]...)
	}
	close(h.notify)
	h.notify = make(chan struct{})
}

// reset forgets everything: the state was replaced by a snapshot at rev.
func (h *history) reset(rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.batches, h.events, h.base = nil, 0, rev
	close(h.notify)
	h.notify = make(chan struct{})
}

// since returns the batches after rev (at most max of them), a channel that
// is closed when more arrive, and ok=false when rev is older than the
// retained history (oldest is then the oldest revision a watch may start from).
func (h *history) since(rev uint64, max int) (out []batch, wait <-chan struct{}, oldest uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev < h.base {
		return nil, h.notify, h.base, false
	}
	// Binary search for the first batch with revision > rev.
	lo, hi := 0, len(h.batches)
	for lo < hi {
		m := (lo + hi) / 2
		if h.batches[m].revision <= rev {
			lo = m + 1
		} else {
			hi = m
		}
	}
	end := len(h.batches)
	if max > 0 && end-lo > max {
		end = lo + max
	}
	return h.batches[lo:end:end], h.notify, h.base, true
}

// oldest returns the oldest revision a watch may start from.
func (h *history) oldest() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.base
}
