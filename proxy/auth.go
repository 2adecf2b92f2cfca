package proxy

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/modbot/modbot/internal/httpapi"
)

// wantsHTML tells a browser from a JSON client the way the gateway pod's
// dashboard does: JSON when Accept names application/json, or does not
// name text/html.
func wantsHTML(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "text/html") && !strings.Contains(accept, "application/json")
}

// anonymousPage is what an anonymous browser gets for a dashboard when
// Discord login is not configured on this proxy.
const anonymousPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in required</title></head>
<body>
<h1>Sign-in required</h1>
<p>A guild's dashboard is private to the guild's moderators. Signing in with Discord is not configured on this proxy.</p>
<p>Operators: send the admin token as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
</body></html>
`

// dashboardCaller is who a /guild/{id}/… request is forwarded for.
type dashboardCaller struct {
	admin     bool   // the admin token: forwarded with the internal token
	assertion string // a signed-in user: forwarded with this assertion only
}

// authorizeDashboard decides how a /guild/{id}/… request may reach the
// pod: with the admin token (an operator or a script) it goes with the
// internal token; with a valid session it goes with a signed assertion of
// the user's permissions and roles in that guild (the pod decides, since
// only it knows the guild's moderator role) and never with the internal
// token. A user who is not in the guild gets 403 here. Anonymous browsers
// are redirected to /login, anonymous JSON clients get 401.
func (p *Proxy) authorizeDashboard(w http.ResponseWriter, r *http.Request, gid uint64) (dashboardCaller, bool) {
	scope, why := p.auth.ScopeOf(r)
	if scope == httpapi.ScopeAdmin {
		return dashboardCaller{admin: true}, true
	}
	if why == httpapi.RefusedMissing {
		if s, ok := p.sessionOf(r); ok {
			m, err := p.membershipOf(r.Context(), s, gid)
			if err != nil {
				var ds errDiscordStatus
				if errors.As(err, &ds) && ds.status == http.StatusUnauthorized {
					// The Discord token was revoked: sign in again.
					p.clearCookie(w, sessionCookie)
					p.refuseAnonymous(w, r, "revoked")
					return dashboardCaller{}, false
				}
				p.log.Warn("read the user's guild membership from Discord", "user", s.UserID, "guild", gid, "err", err)
				httpapi.WriteError(w, http.StatusBadGateway, "could not read your membership of guild %d from Discord; retry shortly", gid)
				return dashboardCaller{}, false
			}
			if !m.member {
				p.m.dashboardRefusals.WithLabelValues("not_member").Inc()
				p.forbidden(w, r, s, gid)
				return dashboardCaller{}, false
			}
			a, err := p.userAssertion(s, gid, m)
			if err != nil {
				httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
				return dashboardCaller{}, false
			}
			return dashboardCaller{assertion: a}, true
		}
		p.refuseAnonymous(w, r, "anonymous")
		return dashboardCaller{}, false
	}
	w.Header().Set("Cache-Control", "no-store")
	if scope != 0 {
		// The read token: good for /status and /metrics, not for a
		// guild's data.
		p.auth.Refuse(httpapi.ScopeAdmin, httpapi.RefusedScope)
		p.m.dashboardRefusals.WithLabelValues("scope").Inc()
		httpapi.WriteJSON(w, http.StatusForbidden, errorBody{Error: "the read token cannot read a dashboard: send the admin token, or sign in with Discord (/login)"})
		return dashboardCaller{}, false
	}
	reason, msg := "wrong_token", "wrong credentials: only the admin token, as 'Authorization: Bearer TOKEN', or a Discord sign-in (/login) may read a dashboard"
	if p.cfg.Token == "" {
		reason, msg = "no_admin_token", "this proxy has no admin token configured (--token / MODBOT_TOKEN), so no bearer token may read a dashboard"
	}
	p.auth.Refuse(httpapi.ScopeAdmin, httpapi.RefusedWrong)
	p.m.dashboardRefusals.WithLabelValues(reason).Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
	httpapi.WriteJSON(w, http.StatusUnauthorized, errorBody{Error: msg})
	return dashboardCaller{}, false
}

// refuseAnonymous sends a browser to /login (returning here afterwards) and
// answers anyone else 401.
func (p *Proxy) refuseAnonymous(w http.ResponseWriter, r *http.Request, reason string) {
	p.m.dashboardRefusals.WithLabelValues(reason).Inc()
	w.Header().Set("Cache-Control", "no-store")
	if wantsHTML(r) && p.loginEnabled() {
		next := "/"
		if r.Method == http.MethodGet {
			next = safeNext(r.URL.RequestURI())
		}
		http.Redirect(w, r, "/login?next="+url.QueryEscape(next), http.StatusFound)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
	if wantsHTML(r) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(anonymousPage))
		return
	}
	msg := "this dashboard is private to the guild's moderators: sign in with Discord at /login, or send the admin token as 'Authorization: Bearer TOKEN'"
	if p.cfg.Token == "" && !p.loginEnabled() {
		msg = "this proxy has no admin token configured (--token / MODBOT_TOKEN) and no Discord login, so no request may read a dashboard"
	}
	httpapi.WriteJSON(w, http.StatusUnauthorized, errorBody{Error: msg})
}

func (p *Proxy) forbidden(w http.ResponseWriter, r *http.Request, s session, gid uint64) {
	if wantsHTML(r) {
		writePage(w, http.StatusForbidden, "Not allowed", fmt.Sprintf("%s, you are not a member of guild %d, so you cannot see its dashboard.", s.Username, gid), "/logout", "Sign out")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusForbidden, errorBody{Error: fmt.Sprintf("user %d is not a member of guild %d", s.UserID, gid)})
}

// unsafePath reports why a request path must not be routed ("" when it may):
// a dot-segment ("." or ".."), plain or percent-encoded (%2e), or a segment
// that decodes to a slash or backslash (%2f, %5c, "\"), or bad
// percent-encoding. Such a path could be resolved differently by the proxy
// and the pod, e.g. /guild/42/..%2f..%2finternal/status reaching the pod's
// /internal/… API. No route of the proxy needs one, so they are refused
// rather than cleaned.
func unsafePath(u *url.URL) string {
	for _, seg := range strings.Split(u.EscapedPath(), "/") {
		dec, err := url.PathUnescape(seg)
		switch {
		case err != nil:
			return "bad percent-encoding"
		case dec == "." || dec == "..":
			return "dot-segment"
		case strings.ContainsAny(dec, `/\`):
			return "encoded slash or backslash"
		case strings.ContainsRune(dec, 0):
			return "NUL byte"
		}
	}
	return ""
}

func (p *Proxy) refuseUnsafePath(w http.ResponseWriter, r *http.Request) {
	p.m.unsafePaths.Inc()
	httpapi.WriteError(w, http.StatusBadRequest, "path refused (%s): dot-segments and encoded slashes are not allowed", unsafePath(r.URL))
}

func constantEqual(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
