package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Scope is what a bearer token may do. Scopes nest: a token of a scope may
// do everything the scopes below it may.
//
//   - ScopeRead: metrics, status, the map's reads and its watch (Grafana,
//     Prometheus, the Postgres mirror);
//   - ScopeInternal: what the components ask of each other (pod↔pod,
//     proxy→pod, pod→config: register, heartbeat, checkpoints, identify,
//     placement, a guild's export, import and drop, dashboards);
//   - ScopeAdmin: what an operator asks with modbotctl (join and remove
//     config nodes, move, drain, rebalance, dead letters).
//
// The invariant each server holds: a request whose token's scope is below
// the route's is refused (403), a missing or unknown token is refused
// (401), and every refusal is counted.
type Scope uint8

const (
	ScopeRead Scope = iota + 1
	ScopeInternal
	ScopeAdmin
)

func (s Scope) String() string {
	switch s {
	case ScopeRead:
		return "read"
	case ScopeInternal:
		return "internal"
	case ScopeAdmin:
		return "admin"
	}
	return "none"
}

// Tokens are a component's bearer tokens, one per scope (DESIGN §4:
// --token, --internal-token, --read-token). An unset Internal or Read
// token is the admin token, so a one-token setup such as dev keeps working.
type Tokens struct {
	Admin, Internal, Read string
}

// WithDefaults fills the unset scoped tokens with the admin token.
func (t Tokens) WithDefaults() Tokens {
	if t.Internal == "" {
		t.Internal = t.Admin
	}
	if t.Read == "" {
		t.Read = t.Admin
	}
	return t
}

// Secrets lists the set tokens (for checks that no log carries them).
func (t Tokens) Secrets() []string {
	var out []string
	for _, s := range []string{t.Admin, t.Internal, t.Read} {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Refusal reasons, the "reason" label of the refusal counter.
const (
	RefusedMissing = "missing" // no Authorization header
	RefusedWrong   = "wrong"   // a token that is none of ours
	RefusedScope   = "scope"   // one of ours, below the route's scope
)

// NewRefusalCounter is modbot_<component>_auth_refusals_total{scope,reason}:
// requests refused for their credentials, by the scope the route needed.
func NewRefusalCounter(component string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "modbot_" + component + "_auth_refusals_total",
		Help: "Requests refused for their bearer token, by the scope the route needs and the reason (missing, wrong, scope).",
	}, []string{"scope", "reason"})
	// Exported at 0 from the start, so a rate or an alert has a series
	// before the first refusal.
	for _, s := range []Scope{ScopeRead, ScopeInternal, ScopeAdmin} {
		for _, r := range []string{RefusedMissing, RefusedWrong, RefusedScope} {
			c.WithLabelValues(s.String(), r)
		}
	}
	return c
}

// Auth checks bearer tokens against a component's Tokens. It keeps only
// each token's SHA-256 and compares digests in constant time, so neither a
// token's content nor its length leaks through timing.
type Auth struct {
	digests  [ScopeAdmin + 1][sha256.Size]byte
	set      [ScopeAdmin + 1]bool
	explicit bool // a read token of its own was given
	refusals *prometheus.CounterVec
}

// NewAuth builds the check for t (defaults applied); refusals may be nil.
func NewAuth(t Tokens, refusals *prometheus.CounterVec) *Auth {
	a := &Auth{refusals: refusals, explicit: t.Read != "" && t.Read != t.Admin}
	t = t.WithDefaults()
	for s, tok := range map[Scope]string{ScopeRead: t.Read, ScopeInternal: t.Internal, ScopeAdmin: t.Admin} {
		if tok != "" {
			a.set[s], a.digests[s] = true, sha256.Sum256([]byte(tok))
		}
	}
	return a
}

// ScopeOf is the highest scope the request's bearer token carries, or 0 and
// the reason it carries none.
func (a *Auth) ScopeOf(r *http.Request) (Scope, string) {
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 || vals[0] == "" {
		return 0, RefusedMissing
	}
	if len(vals) > 1 {
		return 0, RefusedWrong
	}
	scheme, tok, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return 0, RefusedWrong
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	best := Scope(0)
	for s := ScopeRead; s <= ScopeAdmin; s++ {
		// Every digest is compared, matched or not: the time taken does
		// not tell which scope matched.
		if a.set[s] && subtle.ConstantTimeCompare(got[:], a.digests[s][:]) == 1 {
			best = s
		}
	}
	if best == 0 {
		return 0, RefusedWrong
	}
	return best, ""
}

// Refuse counts a refusal of a request to a route of scope need.
func (a *Auth) Refuse(need Scope, reason string) {
	if a.refusals != nil {
		a.refusals.WithLabelValues(need.String(), reason).Inc()
	}
}

// Require lets a request through only with a token of scope need or above;
// others get 401 (missing or unknown token) or 403 (a scope too low), with
// a body saying which.
func (a *Auth) Require(need Scope, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, reason := a.ScopeOf(r)
		if got >= need {
			next.ServeHTTP(w, r)
			return
		}
		if reason == "" {
			reason = RefusedScope
		}
		a.Refuse(need, reason)
		switch reason {
		case RefusedMissing:
			w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
			WriteError(w, http.StatusUnauthorized, "missing bearer token: send 'Authorization: Bearer <token>' (MODBOT_TOKEN; modbotctl also reads --token or .modbot-dev/token)")
		case RefusedWrong:
			w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
			WriteError(w, http.StatusUnauthorized, "wrong bearer token")
		default:
			WriteError(w, http.StatusForbidden, "this route needs the %s token; the token sent has the %s scope", need, got)
		}
	})
}

// Metrics guards /metrics with the read scope when a read token of its own
// was configured; otherwise /metrics stays open (DESIGN §5: a bearer token
// on everything but health and metrics), so a scraper needs no secret
// until the operator gives it one.
func (a *Auth) Metrics(next http.Handler) http.Handler {
	if !a.explicit {
		return next
	}
	return a.Require(ScopeRead, next)
}
