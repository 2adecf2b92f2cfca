package restlimit

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestSharesNeverSumAboveTheLimit(t *testing.T) {
	for pods := 1; pods <= 40; pods++ {
		s := Share(DiscordGlobalLimit, pods)
		// What the pods' limiters let into one second: their shares rounded up.
		if sum := math.Ceil(s) * float64(pods); sum > DiscordGlobalLimit*(1-Headroom) {
			t.Fatalf("%d pods: %v requests in a second together, over the limit less its headroom", pods, sum)
		}
		if sum := s * float64(pods); sum < DiscordGlobalLimit*(1-Headroom)/2 {
			t.Fatalf("%d pods: shares sum to %.1f, less than half of what the limit leaves", pods, sum)
		}
	}
	if Share(50, 0) != 40 || Share(50, 3) != 13 || Share(50, 10) != 4 {
		t.Fatalf("shares of 0, 3, 10 pods: %v %v %v", Share(50, 0), Share(50, 3), Share(50, 10))
	}
}

// sendTimes drives a limiter on a fake clock with callers that always want
// to send, and returns when each request is sent.
func sendTimes(l *Limiter, clock *time.Time, n int, change func(i int)) []time.Time {
	l.now = func() time.Time { return *clock }
	var at []time.Time
	for i := 0; i < n; i++ {
		if change != nil {
			change(i)
		}
		send := l.reserve()
		if send.After(*clock) {
			*clock = send // the caller sleeps until then, then sends
		}
		at = append(at, *clock)
		*clock = clock.Add(time.Millisecond) // and comes back for more
	}
	return at
}

// maxInWindow is the most sends in any window of length w.
func maxInWindow(at []time.Time, w time.Duration) int {
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	best, lo := 0, 0
	for hi := range at {
		for at[hi].Sub(at[lo]) >= w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

func TestALimiterNeverExceedsItsShareInAnyWindow(t *testing.T) {
	for _, share := range []float64{2, 5, 16.6, 50} {
		clock := time.Unix(1_700_000_000, 0)
		l := NewLimiter(share)
		at := sendTimes(l, &clock, 2000, nil)
		if got, limit := maxInWindow(at, time.Second), int(math.Ceil(share)); got > limit {
			t.Fatalf("share %.1f/s: %d requests in one second", share, got)
		}
		// And it is not much slower than its share over the long run.
		span := at[len(at)-1].Sub(at[0]).Seconds()
		if rate := float64(len(at)-1) / span; rate < share*0.95 {
			t.Fatalf("share %.1f/s: only %.1f/s sustained", share, rate)
		}
	}
}

// Pods joining lower every share at once; callers already waiting keep the
// slots they booked, and nothing after the change exceeds the new share.
func TestALoweredShareHoldsFromTheNextRequest(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	l := NewLimiter(50)
	var changedAt time.Time
	at := sendTimes(l, &clock, 1000, func(i int) {
		if i == 300 {
			l.SetShare(10)
			changedAt = clock
		}
	})
	var after []time.Time
	for _, a := range at {
		if a.After(changedAt.Add(time.Second)) {
			after = append(after, a)
		}
	}
	if got := maxInWindow(after, time.Second); got > 10 {
		t.Fatalf("after lowering the share to 10/s: %d requests in one second", got)
	}
	if l.Share() != 10 {
		t.Fatalf("share = %v", l.Share())
	}
}

func TestWaitGivesBackTheSlotWhenCancelled(t *testing.T) {
	l := NewLimiter(1) // one request per second
	if d, err := l.Wait(context.Background()); err != nil || d != 0 {
		t.Fatalf("first request: waited %v, %v", d, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(ctx); err == nil {
		t.Fatal("a wait past its context's deadline succeeded")
	}
	// The cancelled reservation was given back: the next wait is one
	// interval, not two.
	start := time.Now()
	if _, err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("the next request waited %v: the cancelled slot was kept", d)
	}
}

func TestRouteNamesTheBucketWithoutIDsAndKnowsWhatIsNotGloballyLimited(t *testing.T) {
	for _, tc := range []struct {
		method, path, route string
		global              bool
	}{
		{"POST", "/api/v9/channels/1058897343295918080/messages", "POST /channels/{id}/messages", true},
		{"GET", "/api/v10/guilds/1058897343295918080/members/1058897343295918081", "GET /guilds/{id}/members/{id}", true},
		{"PUT", "/api/v9/channels/1058897343295918080/messages/1058897343295918099/reactions/%F0%9F%91%8D/@me", "PUT /channels/{id}/messages/{id}/reactions/{emoji}/@me", true},
		{"POST", "/api/v9/interactions/1058897343295918080/aW50ZXJhY3Rpb246dG9rZW4/callback", "POST /interactions/{id}/{token}/callback", false},
		{"PATCH", "/api/v9/webhooks/1058897343295918080/aW50ZXJhY3Rpb246dG9rZW4/messages/@original", "PATCH /webhooks/{id}/{token}/messages/@original", false},
		{"GET", "/api/v9/webhooks/1058897343295918080", "GET /webhooks/{id}", true},
		{"GET", "/api/v9/gateway/bot", "GET /gateway/bot", true},
	} {
		route, global := Route(tc.method, tc.path)
		if route != tc.route || global != tc.global {
			t.Errorf("%s %s: route %q global %v, want %q %v", tc.method, tc.path, route, global, tc.route, tc.global)
		}
	}
}

func TestTransportPacesGlobalRoutesAndCountsWhatDiscordAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/limited"):
			w.Header().Set("X-RateLimit-Scope", "user")
			w.WriteHeader(http.StatusTooManyRequests)
		case strings.HasSuffix(r.URL.Path, "/shared"):
			w.Header().Set("X-RateLimit-Scope", "shared")
			w.WriteHeader(http.StatusTooManyRequests)
		case strings.HasSuffix(r.URL.Path, "/global"):
			w.Header().Set("X-RateLimit-Global", "true")
			w.Header().Set("X-RateLimit-Scope", "global")
			w.WriteHeader(http.StatusTooManyRequests)
		case strings.HasSuffix(r.URL.Path, "/forbidden"):
			w.WriteHeader(http.StatusForbidden)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	tr := &Transport{Global: NewLimiter(3), Metrics: m} // 3 in any second
	c := &http.Client{Transport: tr}
	get := func(path string) {
		t.Helper()
		resp, err := c.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// Interaction callbacks never wait for the global bucket.
	start := time.Now()
	for i := 0; i < 10; i++ {
		get("/api/v9/interactions/1058897343295918080/tok/callback")
	}
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Fatalf("10 interaction callbacks took %v: they waited for the global bucket", d)
	}
	// Globally limited routes do: the fourth of 3/s waits a second.
	start = time.Now()
	for i := 0; i < 4; i++ {
		get("/api/v9/channels/1058897343295918080/messages")
	}
	if d := time.Since(start); d < 800*time.Millisecond {
		t.Fatalf("4 requests at a 3/s share took %v", d)
	}
	if n := value(m.Requests.WithLabelValues("GET /channels/{id}/messages", "200")); n != 4 {
		t.Fatalf("requests counted: %v", n)
	}
	tr.Global = nil // no pacing for the rest
	get("/api/v9/channels/1/limited")
	get("/api/v9/channels/1/shared")
	get("/api/v9/channels/1/global")
	get("/api/v9/channels/1/forbidden")
	for scope, want := range map[string]float64{"user": 1, "shared": 1, "global": 1} {
		if got := value(m.RateLimited.WithLabelValues(scope)); got != want {
			t.Fatalf("429s of scope %s: %v, want %v", scope, got, want)
		}
	}
	// A shared-scope 429 does not count toward the invalid-request limit.
	if got := value(m.Invalid); got != 3 {
		t.Fatalf("invalid requests: %v, want 3 (user 429, global 429, 403)", got)
	}
	var h dto.Metric
	if err := m.Wait.Write(&h); err != nil || h.GetHistogram().GetSampleCount() != 4 {
		t.Fatalf("global waits observed: %d, want 4 (%v)", h.GetHistogram().GetSampleCount(), err)
	}
}

func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
