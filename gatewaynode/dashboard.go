package gatewaynode

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// dashboardView is GET /guild/{id}/dashboard: the guild's activity with the
// pod that served it (the JSON object), plus what only the page needs.
type dashboardView struct {
	guildstore.Dashboard
	Owner    string `json:"owner"`
	State    string `json:"state"`
	Revision uint64 `json:"map_revision"`
	// Names of the top channels and authors (missing: Discord did not say).
	ChannelNames map[string]string `json:"channel_names"`
	AuthorNames  map[string]string `json:"author_names"`

	page dashboardPage
}

// dashboardPage is the HTML page's extra state.
type dashboardPage struct {
	User     *podapi.UserAssertion
	CanEdit  bool // may change the settings (Manage Server, Administrator, or the admin token)
	Saved    bool
	Dir      directory
	ModRole  string
	ModlogCh string
	Kinds    []kindCount
}

type kindCount struct {
	Kind  string
	Count int64
}

func nameOr(name string, id uint64) string {
	if name == "" {
		return strconv.FormatUint(id, 10)
	}
	return name
}

func (n *Node) handleDashboard(w http.ResponseWriter, r *http.Request) {
	g, ok := n.ownedGuild(w, r)
	if !ok {
		return
	}
	id := g.ID
	d, err := n.store.Dashboard(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "dashboard of guild %d: %v", id, err)
		return
	}
	if !n.allowUser(w, r, d.Settings.ModRoleID) {
		return
	}
	users := make([]uint64, 0, len(d.TopAuthors)+2*len(d.RecentReports)+len(d.RecentActions))
	for _, a := range d.TopAuthors {
		users = append(users, a.ID)
	}
	for _, rp := range d.RecentReports {
		users = append(users, rp.ReporterID, rp.TargetUserID)
	}
	for _, a := range d.RecentActions {
		users = append(users, a.UserID)
	}
	// Names are a nicety: a slow Discord costs the page at most this.
	nctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	dir := n.names.resolve(nctx, id, dedupe(users))
	cancel()
	view := dashboardView{Dashboard: d, Owner: n.cfg.ID, State: string(g.State), Revision: n.watch.Revision(),
		ChannelNames: map[string]string{}, AuthorNames: map[string]string{}}
	for _, c := range d.TopChannels {
		if nm := dir.channel(c.ID); nm != "" {
			view.ChannelNames[strconv.FormatUint(c.ID, 10)] = nm
		}
	}
	for _, a := range d.TopAuthors {
		if nm := dir.Users[a.ID]; nm != "" {
			view.AuthorNames[strconv.FormatUint(a.ID, 10)] = nm
		}
	}
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		httpapi.WriteJSON(w, http.StatusOK, view)
		return
	}
	pg := dashboardPage{Dir: dir, Saved: r.URL.Query().Get("saved") == "1", CanEdit: true,
		ModRole: "not set", ModlogCh: "not set (use /setup or the form below)"}
	if a, ok := r.Context().Value(userKey{}).(podapi.UserAssertion); ok {
		pg.User, pg.CanEdit = &a, a.Permissions&(podapi.PermAdministrator|podapi.PermManageGuild) != 0
	}
	if st := d.Settings; st.ModRoleID != 0 {
		pg.ModRole = nameOr(dir.role(st.ModRoleID), st.ModRoleID)
	}
	if st := d.Settings; st.ModlogChannelID != 0 {
		pg.ModlogCh = "#" + nameOr(dir.channel(st.ModlogChannelID), st.ModlogChannelID)
	}
	for k, c := range d.ModActionsByKind {
		pg.Kinds = append(pg.Kinds, kindCount{k, c})
	}
	sort.Slice(pg.Kinds, func(i, j int) bool { return pg.Kinds[i].Kind < pg.Kinds[j].Kind })
	view.page = pg
	buf := pageBufs.Get().(*[]byte)
	page := appendDashboardPage((*buf)[:0], view, func(b []byte) []byte { return n.charts.appendFor(b, id, d.Activity) })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(page)))
	if _, err := w.Write(page); err != nil {
		n.log.Debug("write dashboard", "guild", id, "err", err)
	}
	if cap(page) <= maxPooledPage {
		*buf = page
		pageBufs.Put(buf)
	}
}

func dedupe(ids []uint64) []uint64 {
	seen := map[uint64]bool{}
	out := ids[:0]
	for _, id := range ids {
		if id != 0 && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// userKey carries a verified user assertion in a request's context.
type userKey struct{}

// dashboardAuth lets a dashboard request in with the internal token (an
// operator's, through the proxy) or with a user assertion the proxy signed for
// this guild; the handler then checks the user against the guild's
// moderator role (allowUser).
func (n *Node) dashboardAuth(h http.HandlerFunc) http.Handler {
	bearer := n.auth.Require(httpapi.ScopeInternal, h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw := r.Header.Get(podapi.HeaderUserAssertion)
		if raw == "" {
			bearer.ServeHTTP(w, r)
			return
		}
		if r.Header.Get("Authorization") != "" {
			httpapi.WriteError(w, http.StatusBadRequest, "send either the internal token or a user assertion, not both")
			return
		}
		id, err := fsm.ParseGuildID(mux.Vars(r)["id"])
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
			return
		}
		a, err := podapi.VerifyAssertion(n.cfg.InternalToken, raw, id, time.Now())
		if err != nil {
			n.metrics.dashboardAuth.WithLabelValues("bad_assertion").Inc()
			httpapi.WriteError(w, http.StatusUnauthorized, "user assertion refused: %v", err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), userKey{}, a)))
	})
}

// allowUser answers 403 (and false) when the request is a signed-in user
// who neither has Manage Server or Administrator in the guild nor holds its
// moderator role. Requests with the internal token pass.
func (n *Node) allowUser(w http.ResponseWriter, r *http.Request, modRole uint64) bool {
	a, ok := r.Context().Value(userKey{}).(podapi.UserAssertion)
	if !ok {
		return true
	}
	if a.CanManage(modRole) {
		n.metrics.dashboardAuth.WithLabelValues("allowed").Inc()
		return true
	}
	n.metrics.dashboardAuth.WithLabelValues("forbidden").Inc()
	msg := fmt.Sprintf("%s may not see guild %d's dashboard: it needs Manage Server, Administrator or the moderator role set with /setup", a.Username, a.GuildID)
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		httpapi.WriteError(w, http.StatusForbidden, "%s", msg)
		return false
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	_ = forbiddenHTML.Execute(w, msg)
	return false
}

var forbiddenHTML = template.Must(template.New("forbidden").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot · not allowed</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}</style></head>
<body><h1>Not allowed</h1><p>{{.}}</p><p><a href="/logout">Sign out</a></p></body></html>`))
