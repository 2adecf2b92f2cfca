package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"

	"github.com/modbot/modbot/internal/httpapi"
)

// adminCredential checks "Authorization: Bearer <admin token>". It keeps
// only the token's SHA-256 and compares digests in constant time, so neither
// the content nor the length of the token leaks through timing.
type adminCredential struct {
	set    bool
	digest [sha256.Size]byte
}

func newAdminCredential(token string) adminCredential {
	if token == "" {
		return adminCredential{}
	}
	return adminCredential{set: true, digest: sha256.Sum256([]byte(token))}
}

// dashboardAccess is what the proxy concluded about a request's credentials.
type dashboardAccess int

const (
	accessAdmin      dashboardAccess = iota // carries the admin token
	accessAnonymous                         // no Authorization header
	accessWrongToken                        // some other credential
)

func (c adminCredential) check(r *http.Request) dashboardAccess {
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return accessAnonymous
	}
	if len(vals) > 1 || !c.set {
		return accessWrongToken
	}
	scheme, tok, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return accessWrongToken
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(got[:], c.digest[:]) != 1 {
		return accessWrongToken
	}
	return accessAdmin
}

// wantsHTML tells a browser from a JSON client the way the gateway pod's
// dashboard does: JSON when Accept names application/json, or does not
// name text/html.
func wantsHTML(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "text/html") && !strings.Contains(accept, "application/json")
}

// anonymousPage is what an anonymous browser gets for a dashboard. It is
// a 401 and not a redirect to /login because the proxy has no /login yet:
// Discord login (issue 16) replaces this page with that redirect.
const anonymousPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in required</title></head>
<body>
<h1>Sign-in required</h1>
<p>A guild's dashboard is private to the guild's moderators. Signing in with Discord is not available yet.</p>
<p>Operators: send the admin token as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
</body></html>
`

// authorizeDashboard lets a /guild/{id}/… request through only with the
// admin token; otherwise it answers 401 itself (JSON, or a short page for a
// browser) and the request never reaches a pod.
func (p *Proxy) authorizeDashboard(w http.ResponseWriter, r *http.Request) bool {
	access := p.admin.check(r)
	if access == accessAdmin {
		return true
	}
	reason, msg := "anonymous", "this dashboard is private to the guild's moderators: send the admin token as 'Authorization: Bearer TOKEN' (Discord login is not available yet)"
	switch {
	case !p.admin.set:
		reason, msg = "no_admin_token", "this proxy has no admin token configured (--token / MODBOT_TOKEN), so no request may read a dashboard"
	case access == accessWrongToken:
		reason, msg = "wrong_token", "wrong credentials: only the admin token, as 'Authorization: Bearer TOKEN', may read a dashboard"
	}
	p.m.dashboardRefusals.WithLabelValues(reason).Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
	w.Header().Set("Cache-Control", "no-store")
	if access == accessAnonymous && wantsHTML(r) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(anonymousPage))
		return false
	}
	httpapi.WriteJSON(w, http.StatusUnauthorized, errorBody{Error: msg})
	return false
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
