package gatewaynode

import (
	"strconv"
	"sync"
)

// The dashboard page is written by hand rather than by html/template, whose
// reflection per field and call was a fifth of a page load. It escapes the
// way html/template does in every context the page uses (text, <title>,
// quoted attributes), and TestDashboardPageIsWhatTheTemplateWrites holds
// the output byte for byte to html/template's rendering of the same page
// (the template is kept in that test), hostile names included.

// pageBufs recycles page buffers (a page is ~20 KB); one that grew past
// maxPooledPage (names by the thousand) is left to the collector.
var pageBufs = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

const maxPooledPage = 256 << 10

// htmlEscapes is html/template's replacement table for text, RCDATA and
// quoted attribute values: these bytes and nothing else are replaced.
var htmlEscapes = [256]string{
	0:    "\uFFFD",
	'"':  "&#34;",
	'&':  "&amp;",
	'\'': "&#39;",
	'+':  "&#43;",
	'<':  "&lt;",
	'>':  "&gt;",
}

// appendEscaped appends s escaped for HTML text or a quoted attribute.
func appendEscaped(b []byte, s string) []byte {
	last := 0
	for i := 0; i < len(s); i++ {
		if r := htmlEscapes[s[i]]; r != "" {
			b = append(b, s[last:i]...)
			b = append(b, r...)
			last = i + 1
		}
	}
	return append(b, s[last:]...)
}

// appendPicker appends the form's choice of name: a select of opts (each
// shown as prefix+name) after a "(keep)" option, or without any opts a
// field for the id.
func appendPicker(b []byte, name, id, placeholder, prefix string, opts []namedID) []byte {
	if len(opts) == 0 {
		return append(append(append(append(b, `<input name="`...), name...), `" placeholder="`...), placeholder+`">`...)
	}
	b = append(append(append(append(b, `<select name="`...), name...), `" id="`...), id...)
	b = append(b, `"><option value="">(keep)</option>`...)
	for _, o := range opts {
		b = append(b, `<option value="`...)
		b = appendUint(b, o.ID)
		b = append(append(b, `">`...), prefix...)
		b = appendEscaped(b, o.Name)
		b = append(b, "</option>"...)
	}
	return append(b, "</select>"...)
}

// appendRow appends a table row of cells, each escaped.
func appendRow(b []byte, cells ...string) []byte {
	b = append(b, "<tr>"...)
	for _, c := range cells {
		b = append(b, "<td>"...)
		b = appendEscaped(b, c)
		b = append(b, "</td>"...)
	}
	return append(b, "</tr>"...)
}

// rowTime is how the tables show when something happened.
const rowTime = "2006-01-02 15:04"

func appendUint(b []byte, n uint64) []byte { return strconv.AppendUint(b, n, 10) }
func appendInt(b []byte, n int64) []byte   { return strconv.AppendInt(b, n, 10) }

// pct is the share n of total in percent with one decimal ("0" without a total).
func pct(n, total int64) string {
	if total <= 0 {
		return "0"
	}
	return strconv.FormatFloat(100*float64(n)/float64(total), 'f', 1, 64)
}

func (d directory) user(id uint64) string {
	if n := d.Users[id]; n != "" {
		return n
	}
	return strconv.FormatUint(id, 10)
}

const dashboardStyle = `<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222;max-width:60rem}table{border-collapse:collapse;margin:.5rem 0 1rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}.k{color:#666}.n{font-size:1.6rem;font-weight:600}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.chart{max-width:100%;height:auto;display:block;margin:.3rem 0 1rem}header{display:flex;justify-content:space-between;align-items:baseline}
.saved{background:#e8f6ec;border:1px solid #27ae60;padding:.4rem .8rem}form label{display:block;margin:.4rem 0}</style>`

// appendDashboardPage appends the HTML page of v to b; charts appends the
// activity's charts with their headings (appendCharts, or chartCache's copy).
func appendDashboardPage(b []byte, v dashboardView, charts func([]byte) []byte) []byte {
	pg, d := v.page, v.page.Dir
	guildName := func(b []byte, word string) []byte {
		if d.Guild != "" {
			return appendEscaped(b, d.Guild)
		}
		return appendUint(append(b, word...), v.GuildID)
	}
	b = append(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>modbot · "...)
	b = guildName(b, "guild ")
	b = append(b, "</title>\n"+dashboardStyle+"</head>\n<body><header><h1 id=\"guild-name\">"...)
	b = guildName(b, "Guild ")
	b = append(b, "</h1>\n<p>"...)
	if pg.User != nil {
		b = append(b, `signed in as <b id="user">`...)
		b = appendEscaped(b, pg.User.Username)
		b = append(b, `</b> · <a href="/logout">sign out</a>`...)
	} else {
		b = append(b, "admin token"...)
	}
	b = append(b, "</p></header>\n<p class=\"k\">guild "...)
	b = appendUint(b, v.GuildID)
	b = append(b, " · served by <b>"...)
	b = appendEscaped(b, v.Owner)
	b = append(b, "</b> · state "...)
	b = appendEscaped(b, v.State)
	b = append(b, " · epoch "...)
	b = appendUint(b, v.Epoch)
	b = append(b, " · map revision "...)
	b = appendUint(b, v.Revision)
	b = append(b, "</p>\n"...)
	if pg.Saved {
		b = append(b, `<p class="saved" id="saved">Settings saved.</p>`...)
	}
	b = append(b, "\n<div class=\"cards\">\n<div class=\"card\"><div class=\"k\">messages</div><div class=\"n\" id=\"messages\">"...)
	b = appendInt(b, v.Messages)
	b = append(b, `</div><div class="k">`...)
	b = appendInt(b, v.MessagesLast24h)
	b = append(b, " in 24 h · "...)
	b = appendInt(b, v.MessagesDeleted)
	b = append(b, " deleted</div></div>\n<div class=\"card\"><div class=\"k\">reports</div><div class=\"n\" id=\"reports\">"...)
	b = appendInt(b, v.Reports)
	b = append(b, `</div><div class="k"><span id="open-reports">`...)
	b = appendInt(b, v.Activity.OpenReports)
	b = append(b, "</span> open</div></div>\n<div class=\"card\"><div class=\"k\">moderation actions</div><div class=\"n\" id=\"mod-actions\">"...)
	b = appendInt(b, v.ModActions)
	b = append(b, `</div><div class="k">`...)
	for _, k := range pg.Kinds {
		b = appendEscaped(b, k.Kind)
		b = append(b, ' ')
		b = appendInt(b, k.Count)
		b = append(b, ' ')
	}
	b = append(b, "</div></div>\n<div class=\"card\"><div class=\"k\">held events</div><div class=\"n\">"...)
	b = appendInt(b, v.HeldEvents)
	b = append(b, "</div></div>\n</div>\n<h2>Messages, last 48 hours</h2>"...)
	b = charts(b)
	b = append(b, "\n<h2>Top channels</h2><table id=\"top-channels\"><tr><th>channel</th><th>messages</th><th>share</th></tr>"...)
	for _, c := range v.TopChannels {
		b = appendRow(b, "#"+nameOr(d.channel(c.ID), c.ID), strconv.FormatInt(c.Messages, 10), pct(c.Messages, v.Messages)+" %")
	}
	if len(v.TopChannels) == 0 {
		b = append(b, "<tr><td colspan=3>none yet</td></tr>"...)
	}
	b = append(b, "</table>\n<h2>Top authors</h2><table id=\"top-authors\"><tr><th>author</th><th>messages</th></tr>"...)
	for _, a := range v.TopAuthors {
		b = appendRow(b, d.user(a.ID), strconv.FormatInt(a.Messages, 10))
	}
	if len(v.TopAuthors) == 0 {
		b = append(b, "<tr><td colspan=2>none yet</td></tr>"...)
	}
	b = append(b, "</table>\n<h2>Recent reports</h2><table><tr><th>when</th><th>reporter</th><th>user</th><th>reason</th></tr>"...)
	for _, r := range v.RecentReports {
		b = appendRow(b, r.CreatedAt.Format(rowTime), d.user(r.ReporterID), d.user(r.TargetUserID), r.Reason)
	}
	if len(v.RecentReports) == 0 {
		b = append(b, "<tr><td colspan=4>none</td></tr>"...)
	}
	b = append(b, "</table>\n<h2>Recent moderation actions</h2><table><tr><th>when</th><th>action</th><th>user</th></tr>"...)
	for _, a := range v.RecentActions {
		b = appendRow(b, a.CreatedAt.Format(rowTime), a.Kind, d.user(a.UserID))
	}
	if len(v.RecentActions) == 0 {
		b = append(b, "<tr><td colspan=3>none</td></tr>"...)
	}
	b = append(b, "</table>\n<h2>Settings</h2>\n<p>moderator role: <b id=\"mod-role\">"...)
	b = appendEscaped(b, pg.ModRole)
	b = append(b, "</b> · mod-log channel: <b id=\"modlog-channel\">"...)
	b = appendEscaped(b, pg.ModlogCh)
	b = append(b, "</b></p>\n"...)
	if !pg.CanEdit {
		b = append(b, "<p class=\"k\">Changing the settings needs Manage Server (like /setup).</p>\n</body></html>"...)
		return b
	}
	b = append(b, `<form method="post" action="/guild/`...)
	b = appendUint(b, v.GuildID)
	b = append(b, "/settings\" id=\"settings\">\n"...)
	if pg.User != nil {
		b = append(b, `<input type="hidden" name="csrf" value="`...)
		b = appendEscaped(b, pg.User.CSRF)
		b = append(b, `">`...)
	}
	b = append(b, "\n<label>Mod-log channel "...)
	b = appendPicker(b, "modlog_channel", "modlog-select", "channel id", "#", d.Channels)
	b = append(b, "</label>\n<label>Moderator role "...)
	b = appendPicker(b, "mod_role", "modrole-select", "role id", "", d.Roles)
	b = append(b, "</label>\n<button type=\"submit\" id=\"save\">Save</button></form>\n\n</body></html>"...)
	return b
}
