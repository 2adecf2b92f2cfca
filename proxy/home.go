package proxy

import (
	"html/template"
	"net/http"
	"strconv"
)

var homePage = template.Must(template.New("home").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}li{margin:.3rem 0}.k{color:#666}</style></head>
<body><h1>modbot</h1>
{{if .Name}}<p>signed in as <b id="user">{{.Name}}</b> · <a href="/logout">sign out</a>{{if .Operator}} · <a href="/status">cluster status</a>{{end}}</p>
<h2>Your servers</h2><ul id="guilds">{{range .Guilds}}<li><a href="/guild/{{.ID}}/dashboard">{{.Name}}</a>{{if .Manager}} <span class="k">(Manage Server)</span>{{end}}</li>{{else}}<li>none of your servers has modbot</li>{{end}}</ul>
<p class="k">A dashboard opens for members with Manage Server, Administrator or the server's moderator role (/setup).</p>
{{else}}<p><a href="/login" id="login">Sign in with Discord</a> to see your servers' dashboards.</p>{{end}}
</body></html>`))

type homeGuild struct {
	ID      string
	Name    string
	Manager bool
}

// handleHome is the landing page: the signed-in user's servers that modbot
// serves (placed in the map), with links to their dashboards.
func (p *Proxy) handleHome(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	s, ok := p.sessionOf(r)
	if !ok {
		_ = homePage.Execute(w, map[string]any{})
		return
	}
	var guilds []struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		Permissions string `json:"permissions"`
	}
	var list []homeGuild
	if err := p.discordGet(r.Context(), s.AccessToken, "/users/@me/guilds", &guilds); err != nil {
		p.log.Warn("list the user's guilds", "user", s.UserID, "err", err)
	}
	for _, g := range guilds {
		id, err := strconv.ParseUint(g.ID, 10, 64)
		if err != nil {
			continue
		}
		if _, placed := p.cfg.Map.Lookup(id); !placed {
			continue
		}
		perms, _ := strconv.ParseUint(g.Permissions, 10, 64)
		list = append(list, homeGuild{ID: g.ID, Name: g.Name, Manager: perms&0x28 != 0})
	}
	op := false
	for _, id := range p.cfg.Operators {
		op = op || id == s.UserID
	}
	_ = homePage.Execute(w, map[string]any{"Name": s.Username, "Guilds": list, "Operator": op})
}
