package fakediscord

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Rate limits as Discord documents them
// (https://discord.com/developers/docs/topics/rate-limits):
//
//   - per-route buckets, keyed by the route's bucket and its top-level
//     resource (channel, guild, webhook id + token; here also the interaction
//     id + token for callbacks), described by X-RateLimit-* headers on every
//     answer of the route;
//   - a global limit per bot token (50 requests per second), which the
//     interaction endpoints (callbacks and the interaction webhooks) are not
//     bound to;
//   - 429 with {"message", "retry_after", "global", "code"}, Retry-After and
//     X-RateLimit-Scope (user, global);
//   - the invalid-request limit: a client (an IP) whose 401, 403 and 429
//     answers reach 10,000 in 10 minutes is blocked for a while (Cloudflare).
//
// The fake is at least as strict as Discord where Discord leaves room: the
// global limit is a sliding window (no window ever holds more than the limit),
// route buckets are fixed windows that start at a bucket's first request, as
// their Reset headers describe.

// Limit is Requests per Per.
type Limit struct {
	Requests int
	Per      time.Duration
}

func (l Limit) set() bool { return l.Requests > 0 && l.Per > 0 }

// MarshalJSON writes {"requests": n, "per_ms": ms}.
func (l Limit) MarshalJSON() ([]byte, error) {
	return json.Marshal(limitJSON{Requests: l.Requests, PerMS: float64(l.Per) / float64(time.Millisecond)})
}

// UnmarshalJSON reads {"requests": n, "per_ms": ms}.
func (l *Limit) UnmarshalJSON(b []byte) error {
	var j limitJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("limit: %w", err)
	}
	l.Requests, l.Per = j.Requests, time.Duration(j.PerMS*float64(time.Millisecond))
	return nil
}

type limitJSON struct {
	Requests int     `json:"requests"`
	PerMS    float64 `json:"per_ms"`
}

// RateLimits configures the REST limits. Zero fields take Discord's values.
type RateLimits struct {
	// Disabled turns enforcement off: no X-RateLimit headers, no 429s, no
	// block. Requests are still counted (RateLimitStats).
	Disabled bool `json:"disabled"`
	// Global is the limit per bot token over all routes except the
	// interaction endpoints. Default 50 per second. Its Per is also the
	// window of GlobalStats.MaxInWindow.
	Global Limit `json:"global"`
	// Routes overrides the limit of route buckets by name (see RouteBuckets).
	Routes map[string]Limit `json:"routes,omitempty"`
	// Invalid is how many 401/403/429 answers a client (IP) may get in a
	// window before it is blocked. Default 10,000 per 10 minutes.
	Invalid Limit `json:"invalid"`
	// BanDuration is how long a client stays blocked. Default 1 hour.
	BanDuration time.Duration `json:"-"`
	// BanStatus is the status a blocked client gets on every REST request.
	// Default 403 (what a Cloudflare block answers; no X-RateLimit headers).
	BanStatus int `json:"ban_status"`
}

type rateLimitsJSON struct {
	Disabled  bool             `json:"disabled"`
	Global    Limit            `json:"global"`
	Routes    map[string]Limit `json:"routes,omitempty"`
	Invalid   Limit            `json:"invalid"`
	BanMS     float64          `json:"ban_ms"`
	BanStatus int              `json:"ban_status"`
}

// MarshalJSON writes the limits with durations in milliseconds
// ({"global": {"requests": 50, "per_ms": 1000}, "ban_ms": 3600000, …}).
func (c RateLimits) MarshalJSON() ([]byte, error) {
	return json.Marshal(rateLimitsJSON{c.Disabled, c.Global, c.Routes, c.Invalid, float64(c.BanDuration) / float64(time.Millisecond), c.BanStatus})
}

// UnmarshalJSON reads what MarshalJSON writes; absent fields stay as they are.
func (c *RateLimits) UnmarshalJSON(b []byte) error {
	j := rateLimitsJSON{c.Disabled, c.Global, c.Routes, c.Invalid, float64(c.BanDuration) / float64(time.Millisecond), c.BanStatus}
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("rate limits: %w", err)
	}
	*c = RateLimits{j.Disabled, j.Global, j.Routes, j.Invalid, time.Duration(j.BanMS * float64(time.Millisecond)), j.BanStatus}
	return nil
}

func (c *RateLimits) defaults() {
	if !c.Global.set() {
		c.Global = Limit{50, time.Second}
	}
	if !c.Invalid.set() {
		c.Invalid = Limit{10000, 10 * time.Minute}
	}
	if c.BanDuration <= 0 {
		c.BanDuration = time.Hour
	}
	if c.BanStatus == 0 {
		c.BanStatus = http.StatusForbidden
	}
}

// Scaled returns Discord's limits with every request count (route buckets,
// global, invalid) multiplied by f: for harnesses that need more throughput
// than one bot token gets until the cluster-wide limiter exists.
func Scaled(f int) RateLimits {
	rl := RateLimits{Routes: map[string]Limit{}}
	rl.defaults()
	rl.Global.Requests *= f
	rl.Invalid.Requests *= f
	for name, l := range RouteBuckets() {
		rl.Routes[name] = Limit{l.Requests * f, l.Per}
	}
	return rl
}

// Route bucket names. The fake's choice of which routes share a bucket, and
// the limits, follow what Discord answers today (they are not documented and
// may change: clients must read the headers).
const (
	BucketGateway             = "gateway"              // GET /gateway, /gateway/bot
	BucketUsers               = "users"                // GET /users/{id}
	BucketCreateDM            = "create_dm"            // POST /users/@me/channels
	BucketApplication         = "application"          // GET /applications/@me, /oauth2/applications/@me
	BucketCommands            = "commands"             // /applications/{app}/…commands
	BucketGuild               = "guild"                // GET /guilds/{gid} (major: guild)
	BucketGuildChannels       = "guild_channels"       // GET /guilds/{gid}/channels
	BucketGuildRoles          = "guild_roles"          // GET /guilds/{gid}/roles
	BucketGuildMembers        = "guild_members"        // GET/PATCH/DELETE /guilds/{gid}/members/{uid}
	BucketGuildBans           = "guild_bans"           // GET /guilds/{gid}/bans[/{uid}], PUT/DELETE …/bans/{uid}
	BucketAuditLog            = "audit_log"            // GET /guilds/{gid}/audit-logs
	BucketChannel             = "channel"              // GET /channels/{cid} (major: channel)
	BucketCreateMessage       = "create_message"       // POST /channels/{cid}/messages
	BucketGetMessages         = "get_messages"         // GET /channels/{cid}/messages[/{mid}]
	BucketEditMessage         = "edit_message"         // PATCH /channels/{cid}/messages/{mid}
	BucketDeleteMessage       = "delete_message"       // DELETE /channels/{cid}/messages/{mid}
	BucketBulkDelete          = "bulk_delete"          // POST /channels/{cid}/messages/bulk-delete
	BucketReactions           = "reactions"            // PUT /channels/{cid}/messages/{mid}/reactions/{emoji}/@me
	BucketInteractionCallback = "interaction_callback" // POST /interactions/{iid}/{token}/callback (major: iid+token), not global
	BucketWebhook             = "webhook"              // /webhooks/{app}/{token}[/messages/{mid}] (major: app+token), not global
)

var defaultRouteLimits = map[string]Limit{
	// Every discordgo Session.Open fetches GET /gateway; the constraint on
	// connecting is the session start limit, not this bucket.
	BucketGateway:             {50, time.Second},
	BucketUsers:               {5, time.Second},
	BucketCreateDM:            {5, 5 * time.Second},
	BucketApplication:         {5, time.Second},
	BucketCommands:            {5, 20 * time.Second},
	BucketGuild:               {5, time.Second},
	BucketGuildChannels:       {5, time.Second},
	BucketGuildRoles:          {5, time.Second},
	BucketGuildMembers:        {10, 10 * time.Second},
	BucketGuildBans:           {5, time.Second},
	BucketAuditLog:            {5, time.Second},
	BucketChannel:             {5, time.Second},
	BucketCreateMessage:       {5, 5 * time.Second},
	BucketGetMessages:         {5, time.Second},
	BucketEditMessage:         {5, 5 * time.Second},
	BucketDeleteMessage:       {5, time.Second},
	BucketBulkDelete:          {1, time.Second},
	BucketReactions:           {1, 250 * time.Millisecond},
	BucketInteractionCallback: {5, time.Second},
	BucketWebhook:             {5, 2 * time.Second},
}

// RouteBuckets returns the default limit of every route bucket.
func RouteBuckets() map[string]Limit {
	out := make(map[string]Limit, len(defaultRouteLimits))
	for k, v := range defaultRouteLimits {
		out[k] = v
	}
	return out
}

// Top-level resources (major parameters) a route bucket is keyed by.
const (
	majorNone        = ""
	majorChannel     = "channel"
	majorGuild       = "guild"
	majorWebhook     = "webhook"     // {app} + {token}
	majorInteraction = "interaction" // {iid} + {token}
)

// route is how one REST route is limited.
type route struct {
	bucket string // "" = no route bucket (unknown routes)
	major  string
	// exempt routes are not bound to the global limit (interaction endpoints).
	exempt bool
}

func (rt route) majorValue(r *http.Request) string {
	switch rt.major {
	case majorChannel:
		return r.PathValue("cid")
	case majorGuild:
		return r.PathValue("gid")
	case majorWebhook:
		return r.PathValue("app") + "/" + r.PathValue("token")
	case majorInteraction:
		return r.PathValue("iid") + "/" + r.PathValue("token")
	}
	return ""
}

// BotIdentity is the GlobalStats key of requests carrying the fake's bot
// token; other requests are counted per client IP ("ip:127.0.0.1").
const BotIdentity = "bot"

// RateLimitStats is what the fake counted since it started (or since
// ResetRateLimits).
type RateLimitStats struct {
	Requests      int `json:"requests"`       // REST requests (every route)
	RouteLimited  int `json:"route_limited"`  // 429s of a route bucket (scope user)
	GlobalLimited int `json:"global_limited"` // 429s of the global limit
	Refused       int `json:"refused"`        // answered BanStatus because the client was blocked
	// Invalid counts 401, 403 and 429 answers (what the invalid-request limit counts).
	Invalid int                    `json:"invalid"`
	Global  map[string]GlobalStats `json:"global"`  // by identity: BotIdentity or "ip:…"
	Clients map[string]ClientStats `json:"clients"` // by client IP
	Buckets []BucketStats          `json:"buckets"` // by bucket then major parameter
	Limits  RateLimits             `json:"limits"`  // the effective configuration
	Since   time.Time              `json:"since"`
}

// Limited is every 429 the fake answered.
func (st RateLimitStats) Limited() int { return st.RouteLimited + st.GlobalLimited }

// Bucket returns the stats of one bucket for one major parameter value (a
// channel or guild id, "app/token" for webhooks; "" for routes without one).
func (st RateLimitStats) Bucket(name, major string) (BucketStats, bool) {
	for _, b := range st.Buckets {
		if b.Bucket == name && b.Major == major {
			return b, true
		}
	}
	return BucketStats{}, false
}

// GlobalStats counts one identity's requests against the global limit.
type GlobalStats struct {
	Requests int `json:"requests"` // requests bound to the global limit (including 429s)
	Accepted int `json:"accepted"` // of those, the ones that passed the limits
	Limited  int `json:"limited"`  // global 429s
	Exempt   int `json:"exempt"`   // requests to routes outside the global limit
	// MaxInWindow is the most requests bound to the global limit that arrived
	// within any window of RateLimits.Global.Per (1 s by default), whether or
	// not they were answered 429: what a cluster sent at its busiest.
	MaxInWindow int `json:"max_in_window"`
	// MaxAcceptedInWindow is the same for accepted requests (never above the limit).
	MaxAcceptedInWindow int `json:"max_accepted_in_window"`
}

// ClientStats is one client's standing against the invalid-request limit.
type ClientStats struct {
	Invalid         int       `json:"invalid"`           // 401/403/429 answers in total
	InvalidInWindow int       `json:"invalid_in_window"` // in the current window
	WindowEnds      time.Time `json:"window_ends,omitzero"`
	BannedUntil     time.Time `json:"banned_until,omitzero"`
	Bans            int       `json:"bans"`
	Refused         int       `json:"refused"`
}

// BucketStats counts one route bucket for one major parameter value.
type BucketStats struct {
	Bucket   string    `json:"bucket"` // name, e.g. "create_message"
	Hash     string    `json:"hash"`   // what X-RateLimit-Bucket says
	Major    string    `json:"major"`  // e.g. the channel id
	Limit    Limit     `json:"limit"`
	Requests int       `json:"requests"` // that reached the bucket
	Accepted int       `json:"accepted"`
	Limited  int       `json:"limited"` // route 429s
	FirstAt  time.Time `json:"first_at,omitzero"`
	LastAt   time.Time `json:"last_at,omitzero"`
}

type bucketState struct {
	stats     BucketStats
	remaining int
	reset     time.Time
}

type globalState struct {
	stats    GlobalStats
	accepted []time.Time // accepted requests within the last window
	arrivals []time.Time // every request within the last window
}

type clientState struct {
	stats       ClientStats
	windowStart time.Time
}

// rateLimiter enforces RateLimits. It has its own lock: REST handlers take
// it briefly before Server.mu, never while holding it.
type rateLimiter struct {
	mu      sync.Mutex
	cfg     RateLimits
	hashes  map[string]string
	buckets map[string]*bucketState
	global  map[string]*globalState
	clients map[string]*clientState
	stats   RateLimitStats
}

func newRateLimiter(cfg RateLimits) *rateLimiter {
	l := &rateLimiter{hashes: map[string]string{}}
	l.reset(cfg)
	return l
}

func (l *rateLimiter) reset(cfg RateLimits) {
	cfg.defaults()
	l.cfg = cfg
	l.buckets = map[string]*bucketState{}
	l.global = map[string]*globalState{}
	l.clients = map[string]*clientState{}
	l.stats = RateLimitStats{Since: time.Now()}
}

func (l *rateLimiter) routeLimit(name string) Limit {
	if lim, ok := l.cfg.Routes[name]; ok && lim.set() {
		return lim
	}
	if lim, ok := defaultRouteLimits[name]; ok {
		return lim
	}
	return Limit{5, time.Second}
}

// bucketHash is the X-RateLimit-Bucket value: stable per bucket, without
// the major parameter, opaque like Discord's.
func (l *rateLimiter) bucketHash(name string) string {
	if h, ok := l.hashes[name]; ok {
		return h
	}
	sum := sha256.Sum256([]byte("fakediscord bucket " + name))
	h := hex.EncodeToString(sum[:16])
	l.hashes[name] = h
	return h
}

// verdict is the limiter's answer for one request.
type verdict struct {
	status  int // 0 = go on; 429, or the ban status
	global  bool
	retry   time.Duration
	headers http.Header
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (l *rateLimiter) client(ip string) *clientState {
	c := l.clients[ip]
	if c == nil {
		c = &clientState{}
		l.clients[ip] = c
	}
	return c
}

// admit decides one request on rt from ip with identity (BotIdentity or
// "ip:…"); authorized is false for requests that will get 401 (they are
// blocked when banned but not limited).
func (l *rateLimiter) admit(rt route, major, ip, identity string, authorized bool, now time.Time) verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Requests++
	c := l.client(ip)
	if !l.cfg.Disabled && now.Before(c.stats.BannedUntil) {
		c.stats.Refused++
		l.stats.Refused++
		return verdict{status: l.cfg.BanStatus, retry: c.stats.BannedUntil.Sub(now)}
	}
	if !authorized {
		return verdict{}
	}
	g := l.global[identity]
	if g == nil {
		g = &globalState{}
		l.global[identity] = g
	}
	win := l.cfg.Global.Per
	if rt.exempt {
		g.stats.Exempt++
	} else {
		g.stats.Requests++
		g.arrivals = append(trimBefore(g.arrivals, now.Add(-win)), now)
		g.stats.MaxInWindow = max(g.stats.MaxInWindow, len(g.arrivals))
		g.accepted = trimBefore(g.accepted, now.Add(-win))
	}

	var b *bucketState
	if rt.bucket != "" {
		key := rt.bucket + "\x00" + major
		b = l.buckets[key]
		if b == nil {
			lim := l.routeLimit(rt.bucket)
			b = &bucketState{stats: BucketStats{Bucket: rt.bucket, Hash: l.bucketHash(rt.bucket), Major: major, Limit: lim}}
			l.buckets[key] = b
		}
		b.stats.Requests++
		if !now.Before(b.reset) {
			b.remaining, b.reset = b.stats.Limit.Requests, now.Add(b.stats.Limit.Per)
		}
	}
	if l.cfg.Disabled {
		g.accept(rt, now)
		if b != nil {
			b.accept(now)
		}
		return verdict{}
	}
	if b != nil && b.remaining <= 0 {
		b.stats.Limited++
		l.stats.RouteLimited++
		v := verdict{status: http.StatusTooManyRequests, retry: b.reset.Sub(now), headers: b.headers(now)}
		v.headers.Set("X-RateLimit-Scope", "user")
		return v
	}
	if !rt.exempt && len(g.accepted) >= l.cfg.Global.Requests {
		g.stats.Limited++
		l.stats.GlobalLimited++
		v := verdict{status: http.StatusTooManyRequests, global: true, retry: g.accepted[0].Add(win).Sub(now), headers: http.Header{}}
		v.headers.Set("X-RateLimit-Global", "true")
		v.headers.Set("X-RateLimit-Scope", "global")
		return v
	}
	g.accept(rt, now)
	v := verdict{}
	if b != nil {
		b.remaining--
		b.accept(now)
		v.headers = b.headers(now)
	}
	return v
}

func (g *globalState) accept(rt route, now time.Time) {
	if rt.exempt {
		return
	}
	g.stats.Accepted++
	g.accepted = append(g.accepted, now)
	g.stats.MaxAcceptedInWindow = max(g.stats.MaxAcceptedInWindow, len(g.accepted))
}

func (b *bucketState) accept(now time.Time) {
	b.stats.Accepted++
	if b.stats.FirstAt.IsZero() {
		b.stats.FirstAt = now
	}
	b.stats.LastAt = now
}

// trimBefore drops the times at or before t (the slice is in order).
func trimBefore(ts []time.Time, t time.Time) []time.Time {
	i := sort.Search(len(ts), func(i int) bool { return ts[i].After(t) })
	if i == 0 {
		return ts
	}
	if i > len(ts)/2 { // compact now and then instead of growing forever
		return append(ts[:0], ts[i:]...)
	}
	return ts[i:]
}

// seconds formats d in seconds, rounded up to the millisecond, so a client
// that waits this long is never early.
func seconds(d time.Duration) string {
	ms := math.Ceil(float64(d) / float64(time.Millisecond))
	return strconv.FormatFloat(max(ms, 0)/1000, 'f', 3, 64)
}

func (b *bucketState) headers(now time.Time) http.Header {
	h := http.Header{}
	h.Set("X-RateLimit-Limit", strconv.Itoa(b.stats.Limit.Requests))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(max(b.remaining, 0)))
	resetMS := math.Ceil(float64(b.reset.UnixNano()) / float64(time.Millisecond))
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(resetMS/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", seconds(b.reset.Sub(now)))
	h.Set("X-RateLimit-Bucket", b.stats.Hash)
	return h
}

// answered counts an answer towards the client's invalid-request limit.
func (l *rateLimiter) answered(ip string, status int, now time.Time) {
	if status != http.StatusUnauthorized && status != http.StatusForbidden && status != http.StatusTooManyRequests {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Invalid++
	c := l.client(ip)
	c.stats.Invalid++
	if c.windowStart.IsZero() || now.Sub(c.windowStart) >= l.cfg.Invalid.Per {
		c.windowStart, c.stats.InvalidInWindow = now, 0
	}
	c.stats.InvalidInWindow++
	c.stats.WindowEnds = c.windowStart.Add(l.cfg.Invalid.Per)
	if !l.cfg.Disabled && c.stats.InvalidInWindow >= l.cfg.Invalid.Requests {
		c.stats.BannedUntil = now.Add(l.cfg.BanDuration)
		c.stats.Bans++
		c.windowStart, c.stats.InvalidInWindow = time.Time{}, 0
	}
}

func (l *rateLimiter) snapshot() RateLimitStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats
	st.Limits = l.cfg
	st.Limits.Routes = RouteBuckets()
	for k, v := range l.cfg.Routes {
		if v.set() {
			st.Limits.Routes[k] = v
		}
	}
	st.Global = make(map[string]GlobalStats, len(l.global))
	for k, g := range l.global {
		st.Global[k] = g.stats
	}
	st.Clients = make(map[string]ClientStats, len(l.clients))
	for k, c := range l.clients {
		st.Clients[k] = c.stats
	}
	st.Buckets = make([]BucketStats, 0, len(l.buckets))
	for _, b := range l.buckets {
		st.Buckets = append(st.Buckets, b.stats)
	}
	sort.Slice(st.Buckets, func(i, j int) bool {
		if st.Buckets[i].Bucket != st.Buckets[j].Bucket {
			return st.Buckets[i].Bucket < st.Buckets[j].Bucket
		}
		return st.Buckets[i].Major < st.Buckets[j].Major
	})
	return st
}

// RateLimitStats returns the rate-limit counters (a copy).
func (s *Server) RateLimitStats() RateLimitStats { return s.rl.snapshot() }

// ResetRateLimits clears every bucket, counter and block and applies limits
// from now on (e.g. between the phases of a benchmark).
func (s *Server) ResetRateLimits(limits RateLimits) {
	s.rl.mu.Lock()
	defer s.rl.mu.Unlock()
	s.rl.reset(limits)
}

// limited wraps a REST handler with the block check, the bot token check
// (when auth), the global and route limits, and the invalid-request count.
func (s *Server) limited(rt route, auth bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		ip := clientIP(r)
		botToken := r.Header.Get("Authorization") == "Bot "+s.cfg.Token
		identity := BotIdentity
		if !botToken {
			identity = "ip:" + ip
		}
		v := s.rl.admit(rt, rt.majorValue(r), ip, identity, botToken || !auth, now)
		for k, vals := range v.headers {
			w.Header()[k] = vals
		}
		switch {
		case v.status == http.StatusTooManyRequests:
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(v.retry.Seconds()))))
			retry, _ := strconv.ParseFloat(seconds(v.retry), 64)
			writeJSON(w, v.status, map[string]any{"message": "You are being rate limited.", "retry_after": retry, "global": v.global, "code": 0})
			s.rl.answered(ip, v.status, now)
			return
		case v.status != 0: // blocked
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(v.retry.Seconds()))))
			discordError(w, v.status, 0, "You are being blocked from accessing our API temporarily due to exceeding our rate limits frequently.")
			return
		case auth && !botToken:
			discordError(w, http.StatusUnauthorized, 0, "401: Unauthorized")
			s.rl.answered(ip, http.StatusUnauthorized, now)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		s.rl.answered(ip, sw.status, now)
	}
}
