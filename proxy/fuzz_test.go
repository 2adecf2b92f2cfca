package proxy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
)

// Run with
//
//	go test -run '^$' -fuzz '^FuzzWebhook$' -fuzztime 10s ./proxy/

// How FuzzWebhook builds the signature headers from its inputs.
const (
	sigRaw       = iota // both headers exactly as the fuzzer gives them
	sigFresh            // signed by the test key at the current time
	sigAtTS             // signed by the test key with the fuzzer's timestamp string
	sigAtOffset         // signed by the test key at now + offset seconds
	sigCorrupted        // signed now, then the signature XORed with the fuzzer's bytes
	sigUpperHex         // signed now, the signature in upper-case hex
	sigOtherBody        // signed now over the body with one more byte
	sigModes
)

// FuzzWebhook fuzzes POST /webhooks/discord: the signature header, the
// timestamp header and the body. The oracle decides independently of the
// proxy's code what is validly signed — the signature header is hex of the
// test key's (deterministic, and with crypto/ed25519 unique) Ed25519
// signature of timestamp+body — and what is fresh — the timestamp is Unix
// seconds in decimal within ±WebhookMaxSkew of now. Properties:
//
//   - anything not validly signed, or not fresh, is answered 401 with a
//     JSON reason and never reaches the backend (an httptest pod that counts
//     the requests it gets);
//   - a validly signed, fresh request is either forwarded exactly once with
//     its body unchanged and answered 200 with the pod's answer, or answered
//     by the proxy itself: 200 {"type":1} for a PING, or a 4xx with a JSON
//     error (not JSON, a bad guild id, a replay) and not forwarded; never a
//     5xx, never a panic.
func FuzzWebhook(f *testing.F) {
	const skew = 5 * time.Minute
	e := newEnv(f, func(c *Config) { c.WebhookMaxSkew = skew })
	b := newBackend(f, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.WaitReady(ctx); err != nil {
		f.Fatal(err)
	}

	now := strconv.FormatInt(time.Now().Unix(), 10)
	realSig := hex.EncodeToString(ed25519.Sign(e.priv, []byte(now+cmdBody)))
	ping := `{"id":"2","application_id":"2","type":1,"token":"tok","version":1}`
	component := `{"id":"3","application_id":"2","type":3,"token":"tok","guild_id":"42","data":{"custom_id":"report:ack:9","component_type":2},"member":{"user":{"id":"7"}}}`
	dm := `{"id":"4","application_id":"2","type":2,"token":"tok","user":{"id":"7"},"data":{"name":"report"}}`
	for mode := uint8(0); mode < sigModes; mode++ {
		for _, body := range []string{cmdBody, ping, component, dm} {
			f.Add(realSig, now, []byte(body), mode, int16(0))
		}
	}
	f.Add(realSig, now, []byte(cmdBody), uint8(sigAtOffset), int16(-299))
	f.Add(realSig, now, []byte(cmdBody), uint8(sigAtOffset), int16(301))
	f.Add(realSig, "1420070400", []byte(cmdBody), uint8(sigAtTS), int16(0)) // signed in 2015
	f.Add(realSig, now+".5", []byte(cmdBody), uint8(sigAtTS), int16(0))
	f.Add(realSig, "+"+now, []byte(cmdBody), uint8(sigAtTS), int16(0))
	f.Add(strings.Repeat("0", 128), now, []byte(cmdBody), uint8(sigRaw), int16(0))
	f.Add("", now, []byte(cmdBody), uint8(sigRaw), int16(0))
	f.Add(realSig, "", []byte(cmdBody), uint8(sigRaw), int16(0))
	f.Add("\x01", now, []byte(ping), uint8(sigCorrupted), int16(0))
	f.Add("", now, []byte(`{"id":"5","type":2,"guild_id":"0"}`), uint8(sigFresh), int16(0))
	f.Add("", now, []byte(`{"id":"6","type":2,"guild_id":42}`), uint8(sigFresh), int16(0))
	f.Add("", now, []byte(`not json`), uint8(sigFresh), int16(0))
	f.Add("", now, []byte(``), uint8(sigFresh), int16(0))

	sign := func(ts string, body []byte) string {
		return hex.EncodeToString(ed25519.Sign(e.priv, append([]byte(ts), body...)))
	}
	f.Fuzz(func(t *testing.T, sigHdr, tsHdr string, body []byte, mode uint8, offset int16) {
		start := time.Now()
		ts, sig := tsHdr, sigHdr
		switch mode % sigModes {
		case sigFresh:
			ts = strconv.FormatInt(start.Unix(), 10)
			sig = sign(ts, body)
		case sigAtTS:
			sig = sign(ts, body)
		case sigAtOffset:
			ts = strconv.FormatInt(start.Unix()+int64(offset), 10)
			sig = sign(ts, body)
		case sigCorrupted:
			ts = strconv.FormatInt(start.Unix(), 10)
			raw := ed25519.Sign(e.priv, append([]byte(ts), body...))
			flipped := false
			for i := range raw {
				if len(sigHdr) > 0 && sigHdr[i%len(sigHdr)] != 0 {
					raw[i] ^= sigHdr[i%len(sigHdr)]
					flipped = true
				}
			}
			if !flipped {
				raw[0] ^= 1
			}
			sig = hex.EncodeToString(raw)
		case sigUpperHex:
			ts = strconv.FormatInt(start.Unix(), 10)
			sig = strings.ToUpper(sign(ts, body))
		case sigOtherBody:
			ts = strconv.FormatInt(start.Unix(), 10)
			sig = sign(ts, append(append([]byte(nil), body...), 'x'))
		}

		// The oracle.
		validSig := false
		if raw, err := hex.DecodeString(sig); err == nil {
			validSig = bytes.Equal(raw, ed25519.Sign(e.priv, append([]byte(ts), body...)))
		}
		fresh, borderline := false, false
		if ts != "" && len(ts) <= 12 && strings.Trim(ts, "0123456789") == "" {
			sec, _ := strconv.ParseInt(ts, 10, 64)
			d := start.Sub(time.Unix(sec, 0)).Abs()
			fresh = d <= skew
			borderline = (d - skew).Abs() <= 3*time.Second // the clock moves while we test
		}

		req := httptest.NewRequest(http.MethodPost, "/webhooks/discord", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if sig != "" {
			req.Header.Set(HeaderSignature, sig)
		}
		if ts != "" {
			req.Header.Set(HeaderTimestamp, ts)
		}
		before := b.count.Load()
		rec := httptest.NewRecorder()
		e.p.ServeHTTP(rec, req)
		forwarded := b.count.Load() - before
		status, answer := rec.Code, rec.Body.Bytes()

		if status >= 500 {
			t.Fatalf("status %d (%s) for sig %q ts %q body %q", status, answer, sig, ts, body)
		}
		if !validSig || !fresh {
			if borderline && validSig {
				return // either answer is right a second from the window's edge
			}
			var refusal webhookRefusal
			if status != http.StatusUnauthorized || json.Unmarshal(answer, &refusal) != nil || refusal.Reason == "" {
				t.Fatalf("not validly signed (valid signature %v, fresh %v): status %d %q, want 401 with a reason; sig %q ts %q body %q",
					validSig, fresh, status, answer, sig, ts, body)
			}
			if forwarded != 0 {
				t.Fatalf("not validly signed (valid signature %v, fresh %v) but forwarded %d times (reason %s)", validSig, fresh, forwarded, refusal.Reason)
			}
			return
		}
		switch {
		case forwarded > 1:
			t.Fatalf("forwarded %d times", forwarded)
		case forwarded == 1:
			_, got := b.lastRequest()
			if !bytes.Equal(got, body) {
				t.Fatalf("the pod got %q, Discord sent %q", got, body)
			}
			if status != http.StatusOK || !strings.Contains(string(answer), "from gateway-0") {
				t.Fatalf("forwarded, then answered %d %q; want the pod's answer", status, answer)
			}
		case status == http.StatusOK:
			var in struct {
				Type int `json:"type"`
			}
			if json.Unmarshal(body, &in) != nil || in.Type != interactionPing || strings.TrimSpace(string(answer)) != `{"type":1}` {
				t.Fatalf("answered 200 %q without forwarding a non-PING %q", answer, body)
			}
		case status >= 400 && status < 500:
			var eb struct {
				Error string `json:"error"`
			}
			if json.Unmarshal(answer, &eb) != nil || eb.Error == "" {
				t.Fatalf("status %d with no JSON error: %q", status, answer)
			}
		default:
			t.Fatalf("validly signed %q: status %d %q, forwarded %d", body, status, answer, forwarded)
		}
	})
}

// TestWebhookFarFutureTimestampIsRefused is the regression test of what
// FuzzWebhook found: a validly signed X-Signature-Timestamp more than ~292
// years ahead (e.g. "11020000000", the year 2319, or the largest accepted
// "999999999999") overflowed the time.Duration of now − timestamp, which
// saturated to its minimum; negated it stayed negative, so the freshness
// check passed and the interaction was forwarded — and its replay-cache
// entry, kept until the timestamp's window ends, never expired. It must be
// refused as stale like any timestamp outside the window.
func TestWebhookFarFutureTimestampIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	for i, ts := range []string{"11020000000", "999999999999", "9300000000"} {
		res := do(t, e.signedAt(t, commandWithID(5000+i), ts))
		wantRefused(t, res, "stale_timestamp")
	}
	if n := b.count.Load(); n != 0 {
		t.Fatalf("forwarded %d far-future interactions, want none", n)
	}
	now := time.Now()
	for _, tc := range []struct {
		ts    time.Time
		fresh bool
	}{
		{now, true},
		{now.Add(5 * time.Minute), true},
		{now.Add(-5 * time.Minute), true},
		{now.Add(5*time.Minute + time.Second), false},
		{now.Add(-5*time.Minute - time.Second), false},
		{time.Unix(999999999999, 0), false},
		{time.Unix(0, 0), false},
	} {
		if got := freshness(tc.ts, now, 5*time.Minute) == ""; got != tc.fresh {
			t.Errorf("freshness of %s at %s: fresh %v, want %v", tc.ts, now, got, tc.fresh)
		}
	}
}
