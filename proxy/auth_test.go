package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpapi/httpapitest"
)

const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

// TestAnonymousDashboardNeverCarriesTheInternalToken: a /guild/{id}/…
// request is forwarded (with the internal token) only when it carries the
// admin token. Anonymous JSON clients get a JSON 401, anonymous browsers a
// short 401 page (no /login exists yet to redirect to), any other
// credential — including the internal token itself — a 401; none of them
// reaches a pod. (The review's reproducer: an anonymous request reached the
// pod with "Bearer <internal token>".)
func TestAnonymousDashboardNeverCarriesTheInternalToken(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)

	// The browser answer depends on this: issue 16 adds /login, and then an
	// anonymous browser must get a 302 there instead of the page.
	if res := get(t, e.url+"/login"); res.status != http.StatusNotFound {
		t.Fatalf("GET /login = %d: a login route exists now, so anonymous browsers must be redirected to it (DESIGN §8)", res.status)
	}

	tests := []struct {
		name   string
		method string
		path   string
		header map[string][]string
		html   bool // want the HTML page rather than a JSON error
	}{
		{name: "anonymous JSON client", path: "/guild/42/dashboard", header: map[string][]string{"Accept": {"application/json"}}},
		{name: "anonymous without Accept", path: "/guild/42/dashboard"},
		{name: "anonymous curl", path: "/guild/42/dashboard", header: map[string][]string{"Accept": {"*/*"}}},
		{name: "anonymous browser", path: "/guild/42/dashboard", header: map[string][]string{"Accept": {browserAccept}}, html: true},
		{name: "anonymous, guild not placed (no 404 leak)", path: "/guild/77/dashboard"},
		{name: "anonymous POST", method: http.MethodPost, path: "/guild/42/settings"},
		{name: "wrong bearer token", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer nope"}}},
		{name: "wrong token, browser", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer nope"}, "Accept": {browserAccept}}},
		{name: "the internal token is not a dashboard credential", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer " + testInternalToken}}},
		{name: "admin token as a prefix", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer " + testAdminToken + "x"}}},
		{name: "admin token without scheme", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {testAdminToken}}},
		{name: "admin token as Basic", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Basic " + testAdminToken}}},
		{name: "two Authorization headers", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer nope", "Bearer " + testAdminToken}}},
		{name: "empty bearer", path: "/guild/42/dashboard", header: map[string][]string{"Authorization": {"Bearer "}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, e.url+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, vv := range tc.header {
				for _, v := range vv {
					req.Header.Add(k, v)
				}
			}
			before := b.count.Load()
			res := doNoRedirect(t, req)
			if n := b.count.Load() - before; n != 0 {
				r, _ := b.lastRequest()
				t.Fatalf("forwarded to the pod (with Authorization %q); want refused at the proxy", r.Header.Get("Authorization"))
			}
			if res.status != http.StatusUnauthorized {
				t.Fatalf("status %d (%s), want 401", res.status, res.body)
			}
			if loc := res.header.Get("Location"); loc != "" {
				t.Fatalf("redirected to %q; there is no login route to send anyone to", loc)
			}
			if got := res.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Fatalf("WWW-Authenticate %q, want a Bearer challenge", got)
			}
			if strings.Contains(res.body, testInternalToken) || strings.Contains(res.body, testAdminToken) {
				t.Fatal("a token leaked into the answer")
			}
			ct := res.header.Get("Content-Type")
			if tc.html {
				if !strings.HasPrefix(ct, "text/html") || !strings.Contains(res.body, "Sign-in required") {
					t.Fatalf("browser got %q %q, want the HTML explanation", ct, res.body)
				}
				return
			}
			var eb errorBody
			if ct != "application/json" || json.Unmarshal([]byte(res.body), &eb) != nil || eb.Error == "" {
				t.Fatalf("got %q %q, want a JSON error", ct, res.body)
			}
		})
	}

	t.Run("admin token is forwarded with the internal token", func(t *testing.T) {
		before := b.count.Load()
		res := get(t, e.url+"/guild/42/dashboard")
		if res.status != 200 || b.count.Load() != before+1 {
			t.Fatalf("status %d (%s), forwarded %d, want 200 forwarded once", res.status, res.body, b.count.Load()-before)
		}
		r, _ := b.lastRequest()
		if got := r.Header.Get("Authorization"); got != "Bearer "+testInternalToken {
			t.Fatalf("the pod saw Authorization %q, want the internal token and never the client's", got)
		}
	})

	metrics := get(t, e.url+"/metrics").body
	for _, want := range []string{
		`modbot_proxy_dashboard_refusals_total{reason="anonymous"} 6`,
		`modbot_proxy_dashboard_refusals_total{reason="wrong_token"} 8`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestDashboardWithoutAnAdminTokenIsClosed: a proxy configured without an
// admin token lets no request read a dashboard (an empty token is not a
// credential), while webhooks still work.
func TestDashboardWithoutAnAdminTokenIsClosed(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Token = "" })
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer " + testInternalToken} {
		req, err := http.NewRequest(http.MethodGet, e.url+"/guild/42/dashboard", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if res := do(t, req); res.status != http.StatusUnauthorized || !strings.Contains(res.body, "no admin token") {
			t.Fatalf("Authorization %q: %d %s, want 401 explaining that no admin token is configured", auth, res.status, res.body)
		}
	}
	if res := do(t, e.signed(t, cmdBody)); res.status != 200 {
		t.Fatalf("webhook: %d %s, want 200", res.status, res.body)
	}
	if n := b.count.Load(); n != 1 {
		t.Fatalf("pod got %d requests, want only the interaction", n)
	}
}

// TestDotSegmentsNeverReachTheInternalAPI: a path with dot-segments or
// encoded slashes, plain or percent-encoded, is refused with 400 before
// routing — even with the admin token — so nothing like
// /guild/42/../../internal/status is ever sent to a pod's /internal/… API.
// The requests are written on a raw connection so no client library cleans
// them first.
func TestDotSegmentsNeverReachTheInternalAPI(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	addr := strings.TrimPrefix(e.url, "http://")

	// Control: the raw client reaches the pod with a clean path.
	if res := rawGet(t, addr, "/guild/42/dashboard", testAdminToken); res.status != 200 {
		t.Fatalf("control request: %d %s", res.status, res.body)
	}
	if r, _ := b.lastRequest(); r.URL.Path != "/guild/42/dashboard" {
		t.Fatalf("control request reached the pod as %q", r.URL.Path)
	}
	forwarded := b.count.Load()

	for _, target := range []string{
		"/guild/42/../../internal/status",
		"/guild/42/..%2f..%2finternal%2fstatus",
		"/guild/42/..%2F..%2Finternal%2Fstatus",
		"/guild/42/%2e%2e/%2e%2e/internal/status",
		"/guild/42/%2E%2E/%2E%2E/internal/status",
		"/guild/42/%2e%2e%2f%2e%2e%2finternal%2fstatus",
		"/guild/42%2f..%2f..%2finternal%2fstatus",
		"/guild/42/.%2e/.%2e/internal/status",
		"/guild/42/..%5c..%5cinternal%5cstatus",
		`/guild/42/..\..\internal\status`,
		"/guild/42/./dashboard",
		"/guild/42/../42/dashboard",
		"/webhooks/../internal/interactions",
	} {
		for _, token := range []string{testAdminToken, ""} {
			res := rawGet(t, addr, target, token)
			if res.status != http.StatusBadRequest {
				t.Errorf("GET %s (admin=%v) → %d %s, want 400", target, token != "", res.status, res.body)
			}
			if loc := res.header.Get("Location"); loc != "" {
				t.Errorf("GET %s → redirect to %q, want refused outright", target, loc)
			}
			var eb errorBody
			if json.Unmarshal([]byte(res.body), &eb) != nil || eb.Error == "" {
				t.Errorf("GET %s → %q, want a JSON error", target, res.body)
			}
		}
	}
	// Bad percent-encoding: net/http refuses it itself (a plain-text 400).
	if res := rawGet(t, addr, "/guild/42/%zz/../../internal/status", testAdminToken); res.status != http.StatusBadRequest {
		t.Errorf("bad percent-encoding → %d, want 400", res.status)
	}
	if n := b.count.Load() - forwarded; n != 0 {
		r, _ := b.lastRequest()
		t.Fatalf("%d unsafe requests reached the pod (last: path %q raw %q)", n, r.URL.Path, r.URL.RawPath)
	}
	if !strings.Contains(get(t, e.url+"/metrics").body, "modbot_proxy_unsafe_paths_total 26") {
		t.Error("modbot_proxy_unsafe_paths_total does not count the 26 refusals")
	}

	// The second layer, on its own: whatever reaches the guild handler is
	// forwarded only if it stays under /guild/{id}.
	for _, tc := range []struct {
		u  url.URL
		ok bool
	}{
		{url.URL{Path: "/guild/42/dashboard", RawQuery: "page=2"}, true},
		{url.URL{Path: "/guild/42"}, true},
		{url.URL{Path: "/guild/42/"}, true},
		{url.URL{Path: "/guild/42/../../internal/status"}, false},
		{url.URL{Path: "/guild/42/../../internal/status", RawPath: "/guild/42/..%2f..%2finternal%2fstatus"}, false},
		{url.URL{Path: "/guild/42//internal/status"}, false},
		{url.URL{Path: "/guild/421/dashboard"}, false},
		{url.URL{Path: "/internal/status"}, false},
	} {
		got, err := guildTarget(&tc.u, "42")
		if (err == nil) != tc.ok {
			t.Errorf("guildTarget(%q raw %q) = %q, %v; want ok=%v", tc.u.Path, tc.u.RawPath, got, err, tc.ok)
		}
		if err == nil && !strings.HasPrefix(got, "/guild/42") {
			t.Errorf("guildTarget(%q) = %q, outside /guild/42", tc.u.Path, got)
		}
	}
}

// doNoRedirect is do without following redirects.
func doNoRedirect(t *testing.T, req *http.Request) result {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// rawGet writes a GET for target byte for byte on a new connection.
func rawGet(t *testing.T, addr, target, token string) result {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + target + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: application/json\r\nConnection: close\r\n"
	if token != "" {
		req += "Authorization: Bearer " + token + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// TestTheReadTokenReadsStatusAndMetricsButNeverADashboard: with a read
// token of its own, /status and /metrics take it, /metrics refuses a
// request without it, and a dashboard refuses it with 403 without
// reaching the pod; each refusal is counted in
// modbot_proxy_auth_refusals_total.
func TestTheReadTokenReadsStatusAndMetricsButNeverADashboard(t *testing.T) {
	const readToken = "test-read-token"
	e := newEnv(t, func(c *Config) { c.ReadToken = readToken })
	b := newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, b.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)

	send := func(path, token string) int {
		req, err := http.NewRequest(http.MethodGet, e.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return doNoRedirect(t, req).status
	}
	for _, c := range []struct {
		path, token string
		status      int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", testInternalToken, http.StatusUnauthorized},
		{"/metrics", readToken, http.StatusOK},
		{"/metrics", testAdminToken, http.StatusOK},
		{"/status", readToken, http.StatusOK},
		{"/status", testInternalToken, http.StatusUnauthorized},
		{"/guild/42/dashboard", readToken, http.StatusForbidden},
	} {
		if got := send(c.path, c.token); got != c.status {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.token, got, c.status)
		}
	}
	if n := b.count.Load(); n != 0 {
		t.Fatalf("%d requests reached the pod; the read token must never", n)
	}
	httpapitest.AssertCounted(t, e.p.m.authRefusals, map[httpapitest.Refusal]int{
		{Scope: "read", Reason: httpapi.RefusedMissing}: 1,
		{Scope: "read", Reason: httpapi.RefusedWrong}:   2,
		{Scope: "admin", Reason: httpapi.RefusedScope}:  1,
	})
}
