package fakediscord

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
)

// rawREST sends one REST request as a bot would, without discordgo's limiter.
func rawREST(t *testing.T, h *harness, method, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.base+"/api/v10"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bot "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type rateLimitBody struct {
	Message    string   `json:"message"`
	RetryAfter *float64 `json:"retry_after"`
	Global     *bool    `json:"global"`
	Code       *int     `json:"code"`
}

func decode429(t *testing.T, resp *http.Response, b []byte) rateLimitBody {
	t.Helper()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("HTTP %d %s, want 429", resp.StatusCode, b)
	}
	var rl rateLimitBody
	if err := json.Unmarshal(b, &rl); err != nil || rl.Message != "You are being rate limited." || rl.RetryAfter == nil || rl.Global == nil || rl.Code == nil || *rl.Code != 0 {
		t.Fatalf("429 body %s (%v), want {message, retry_after, global, code: 0}", b, err)
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || float64(ra) < *rl.RetryAfter || float64(ra) > *rl.RetryAfter+1 {
		t.Fatalf("Retry-After %q for retry_after %v, want it rounded up to whole seconds", resp.Header.Get("Retry-After"), *rl.RetryAfter)
	}
	return rl
}

func TestSixthMessageInFiveSecondsToAChannelIs429(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{}) // Discord's limits
	g := h.srv.CreateGuild(0, "limits")
	ch, other := idStr(g.Channels[0].ID), idStr(g.Channels[1].ID)
	token := h.srv.Config().Token
	start := time.Now()
	var bucket string
	for i := 0; i < 5; i++ {
		resp, b := rawREST(t, h, "POST", "/channels/"+ch+"/messages", token, `{"content":"hi"}`)
		if resp.StatusCode != 200 {
			t.Fatalf("message %d: HTTP %d %s", i+1, resp.StatusCode, b)
		}
		hd := resp.Header
		if hd.Get("X-RateLimit-Limit") != "5" || hd.Get("X-RateLimit-Remaining") != strconv.Itoa(4-i) {
			t.Fatalf("message %d: limit %q remaining %q, want 5 and %d", i+1, hd.Get("X-RateLimit-Limit"), hd.Get("X-RateLimit-Remaining"), 4-i)
		}
		after, err := strconv.ParseFloat(hd.Get("X-RateLimit-Reset-After"), 64)
		if err != nil || after <= 0 || after > 5 {
			t.Fatalf("message %d: Reset-After %q, want (0, 5]", i+1, hd.Get("X-RateLimit-Reset-After"))
		}
		reset, err := strconv.ParseFloat(hd.Get("X-RateLimit-Reset"), 64)
		if at := time.UnixMilli(int64(reset * 1000)); err != nil || at.Before(start) || at.After(start.Add(5*time.Second+100*time.Millisecond)) {
			t.Fatalf("message %d: Reset %q, want an epoch in about 5 s", i+1, hd.Get("X-RateLimit-Reset"))
		}
		if hd.Get("X-RateLimit-Scope") != "" || hd.Get("X-RateLimit-Global") != "" {
			t.Fatalf("message %d: scope/global headers on a success: %v", i+1, hd)
		}
		if bucket == "" {
			bucket = hd.Get("X-RateLimit-Bucket")
		} else if hd.Get("X-RateLimit-Bucket") != bucket {
			t.Fatalf("bucket changed from %q to %q", bucket, hd.Get("X-RateLimit-Bucket"))
		}
	}
	resp, b := rawREST(t, h, "POST", "/channels/"+ch+"/messages", token, `{"content":"sixth"}`)
	rl := decode429(t, resp, b)
	if *rl.Global || *rl.RetryAfter <= 0 || *rl.RetryAfter > 5 {
		t.Fatalf("sixth message: %s, want a route limit with retry_after in (0, 5]", b)
	}
	if resp.Header.Get("X-RateLimit-Scope") != "user" || resp.Header.Get("X-RateLimit-Remaining") != "0" || resp.Header.Get("X-RateLimit-Bucket") != bucket || resp.Header.Get("X-RateLimit-Global") != "" {
		t.Fatalf("sixth message headers %v", resp.Header)
	}
	// Another channel is another bucket (the channel is the major parameter), with the same hash.
	resp, b = rawREST(t, h, "POST", "/channels/"+other+"/messages", token, `{"content":"elsewhere"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Remaining") != "4" || resp.Header.Get("X-RateLimit-Bucket") != bucket {
		t.Fatalf("other channel: HTTP %d %s %v", resp.StatusCode, b, resp.Header)
	}
	st := h.srv.RateLimitStats()
	bs, ok := st.Bucket(BucketCreateMessage, ch)
	if !ok || bs.Requests != 6 || bs.Accepted != 5 || bs.Limited != 1 || bs.Hash != bucket || st.RouteLimited != 1 || st.GlobalLimited != 0 {
		t.Fatalf("stats: bucket %+v, route %d global %d", bs, st.RouteLimited, st.GlobalLimited)
	}
	if c := st.Clients["127.0.0.1"]; c.Invalid != 1 {
		t.Fatalf("the 429 was not counted as an invalid request: %+v", c)
	}
	// Only the accepted messages exist.
	if n := len(h.srv.Sent()); n != 7 {
		t.Fatalf("%d requests recorded, want 7 (429s are recorded too)", n)
	}
}

// TestDiscordgoWaitsOutA429: two clients (two pods with one token) post to
// one channel; the one whose local bucket is fresh gets the 429, waits
// retry_after and its message lands after the bucket reset.
func TestDiscordgoWaitsOutA429(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{RateLimits: RateLimits{Routes: map[string]Limit{BucketCreateMessage: {5, time.Second}}}})
	g := h.srv.CreateGuild(0, "two pods")
	ch := idStr(g.Channels[1].ID)
	a, b := restSession(t, h.base, h.srv.Config().Token), restSession(t, h.base, h.srv.Config().Token)
	start := time.Now()
	for i := 0; i < 5; i++ {
		if _, err := a.ChannelMessageSend(ch, "from a"); err != nil {
			t.Fatalf("a: %v", err)
		}
	}
	var limited []*discordgo.RateLimit
	var mu sync.Mutex
	b.AddHandler(func(_ *discordgo.Session, rl *discordgo.RateLimit) {
		mu.Lock()
		limited = append(limited, rl)
		mu.Unlock()
	})
	m, err := b.ChannelMessageSend(ch, "from b")
	if err != nil {
		t.Fatalf("b: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("b's message took %v", took)
	}
	st := h.srv.RateLimitStats()
	bs, _ := st.Bucket(BucketCreateMessage, ch)
	if bs.Limited != 1 || bs.Accepted != 6 {
		t.Fatalf("bucket %+v, want one 429 and 6 accepted", bs)
	}
	// The 429 reached discordgo as its rate-limit event, with Discord's retry_after.
	poll(t, "the RateLimit event", func() bool { mu.Lock(); defer mu.Unlock(); return len(limited) == 1 })
	if ra := limited[0].RetryAfter; ra <= 0 || ra > time.Second {
		t.Fatalf("retry after %v", ra)
	}
	// It was sent after the first five's window ended.
	if at, _ := discordgo.SnowflakeTimestamp(m.ID); at.Before(bs.FirstAt.Add(time.Second).Truncate(time.Millisecond)) {
		t.Fatalf("b's message created at %v, before the bucket reset at %v", at, bs.FirstAt.Add(time.Second))
	}
	// One client alone is paced by the headers and never sees a 429.
	before := h.srv.RateLimitStats().RouteLimited
	for i := 0; i < 7; i++ {
		if _, err := a.ChannelMessageSend(idStr(g.Channels[0].ID), "paced"); err != nil {
			t.Fatal(err)
		}
	}
	if after := h.srv.RateLimitStats().RouteLimited; after != before {
		t.Fatalf("a lone discordgo client got %d 429s", after-before)
	}
}

func TestGlobalLimitCountsAcrossRoutesAndSparesInteractionCallbacks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{RateLimits: RateLimits{Global: Limit{10, time.Second}}})
	g := h.srv.CreateGuild(0, "global")
	token := h.srv.Config().Token
	paths := []string{"/users/@me", "/guilds/" + idStr(g.ID), "/channels/" + idStr(g.Channels[0].ID), "/guilds/" + idStr(g.ID) + "/roles", "/gateway/bot"}
	for i := 0; i < 10; i++ {
		if resp, b := rawREST(t, h, "GET", paths[i%len(paths)], token, ""); resp.StatusCode != 200 {
			t.Fatalf("request %d: HTTP %d %s", i+1, resp.StatusCode, b)
		}
	}
	resp, b := rawREST(t, h, "GET", "/guilds/"+idStr(g.ID)+"/channels", token, "") // a route not used yet
	rl := decode429(t, resp, b)
	if !*rl.Global || *rl.RetryAfter <= 0 || *rl.RetryAfter > 1 {
		t.Fatalf("11th request: %s, want global with retry_after in (0, 1]", b)
	}
	if resp.Header.Get("X-RateLimit-Global") != "true" || resp.Header.Get("X-RateLimit-Scope") != "global" {
		t.Fatalf("global 429 headers %v", resp.Header)
	}

	// An interaction callback is not bound to the global limit.
	h.open(token, 0, 1, false)
	rec, err := h.srv.DeliverInteraction(t.Context(), InteractionSpec{GuildID: g.ID, Name: "report"})
	if err != nil {
		t.Fatal(err)
	}
	resp, b = rawREST(t, h, "POST", "/interactions/"+rec.ID+"/"+rec.Token+"/callback", token, `{"type":4,"data":{"content":"ok"}}`)
	if resp.StatusCode != 204 || resp.Header.Get("X-RateLimit-Bucket") == "" {
		t.Fatalf("callback during a global limit: HTTP %d %s %v", resp.StatusCode, b, resp.Header)
	}
	// The response message is type 20 (CHAT_INPUT_COMMAND) with interaction_metadata.
	got, _ := h.srv.Interaction(parseUint(t, rec.ID))
	var orig struct {
		Type int `json:"type"`
		Meta struct {
			ID string `json:"id"`
		} `json:"interaction_metadata"`
	}
	if err := json.Unmarshal(got.Original, &orig); err != nil || orig.Type != 20 || orig.Meta.ID != rec.ID {
		t.Fatalf("original %s", got.Original)
	}
	// Follow-ups (the interaction webhook) are not counted against it either.
	resp, b = rawREST(t, h, "POST", "/webhooks/"+h.srv.Config().ApplicationID+"/"+rec.Token, token, `{"content":"more"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Limit") != "5" {
		t.Fatalf("follow-up during a global limit: HTTP %d %s %v", resp.StatusCode, b, resp.Header)
	}
	st := h.srv.RateLimitStats().Global[BotIdentity]
	if st.Limited < 1 || st.MaxAcceptedInWindow > 10 || st.MaxInWindow < 11 || st.Exempt != 2 {
		t.Fatalf("global stats %+v", st)
	}
}

// TestDiscordgoUnderTheGlobalLimit: a burst from one discordgo client over
// many routes is held to the global limit; every request succeeds.
func TestDiscordgoUnderTheGlobalLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{RateLimits: RateLimits{Global: Limit{5, 500 * time.Millisecond}}})
	guilds := make([]Guild, 6)
	for i := range guilds {
		guilds[i] = h.srv.CreateGuild(0, "")
	}
	s := restSession(t, h.base, h.srv.Config().Token)
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := guilds[i%len(guilds)]
			var err error
			if i%2 == 0 {
				_, err = s.Guild(idStr(g.ID))
			} else {
				_, err = s.Channel(idStr(g.Channels[0].ID))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("request under the global limit failed: %v", err)
		}
	}
	st := h.srv.RateLimitStats().Global[BotIdentity]
	if st.Accepted != 12 || st.Limited == 0 || st.MaxAcceptedInWindow > 5 {
		t.Fatalf("global stats %+v, want 12 accepted, some 429s, never more than 5 per 500 ms", st)
	}
}

func TestInvalidRequestsTripTheBlock(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{RateLimits: RateLimits{
		Invalid: Limit{6, time.Minute}, BanDuration: 300 * time.Millisecond,
		Routes: map[string]Limit{BucketUsers: {1, time.Minute}},
	}})
	token := h.srv.Config().Token
	// 3 × 401 (wrong token), 1 × 403 (another application's commands), 2 × 429.
	for i := 0; i < 3; i++ {
		if resp, _ := rawREST(t, h, "GET", "/users/@me", "wrong", ""); resp.StatusCode != 401 {
			t.Fatalf("wrong token: HTTP %d", resp.StatusCode)
		}
	}
	if resp, _ := rawREST(t, h, "GET", "/applications/1/commands", token, ""); resp.StatusCode != 403 {
		t.Fatalf("foreign application: HTTP %d", resp.StatusCode)
	}
	rawREST(t, h, "GET", "/users/@me", token, "")
	for i := 0; i < 2; i++ {
		if resp, _ := rawREST(t, h, "GET", "/users/@me", token, ""); resp.StatusCode != 429 {
			t.Fatalf("HTTP %d, want 429", resp.StatusCode)
		}
	}
	// The client is blocked: everything is refused, also what was fine before.
	resp, b := rawREST(t, h, "GET", "/gateway/bot", token, "")
	if resp.StatusCode != 403 || resp.Header.Get("X-RateLimit-Bucket") != "" || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "blocked") {
		t.Fatalf("blocked client: HTTP %d %s %v", resp.StatusCode, b, resp.Header)
	}
	st := h.srv.RateLimitStats()
	c := st.Clients["127.0.0.1"]
	if c.Bans != 1 || c.Invalid != 6 || c.Refused != 1 || !c.BannedUntil.After(time.Now()) || st.Invalid != 6 {
		t.Fatalf("client stats %+v (invalid %d)", c, st.Invalid)
	}
	// discordgo sees a RESTError 403 (it does not retry).
	_, err := restSession(t, h.base, token).GatewayBot()
	var re *discordgo.RESTError
	if !errors.As(err, &re) || re.Response.StatusCode != 403 {
		t.Fatalf("discordgo while blocked: %v", err)
	}
	// The block ends after BanDuration.
	poll(t, "the block to end", func() bool {
		resp, _ := rawREST(t, h, "GET", "/gateway/bot", token, "")
		return resp.StatusCode == 200
	})
}

func TestDisabledRateLimitsStillCount(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{RateLimits: RateLimits{Disabled: true}})
	g := h.srv.CreateGuild(0, "")
	for i := 0; i < 8; i++ {
		resp, b := rawREST(t, h, "POST", "/channels/"+idStr(g.Channels[0].ID)+"/messages", h.srv.Config().Token, `{"content":"x"}`)
		if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("HTTP %d %s %v", resp.StatusCode, b, resp.Header)
		}
	}
	st := h.srv.RateLimitStats()
	if bs, _ := st.Bucket(BucketCreateMessage, idStr(g.Channels[0].ID)); bs.Accepted != 8 || st.Global[BotIdentity].MaxInWindow != 8 {
		t.Fatalf("stats %+v %+v", bs, st.Global)
	}
}

func TestRateLimitControlAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	rawREST(t, h, "GET", "/users/@me", h.srv.Config().Token, "")
	var st RateLimitStats
	getJSON(t, h.base+"/_fake/ratelimits", &st)
	if st.Requests != 1 || st.Global[BotIdentity].Accepted != 1 || st.Limits.Global.Requests != 50 || st.Limits.Global.Per != time.Second ||
		st.Limits.Routes[BucketCreateMessage] != (Limit{5, 5 * time.Second}) || st.Limits.BanDuration != time.Hour {
		t.Fatalf("GET /_fake/ratelimits: %+v", st)
	}
	postJSON(t, h.base+"/_fake/ratelimits/reset", `{"global":{"requests":2,"per_ms":1000},"routes":{"users":{"requests":100,"per_ms":1000}}}`, 200, &st)
	if st.Requests != 0 || st.Limits.Global != (Limit{2, time.Second}) || st.Limits.Routes[BucketUsers].Requests != 100 {
		t.Fatalf("after reset: %+v", st)
	}
	for i, want := range []int{200, 200, 429} {
		if resp, _ := rawREST(t, h, "GET", "/users/@me", h.srv.Config().Token, ""); resp.StatusCode != want {
			t.Fatalf("request %d after the reset: HTTP %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

func parseUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
