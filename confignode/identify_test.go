package confignode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
)

// TestIdentifyBudgetKeepsAReserve: on the rolling window (no report from
// Discord) slots are granted until only the reserve is left, then refused
// until the oldest grant leaves the 24 h window.
func TestIdentifyBudgetKeepsAReserve(t *testing.T) {
	b := newIdentifyBudget(20, 5)
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 15; i++ {
		st, ok, _ := b.reserve(t0.Add(time.Duration(i) * time.Minute))
		if !ok || st.Remaining != 20-i-1 {
			t.Fatalf("grant %d: ok %v, remaining %d", i, ok, st.Remaining)
		}
	}
	now := t0.Add(time.Hour)
	st, ok, retry := b.reserve(now)
	if ok || st.Remaining != 5 || st.Reserve != 5 {
		t.Fatalf("with only the reserve left: ok %v %+v", ok, st)
	}
	if want := t0.Add(identifyWindow).Sub(now); retry != want {
		t.Fatalf("retry after %s, want %s (when the first grant leaves the window)", retry, want)
	}
	if _, ok, _ := b.reserve(t0.Add(identifyWindow + time.Second)); !ok {
		t.Fatal("refused after the first grant left the window")
	}
	// Default reserve: 10 % of the total; negative: none.
	if st := newIdentifyBudget(1000, 0).status(now); st.Reserve != 100 || st.Remaining != 1000 {
		t.Fatalf("default reserve: %+v", st)
	}
	if st := newIdentifyBudget(1000, -1).status(now); st.Reserve != 0 {
		t.Fatalf("no reserve: %+v", st)
	}
}

// TestIdentifyBudgetFollowsDiscordsReport: a pod's reading of Discord's
// session_start_limit replaces the estimate; slots granted after the
// reading are taken off it; an older reading is ignored; once Discord's
// reset passes, the budget is full again.
func TestIdentifyBudgetFollowsDiscordsReport(t *testing.T) {
	b := newIdentifyBudget(1000, 0) // reserve 100
	t0 := time.Unix(1_700_000_000, 0)
	if err := b.observe(sessionStartLimit{Total: 1000, Remaining: 103, ResetAfter: time.Hour.Milliseconds(), MaxConcurrency: 1}, t0, t0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, ok, _ := b.reserve(t0.Add(time.Second)); !ok {
			t.Fatalf("grant %d refused", i)
		}
	}
	// A cached reading from before is ignored: it does not give back the
	// three identifies granted since the newest one.
	if err := b.observe(sessionStartLimit{Total: 1000, Remaining: 500, ResetAfter: 1}, t0.Add(-time.Minute), t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	st, ok, retry := b.reserve(t0.Add(2 * time.Second))
	if ok || st.Remaining != 100 || !st.FromDiscord {
		t.Fatalf("at the reserve: ok %v %+v", ok, st)
	}
	if want := time.Hour - 2*time.Second; retry != want {
		t.Fatalf("retry after %s, want %s (Discord's reset)", retry, want)
	}
	// After Discord's reset the whole budget is back.
	st, ok, _ = b.reserve(t0.Add(time.Hour + time.Minute))
	if !ok || st.Remaining != 999 || st.Total != 1000 {
		t.Fatalf("after the reset: ok %v %+v", ok, st)
	}
	if err := b.observe(sessionStartLimit{Total: 10, Remaining: 11}, t0, t0); err == nil {
		t.Fatal("an impossible reading was accepted")
	}
}

type identifyAnswer struct {
	assignments.IdentifySlot
	BudgetTotal     int    `json:"budget_total"`
	BudgetRemaining int    `json:"budget_remaining"`
	BudgetReserve   int    `json:"budget_reserve"`
	Error           string `json:"error"`
}

// TestIdentifySlotsAreRefusedBelowTheReserve: through the API, the leader
// hands identify slots only to the shard's holder at its epoch (409
// otherwise) and, once Discord's reported budget is down to the reserve,
// refuses them with 429 and Retry-After; both refusals are counted and the
// remaining budget is exported.
func TestIdentifySlotsAreRefusedBelowTheReserve(t *testing.T) {
	tc := newTestCluster(t, 1, func(i int, c *Config) { c.IdentifyReserve = 50; c.IdentifyInterval = time.Millisecond })
	tc.registerPods(2)
	c := tc.client()
	ctx := context.Background()
	sl, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sh := sl.Shards[1]
	other := map[string]string{"gateway-0": "gateway-1", "gateway-1": "gateway-0"}[sh.Holder]
	url := tc.urls()[0] + "/v1/identify"
	ask := func(body string) (rawResp, identifyAnswer) {
		t.Helper()
		r := rawRequest(t, http.MethodPost, url, testToken, body)
		var a identifyAnswer
		if err := json.Unmarshal([]byte(r.body), &a); err != nil {
			t.Fatalf("answer %q: %v", r.body, err)
		}
		return r, a
	}
	// The old client's request (no epoch, no report) still works for the holder.
	if r, a := ask(fmt.Sprintf(`{"pod":%q,"shard":1,"max_concurrency":16}`, sh.Holder)); r.status != 200 || a.Bucket != 1 {
		t.Fatalf("plain request from the holder: %d %s", r.status, r.body)
	}
	// A pod read Discord's figure after that identify: 52 left.
	limit := `"session_start_limit":{"total":1000,"remaining":52,"reset_after":60000,"max_concurrency":16},"session_start_limit_at":` + strconv.FormatInt(time.Now().Add(time.Millisecond).UnixMilli(), 10) // rounded up: after that grant
	if r, a := ask(fmt.Sprintf(`{"pod":%q,"shard":1,"max_concurrency":16,"epoch":%d,%s}`, sh.Holder, sh.Epoch, limit)); r.status != 200 || a.BudgetRemaining != 51 || a.BudgetTotal != 1000 || a.BudgetReserve != 50 {
		t.Fatalf("holder at its epoch with 52 left: %d %s", r.status, r.body)
	}
	for _, bad := range []string{
		fmt.Sprintf(`{"pod":%q,"shard":1,"max_concurrency":16,"epoch":%d}`, other, sh.Epoch),
		fmt.Sprintf(`{"pod":%q,"shard":1,"max_concurrency":16,"epoch":%d}`, sh.Holder, sh.Epoch-1),
	} {
		if r, _ := ask(bad); r.status != http.StatusConflict || !strings.Contains(r.body, "does not hold") {
			t.Fatalf("%s: %d %s", bad, r.status, r.body)
		}
	}
	if r, a := ask(fmt.Sprintf(`{"pod":%q,"shard":1,"epoch":%d}`, sh.Holder, sh.Epoch)); r.status != 200 || a.BudgetRemaining != 50 {
		t.Fatalf("the last identify above the reserve: %d %s", r.status, r.body)
	}
	r, a := ask(fmt.Sprintf(`{"pod":%q,"shard":1,"epoch":%d}`, sh.Holder, sh.Epoch))
	if r.status != http.StatusTooManyRequests || !strings.Contains(a.Error, "reserve") {
		t.Fatalf("at the reserve: %d %s", r.status, r.body)
	}
	var full struct {
		RetryAfterMs int64 `json:"retry_after_ms"`
	}
	_ = json.Unmarshal([]byte(r.body), &full)
	if full.RetryAfterMs <= 0 || full.RetryAfterMs > 60_000 {
		t.Fatalf("retry_after_ms %d, want until Discord's reset (<= 60 s)", full.RetryAfterMs)
	}
	// The client sees an APIError (no failover: every node would refuse).
	err = c.Do(ctx, http.MethodPost, "/v1/identify", assignments.IdentifyRequest{Pod: sh.Holder, Shard: 1, MaxConcurrency: 16}, nil)
	if !isStatus(err, http.StatusTooManyRequests) {
		t.Fatalf("client: %v", err)
	}
	reg := tc.nodes[0].Registry()
	if v := metricValue(t, reg, "modbot_config_identify_budget_remaining", nil); v != 50 {
		t.Fatalf("modbot_config_identify_budget_remaining %v, want 50", v)
	}
	if v := metricValue(t, reg, "modbot_config_identify_refused_total", map[string]string{"reason": "budget"}); v != 2 {
		t.Fatalf("budget refusals %v, want 2", v)
	}
	if v := metricValue(t, reg, "modbot_config_identify_refused_total", map[string]string{"reason": "not_holder"}); v != 2 {
		t.Fatalf("not-holder refusals %v, want 2", v)
	}
	// The 429 carries Retry-After in seconds.
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(fmt.Sprintf(`{"pod":%q,"shard":1}`, sh.Holder)))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s, _ := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != 429 || s < 1 || s > 60 {
		t.Fatalf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
