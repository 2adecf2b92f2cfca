package gatewaynode

import (
	"html/template"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// dashboardView is GET /guild/{id}/dashboard: the guild's activity with the
// pod that served it.
type dashboardView struct {
	guildstore.Dashboard
	Owner    string `json:"owner"`
	State    string `json:"state"`
	Revision uint64 `json:"map_revision"`
}

var dashboardHTML = template.Must(template.New("dashboard").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot · guild {{.GuildID}}</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}.k{color:#666}.n{font-size:1.6rem;font-weight:600}</style></head>
<body><h1>Guild {{.GuildID}}</h1>
<p class="k">served by <b>{{.Owner}}</b> · state {{.State}} · epoch {{.Epoch}} · map revision {{.Revision}}</p>
<table><tr><th>messages</th><th>deleted</th><th>edited</th><th>last 24 h</th><th>reports</th><th>mod actions</th><th>held events</th></tr>
<tr><td class="n">{{.Messages}}</td><td>{{.MessagesDeleted}}</td><td>{{.MessagesEdited}}</td><td>{{.MessagesLast24h}}</td>
<td class="n">{{.Reports}}</td><td class="n">{{.ModActions}}</td><td>{{.HeldEvents}}</td></tr></table>
<h2>Settings</h2><p>moderator role: {{if .Settings.ModRoleID}}{{.Settings.ModRoleID}}{{else}}not set{{end}} ·
mod-log channel: {{if .Settings.ModlogChannelID}}{{.Settings.ModlogChannelID}}{{else}}not set (use /setup){{end}}</p>
<h2>Top channels</h2><table><tr><th>channel</th><th>messages</th></tr>{{range .TopChannels}}<tr><td>{{.ID}}</td><td>{{.Messages}}</td></tr>{{else}}<tr><td colspan=2>none yet</td></tr>{{end}}</table>
<h2>Recent reports</h2><table><tr><th>when</th><th>reporter</th><th>user</th><th>reason</th></tr>{{range .RecentReports}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{.ReporterID}}</td><td>{{.TargetUserID}}</td><td>{{.Reason}}</td></tr>{{else}}<tr><td colspan=4>none</td></tr>{{end}}</table>
<h2>Recent moderation actions</h2><table><tr><th>when</th><th>action</th><th>user</th></tr>{{range .RecentActions}}<tr><td>{{.CreatedAt.Format "2006-01-02 15:04"}}</td><td>{{.Kind}}</td><td>{{.UserID}}</td></tr>{{else}}<tr><td colspan=3>none</td></tr>{{end}}</table>
</body></html>`))
