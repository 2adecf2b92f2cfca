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
	User      *podapi.UserAssertion
	CanEdit   bool // may change the settings (Manage Server, Administrator, or the admin token)
	Saved     bool
	Dir       directory
	Charts    map[string]template.HTML
	ModRole   string
	ModlogCh  string
	Kinds     []kindCount
	GuildPath string
}

type kindCount struct {
	Kind  string
	Count int64
}

func (v dashboardView) Page() dashboardPage { return v.page }

func nameOr(name string, id uint64) string {
	if name == "" {
		return strconv.FormatUint(id, 10)
	}
	return name
}

var dashboardFuncs = template.FuncMap{
	"channel": func(d directory, id uint64) string { return nameOr(d.channel(id), id) },
	"user": func(d directory, id uint64) string {
		if n := d.Users[id]; n != "" {
			return n
		}
		return strconv.FormatUint(id, 10)
	},
	"pct": func(n, total int64) string {
		if total <= 0 {
			return "0"
		}
		return strconv.FormatFloat(100*float64(n)/float64(total), 'f', 1, 64)
	},
}

var dashboardHTML = template.Must(template.New("dashboard").Funcs(dashboardFuncs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot · {{with .Page.Dir.Guild}}{{.}}{{else}}guild {{$.GuildID}}{{end}}</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222;max-width:60rem}table{border-collapse:collapse;margin:.5rem 0 1rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}.k{color:#666}.n{font-size:1.6rem;font-weight:600}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.chart{max-width:100%;height:auto;display:block;margin:.3rem 0 1rem}header{display:flex;justify-content:space-between;align-items:baseline}
.saved{background:#e8f6ec;border:1px solid #27ae60;padding:.4rem .8rem}form label{display:block;margin:.4rem 0}</style></head>
<body><header><h1 id="guild-name">{{with .Page.Dir.Guild}}{{.}}{{else}}Guild {{$.GuildID}}{{end}}</h1>
<p>{{with .Page.User}}signed in as <b id="user">{{.Username}}</b> · <a href="/logout">sign out</a>{{else}}admin token{{end}}</p></header>
<p class="k">guild {{.GuildID}} · served by <b>{{.Owner}}</b> · state {{.State}} · epoch {{.Epoch}} · map revision {{.Revision}}</p>
{{if .Page.Saved}}<p class="saved" id="saved">Settings saved.</p>{{end}}
<div class="cards">
<div class="card"><div class="k">messages</div><div class="n" id="messages">{{.Messages}}</div><div class="k">{{.MessagesLast24h}} in 24 h · {{.MessagesDeleted}} deleted</div></div>
<div class="card"><div class="k">reports</div><div class="n" id="reports">{{.Reports}}</div><div class="k"><span id="open-reports">{{.Activity.OpenReports}}</span> open</div></div>
<div class="card"><div class="k">moderation actions</div><div class="n" id="mod-actions">{{.ModActions}}</div><div class="k">{{range .Page.Kinds}}{{.Kind}} {{.Count}} {{end}}</div></div>
<div class="card"><div class="k">held events</div><div class="n">{{.HeldEvents}}</div></div>
</div>
<h2>Messages, last 48 hours</h2>{{index .Page.Charts "hourly"}}
<h2>Messages, last 30 days</h2>{{index .Page.Charts "daily"}}
<h2>Reports, last 30 days</h2>{{index .Page.Charts "reports"}}
<h2>Moderation actions, last 30 days</h2>{{index .Page.Charts "actions"}}
<h2>Top channels</h2><table id="top-channels"><tr><th>channel</th><th>messages</th><th>share</th></tr>{{$d := .Page.Dir}}{{$m := .Messages}}{{range .TopChannels}}<tr><td>#{{channel $d .ID}}</td><td>{{.Messages}}</td><td>{{pct .Messages $m}} %</td></tr>{{else}}<tr><td colspan=3>none yet</td></tr>{{end}}</table>
<h2>Top authors</h2><table id="top-authors"><tr><th>author</th><th>messages</th></tr>{{range .TopAuthors}}<tr><td>{{user $d .ID}}</td><td>{{.Messages}}</td></tr>{{else}}<tr><td colspan=2>none yet</td></tr>{{end}}</table>
<h2>Recent reports</h2><table><tr><th>when</th><th>reporter</th><th>user</th><th>reason</th></tr>{{range .RecentReports}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{user $d .ReporterID}}</td><td>{{user $d .TargetUserID}}</td><td>{{.Reason}}</td></tr>{{else}}<tr><td colspan=4>none</td></tr>{{end}}</table>
<h2>Recent moderation actions</h2><table><tr><th>when</th><th>action</th><th>user</th></tr>{{range .RecentActions}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{.Kind}}</td><td>{{user $d .UserID}}</td></tr>{{else}}<tr><td colspan=3>none</td></tr>{{end}}</table>
<h2>Settings</h2>
<p>moderator role: <b id="mod-role">{{.Page.ModRole}}</b> · mod-log channel: <b id="modlog-channel">{{.Page.ModlogCh}}</b></p>
{{if .Page.CanEdit}}<form method="post" action="{{.Page.GuildPath}}/settings" id="settings">
{{with .Page.User}}<input type="hidden" name="csrf" value="{{.CSRF}}">{{end}}
<label>Mod-log channel {{if .Page.Dir.Channels}}<select name="modlog_channel" id="modlog-select"><option value="">(keep)</option>{{range .Page.Dir.Channels}}<option value="{{.ID}}">#{{.Name}}</option>{{end}}</select>{{else}}<input name="modlog_channel" placeholder="channel id">{{end}}</label>
<label>Moderator role {{if .Page.Dir.Roles}}<select name="mod_role" id="modrole-select"><option value="">(keep)</option>{{range .Page.Dir.Roles}}<option value="{{.ID}}">{{.Name}}</option>{{end}}</select>{{else}}<input name="mod_role" placeholder="role id">{{end}}</label>
<button type="submit" id="save">Save</button></form>
{{else}}<p class="k">Changing the settings needs Manage Server (like /setup).</p>{{end}}
</body></html>`))

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
	pg := dashboardPage{Dir: dir, Saved: r.URL.Query().Get("saved") == "1", GuildPath: "/guild/" + strconv.FormatUint(id, 10), CanEdit: true,
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
	act := d.Activity
	pg.Charts = map[string]template.HTML{
		"hourly":  barChart("messages per hour", act.MessagesHourly, "#2e86de", "15:04", 6),
		"daily":   barChart("messages per day", act.MessagesDaily, "#2e86de", "Jan 2", 5),
		"reports": barChart("reports per day", act.ReportsDaily, "#e1a100", "Jan 2", 5),
		"actions": actionsChart("moderation actions per day", act.ActionsDaily, "Jan 2", 5),
	}
	view.page = pg
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := dashboardHTML.Execute(w, view); err != nil {
		n.log.Warn("render dashboard", "guild", id, "err", err)
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
