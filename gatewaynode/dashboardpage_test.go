package gatewaynode

import (
	"bytes"
	"html/template"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/podapi"
)

// referencePage is the dashboard page as html/template writes it: the
// oracle of appendDashboardPage (which replaced it to save the template's
// reflection on every load).
var referencePage = template.Must(template.New("dashboard").Funcs(template.FuncMap{
	"channel": func(d directory, id uint64) string { return nameOr(d.channel(id), id) },
	"user":    func(d directory, id uint64) string { return d.user(id) },
	"pct":     pct,
}).Parse(`<!doctype html>
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
<h2>Messages, last 48 hours</h2>{{.Charts}}
<h2>Top channels</h2><table id="top-channels"><tr><th>channel</th><th>messages</th><th>share</th></tr>{{$d := .Page.Dir}}{{$m := .Messages}}{{range .TopChannels}}<tr><td>#{{channel $d .ID}}</td><td>{{.Messages}}</td><td>{{pct .Messages $m}} %</td></tr>{{else}}<tr><td colspan=3>none yet</td></tr>{{end}}</table>
<h2>Top authors</h2><table id="top-authors"><tr><th>author</th><th>messages</th></tr>{{range .TopAuthors}}<tr><td>{{user $d .ID}}</td><td>{{.Messages}}</td></tr>{{else}}<tr><td colspan=2>none yet</td></tr>{{end}}</table>
<h2>Recent reports</h2><table><tr><th>when</th><th>reporter</th><th>user</th><th>reason</th></tr>{{range .RecentReports}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{user $d .ReporterID}}</td><td>{{user $d .TargetUserID}}</td><td>{{.Reason}}</td></tr>{{else}}<tr><td colspan=4>none</td></tr>{{end}}</table>
<h2>Recent moderation actions</h2><table><tr><th>when</th><th>action</th><th>user</th></tr>{{range .RecentActions}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{.Kind}}</td><td>{{user $d .UserID}}</td></tr>{{else}}<tr><td colspan=3>none</td></tr>{{end}}</table>
<h2>Settings</h2>
<p>moderator role: <b id="mod-role">{{.Page.ModRole}}</b> · mod-log channel: <b id="modlog-channel">{{.Page.ModlogCh}}</b></p>
{{if .Page.CanEdit}}<form method="post" action="/guild/{{.GuildID}}/settings" id="settings">
{{with .Page.User}}<input type="hidden" name="csrf" value="{{.CSRF}}">{{end}}
<label>Mod-log channel {{if .Page.Dir.Channels}}<select name="modlog_channel" id="modlog-select"><option value="">(keep)</option>{{range .Page.Dir.Channels}}<option value="{{.ID}}">#{{.Name}}</option>{{end}}</select>{{else}}<input name="modlog_channel" placeholder="channel id">{{end}}</label>
<label>Moderator role {{if .Page.Dir.Roles}}<select name="mod_role" id="modrole-select"><option value="">(keep)</option>{{range .Page.Dir.Roles}}<option value="{{.ID}}">{{.Name}}</option>{{end}}</select>{{else}}<input name="mod_role" placeholder="role id">{{end}}</label>
<button type="submit" id="save">Save</button></form>
{{else}}<p class="k">Changing the settings needs Manage Server (like /setup).</p>{{end}}
</body></html>`))

// templateView is what referencePage reads: the page's state exported,
// its charts (with their headings) as the trusted HTML they are.
type templateView struct {
	dashboardView
	Page   dashboardPage
	Charts template.HTML
}

func referenceRender(t testing.TB, v dashboardView) string {
	t.Helper()
	tv := templateView{dashboardView: v, Page: v.page, Charts: template.HTML(appendCharts(nil, v.Activity))}
	var b bytes.Buffer
	if err := referencePage.Execute(&b, tv); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// drawCharts draws v's charts afresh for appendDashboardPage.
func drawCharts(v dashboardView) func([]byte) []byte {
	return func(b []byte) []byte { return appendCharts(b, v.Activity) }
}

// hostile is a name as a Discord user could choose it: markup, entities,
// quotes, a plus, NUL, non-ASCII and invalid UTF-8 included.
func hostile(rng *rand.Rand) string {
	parts := []string{"<script>alert(1)</script>", "&amp;", `"`, "'", "+", "\x00", "é", "€", "\xff", "a", "mod team", "<b", "/>", "{{.}}", " "}
	var b strings.Builder
	for range rng.IntN(5) {
		b.WriteString(parts[rng.IntN(len(parts))])
	}
	return b.String()
}

func randomDashboardView(rng *rand.Rand) dashboardView {
	ids := func(n int) []uint64 {
		out := make([]uint64, n)
		for i := range out {
			out[i] = rng.Uint64N(1 << 62)
		}
		return out
	}
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC).Add(-time.Duration(rng.IntN(1e6)) * time.Second)
	users := ids(6)
	dir := directory{Users: map[uint64]string{}}
	if rng.IntN(2) == 0 {
		dir.Guild = hostile(rng)
	}
	for _, u := range users {
		if rng.IntN(3) != 0 {
			dir.Users[u] = hostile(rng)
		}
	}
	for _, id := range ids(rng.IntN(4)) {
		dir.Channels = append(dir.Channels, namedID{ID: id, Name: hostile(rng)})
	}
	for _, id := range ids(rng.IntN(4)) {
		dir.Roles = append(dir.Roles, namedID{ID: id, Name: hostile(rng)})
	}
	user := func() uint64 { return users[rng.IntN(len(users))] }
	d := guildstore.Dashboard{GuildID: rng.Uint64(), Epoch: rng.Uint64N(100), Messages: rng.Int64N(1e9), MessagesDeleted: rng.Int64N(1e6),
		MessagesLast24h: rng.Int64N(1e6), Reports: rng.Int64N(1e4), ModActions: rng.Int64N(1e4), HeldEvents: rng.Int64N(10)}
	d.Activity.OpenReports = rng.Int64N(100)
	series := func(n int, step time.Duration) guildstore.Series {
		sr := guildstore.Series{Start: at.Truncate(step), Step: step, Counts: make([]int64, n)}
		for i := range sr.Counts {
			if rng.IntN(3) == 0 {
				sr.Counts[i] = rng.Int64N(1 << uint(rng.IntN(40)))
			}
		}
		return sr
	}
	d.Activity.MessagesHourly, d.Activity.MessagesDaily = series(48, time.Hour), series(30, 24*time.Hour)
	d.Activity.ReportsDaily, d.Activity.ActionsDaily = series(30, 24*time.Hour), map[string]guildstore.Series{}
	for range rng.IntN(4) {
		kinds := []string{guildstore.ActionBan, guildstore.ActionKick, guildstore.ActionTimeout, "<odd & kind>"}
		d.Activity.ActionsDaily[kinds[rng.IntN(len(kinds))]] = series(30, 24*time.Hour)
	}
	for range rng.IntN(11) {
		ch := rng.Uint64N(1 << 62)
		if len(dir.Channels) > 0 && rng.IntN(2) == 0 {
			ch = dir.Channels[rng.IntN(len(dir.Channels))].ID
		}
		d.TopChannels = append(d.TopChannels, guildstore.IDCount{ID: ch, Messages: rng.Int64N(d.Messages + 1)})
	}
	for range rng.IntN(11) {
		d.TopAuthors = append(d.TopAuthors, guildstore.IDCount{ID: user(), Messages: rng.Int64N(1e5)})
	}
	for range rng.IntN(11) {
		d.RecentReports = append(d.RecentReports, guildstore.Report{ReporterID: user(), TargetUserID: user(), Reason: hostile(rng), CreatedAt: at})
	}
	for range rng.IntN(11) {
		d.RecentActions = append(d.RecentActions, guildstore.ModAction{Kind: hostile(rng), UserID: user(), CreatedAt: at})
	}
	pg := dashboardPage{Dir: dir, Saved: rng.IntN(2) == 0, CanEdit: rng.IntN(3) != 0, ModRole: hostile(rng), ModlogCh: hostile(rng)}
	if rng.IntN(3) != 0 {
		pg.User = &podapi.UserAssertion{Username: hostile(rng), CSRF: hostile(rng)}
	}
	for range rng.IntN(4) {
		pg.Kinds = append(pg.Kinds, kindCount{Kind: hostile(rng), Count: rng.Int64N(100)})
	}
	return dashboardView{Dashboard: d, Owner: hostile(rng), State: hostile(rng), Revision: rng.Uint64(), page: pg}
}

// TestDashboardPageIsWhatTheTemplateWrites: for random pages — every name,
// reason, kind, token and owner chosen from markup, quotes, NUL and
// invalid UTF-8; lists empty and full; signed in or with the admin token;
// allowed to edit or not — appendDashboardPage writes exactly the bytes
// html/template writes for the same page, so it escapes everything the
// template escapes, the same way.
func TestDashboardPageIsWhatTheTemplateWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 10000))
	for i := range 2000 {
		v := randomDashboardView(rng)
		want := referenceRender(t, v)
		got := string(appendDashboardPage(nil, v, drawCharts(v)))
		if got != want {
			at := 0
			for at < len(got) && at < len(want) && got[at] == want[at] {
				at++
			}
			lo := max(0, at-80)
			t.Fatalf("page %d differs from the template's at byte %d:\n got …%q\nwant …%q", i, at, got[lo:min(len(got), at+80)], want[lo:min(len(want), at+80)])
		}
		if strings.Contains(got, "<script>") {
			t.Fatalf("page %d carries a name's markup unescaped", i)
		}
	}
}

// BenchmarkDashboardPage compares writing one full page by hand and with
// html/template.
func BenchmarkDashboardPage(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	v := randomDashboardView(rng)
	for len(v.TopAuthors) < 10 || len(v.RecentReports) < 10 {
		v = randomDashboardView(rng)
	}
	b.Run("hand", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf = appendDashboardPage(buf[:0], v, drawCharts(v))
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("html-template", func(b *testing.B) {
		for b.Loop() {
			_ = referenceRender(b, v)
		}
	})
}

// TestChartMarkupConstantsAreTheGeometry: the numbers spelt out for the
// charts' markup are the geometry they are drawn with.
func TestChartMarkupConstantsAreTheGeometry(t *testing.T) {
	for _, c := range []struct {
		s string
		n int
	}{{chartWs, chartW}, {chartHs, chartH}, {padLs, padL}, {labelXs, padL - 4}, {plotRs, chartW - 4}, {labelYs, chartH - 6}} {
		if c.s != strconv.Itoa(c.n) {
			t.Errorf("%q spelt for %d", c.s, c.n)
		}
	}
}

// TestChartsCopiedOnlyForTheActivityTheyWereDrawnFrom: over a run of page
// loads of two guilds whose activity now stays, now changes (a count, the
// hour, a new kind of action), and is scribbled on by its caller after a
// load, the cached charts are always the ones drawn afresh.
func TestChartsCopiedOnlyForTheActivityTheyWereDrawnFrom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var c chartCache
	acts := map[uint64]guildstore.Activity{1: randomDashboardView(rng).Activity, 2: randomDashboardView(rng).Activity}
	for i := range 3000 {
		g := uint64(1 + rng.IntN(2))
		act := acts[g].Clone()
		switch rng.IntN(6) {
		case 0:
			act.MessagesHourly.Counts[rng.IntN(48)]++
		case 1:
			act.MessagesHourly.Start = act.MessagesHourly.Start.Add(time.Hour)
		case 2:
			act.ReportsDaily.Counts[rng.IntN(30)]++
		case 3:
			act.ActionsDaily = map[string]guildstore.Series{guildstore.ActionKick: {Start: act.ReportsDaily.Start, Step: act.ReportsDaily.Step, Counts: slices.Clone(act.ReportsDaily.Counts)}}
		}
		acts[g] = act
		want := string(appendCharts([]byte("page so far|"), act))
		got := c.appendFor([]byte("page so far|"), g, act)
		if string(got) != want {
			t.Fatalf("load %d of guild %d: the charts are not the activity's", i, g)
		}
		act.MessagesDaily.Counts[0] = -7 // the caller's copy, changed after the load
	}
}
