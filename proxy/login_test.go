package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/podapi"
)

// loginEnv is a proxy with Discord login against the real fake Discord
// (consent page, token endpoint, user endpoints), in front of a recording
// backend that owns the fake's first four guilds.
type loginEnv struct {
	*testEnv
	discord    *fakediscord.Server
	discordURL string
	guilds     []fakediscord.Guild // alice: Moderator in 0, Helper in 1, member of 2; bob: member of 0..2; nobody in 3
	pod        *backend
}

var testSessionKey = []byte("0123456789abcdef0123456789abcdef")

func newLoginEnv(t *testing.T) *loginEnv {
	t.Helper()
	d, err := fakediscord.New(fakediscord.Config{IdentifyInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	durl, err := d.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	gs := d.Seed(4)
	d.SeedUsers()
	e := &loginEnv{discord: d, discordURL: durl, guilds: gs}
	e.testEnv = newEnv(t, func(c *Config) {
		c.OAuth = OAuthConfig{ClientID: d.Config().ApplicationID, ClientSecret: d.Config().ClientSecret,
			AuthorizeURL: durl + "/oauth2/authorize", APIURL: durl + "/api/v10"}
		c.SessionKey = testSessionKey
	})
	e.pod = newBackend(t, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, e.pod.addr(), fsm.PodActive)
	for _, g := range gs {
		e.m.place(g.ID, "gateway-0", fsm.GuildActive)
	}
	return e
}

// browser is a cookie-keeping client that does not follow redirects, so
// each step of the flow is visible.
type browser struct {
	t   *testing.T
	c   *http.Client
	jar *cookiejar.Jar
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, jar: jar, c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status   int
	location string
	body     string
	header   http.Header
}

func (b *browser) do(method, u string, form url.Values, accept string) page {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if accept == "" {
		accept = "text/html,application/xhtml+xml"
	}
	req.Header.Set("Accept", accept)
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return page{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(rb), header: resp.Header}
}

func (b *browser) get(u string) page { return b.do(http.MethodGet, u, nil, "") }

var hiddenField = regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`)

// login goes /login?next=… → the fake's consent page → picks user →
// /callback, and returns the callback's answer (a redirect to next).
func (e *loginEnv) login(b *browser, user, next string) page {
	b.t.Helper()
	start := b.get(e.url + "/login?next=" + url.QueryEscape(next))
	if start.status != http.StatusFound || !strings.HasPrefix(start.location, e.discordURL+"/oauth2/authorize?") {
		b.t.Fatalf("/login: %d to %q, want 302 to the fake's authorize page", start.status, start.location)
	}
	consent := b.get(start.location)
	if consent.status != http.StatusOK || !strings.Contains(consent.body, "Sign in as "+user) {
		b.t.Fatalf("consent page: %d %s", consent.status, consent.body)
	}
	form := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(consent.body, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	for _, u := range e.discord.Users() {
		if u.Name == user {
			form.Set("user_id", strconv.FormatUint(u.ID, 10))
		}
	}
	approved := b.do(http.MethodPost, e.discordURL+"/oauth2/authorize", form, "")
	if approved.status != http.StatusFound || !strings.Contains(approved.location, "/callback?") {
		b.t.Fatalf("consent: %d to %q, want 302 to /callback", approved.status, approved.location)
	}
	return b.get(approved.location)
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&amp;", "&", "&#43;", "+", "&#34;", `"`, "&#39;", "'", "&lt;", "<", "&gt;", ">").Replace(s)
}

func (e *loginEnv) dashboard(g fakediscord.Guild) string {
	return fmt.Sprintf("%s/guild/%d/dashboard", e.url, g.ID)
}

func TestLoginModeratorIsForwardedWithASignedAssertionAndNeverTheInternalToken(t *testing.T) {
	e := newLoginEnv(t)
	b := newBrowser(t)
	next := fmt.Sprintf("/guild/%d/dashboard", e.guilds[0].ID)
	cb := e.login(b, "alice", next)
	if cb.status != http.StatusFound || cb.location != next {
		t.Fatalf("callback: %d to %q, want 302 back to %s", cb.status, cb.location, next)
	}
	for i, g := range e.guilds[:3] {
		before := e.pod.count.Load()
		res := b.get(e.dashboard(g))
		if res.status != http.StatusOK || e.pod.count.Load() != before+1 {
			t.Fatalf("guild %d: status %d, pod reached %d times; want 200 from the pod", i, res.status, e.pod.count.Load()-before)
		}
		r, _ := e.pod.lastRequest()
		if got := r.Header.Get("Authorization"); got != "" {
			t.Fatalf("a browser request reached the pod with Authorization %q", got)
		}
		if r.Header.Get("Cookie") != "" {
			t.Fatalf("the browser's cookies reached the pod: %q", r.Header.Get("Cookie"))
		}
		a, err := podapi.VerifyAssertion(testInternalToken, r.Header.Get(podapi.HeaderUserAssertion), g.ID, time.Now())
		if err != nil {
			t.Fatalf("guild %d: assertion: %v", i, err)
		}
		if a.UserID != fakediscord.SeedModeratorID || a.Username != "alice" {
			t.Fatalf("assertion about %d %q, want alice", a.UserID, a.Username)
		}
		admin := a.Permissions&podapi.PermAdministrator != 0
		if admin != (i == 0) {
			t.Fatalf("guild %d: Administrator=%v in the assertion (permissions %#x)", i, admin, a.Permissions)
		}
		if i == 1 && (len(a.Roles) != 1 || a.Roles[0] != e.guilds[1].ID+4) {
			t.Fatalf("guild 1: roles %v, want the Helper role %d", a.Roles, e.guilds[1].ID+4)
		}
		if _, err := podapi.VerifyAssertion(testInternalToken, r.Header.Get(podapi.HeaderUserAssertion), e.guilds[3].ID, time.Now()); err == nil {
			t.Fatal("an assertion for one guild verified for another")
		}
	}
	// Not a member of guild 3: refused at the proxy.
	before := e.pod.count.Load()
	if res := b.get(e.dashboard(e.guilds[3])); res.status != http.StatusForbidden || e.pod.count.Load() != before {
		t.Fatalf("a guild alice is not in: %d (pod reached %d times), want 403 at the proxy", res.status, e.pod.count.Load()-before)
	}
	// The landing page lists her servers that modbot serves.
	if home := b.get(e.url + "/"); home.status != http.StatusOK || !strings.Contains(home.body, fmt.Sprintf(`href="/guild/%d/dashboard"`, e.guilds[0].ID)) ||
		strings.Contains(home.body, fmt.Sprintf("/guild/%d/", e.guilds[3].ID)) {
		t.Fatalf("home page: %d\n%s", home.status, home.body)
	}
	// Signed out: back to anonymous.
	if res := b.get(e.url + "/logout"); res.status != http.StatusOK {
		t.Fatalf("logout: %d", res.status)
	}
	if res := b.get(e.dashboard(e.guilds[0])); res.status != http.StatusFound {
		t.Fatalf("after logout: %d, want 302 to /login", res.status)
	}
}

func TestLoginAnonymousBrowserIsRedirectedAndJSONClientGets401(t *testing.T) {
	e := newLoginEnv(t)
	b := newBrowser(t)
	u := e.dashboard(e.guilds[0]) + "?range=30d"
	res := b.get(u)
	want := "/login?next=" + url.QueryEscape(strings.TrimPrefix(u, e.url))
	if res.status != http.StatusFound || res.location != want {
		t.Fatalf("anonymous browser: %d to %q, want 302 to %q", res.status, res.location, want)
	}
	res = b.do(http.MethodGet, e.dashboard(e.guilds[0]), nil, "application/json")
	if res.status != http.StatusUnauthorized || !strings.Contains(res.body, "/login") {
		t.Fatalf("anonymous JSON client: %d %s, want 401", res.status, res.body)
	}
	if n := e.pod.count.Load(); n != 0 {
		t.Fatalf("anonymous requests reached the pod %d times", n)
	}
}

func TestLoginSessionCookieTamperedExpiredOrForeignIsRefused(t *testing.T) {
	e := newLoginEnv(t)
	b := newBrowser(t)
	e.login(b, "alice", "/")
	pu, _ := url.Parse(e.url)
	var good string
	for _, c := range b.jar.Cookies(pu) {
		if c.Name == sessionCookie {
			good = c.Value
		}
	}
	if good == "" {
		t.Fatal("no session cookie after login")
	}
	other, _ := newSealer([]byte("another-key-another-key-another!"))
	foreign, _ := other.seal(sessionCookie, session{UserID: fakediscord.SeedModeratorID, Expires: time.Now().Add(time.Hour).Unix()})
	expired, _ := e.p.seal.seal(sessionCookie, session{UserID: fakediscord.SeedModeratorID, Username: "alice", Expires: time.Now().Add(-time.Second).Unix()})
	loginState, _ := e.p.seal.seal(loginCookie, loginState{State: "x", Next: "/", Expires: time.Now().Add(time.Hour).Unix()})
	flip := []byte(good)
	flip[len(flip)/2] ^= 1
	cases := map[string]string{"tampered": string(flip), "truncated": good[:len(good)-4], "sealed with another key": foreign,
		"expired": expired, "a login cookie as the session": loginState, "garbage": "not-a-cookie"}
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.dashboard(e.guilds[0]), nil)
			req.Header.Set("Accept", "application/json")
			req.AddCookie(&http.Cookie{Name: sessionCookie, Value: v})
			before := e.pod.count.Load()
			res := do(t, req)
			if res.status != http.StatusUnauthorized || e.pod.count.Load() != before {
				t.Fatalf("%s cookie: %d (pod reached %d times), want 401 at the proxy", name, res.status, e.pod.count.Load()-before)
			}
		})
	}
	// The untouched cookie still works, also on another replica with the same key.
	other2 := newEnv(t, func(c *Config) {
		c.OAuth = OAuthConfig{ClientID: "1", ClientSecret: "s", APIURL: e.discordURL + "/api/v10"}
		c.SessionKey = testSessionKey
	})
	other2.m.addPod("gateway-0", 0, e.pod.addr(), fsm.PodActive)
	other2.m.place(e.guilds[0].ID, "gateway-0", fsm.GuildActive)
	req, _ := http.NewRequest(http.MethodGet, strings.Replace(e.dashboard(e.guilds[0]), e.url, other2.url, 1), nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: good})
	if res := do(t, req); res.status != http.StatusOK {
		t.Fatalf("the session on a second replica sharing the key: %d %s", res.status, res.body)
	}
}

func TestLoginCallbackRefusesAStateThatDoesNotMatchTheBrowser(t *testing.T) {
	e := newLoginEnv(t)
	victim, attacker := newBrowser(t), newBrowser(t)
	// The attacker starts a login and has Discord issue a code for their own
	// account; the victim is lured to the attacker's callback URL.
	start := attacker.get(e.url + "/login")
	consent := attacker.get(start.location)
	form := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(consent.body, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	form.Set("user_id", strconv.FormatUint(fakediscord.SeedMemberID, 10))
	approved := attacker.do(http.MethodPost, e.discordURL+"/oauth2/authorize", form, "")
	cbURL, _ := url.Parse(approved.location)
	if res := victim.get(approved.location); res.status != http.StatusBadRequest {
		t.Fatalf("callback in a browser that never started the login: %d, want 400", res.status)
	}
	// The victim has a login of their own in progress: the state still differs.
	victim.get(e.url + "/login")
	if res := victim.get(approved.location); res.status != http.StatusBadRequest {
		t.Fatalf("callback with another login's state: %d, want 400", res.status)
	}
	q := cbURL.Query()
	q.Del("state")
	if res := attacker.get(e.url + "/callback?" + q.Encode()); res.status != http.StatusBadRequest {
		t.Fatalf("callback without state: %d, want 400", res.status)
	}
	for _, br := range []*browser{victim, attacker} {
		pu, _ := url.Parse(e.url)
		for _, c := range br.jar.Cookies(pu) {
			if c.Name == sessionCookie {
				t.Fatal("a session was set by a refused callback")
			}
		}
	}
}

func TestLoginRefusesOpenRedirects(t *testing.T) {
	for next, want := range map[string]string{
		"/guild/1/dashboard?x=1": "/guild/1/dashboard?x=1", "//evil.example": "/", "https://evil.example/": "/",
		`/\evil.example`: "/", "/%0d%0aSet-Cookie:x": "/%0d%0aSet-Cookie:x", "javascript:alert(1)": "/", "": "/",
		"/\r\nLocation: x": "/", "evil.example": "/", "///evil.example": "/",
	} {
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", next, got, want)
		}
	}
	e := newLoginEnv(t)
	for _, next := range []string{"//evil.example/x", "https://evil.example/", `/\evil.example`} {
		b := newBrowser(t)
		if cb := e.login(b, "bob", next); cb.status != http.StatusFound || cb.location != "/" {
			t.Errorf("login with next=%q returned to %q, want /", next, cb.location)
		}
	}
}

func TestLoginTokenEndpointRefusesAReusedCode(t *testing.T) {
	e := newLoginEnv(t)
	b := newBrowser(t)
	start := b.get(e.url + "/login")
	consent := b.get(start.location)
	form := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(consent.body, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	form.Set("user_id", strconv.FormatUint(fakediscord.SeedMemberID, 10))
	approved := b.do(http.MethodPost, e.discordURL+"/oauth2/authorize", form, "")
	cb, _ := url.Parse(approved.location)
	redirect := cb.Scheme + "://" + cb.Host + cb.Path
	if _, _, err := e.p.exchangeCode(context.Background(), cb.Query().Get("code"), redirect); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.p.exchangeCode(context.Background(), cb.Query().Get("code"), redirect); err == nil {
		t.Fatal("a code was exchanged twice")
	}
}

func TestLoginAClientCannotSendItsOwnAssertion(t *testing.T) {
	e := newLoginEnv(t)
	forged, _ := podapi.SignAssertion("guessed", podapi.UserAssertion{UserID: 1, GuildID: e.guilds[3].ID, Permissions: podapi.PermAdministrator,
		Expires: time.Now().Add(time.Hour).Unix()})
	req, _ := http.NewRequest(http.MethodGet, e.dashboard(e.guilds[3]), nil)
	req.Header.Set(podapi.HeaderUserAssertion, forged)
	if res := do(t, req); res.status != http.StatusUnauthorized || e.pod.count.Load() != 0 {
		t.Fatalf("anonymous with an assertion header: %d, pod reached %d times; want 401 at the proxy", res.status, e.pod.count.Load())
	}
	b := newBrowser(t)
	e.login(b, "bob", "/")
	req, _ = http.NewRequest(http.MethodGet, e.dashboard(e.guilds[0]), nil)
	req.Header.Set(podapi.HeaderUserAssertion, forged)
	pu, _ := url.Parse(e.url)
	for _, c := range b.jar.Cookies(pu) {
		req.AddCookie(c)
	}
	if res := do(t, req); res.status != http.StatusOK {
		t.Fatalf("bob: %d", res.status)
	}
	r, _ := e.pod.lastRequest()
	if got := r.Header.Values(podapi.HeaderUserAssertion); len(got) != 1 || got[0] == forged {
		t.Fatalf("the pod got assertions %q; want only the proxy's own", got)
	}
	a, err := podapi.VerifyAssertion(testInternalToken, r.Header.Get(podapi.HeaderUserAssertion), e.guilds[0].ID, time.Now())
	if err != nil || a.UserID != fakediscord.SeedMemberID || a.Permissions&(podapi.PermAdministrator|podapi.PermManageGuild) != 0 {
		t.Fatalf("assertion %+v (%v), want bob without Manage Server", a, err)
	}
}

func TestLoginCrossSitePostWithoutTheCookieNeverReachesThePod(t *testing.T) {
	e := newLoginEnv(t)
	// SameSite=Lax keeps the session cookie off a cross-site POST: the
	// proxy sees an anonymous request.
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/guild/%d/settings", e.url, e.guilds[0].ID), strings.NewReader("modlog_channel=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "text/html")
	resp, err := newBrowser(t).c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || e.pod.count.Load() != 0 {
		t.Fatalf("anonymous form post: %d, pod reached %d times; want 302 to /login", resp.StatusCode, e.pod.count.Load())
	}
	cb := e.login(newBrowser(t), "alice", "/")
	var set string
	for _, c := range cb.header.Values("Set-Cookie") {
		if strings.HasPrefix(c, sessionCookie+"=") {
			set = c
		}
	}
	for _, attr := range []string{"HttpOnly", "SameSite=Lax", "Max-Age=", "Path=/"} {
		if !strings.Contains(set, attr) {
			t.Fatalf("session Set-Cookie %q lacks %s", set, attr)
		}
	}
	if strings.Contains(set, "Secure") {
		t.Fatalf("session cookie Secure without --secure-cookies: %q", set)
	}
}

func TestLoginIsOffWithoutAClientID(t *testing.T) {
	e := newEnv(t, nil)
	for _, p := range []string{"/login", "/callback?code=x&state=y"} {
		if res := get(t, e.url+p); res.status != http.StatusNotFound {
			t.Errorf("%s without Discord login configured: %d, want 404", p, res.status)
		}
	}
}

func TestLoginSecureCookiesBehindTLS(t *testing.T) {
	e := newLoginEnv(t)
	e.p.cfg.SecureCookies = true
	res := newBrowser(t).get(e.url + "/login")
	set := strings.Join(res.header.Values("Set-Cookie"), "\n")
	if !strings.Contains(set, loginCookie+"=") || !strings.Contains(set, "; Secure") || !strings.Contains(set, "HttpOnly") {
		t.Fatalf("login cookie with --secure-cookies: %q", set)
	}
	if !strings.Contains(res.location, url.QueryEscape("https://")) {
		t.Fatalf("redirect_uri in %q is not https behind TLS", res.location)
	}
}
