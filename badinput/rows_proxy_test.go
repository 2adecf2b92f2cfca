package badinput

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// dmInteraction is a signed-webhook body for a slash command outside any
// guild: the pod that takes it answers without touching its store.
func dmInteraction(id uint64) []byte {
	return []byte(fmt.Sprintf(`{"id":"%d","application_id":"1","type":2,"token":"badinput-%d","version":1,"channel_id":"5","data":{"id":"1","name":"report","type":1},"user":{"id":"7","username":"u"}}`, id, id))
}

var nextInteraction atomic.Uint64

func newInteractionID() uint64 { return 1300000000000000100 + nextInteraction.Add(1) }

// webhook posts body to the proxy's webhook with the given signature
// headers (empty: not sent).
func (e *env) webhook(body []byte, sig, ts string, hdr map[string]string) answer {
	h := map[string]string{"X-Signature-Ed25519": sig, "X-Signature-Timestamp": ts}
	for k, v := range hdr {
		h[k] = v
	}
	return e.send(req{method: http.MethodPost, url: e.proxyURL + "/webhooks/discord", body: body, header: h, noAuth: true})
}

func unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// signedAt posts body signed by the fake Discord at t.
func (e *env) signedAt(body []byte, t time.Time) answer {
	ts := unix(t)
	return e.webhook(body, e.sys.Discord.Sign(ts, body), ts, nil)
}

// acceptedOnce sends a valid signed interaction through the proxy (the
// first of a replay) and checks the pod answered it.
func (e *env) acceptedOnce(body []byte, t time.Time) error {
	a := e.signedAt(body, t)
	if a.Status != http.StatusOK {
		return fmt.Errorf("the first, valid request answered %d %s", a.Status, a.Body)
	}
	e.validForwards.Add(1)
	return nil
}

func toProxy(method, path string, hdr map[string]string, noAuth bool) func(e *env) answer {
	return func(e *env) answer {
		return e.send(req{method: method, url: e.proxyURL, opaque: e.expand(path), header: hdr, noAuth: noAuth})
	}
}

func admin() map[string]string {
	return map[string]string{"Authorization": "Bearer " + token, "Accept": "application/json"}
}

func proxyRows(e *env) []row {
	r := func(input string, do func(e *env) answer, want int, mention ...string) row {
		return row{component: proxComp, input: input, do: do, want: want, mention: mention}
	}
	wh := "webhook: "
	other := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)) // not Discord's key
	var replayID, resignID uint64
	rows := []row{
		r(wh+"no signature headers", func(e *env) answer { return e.webhook(dmInteraction(newInteractionID()), "", "", nil) }, 401, "missing_signature"),
		r(wh+"signature but no timestamp", func(e *env) answer {
			return e.webhook(dmInteraction(newInteractionID()), strings.Repeat("ab", 64), "", nil)
		}, 401, "missing_timestamp"),
		r(wh+"signature that is not hex", func(e *env) answer {
			return e.webhook(dmInteraction(newInteractionID()), strings.Repeat("zz", 64), unix(time.Now()), nil)
		}, 401, "malformed_signature"),
		r(wh+"signature of the wrong length", func(e *env) answer {
			return e.webhook(dmInteraction(newInteractionID()), "abcd", unix(time.Now()), nil)
		}, 401, "malformed_signature"),
		r(wh+"timestamp `abc`", func(e *env) answer {
			return e.webhook(dmInteraction(newInteractionID()), strings.Repeat("ab", 64), "abc", nil)
		}, 401, "malformed_timestamp"),
		r(wh+"timestamp `-1`", func(e *env) answer {
			return e.webhook(dmInteraction(newInteractionID()), strings.Repeat("ab", 64), "-1", nil)
		}, 401, "malformed_timestamp"),
		r(wh+"signed with another key", func(e *env) answer {
			body, ts := dmInteraction(newInteractionID()), unix(time.Now())
			sig := hex.EncodeToString(ed25519.Sign(other, append([]byte(ts), body...)))
			return e.webhook(body, sig, ts, nil)
		}, 401, "bad_signature"),
		r(wh+"body changed after signing", func(e *env) answer {
			body, ts := dmInteraction(newInteractionID()), unix(time.Now())
			sig := e.sys.Discord.Sign(ts, body)
			return e.webhook([]byte(strings.Replace(string(body), `"type":2`, `"type":3`, 1)), sig, ts, nil)
		}, 401, "bad_signature"),
		r(wh+"timestamp signed over again (a valid signature of another timestamp)", func(e *env) answer {
			body, now := dmInteraction(newInteractionID()), time.Now()
			return e.webhook(body, e.sys.Discord.Sign(unix(now.Add(-time.Minute)), body), unix(now), nil)
		}, 401, "bad_signature"),
		r(wh+"correctly signed, timestamp 1 h old", func(e *env) answer {
			return e.signedAt(dmInteraction(newInteractionID()), time.Now().Add(-time.Hour))
		}, 401, "outside the", "replay"),
		r(wh+"correctly signed, timestamp of 1970", func(e *env) answer {
			return e.signedAt(dmInteraction(newInteractionID()), time.Unix(1, 0))
		}, 401, "outside the"),
		r(wh+"correctly signed, timestamp 1 h in the future", func(e *env) answer {
			return e.signedAt(dmInteraction(newInteractionID()), time.Now().Add(time.Hour))
		}, 401, "in the future"),
		{component: proxComp, input: wh + "replay: the same signed request a second time", want: 401, mention: []string{"already accepted", "replay"},
			prepare: func(e *env) error {
				replayID = newInteractionID()
				return e.acceptedOnce(dmInteraction(replayID), time.Now())
			},
			do:   func(e *env) answer { return e.signedAt(dmInteraction(replayID), time.Now()) },
			note: "(the first was forwarded; the replay was not)"},
		{component: proxComp, input: wh + "replay: the same interaction id signed again at a later timestamp", want: 401, mention: []string{"already accepted"},
			prepare: func(e *env) error {
				resignID = newInteractionID()
				return e.acceptedOnce(dmInteraction(resignID), time.Now().Add(-time.Minute))
			},
			do:   func(e *env) answer { return e.signedAt(dmInteraction(resignID), time.Now()) },
			note: "(the first was forwarded; the replay was not)"},
		r(wh+"signed body that is not JSON", func(e *env) answer { return e.signedAt([]byte(`{"id":`), time.Now()) }, 400, "not JSON"),
		r(wh+"signed empty body", func(e *env) answer { return e.signedAt([]byte{}, time.Now()) }, 400, "not JSON"),
		r(wh+"signed, wrong type `\"type\":\"2\"`", func(e *env) answer {
			return e.signedAt([]byte(fmt.Sprintf(`{"id":"%d","type":"2"}`, newInteractionID())), time.Now())
		}, 400, "not JSON"),
		r(wh+"signed, guild_id `\"abc\"`", func(e *env) answer {
			return e.signedAt([]byte(fmt.Sprintf(`{"id":"%d","type":2,"guild_id":"abc"}`, newInteractionID())), time.Now())
		}, 400, "not a snowflake"),
		r(wh+"signed, guild_id `\"0\"`", func(e *env) answer {
			return e.signedAt([]byte(fmt.Sprintf(`{"id":"%d","type":2,"guild_id":"0"}`, newInteractionID())), time.Now())
		}, 400, "not a snowflake"),
		r(wh+"signed, guild_id 2^64", func(e *env) answer {
			return e.signedAt([]byte(fmt.Sprintf(`{"id":"%d","type":2,"guild_id":"%s"}`, newInteractionID(), twoTo64)), time.Now())
		}, 400, "not a snowflake"),
		r(wh+"body over the 1 MiB limit (Content-Length)", func(e *env) answer {
			body := []byte(`{"id":"1","type":2,"x":"` + strings.Repeat("a", 1<<20) + `"}`)
			return e.signedAt(body, time.Now())
		}, 413, "exceeds the 1048576 byte limit"),
		r(wh+"body over the 1 MiB limit (chunked, no length)", func(e *env) answer {
			body := []byte(`{"id":"1","type":2,"x":"` + strings.Repeat("a", 1<<20) + `"}`)
			ts := unix(time.Now())
			return e.sendChunked(e.proxyURL+"/webhooks/discord", body, map[string]string{
				"X-Signature-Ed25519": e.sys.Discord.Sign(ts, body), "X-Signature-Timestamp": ts})
		}, 413, "exceeds the 1048576 byte limit"),
		r(wh+"`GET /webhooks/discord`", toProxy(http.MethodGet, "/webhooks/discord", nil, true), 405, "method GET not allowed"),

		// Dashboards.
		r("`GET /guild/G0/dashboard` without a token", toProxy(http.MethodGet, "/guild/{G0}/dashboard", map[string]string{"Accept": "application/json"}, true), 401, "admin token"),
		r("`GET /guild/G0/dashboard` with a wrong token", toProxy(http.MethodGet, "/guild/{G0}/dashboard", map[string]string{"Authorization": "Bearer nope"}, false), 401, "wrong credentials"),
		r("`GET /guild/G0/dashboard` with the token but no `Bearer`", toProxy(http.MethodGet, "/guild/{G0}/dashboard", map[string]string{"Authorization": token}, false), 401, "wrong credentials"),
		r("`GET /guild/GX/dashboard` anonymous (GX never placed: the same 401)", toProxy(http.MethodGet, "/guild/{GX}/dashboard", nil, true), 401, "admin token"),
		r("`GET /guild/abc/dashboard`", toProxy(http.MethodGet, "/guild/abc/dashboard", admin(), false), 400, "not a snowflake"),
		r("`GET /guild/0/dashboard`", toProxy(http.MethodGet, "/guild/0/dashboard", admin(), false), 400, "not a snowflake"),
		r("`GET /guild/-1/dashboard`", toProxy(http.MethodGet, "/guild/-1/dashboard", admin(), false), 400, "not a snowflake"),
		r("`GET /guild/18446744073709551616/dashboard` (2^64)", toProxy(http.MethodGet, "/guild/"+twoTo64+"/dashboard", admin(), false), 400, "not a snowflake"),
		r("`GET /guild/GX/dashboard` (never placed)", toProxy(http.MethodGet, "/guild/{GX}/dashboard", admin(), false), 404, "not placed"),
		r("`GET /guild/G0/../../internal/status`", toProxy(http.MethodGet, "/guild/{G0}/../../internal/status", admin(), false), 400, "dot-segment"),
		r("`GET /guild/G0/%2e%2e/%2e%2e/internal/status`", toProxy(http.MethodGet, "/guild/{G0}/%2e%2e/%2e%2e/internal/status", admin(), false), 400, "dot-segment"),
		r("`GET /guild/G0%2f..%2f..%2finternal%2fstatus`", toProxy(http.MethodGet, "/guild/{G0}%2f..%2f..%2finternal%2fstatus", admin(), false), 400, "encoded slash"),
		{component: proxComp, input: "`GET /guild/G0/%zz` (bad percent-encoding)", do: toProxy(http.MethodGet, "/guild/{G0}/%zz", admin(), false),
			// net/http refuses the request line before any handler runs.
			check: func(e *env, a answer) error {
				if a.Status != http.StatusBadRequest {
					return fmt.Errorf("status %d, want 400: %s", a.Status, a.Body)
				}
				return nil
			},
			text: func(e *env, a answer) string {
				return fmt.Sprintf("%d `%s` (plain text from net/http: the request line is refused before routing)", a.Status, strings.TrimSpace(string(a.Body)))
			}},
		r("`GET /internal/status` (a pod's route)", toProxy(http.MethodGet, "/internal/status", admin(), false), 404, "no route"),
	}
	return rows
}

// sendChunked posts body without a Content-Length.
func (e *env) sendChunked(url string, body []byte, hdr map[string]string) answer {
	pr := &onlyReader{b: body}
	hr, err := http.NewRequestWithContext(e.ctx, http.MethodPost, url, pr)
	if err != nil {
		return answer{Err: err}
	}
	hr.ContentLength = -1
	for k, v := range hdr {
		hr.Header.Set(k, v)
	}
	resp, err := e.http.Do(hr)
	if err != nil {
		return answer{Err: err}
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return answer{Status: resp.StatusCode, Header: resp.Header, Body: []byte(b.String())}
}

// onlyReader hides the length of its bytes from net/http.
type onlyReader struct {
	b []byte
}

func (r *onlyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
