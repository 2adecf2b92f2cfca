package confignode

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpapi/httpapitest"
)

const (
	testInternalToken = "test-internal-token"
	testReadToken     = "test-read-token"
)

// configRouteScopes is the scope every /v1 route must require: reads for
// Grafana and the mirror, internal for what pods and proxies ask, admin for
// what changes the cluster's shape or moves guilds.
var configRouteScopes = []httpapitest.Route{
	{Method: "GET", Template: "/v1/status", Scope: httpapi.ScopeRead},
	{Method: "GET", Template: "/v1/cluster/servers", Scope: httpapi.ScopeRead},
	{Method: "POST", Template: "/v1/cluster/join", Scope: httpapi.ScopeAdmin},
	{Method: "DELETE", Template: "/v1/cluster/servers/{id}", Scope: httpapi.ScopeAdmin},
	{Method: "POST", Template: "/v1/cluster/transfer-leadership", Scope: httpapi.ScopeAdmin},
	{Method: "GET", Template: "/v1/pods", Scope: httpapi.ScopeRead},
	{Method: "POST", Template: "/v1/pods", Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: "/v1/pods/{id}/heartbeat", Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: "/v1/pods/{id}/leave", Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: "/v1/pods/{id}/drain", Scope: httpapi.ScopeAdmin},
	{Method: "GET", Template: "/v1/shards", Scope: httpapi.ScopeRead},
	{Method: "POST", Template: "/v1/shards/checkpoints", Scope: httpapi.ScopeInternal},
	{Method: "POST", Template: "/v1/identify", Scope: httpapi.ScopeInternal},
	{Method: "GET", Template: "/v1/guilds", Scope: httpapi.ScopeRead},
	{Method: "POST", Template: "/v1/guilds", Scope: httpapi.ScopeInternal},
	{Method: "GET", Template: "/v1/guilds/{id}", Scope: httpapi.ScopeRead},
	{Method: "POST", Template: "/v1/guilds/{id}/move", Scope: httpapi.ScopeAdmin},
	{Method: "POST", Template: "/v1/rebalance", Scope: httpapi.ScopeAdmin},
	{Method: "GET", Template: "/v1/rebalance", Scope: httpapi.ScopeRead},
	{Method: "GET", Template: "/v1/snapshot", Scope: httpapi.ScopeRead},
	{Method: "GET", Template: "/v1/watch", Scope: httpapi.ScopeRead},
}

// TestEveryConfigRouteRefusesATokenBelowItsScope: with the three tokens
// set apart, every /v1 route answers 401 without a token or with an unknown
// one, 403 to a token of a lower scope, and lets its own scope and the ones
// above through; every refusal is counted in
// modbot_config_auth_refusals_total; /metrics wants the read token.
func TestEveryConfigRouteRefusesATokenBelowItsScope(t *testing.T) {
	tc := newTestCluster(t, 1, func(_ int, c *Config) { c.InternalToken, c.ReadToken = testInternalToken, testReadToken })
	n := tc.nodes[0]
	r := n.routes()

	var want []string
	for _, rt := range configRouteScopes {
		want = append(want, rt.Method+" "+rt.Template)
	}
	var got []string
	for _, rt := range httpapitest.RoutesOf(t, r) {
		if strings.Contains(rt, " /v1/") {
			got = append(got, rt)
		}
	}
	if strings.Join(sortedCopy(got), "\n") != strings.Join(sortedCopy(want), "\n") {
		t.Fatalf("the /v1 routes and this test's scope table differ (give a new route its scope here):\nrouter:\n%s\ntable:\n%s",
			strings.Join(sortedCopy(got), "\n"), strings.Join(sortedCopy(want), "\n"))
	}

	tokens := map[httpapi.Scope]string{httpapi.ScopeRead: testReadToken, httpapi.ScopeInternal: testInternalToken, httpapi.ScopeAdmin: testToken}
	caused := httpapitest.AssertScopes(t, r, configRouteScopes, tokens)
	httpapitest.AssertCounted(t, n.metrics.authRefusals, caused)

	// /metrics: the read token (or above) once a read token is set.
	base := "http://" + tc.cfgs[0].HTTPAddr
	for token, status := range map[string]int{"": 401, "nope": 401, testReadToken: 200, testToken: 200} {
		if r := rawRequest(t, "GET", base+"/metrics", token, ""); r.status != status {
			t.Errorf("/metrics with token %q: %d, want %d", token, r.status, status)
		}
	}
	if r := rawRequest(t, "GET", base+"/healthz", "", ""); r.status != http.StatusOK {
		t.Errorf("/healthz without a token: %d", r.status)
	}
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }
