package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// OAuthConfig is the Discord application used to sign users in (OAuth2
// authorization code flow, scopes identify guilds guilds.members.read).
// Login is on when ClientID is set.
type OAuthConfig struct {
	ClientID     string
	ClientSecret string
	// AuthorizeURL is Discord's consent page. Default
	// https://discord.com/oauth2/authorize.
	AuthorizeURL string
	// APIURL is Discord's REST base for the token exchange and the user's
	// endpoints. Default https://discord.com/api/v10.
	APIURL string
	// RedirectURL is this site's /callback as registered with the
	// application (https://modbot.example.com/callback). Empty: derived
	// from each request's Host (fine for development only).
	RedirectURL string
}

// DefaultDiscordAuthorizeURL and DefaultDiscordAPIURL are Discord's.
const (
	DefaultDiscordAuthorizeURL = "https://discord.com/oauth2/authorize"
	DefaultDiscordAPIURL       = "https://discord.com/api/v10"
	oauthScopes                = "identify guilds guilds.members.read"
	loginTTL                   = 10 * time.Minute
	assertionTTL               = time.Minute
	memberCacheTTL             = time.Minute
	memberCacheSize            = 10_000
)

// safeNext returns next if it is a relative path on this site, else "/".
// Refused: absolute URLs, scheme-relative "//host", "/\host" (browsers
// treat a backslash as a slash), control characters.
func safeNext(next string) string {
	if next == "" || next[0] != '/' || len(next) > 2048 {
		return "/"
	}
	if len(next) > 1 && (next[1] == '/' || next[1] == '\\') {
		return "/"
	}
	for _, c := range next {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return "/"
		}
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	return next
}

func (p *Proxy) loginEnabled() bool { return p.cfg.OAuth.ClientID != "" && p.seal != nil }

func (p *Proxy) setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: int(maxAge / time.Second),
		HttpOnly: true, Secure: p.cfg.SecureCookies, SameSite: http.SameSiteLaxMode})
}

func (p *Proxy) clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: p.cfg.SecureCookies, SameSite: http.SameSiteLaxMode})
}

func (p *Proxy) redirectURL(r *http.Request) string {
	if p.cfg.OAuth.RedirectURL != "" {
		return p.cfg.OAuth.RedirectURL
	}
	scheme := "http"
	if r.TLS != nil || p.cfg.SecureCookies {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/callback"
}

var messagePage = template.Must(template.New("msg").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot · {{.Title}}</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}</style></head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p>{{if .Link}}<p><a href="{{.Link}}">{{.LinkText}}</a></p>{{end}}</body></html>`))

func writePage(w http.ResponseWriter, status int, title, text, link, linkText string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = messagePage.Execute(w, map[string]string{"Title": title, "Text": text, "Link": link, "LinkText": linkText})
}

// handleLogin starts the authorization code flow: a fresh state, sealed
// into a short-lived cookie with where to return, and a redirect to
// Discord's consent page.
func (p *Proxy) handleLogin(w http.ResponseWriter, r *http.Request) {
	if !p.loginEnabled() {
		httpapi.WriteError(w, http.StatusNotFound, "Discord login is not configured on this proxy (--discord-client-id, --discord-client-secret, --session-key)")
		return
	}
	st := loginState{State: randomString(24), Next: safeNext(r.URL.Query().Get("next")), Expires: time.Now().Add(loginTTL).Unix()}
	v, err := p.seal.seal(loginCookie, st)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	p.setCookie(w, loginCookie, v, loginTTL)
	q := url.Values{"client_id": {p.cfg.OAuth.ClientID}, "redirect_uri": {p.redirectURL(r)}, "response_type": {"code"},
		"scope": {oauthScopes}, "state": {st.State}}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, p.cfg.OAuth.AuthorizeURL+"?"+q.Encode(), http.StatusFound)
}

// handleCallback finishes the flow: the state must match the browser's
// login cookie, the code is exchanged for the user's token, and the
// session cookie is set.
func (p *Proxy) handleCallback(w http.ResponseWriter, r *http.Request) {
	if !p.loginEnabled() {
		httpapi.WriteError(w, http.StatusNotFound, "Discord login is not configured on this proxy")
		return
	}
	q := r.URL.Query()
	var st loginState
	c, err := r.Cookie(loginCookie)
	if err == nil {
		err = p.seal.open(loginCookie, c.Value, &st, time.Now())
	}
	p.clearCookie(w, loginCookie)
	if err != nil || q.Get("state") == "" || !constantEqual(q.Get("state"), st.State) {
		p.m.logins.WithLabelValues("state_mismatch").Inc()
		writePage(w, http.StatusBadRequest, "Sign-in failed", "This sign-in was not started from this browser, or it took too long. Start again.", "/login", "Sign in with Discord")
		return
	}
	if e := q.Get("error"); e != "" {
		p.m.logins.WithLabelValues("denied").Inc()
		writePage(w, http.StatusForbidden, "Sign-in cancelled", "Discord said: "+e, "/login?next="+url.QueryEscape(st.Next), "Try again")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tok, expiresIn, err := p.exchangeCode(ctx, q.Get("code"), p.redirectURL(r))
	if err != nil {
		p.m.logins.WithLabelValues("exchange_failed").Inc()
		p.log.Warn("oauth code exchange failed", "err", err)
		writePage(w, http.StatusBadGateway, "Sign-in failed", "Discord did not accept the sign-in. Start again.", "/login", "Sign in with Discord")
		return
	}
	var me struct {
		ID       string `json:"id"`
		Username string `json:"username"`
	}
	if err := p.discordGet(ctx, tok, "/users/@me", &me); err != nil {
		p.m.logins.WithLabelValues("exchange_failed").Inc()
		p.log.Warn("read the signed-in user", "err", err)
		writePage(w, http.StatusBadGateway, "Sign-in failed", "Could not read your Discord account. Start again.", "/login", "Sign in with Discord")
		return
	}
	uid, err := strconv.ParseUint(me.ID, 10, 64)
	if err != nil {
		writePage(w, http.StatusBadGateway, "Sign-in failed", "Discord returned a malformed user id.", "/login", "Sign in with Discord")
		return
	}
	ttl := p.cfg.SessionTTL
	if expiresIn > 0 && expiresIn < ttl {
		ttl = expiresIn
	}
	sess := session{UserID: uid, Username: me.Username, AccessToken: tok, CSRF: randomString(24), Expires: time.Now().Add(ttl).Unix()}
	v, err := p.seal.seal(sessionCookie, sess)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	p.setCookie(w, sessionCookie, v, ttl)
	p.m.logins.WithLabelValues("ok").Inc()
	p.log.Info("user signed in", "user", uid, "name", me.Username)
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, safeNext(st.Next), http.StatusFound)
}

// handleLogout clears the session. Signing out needs no CSRF protection:
// the worst a forged one does is sign the user out.
func (p *Proxy) handleLogout(w http.ResponseWriter, r *http.Request) {
	p.clearCookie(w, sessionCookie)
	writePage(w, http.StatusOK, "Signed out", "You are signed out of modbot.", "/login", "Sign in again")
}

// sessionOf returns the request's valid session, if any.
func (p *Proxy) sessionOf(r *http.Request) (session, bool) {
	var s session
	if p.seal == nil {
		return s, false
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return s, false
	}
	if err := p.seal.open(sessionCookie, c.Value, &s, time.Now()); err != nil {
		p.m.sessionRefusals.Inc()
		return s, false
	}
	return s, true
}

func (p *Proxy) exchangeCode(ctx context.Context, code, redirect string) (string, time.Duration, error) {
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.OAuth.APIURL+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, fmt.Errorf("token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(p.cfg.OAuth.ClientID), url.QueryEscape(p.cfg.OAuth.ClientSecret))
	resp, err := p.discord.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("token request: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("token endpoint answered %d: %s", resp.StatusCode, b)
	}
	var t struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(b, &t); err != nil || t.AccessToken == "" {
		return "", 0, fmt.Errorf("token endpoint answer %q: %v", b, err)
	}
	return t.AccessToken, time.Duration(t.ExpiresIn) * time.Second, nil
}

// errDiscordStatus is a non-2xx answer of the user API.
type errDiscordStatus struct{ status int }

func (e errDiscordStatus) Error() string { return "discord answered " + strconv.Itoa(e.status) }

func (p *Proxy) discordGet(ctx context.Context, token, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.cfg.OAuth.APIURL+path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := p.discord.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %w", path, errDiscordStatus{resp.StatusCode})
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// membership is what Discord says a user holds in one guild.
type membership struct {
	member      bool
	permissions uint64
	roles       []uint64
	at          time.Time
}

// memberCache remembers memberships for a minute per replica, so a page
// load (and its reloads) costs Discord two calls, not two per request.
type memberCache struct {
	mu sync.Mutex
	m  map[[2]uint64]membership
}

func (c *memberCache) get(uid, gid uint64, now time.Time) (membership, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.m[[2]uint64{uid, gid}]
	if !ok || now.Sub(m.at) > memberCacheTTL {
		return membership{}, false
	}
	return m, true
}

func (c *memberCache) put(uid, gid uint64, m membership) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= memberCacheSize {
		c.m = map[[2]uint64]membership{}
	}
	c.m[[2]uint64{uid, gid}] = m
}

// membershipOf asks Discord (with the user's token) for their permissions
// and roles in guild gid.
func (p *Proxy) membershipOf(ctx context.Context, s session, gid uint64) (membership, error) {
	if m, ok := p.members.get(s.UserID, gid, time.Now()); ok {
		return m, nil
	}
	var guilds []struct {
		ID          string `json:"id"`
		Permissions string `json:"permissions"`
	}
	if err := p.discordGet(ctx, s.AccessToken, "/users/@me/guilds", &guilds); err != nil {
		return membership{}, err
	}
	m := membership{at: time.Now()}
	for _, g := range guilds {
		if g.ID == strconv.FormatUint(gid, 10) {
			m.member = true
			m.permissions, _ = strconv.ParseUint(g.Permissions, 10, 64)
		}
	}
	if m.member {
		var mem struct {
			Roles []string `json:"roles"`
		}
		if err := p.discordGet(ctx, s.AccessToken, "/users/@me/guilds/"+strconv.FormatUint(gid, 10)+"/member", &mem); err != nil {
			return membership{}, err
		}
		for _, r := range mem.Roles {
			if id, err := strconv.ParseUint(r, 10, 64); err == nil {
				m.roles = append(m.roles, id)
			}
		}
	}
	p.members.put(s.UserID, gid, m)
	return m, nil
}

// userAssertion is the signed statement the pod gets instead of the
// internal token.
func (p *Proxy) userAssertion(s session, gid uint64, m membership) (string, error) {
	return podapi.SignAssertion(p.cfg.InternalToken, podapi.UserAssertion{UserID: s.UserID, Username: s.Username, GuildID: gid,
		Permissions: m.permissions, Roles: m.roles, CSRF: s.CSRF, Expires: time.Now().Add(assertionTTL).Unix()})
}
