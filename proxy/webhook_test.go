package proxy

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
)

// commandWithID is cmdBody as a distinct interaction (its own id).
func commandWithID(id int) string {
	return strings.Replace(cmdBody, `"id":"1"`, `"id":"`+strconv.Itoa(id)+`"`, 1)
}

// wantRefused checks a 401 with a JSON error naming reason.
func wantRefused(t *testing.T, res result, reason string) {
	t.Helper()
	if res.status != http.StatusUnauthorized {
		t.Fatalf("status %d (%s), want 401", res.status, res.body)
	}
	var body webhookRefusal
	if err := json.Unmarshal([]byte(res.body), &body); err != nil || body.Error == "" {
		t.Fatalf("body %q is not a JSON error", res.body)
	}
	if body.Reason != reason {
		t.Fatalf("reason %q (%s), want %q", body.Reason, body.Error, reason)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
}

// TestWebhookOutsideTheFreshnessWindowIsRefused: a correctly signed
// interaction whose X-Signature-Timestamp is outside ±WebhookMaxSkew (or not
// Unix seconds at all) is answered 401 and never reaches a pod, however
// often it is sent; inside the window it is forwarded. (The review's
// reproducer: a request signed in 2015 was forwarded three times.)
func TestWebhookOutsideTheFreshnessWindowIsRefused(t *testing.T) {
	const skew = time.Minute
	e := newEnv(t, func(c *Config) { c.WebhookMaxSkew = skew })
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	at := func(d time.Duration) string { return strconv.FormatInt(time.Now().Add(d).Unix(), 10) }

	t.Run("signed in 2015, sent three times", func(t *testing.T) {
		body := `{"id":"1","application_id":"2","type":2,"token":"tok","guild_id":"42","data":{"name":"setup"}}`
		before := b.count.Load()
		for i := 0; i < 3; i++ {
			wantRefused(t, do(t, e.signedAt(t, body, "1420070400")), "stale_timestamp")
		}
		if n := b.count.Load() - before; n != 0 {
			t.Fatalf("forwarded %d times, want never", n)
		}
	})

	tests := []struct {
		name   string
		ts     string
		ping   bool
		reason string // "" = accepted
	}{
		{name: "just inside, past", ts: at(-skew + 5*time.Second)},
		{name: "just inside, future", ts: at(skew - 5*time.Second)},
		{name: "just outside, past", ts: at(-skew - 5*time.Second), reason: "stale_timestamp"},
		{name: "just outside, future", ts: at(skew + 5*time.Second), reason: "stale_timestamp"},
		{name: "a year ahead", ts: at(365 * 24 * time.Hour), reason: "stale_timestamp"},
		{name: "zero", ts: "0", reason: "stale_timestamp"},
		{name: "stale PING", ts: at(-skew - 5*time.Second), ping: true, reason: "stale_timestamp"},
		{name: "fresh PING", ts: at(0), ping: true},
		{name: "letters", ts: "yesterday", reason: "malformed_timestamp"},
		{name: "fraction", ts: at(0) + ".5", reason: "malformed_timestamp"},
		{name: "exponent", ts: "1.7e9", reason: "malformed_timestamp"},
		{name: "plus sign", ts: "+" + at(0), reason: "malformed_timestamp"},
		{name: "negative", ts: "-" + at(0), reason: "malformed_timestamp"},
		{name: "inner space", ts: at(0)[:5] + " " + at(0)[5:], reason: "malformed_timestamp"},
		{name: "milliseconds", ts: strconv.FormatInt(time.Now().UnixMilli(), 10), reason: "malformed_timestamp"},
		{name: "absurdly long", ts: strings.Repeat("9", 40), reason: "malformed_timestamp"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := commandWithID(1000 + i)
			if tc.ping {
				body = `{"id":"` + strconv.Itoa(1000+i) + `","type":1}`
			}
			before := b.count.Load()
			res := do(t, e.signedAt(t, body, tc.ts)) // a valid signature over this exact timestamp
			forwarded := b.count.Load() - before
			if tc.reason != "" {
				wantRefused(t, res, tc.reason)
				if forwarded != 0 {
					t.Fatalf("refused but forwarded %d times", forwarded)
				}
				return
			}
			if res.status != http.StatusOK {
				t.Fatalf("status %d (%s), want 200 inside the window", res.status, res.body)
			}
			switch {
			case tc.ping && (strings.TrimSpace(res.body) != `{"type":1}` || forwarded != 0):
				t.Fatalf("PING got %q and was forwarded %d times, want {\"type\":1} from the proxy itself", res.body, forwarded)
			case !tc.ping && forwarded != 1:
				t.Fatalf("forwarded %d times, want once", forwarded)
			}
		})
	}
	metrics := get(t, e.url+"/metrics").body
	for _, want := range []string{
		`modbot_proxy_signature_failures_total{reason="stale_timestamp"} 8`,
		`modbot_proxy_signature_failures_total{reason="malformed_timestamp"} 8`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestWebhookDefaultWindowIsFiveMinutes: without WebhookMaxSkew the window
// is ±5 minutes.
func TestWebhookDefaultWindowIsFiveMinutes(t *testing.T) {
	e := newEnv(t, nil)
	if e.p.cfg.WebhookMaxSkew != 5*time.Minute {
		t.Fatalf("default window %s, want 5m", e.p.cfg.WebhookMaxSkew)
	}
	ping := `{"id":"1","type":1}`
	if res := do(t, e.signedAt(t, ping, strconv.FormatInt(time.Now().Add(-4*time.Minute).Unix(), 10))); res.status != 200 {
		t.Fatalf("4 minutes old: %d %s, want 200", res.status, res.body)
	}
	wantRefused(t, do(t, e.signedAt(t, ping, strconv.FormatInt(time.Now().Add(-6*time.Minute).Unix(), 10))), "stale_timestamp")
}

// TestWebhookReplayIsRefused: the same signed interaction, replayed inside
// the window, is forwarded to a pod at most once by this replica, also when
// the copies race; a PING (never forwarded) is answered every time.
func TestWebhookReplayIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)

	t.Run("sequential", func(t *testing.T) {
		first := e.signed(t, commandWithID(1))
		ts, sig := first.Header.Get(HeaderTimestamp), first.Header.Get(HeaderSignature)
		if res := do(t, first); res.status != 200 || b.count.Load() != 1 {
			t.Fatalf("first delivery: %d %s, forwarded %d, want 200 forwarded once", res.status, res.body, b.count.Load())
		}
		for i := 0; i < 3; i++ {
			again := e.signedAt(t, commandWithID(1), ts)
			if again.Header.Get(HeaderSignature) != sig {
				t.Fatal("test bug: the copy is not the same signed request")
			}
			wantRefused(t, do(t, again), "replayed")
		}
		// The signature in upper-case hex is the same signature.
		upper := e.signedAt(t, commandWithID(1), ts)
		upper.Header.Set(HeaderSignature, strings.ToUpper(sig))
		wantRefused(t, do(t, upper), "replayed")
		if n := b.count.Load(); n != 1 {
			t.Fatalf("forwarded %d times, want once", n)
		}
	})

	t.Run("the same interaction id signed at another timestamp", func(t *testing.T) {
		before := b.count.Load()
		first := e.signed(t, commandWithID(5))
		if res := do(t, first); res.status != 200 {
			t.Fatalf("first delivery: %d %s", res.status, res.body)
		}
		ts, _ := strconv.ParseInt(first.Header.Get(HeaderTimestamp), 10, 64)
		again := e.signedAt(t, commandWithID(5), strconv.FormatInt(ts-30, 10))
		if again.Header.Get(HeaderSignature) == first.Header.Get(HeaderSignature) {
			t.Fatal("test bug: the copy has the same signature")
		}
		wantRefused(t, do(t, again), "replayed")
		if n := b.count.Load() - before; n != 1 {
			t.Fatalf("forwarded %d times, want once", n)
		}
	})

	t.Run("concurrent copies", func(t *testing.T) {
		before := b.count.Load()
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		body := commandWithID(2)
		sig := hex.EncodeToString(ed25519.Sign(e.priv, []byte(ts+body)))
		const copies = 16
		codes := make(chan int, copies)
		var wg sync.WaitGroup
		for i := 0; i < copies; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := http.NewRequest(http.MethodPost, e.url+"/webhooks/discord", strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				req.Header.Set(HeaderTimestamp, ts)
				req.Header.Set(HeaderSignature, sig)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			}()
		}
		wg.Wait()
		close(codes)
		ok, refused := 0, 0
		for c := range codes {
			switch c {
			case 200:
				ok++
			case 401:
				refused++
			default:
				t.Errorf("unexpected status %d", c)
			}
		}
		if ok != 1 || refused != copies-1 {
			t.Fatalf("%d accepted, %d refused, want 1 and %d", ok, refused, copies-1)
		}
		if n := b.count.Load() - before; n != 1 {
			t.Fatalf("forwarded %d times, want once", n)
		}
	})

	t.Run("PING answered every time", func(t *testing.T) {
		ping := e.signed(t, `{"id":"3","type":1}`)
		ts, sig := ping.Header.Get(HeaderTimestamp), ping.Header.Get(HeaderSignature)
		for i := 0; i < 3; i++ {
			req := e.signedAt(t, `{"id":"3","type":1}`, ts)
			req.Header.Set(HeaderSignature, sig)
			if res := do(t, req); res.status != 200 || strings.TrimSpace(res.body) != `{"type":1}` {
				t.Fatalf("PING %d: %d %q, want {\"type\":1}", i+1, res.status, res.body)
			}
		}
	})
}

// TestReplayCacheMemoryIsBounded: however many distinct interactions arrive
// within one window, the cache holds at most ReplayCacheSize entries; when
// full it evicts the entry whose window ends first, counts it, and still
// refuses replays of the entries it kept.
func TestReplayCacheMemoryIsBounded(t *testing.T) {
	t.Run("cache", func(t *testing.T) {
		const max = 64
		c := newReplayCache(max)
		now := time.Unix(1_700_000_000, 0)
		key := func(i int) replayKey { return keyOf("", []byte("signature-"+strconv.Itoa(i))) }
		const n = 10_000
		for i := 0; i < n; i++ {
			// Later i, later expiry: the survivors are the last max keys.
			if !c.firstUse(key(i), now.Add(time.Minute+time.Duration(i)*time.Millisecond), now) {
				t.Fatalf("key %d reported as a replay on first use", i)
			}
			if len(c.keys) > max || len(c.byExpiry) > max {
				t.Fatalf("after %d inserts: %d keys, %d heap entries, want ≤ %d", i+1, len(c.keys), len(c.byExpiry), max)
			}
		}
		entries, evictions := c.stats()
		if entries != max || evictions != n-max {
			t.Fatalf("entries %d, evictions %d, want %d and %d", entries, evictions, max, n-max)
		}
		if cap(c.byExpiry) > 2*max {
			t.Fatalf("heap capacity %d grew past twice the bound %d", cap(c.byExpiry), max)
		}
		for i := n - max; i < n; i++ {
			if c.firstUse(key(i), now.Add(time.Hour), now) {
				t.Fatalf("kept key %d not refused as a replay", i)
			}
		}
		if !c.firstUse(key(0), now.Add(time.Hour), now) {
			t.Fatal("the evicted (soonest-expiring) key should be the one forgotten")
		}
	})

	t.Run("through the proxy", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.ReplayCacheSize = 3 })
		b := newBackend(t, "gateway-0", nil)
		e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
		e.m.place(42, "gateway-0", fsm.GuildActive)
		var last *http.Request
		start := time.Now().Add(-time.Minute)
		for i := 0; i < 10; i++ {
			// Increasing timestamps, so the windows end in this order.
			ts := strconv.FormatInt(start.Add(time.Duration(i)*time.Second).Unix(), 10)
			req := e.signedAt(t, commandWithID(i+1), ts)
			last = e.signedAt(t, commandWithID(i+1), ts)
			if res := do(t, req); res.status != 200 {
				t.Fatalf("interaction %d: %d %s", i+1, res.status, res.body)
			}
		}
		if n := b.count.Load(); n != 10 {
			t.Fatalf("forwarded %d, want all 10 distinct interactions", n)
		}
		wantRefused(t, do(t, last), "replayed")
		if entries, _ := e.p.replay.stats(); entries != 3 {
			t.Fatalf("cache holds %d entries, want the bound 3", entries)
		}
		metrics := get(t, e.url+"/metrics").body
		for _, want := range []string{"modbot_proxy_replay_cache_entries 3", "modbot_proxy_replay_cache_evictions_total 7"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

// TestReplayCacheForgetsEntriesOnceTheirWindowEnds: an entry is kept until
// its timestamp leaves the window (then the window itself refuses the
// replay), not longer, so a quiet period empties the cache.
func TestReplayCacheForgetsEntriesOnceTheirWindowEnds(t *testing.T) {
	c := newReplayCache(100)
	now := time.Unix(1_700_000_000, 0)
	a, b := keyOf("", []byte("a")), keyOf("", []byte("b"))
	c.firstUse(a, now.Add(time.Minute), now)
	c.firstUse(b, now.Add(2*time.Minute), now)
	if c.firstUse(a, now.Add(time.Minute), now.Add(time.Minute)) {
		t.Fatal("a replay at the last instant of the window was accepted")
	}
	c.firstUse(keyOf("", []byte("probe")), now.Add(3*time.Minute), now.Add(time.Minute+time.Second))
	if entries, evictions := c.stats(); entries != 2 || evictions != 0 {
		t.Fatalf("after a's window: %d entries, %d evictions, want 2 (b, probe) and 0", entries, evictions)
	}
	if _, ok := c.keys[a]; ok {
		t.Fatal("a is still held after its window ended")
	}
	c.firstUse(keyOf("", []byte("late")), now.Add(time.Hour), now.Add(10*time.Minute))
	if entries, _ := c.stats(); entries != 1 {
		t.Fatalf("after every window ended: %d entries, want only the new one", entries)
	}
}

// TestParseTimestamp pins what X-Signature-Timestamp may look like.
func TestParseTimestamp(t *testing.T) {
	for ts, want := range map[string]bool{
		"1700000000": true, "0": true, "": false, "17e8": false, "-1": false, "+1": false,
		"1700000000 ": false, "0x10": false, "1700000000.0": false, "999999999999": true, "1000000000000": false,
	} {
		if _, ok := parseTimestamp(ts); ok != want {
			t.Errorf("parseTimestamp(%q) ok=%v, want %v", ts, ok, want)
		}
	}
}
