package confignode

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
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

// identifyWindow is Discord's session start window.
const identifyWindow = 24 * time.Hour

// identifyBudget tracks Discord's daily session start budget
// (session_start_limit of GET /gateway/bot: 1000 identifies a day for most
// bots; exhausting it gets the token reset) on the leader, which hands out
// every identify slot: it counts the slots it grants and refuses new ones
// once no more than the reserve is left.
//
// What it knows comes from two sources. Pods report the session_start_limit
// they read from Discord (with when they read it); Discord's figure is the
// truth, and the slots granted since that reading are taken off it. Without
// a report, a rolling 24 h window over the slots granted on this leader's
// clock, against the configured daily limit, stands in. Reports older than
// the newest one are ignored (a pod may send a cached reading). It lives in
// the leader's memory: a new leader starts without the previous one's
// grants until a pod reports a reading made after them.
type identifyBudget struct {
	mu           sync.Mutex
	defaultTotal int
	reserveCfg   int
	grants       []time.Time // ascending, the last 24 h
	report       *budgetReport
}

type budgetReport struct {
	total, remaining  int
	observed, resetAt time.Time
}

// budgetStatus is the budget as the leader sees it at one instant.
type budgetStatus struct {
	Total     int
	Remaining int
	Reserve   int
	// ResetAt is when the budget is refilled (Discord's reset), or, on the
	// rolling window, when the oldest counted identify leaves it; zero when
	// nothing is counted.
	ResetAt time.Time
	// FromDiscord says whether a pod's reading of Discord's figure is used.
	FromDiscord bool
}

func newIdentifyBudget(total, reserve int) *identifyBudget {
	return &identifyBudget{defaultTotal: total, reserveCfg: reserve}
}

// sessionStartLimit is Discord's session_start_limit object, as a pod read
// it from GET /gateway/bot.
type sessionStartLimit = assignments.SessionStartLimit

// observe records a pod's reading of Discord's budget, taken at at.
func (b *identifyBudget) observe(l sessionStartLimit, at, now time.Time) error {
	if l.Total < 1 || l.Remaining < 0 || l.Remaining > l.Total || l.ResetAfter < 0 || l.ResetAfter > identifyWindow.Milliseconds() {
		return badRequest("session_start_limit %+v is not plausible (want 0 <= remaining <= total, 0 <= reset_after <= 86400000 ms)", l)
	}
	if at.IsZero() || at.After(now) {
		at = now
	}
	if now.Sub(at) > identifyWindow {
		return nil // too old to say anything about today
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.report != nil && at.Before(b.report.observed) {
		return nil
	}
	b.report = &budgetReport{total: l.Total, remaining: l.Remaining, observed: at, resetAt: at.Add(time.Duration(l.ResetAfter) * time.Millisecond)}
	return nil
}

// reserve books one identify if the budget allows it; otherwise it says how
// long until it does.
func (b *identifyBudget) reserve(now time.Time) (budgetStatus, bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.statusLocked(now)
	if st.Remaining <= st.Reserve {
		return st, false, b.retryAfterLocked(st, now)
	}
	b.grants = append(b.grants, now)
	st.Remaining--
	if st.ResetAt.IsZero() {
		st.ResetAt = now.Add(identifyWindow)
	}
	return st, true, 0
}

func (b *identifyBudget) status(now time.Time) budgetStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statusLocked(now)
}

func (b *identifyBudget) statusLocked(now time.Time) budgetStatus {
	// Drop grants that left the window (a report is never older than it).
	cut := sort.Search(len(b.grants), func(i int) bool { return b.grants[i].After(now.Add(-identifyWindow)) })
	b.grants = b.grants[cut:]
	// since counts the grants at or after t (one at the very instant of a
	// reading counts as after it: the conservative side).
	since := func(t time.Time) int {
		return len(b.grants) - sort.Search(len(b.grants), func(i int) bool { return !b.grants[i].Before(t) })
	}
	var st budgetStatus
	switch r := b.report; {
	case r != nil && now.Before(r.resetAt):
		st = budgetStatus{Total: r.total, Remaining: r.remaining - since(r.observed), ResetAt: r.resetAt, FromDiscord: true}
	case r != nil:
		// Discord refilled the budget at resetAt; its windows follow on.
		start := r.resetAt
		for !now.Before(start.Add(identifyWindow)) {
			start = start.Add(identifyWindow)
		}
		st = budgetStatus{Total: r.total, Remaining: r.total - since(start), ResetAt: start.Add(identifyWindow), FromDiscord: true}
	default:
		st = budgetStatus{Total: b.defaultTotal, Remaining: b.defaultTotal - len(b.grants)}
		if len(b.grants) > 0 {
			st.ResetAt = b.grants[0].Add(identifyWindow)
		}
	}
	st.Remaining = max(st.Remaining, 0)
	switch {
	case b.reserveCfg < 0:
		st.Reserve = 0
	case b.reserveCfg == 0:
		st.Reserve = st.Total / 10
	default:
		st.Reserve = b.reserveCfg
	}
	return st
}

// retryAfterLocked is how long until the budget is above its reserve again.
func (b *identifyBudget) retryAfterLocked(st budgetStatus, now time.Time) time.Duration {
	var at time.Time
	if st.FromDiscord {
		at = st.ResetAt
	} else if need := st.Reserve - st.Remaining + 1; need <= len(b.grants) {
		// The rolling window frees one identify as each grant ages out.
		at = b.grants[need-1].Add(identifyWindow)
	} else {
		at = now.Add(identifyWindow) // a reserve above the whole budget
	}
	return max(at.Sub(now), time.Second)
}

// budgetExhausted is the 429 body: the error and when to ask again.
type budgetExhausted struct {
	assignments.ErrorBody
	RetryAfterMs    int64 `json:"retry_after_ms"`
	BudgetTotal     int   `json:"budget_total"`
	BudgetRemaining int   `json:"budget_remaining"`
	BudgetReserve   int   `json:"budget_reserve"`
	BudgetResetAt   int64 `json:"budget_reset_at,omitempty"`
}

// handleIdentify hands out an identify slot: to the shard's holder only (at
// its epoch, when the pod names one), within the daily budget (429 with
// Retry-After below the reserve), at most one per bucket per interval.
func (n *Node) handleIdentify(w http.ResponseWriter, r *http.Request) {
	var req assignments.IdentifyRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	now := time.Now()
	if req.Pod == "" {
		n.fail(w, r, badRequest("pod is required"))
		return
	}
	if req.Shard < 0 {
		n.fail(w, r, badRequest("shard must be >= 0"))
		return
	}
	// Only the shard's holder identifies it: a pod that lost the shard (or
	// holds it at another epoch than it thinks) must not open a session.
	var holds bool
	var holder string
	var epoch uint64
	var shards int
	n.store.View(func(s *fsm.State) {
		shards = s.ShardCount
		if req.Shard < s.ShardCount {
			holder, epoch = s.Shards[req.Shard], s.ShardEpochs[req.Shard]
			holds = holder == req.Pod && (req.Epoch == 0 || req.Epoch == epoch)
		}
	})
	if req.Shard >= shards {
		n.fail(w, r, badRequest("shard %d out of range [0, %d)", req.Shard, shards))
		return
	}
	if !holds {
		n.metrics.identifyRefused.WithLabelValues("not_holder").Inc()
		n.fail(w, r, &fsm.CommandError{Kind: fsm.ErrStaleEpoch, Msg: fmt.Sprintf(
			"identify shard %d: pod %q does not hold it at epoch %d (holder %q at epoch %d); stop its session", req.Shard, req.Pod, req.Epoch, holder, epoch)})
		return
	}
	// The pod's reading of Discord's budget counts only once the request is
	// known to come from the shard's holder: a refused request changes
	// nothing.
	if l := req.SessionStartLimit; l != nil {
		var at time.Time
		if req.SessionStartLimitAt > 0 {
			at = time.UnixMilli(req.SessionStartLimitAt)
		}
		if err := n.budget.observe(*l, at, now); err != nil {
			n.fail(w, r, err)
			return
		}
		if req.MaxConcurrency < 1 {
			req.MaxConcurrency = l.MaxConcurrency
		}
	}
	if req.MaxConcurrency < 1 {
		req.MaxConcurrency = 1
	}
	st, ok, retry := n.budget.reserve(now)
	if !ok {
		n.metrics.identifyRefused.WithLabelValues("budget").Inc()
		n.log.Error("identify refused: the daily session start budget is down to its reserve", "pod", req.Pod, "shard", req.Shard,
			"remaining", st.Remaining, "reserve", st.Reserve, "total", st.Total, "retry_after", retry.Round(time.Second))
		body := budgetExhausted{
			ErrorBody: assignments.ErrorBody{Error: fmt.Sprintf(
				"identify refused: only %d of the %d daily identifies (session_start_limit) are left and %d are kept in reserve; retry after %s (a crash loop? check the pods' logs)",
				st.Remaining, st.Total, st.Reserve, retry.Round(time.Second))},
			RetryAfterMs: retry.Milliseconds(), BudgetTotal: st.Total, BudgetRemaining: st.Remaining, BudgetReserve: st.Reserve,
		}
		if !st.ResetAt.IsZero() {
			body.BudgetResetAt = st.ResetAt.UnixMilli()
		}
		w.Header().Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
		httpapi.WriteJSON(w, http.StatusTooManyRequests, body)
		return
	}
	bucket := req.Shard % req.MaxConcurrency
	at := n.identify.reserve(bucket, now)
	n.metrics.identifySlots.Inc()
	out := assignments.IdentifySlot{Bucket: bucket, WaitMs: at.Sub(now).Milliseconds(), At: at.UnixMilli(),
		BudgetTotal: st.Total, BudgetRemaining: st.Remaining, BudgetReserve: st.Reserve, BudgetResetAt: st.ResetAt.UnixMilli()}
	httpapi.WriteJSON(w, http.StatusOK, out)
}
