package gatewaynode

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpapi/httpapitest"
	"github.com/modbot/modbot/internal/podapi"
)

// podRouteScopes is the scope every route of a pod's API must require:
// what peers, proxies and config nodes ask is internal, the status is
// read, dead letters are the operator's.
var podRouteScopes = []httpapitest.Route{
	{Method: "POST", Template: podapi.PathEvents, Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: podapi.PathInteractions, Scope: httpapi.ScopeInternal},
	{Method: "GET", Template: podapi.PathStatus, Scope: httpapi.ScopeRead},
	{Method: "GET", Template: podapi.RouteExport, Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: podapi.RouteImport, Scope: httpapi.ScopeInternal},
	{Method: "DELETE", Template: podapi.RouteGuild, Scope: httpapi.ScopeInternal},
	{Method: "GET", Template: podapi.RouteShardReleased, Scope: httpapi.ScopeInternal},
	{Method: "GET", Template: podapi.PathDeadLetters, Scope: httpapi.ScopeAdmin},
	{Method: "POST", Template: podapi.RouteReplayDeadLetter, Scope: httpapi.ScopeAdmin},
	{Method: "GET", Template: podapi.RouteDashboard, Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: podapi.RouteSettings, Scope: httpapi.ScopeInternal},
}

// TestEveryPodRouteRefusesATokenBelowItsScope: with the three tokens set
// apart, every route but health, readiness and metrics answers 401 without
// a token or with an unknown one and 403 to a lower scope's token, each
// refusal counted in modbot_gateway_auth_refusals_total; /metrics wants
// the read token; a user assertion signed with the admin token instead of
// the internal one is refused.
func TestEveryPodRouteRefusesATokenBelowItsScope(t *testing.T) {
	w := newMemWorld(t, 1)
	w.tweak = func(c *Config) { c.Token, c.InternalToken, c.ReadToken = "admin-t", "internal-t", "read-t" }
	n := w.addPod("gateway-0")
	r := n.routes(prometheus.NewRegistry())

	open := []string{"GET /healthz", "GET /metrics", "GET /readyz"}
	var want []string
	for _, rt := range podRouteScopes {
		want = append(want, rt.Method+" "+rt.Template)
	}
	want = slices.Sorted(slices.Values(append(want, open...)))
	if got := httpapitest.RoutesOf(t, r); !slices.Equal(got, want) {
		t.Fatalf("the pod's routes and this test's scope table differ (give a new route its scope here):\nrouter:\n%s\ntable:\n%s",
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	tokens := map[httpapi.Scope]string{httpapi.ScopeRead: "read-t", httpapi.ScopeInternal: "internal-t", httpapi.ScopeAdmin: "admin-t"}
	caused := httpapitest.AssertScopes(t, r, podRouteScopes, tokens)
	httpapitest.AssertCounted(t, n.metrics.authRefusals, caused)

	for token, status := range map[string]int{"": 401, "read-t": 200, "internal-t": 200} {
		req := httptest.NewRequest("GET", "/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != status {
			t.Errorf("/metrics with %q: %d, want %d", token, rec.Code, status)
		}
	}

	// The proxy signs user assertions with the internal token: one signed
	// with any other key is refused.
	for key, status := range map[string]int{"admin-t": http.StatusUnauthorized, "internal-t": http.StatusMisdirectedRequest} {
		a, err := podapi.SignAssertion(key, podapi.UserAssertion{UserID: 1, GuildID: 123, Expires: time.Now().Add(time.Minute).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("GET", "/guild/123/dashboard", nil)
		req.Header.Set(podapi.HeaderUserAssertion, a)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != status { // 421: accepted, and guild 123 is not this pod's
			t.Errorf("an assertion signed with %s: %d %s, want %d", key, rec.Code, rec.Body, status)
		}
	}
}
