package confignode

import (
	"net/http"
	"sync"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/httpapi"
)

// identifyQueue hands out Discord identify slots: at most one IDENTIFY per
// bucket (shard_id % max_concurrency) per interval, cluster-wide, so pods
// never trip Discord's limit by guessing. Slots live in the leader's memory;
// after a leader change the new leader starts a full interval late for each
// bucket, which can only make identifies slower, never faster than allowed.
type identifyQueue struct {
	mu       sync.Mutex
	interval time.Duration
	next     map[int]time.Time
	started  time.Time
}

func newIdentifyQueue(interval time.Duration) *identifyQueue {
	return &identifyQueue{interval: interval, next: map[int]time.Time{}, started: time.Now()}
}

// reserve returns when the caller may identify and books the slot.
func (q *identifyQueue) reserve(bucket int, now time.Time) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	at, ok := q.next[bucket]
	if !ok {
		// A new leader does not know when the previous one granted the last
		// slot of this bucket: wait one interval from its own start.
		at = q.started.Add(q.interval)
		if q.started.IsZero() {
			at = now
		}
	}
	if at.Before(now) {
		at = now
	}
	q.next[bucket] = at.Add(q.interval)
	return at
}

func (q *identifyQueue) reset(now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next = map[int]time.Time{}
	q.started = now
}

func (n *Node) handleIdentify(w http.ResponseWriter, r *http.Request) {
	var req assignments.IdentifyRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	if req.MaxConcurrency < 1 {
		req.MaxConcurrency = 1
	}
	if req.Shard < 0 {
		n.fail(w, r, badRequest("shard must be >= 0"))
		return
	}
	bucket := req.Shard % req.MaxConcurrency
	now := time.Now()
	at := n.identify.reserve(bucket, now)
	n.metrics.identifySlots.Inc()
	httpapi.WriteJSON(w, http.StatusOK, assignments.IdentifySlot{Bucket: bucket, WaitMs: at.Sub(now).Milliseconds(), At: at.UnixMilli()})
}
