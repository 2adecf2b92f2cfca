// Package restlimit keeps a cluster of gateway pods, all using one bot
// token, within Discord's REST rate limits (topics/rate-limits).
//
// Discord limits a token three ways: per route bucket (keyed by the route's
// major parameter: channel, guild, webhook), globally (50 requests/s, except
// interaction endpoints), and by invalid requests (10,000 answers of 401,
// 403 or 429 in 10 minutes ban the client's IP for an hour).
//
// The design, and why it needs no new service:
//
//   - Route buckets are the pod's own. Every route a moderation bot uses is
//     keyed by a channel, a guild or an interaction of one guild, and each
//     guild has exactly one owner pod, so only that pod spends the guild's
//     buckets. discordgo's per-session limiter learns them from the
//     X-RateLimit-* headers and waits them out (a move hands the guild over:
//     the new owner learns the bucket from its first answer, and a 429 in
//     between is waited out by retry_after, never dropped).
//   - The global limit is split. Each pod paces its globally limited
//     requests at Share(limit, pods): 80 % of the limit divided by the
//     pods in the map (the Raft-replicated map every pod follows, so they agree on the
//     count within the change stream's delay). A pod marked down keeps its
//     share until it is removed, so a pod wrongly marked down cannot push
//     the others over. A Limiter spaces its requests 1/share apart, so
//     the pods' sum stays within the limit in every window (invariants: TestSharesNeverSumAboveTheLimit,
//     TestALimiterNeverExceedsItsShareInAnyWindow). While a new pod's
//     registration reaches the others, the sum can exceed the limit by that
//     pod's share; Discord answers the excess with a global 429, which
//     discordgo waits out and retries.
//   - Interaction callbacks and webhook follow-ups with an interaction
//     token are not globally limited (as on Discord) and skip the bucket.
//
// Transport is the http.RoundTripper under the pod's discordgo session, so
// every REST call goes through it; it counts requests by route and status,
// 429s by scope, invalid requests, and the time spent waiting for the
// global bucket.
package restlimit

import (
	"context"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DiscordGlobalLimit is Discord's global limit per bot token (requests/s).
const DiscordGlobalLimit = 50

// Headroom is the part of the global limit no pod uses: the network between
// the pods and Discord shifts a request's arrival against the second it
// was sent in (measured: a 10 % headroom let 53 requests into one second
// under the race detector, TestGatewayPodsTogetherStayWithinTheGlobalLimit).
const Headroom = 0.2

// UnknownShare is a pod's share before it has read the map (requests/s):
// small, since it does not know how many pods share the token.
const UnknownShare = 1.0

// Share is one pod's part of the global limit when pods pods share the
// token (at least one): the limit less Headroom, divided by the pods, and
// rounded down to whole requests per second (a Limiter lets its share
// rounded up into a second, so fractions would add up past the limit).
// Below one request/s (more pods than the limit less its headroom) each pod
// sends one request per 1/share seconds.
func Share(limit float64, pods int) float64 {
	s := limit * (1 - Headroom) / float64(max(pods, 1))
	if s >= 1 {
		s = math.Floor(s)
	}
	return s
}

// Limiter spaces requests at least 1/share apart (an emission interval, no
// burst): in any one-second window it sends at most its share, rounded up,
// and the pods' requests arrive spread out instead of in bursts at the
// start of each second — a burst that the network delays unevenly can land
// in the next second at Discord and add to that second's count.
type Limiter struct {
	mu    sync.Mutex
	share float64
	every time.Duration // 1/share
	next  time.Time     // the earliest slot not booked yet
	now   func() time.Time
}

// NewLimiter returns a limiter at share requests/s.
func NewLimiter(share float64) *Limiter {
	l := &Limiter{now: time.Now}
	l.setLocked(share)
	return l
}

// SetShare changes the limiter's share (requests/s). Requests already
// booked keep their slots; the next one is spaced at the new share.
func (l *Limiter) SetShare(share float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setLocked(share)
}

// Share is the limiter's current share (requests/s).
func (l *Limiter) Share() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.share
}

func (l *Limiter) setLocked(share float64) {
	share = math.Max(share, 0.01)
	l.share = share
	l.every = time.Duration(float64(time.Second) / share)
}

// reserve books one request and returns when it may be sent.
func (l *Limiter) reserve() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	at := l.now()
	if l.next.After(at) {
		at = l.next
	}
	l.next = at.Add(l.every)
	return at
}

// cancel gives back a booked slot that was not used, if no later one was
// booked after it.
func (l *Limiter) cancel(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.next.Equal(at.Add(l.every)) {
		l.next = at
	}
}

// Wait blocks until one request may be sent, and returns how long it
// waited. A cancelled ctx gives the slot back.
func (l *Limiter) Wait(ctx context.Context) (time.Duration, error) {
	at := l.reserve()
	d := time.Until(at)
	if d <= 0 {
		return 0, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return d, nil
	case <-ctx.Done():
		l.cancel(at)
		return 0, ctx.Err()
	}
}

// Route is a request's route template (ids replaced by {id}, tokens by
// {token}), a bounded label for metrics, and whether Discord's global limit
// applies to it.
func Route(method, path string) (route string, global bool) {
	p := path
	if i := strings.Index(p, "/api/v"); i >= 0 {
		p = p[i+len("/api/v"):]
		if j := strings.IndexByte(p, '/'); j >= 0 {
			p = p[j:]
		} else {
			p = "/"
		}
	}
	parts := strings.Split(strings.Trim(p, "/"), "/")
	global = true
	for i, s := range parts {
		switch {
		case s == "":
		case isID(s):
			parts[i] = "{id}"
		case i > 0 && (parts[i-1] == "{id}" && (parts[0] == "interactions" || parts[0] == "webhooks")):
			parts[i] = "{token}"
		case i > 0 && parts[i-1] == "reactions":
			parts[i] = "{emoji}"
		}
	}
	// Interaction endpoints: the callback and the follow-ups through the
	// interaction's webhook token.
	if len(parts) > 0 && parts[0] == "interactions" {
		global = false
	}
	if len(parts) >= 3 && parts[0] == "webhooks" && parts[2] == "{token}" {
		global = false
	}
	return method + " /" + strings.Join(parts, "/"), global
}

func isID(s string) bool {
	if len(s) < 15 || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Metrics are the limiter's series, registered by NewMetrics.
type Metrics struct {
	Requests    *prometheus.CounterVec // by route and status
	RateLimited *prometheus.CounterVec // 429s by scope: global, user (a route bucket), shared
	Invalid     prometheus.Counter     // answers that count toward Discord's invalid-request limit
	Wait        prometheus.Histogram   // time waiting for the global bucket
	ShareGauge  prometheus.Gauge       // this pod's share of the global limit
}

// NewMetrics registers the limiter's series (modbot_gateway_rest_*) on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_rest_requests_total",
			Help: "Discord REST requests by route (ids replaced) and HTTP status."}, []string{"route", "status"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_rest_rate_limited_total",
			Help: "429 answers from Discord by scope (global, user: a route bucket, shared: a resource's bucket shared with others)."}, []string{"scope"}),
		Invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_rest_invalid_requests_total",
			Help: "Answers that count toward Discord's invalid-request limit (401, 403, 429 except scope shared): 10,000 in 10 minutes ban the IP for an hour."}),
		Wait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_gateway_rest_global_wait_seconds",
			Help: "Time a REST request waited for this pod's share of the global rate limit.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		ShareGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_gateway_rest_global_share",
			Help: "This pod's share of Discord's global rate limit (requests/s): the limit over the pods in the map."}),
	}
	reg.MustRegister(m.Requests, m.RateLimited, m.Invalid, m.Wait, m.ShareGauge)
	return m
}

// Transport paces and counts the requests of a Discord REST client.
type Transport struct {
	Base    http.RoundTripper // default http.DefaultTransport
	Global  *Limiter
	Metrics *Metrics // optional
}

// RoundTrip waits for the global bucket when the route is globally
// limited, sends the request, and counts its answer.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	route, global := Route(req.Method, req.URL.Path)
	if global && t.Global != nil {
		waited, err := t.Global.Wait(req.Context())
		if err != nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, err
		}
		if t.Metrics != nil {
			t.Metrics.Wait.Observe(waited.Seconds())
		}
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil || t.Metrics == nil {
		return resp, err
	}
	t.Metrics.Requests.WithLabelValues(route, statusLabel(resp.StatusCode)).Inc()
	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		scope := resp.Header.Get("X-RateLimit-Scope")
		if resp.Header.Get("X-RateLimit-Global") == "true" {
			scope = "global"
		}
		if scope == "" {
			scope = "user"
		}
		t.Metrics.RateLimited.WithLabelValues(scope).Inc()
		if scope != "shared" {
			t.Metrics.Invalid.Inc()
		}
	case http.StatusUnauthorized, http.StatusForbidden:
		t.Metrics.Invalid.Inc()
	}
	return resp, nil
}

func statusLabel(code int) string {
	if code >= 100 && code < 1000 {
		return string([]byte{byte('0' + code/100), byte('0' + code/10%10), byte('0' + code%10)})
	}
	return "other"
}
