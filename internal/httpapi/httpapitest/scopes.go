// Package httpapitest checks, for any of modbot's HTTP servers, that every
// route refuses a bearer token below its scope (httpapi.Scope).
package httpapitest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modbot/modbot/internal/httpapi"
)

// Route is one route of a server and the scope it must require.
type Route struct {
	Method, Template string // as registered, e.g. "POST", "/v1/guilds/{id}/move"
	Scope            httpapi.Scope
}

// Refusal is a (scope, reason) pair of the refusal counter.
type Refusal struct{ Scope, Reason string }

var pathVar = regexp.MustCompile(`\{[^}]*\}`)

// AssertScopes sends every route a request with no token, an unknown
// token, and each scope's token (tokens), and fails t unless the ones below
// the route's scope get 403, the missing and unknown ones 401, and the
// others neither. Path variables are filled with "123". It returns how
// many refusals of each kind it caused, for comparing with the server's
// refusal counter.
func AssertScopes(t *testing.T, h http.Handler, routes []Route, tokens map[httpapi.Scope]string) map[Refusal]int {
	t.Helper()
	caused := map[Refusal]int{}
	send := func(rt Route, token string) int {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, rt.Method, pathVar.ReplaceAllString(rt.Template, "123"), nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req) // a stream (a watch) ends with ctx
		return rec.Code
	}
	for _, rt := range routes {
		name := rt.Method + " " + rt.Template
		for _, c := range []struct{ what, token string }{{"no token", ""}, {"an unknown token", "not-a-token-of-ours"}} {
			if got := send(rt, c.token); got != http.StatusUnauthorized {
				t.Errorf("%s with %s: got %d, want 401", name, c.what, got)
			}
		}
		caused[Refusal{rt.Scope.String(), httpapi.RefusedMissing}]++
		caused[Refusal{rt.Scope.String(), httpapi.RefusedWrong}]++
		for s := httpapi.ScopeRead; s <= httpapi.ScopeAdmin; s++ {
			got := send(rt, tokens[s])
			switch {
			case s < rt.Scope && got != http.StatusForbidden:
				t.Errorf("%s with the %s token: got %d, want 403 (the route needs %s)", name, s, got, rt.Scope)
			case s < rt.Scope:
				caused[Refusal{rt.Scope.String(), httpapi.RefusedScope}]++
			case got == http.StatusUnauthorized || got == http.StatusForbidden:
				t.Errorf("%s with the %s token: refused with %d, but the route needs only %s", name, s, got, rt.Scope)
			}
		}
	}
	return caused
}

// RoutesOf lists a gorilla/mux router's routes as "METHOD /template",
// sorted, so a test can require every route to be in its scope table.
func RoutesOf(t *testing.T, r *mux.Router) []string {
	t.Helper()
	var out []string
	err := r.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return nil
		}
		methods, _ := route.GetMethods()
		for _, m := range methods {
			out = append(out, m+" "+tpl)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// AssertCounted fails t unless the refusal counter (httpapi.
// NewRefusalCounter) holds exactly the refusals AssertScopes caused.
func AssertCounted(t *testing.T, refusals *prometheus.CounterVec, caused map[Refusal]int) {
	t.Helper()
	for k, want := range caused {
		var m dto.Metric
		if err := refusals.WithLabelValues(k.Scope, k.Reason).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != float64(want) {
			t.Errorf("refusals{scope=%q,reason=%q} = %v, want %d", k.Scope, k.Reason, got, want)
		}
	}
}
