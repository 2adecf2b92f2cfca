package fakediscord

import (
	"crypto/rand"
	"encoding/hex"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The OAuth2 side of the fake (https://discord.com/developers/docs/topics/oauth2):
// the authorization-code flow with a consent page that lists the fake's
// users (pick one to sign in as), the token endpoint, and the user
// endpoints an application calls with the user's access token
// (/users/@me, /users/@me/guilds, /users/@me/guilds/{id}/member).

// User is a person who can sign in to the application through the fake's
// consent page.
type User struct {
	ID     uint64      `json:"id,string"`
	Name   string      `json:"name"`
	About  string      `json:"about,omitempty"` // shown on the consent page
	Guilds []UserGuild `json:"guilds"`
}

// UserGuild is a guild a User is a member of, with their roles there.
type UserGuild struct {
	GuildID uint64   `json:"guild_id,string"`
	Roles   []uint64 `json:"roles,omitempty"`
}

type oauthCode struct {
	user        uint64
	redirectURI string
	scope       string
	expires     time.Time
}

type oauthState struct {
	mu     sync.Mutex
	users  map[uint64]User
	order  []uint64
	codes  map[string]oauthCode
	tokens map[string]uint64 // access token → user
}

func newOAuthState() *oauthState {
	return &oauthState{users: map[uint64]User{}, codes: map[string]oauthCode{}, tokens: map[string]uint64{}}
}

// AddUser adds (or replaces) a user who can sign in, and makes them a member
// of their guilds (unknown guilds are ignored by the guild endpoints).
func (s *Server) AddUser(u User) {
	s.mu.Lock()
	for _, ug := range u.Guilds {
		if g, ok := s.guilds[ug.GuildID]; ok {
			g.join(u.ID, time.Now())
			m := g.members[u.ID]
			if m.patch == nil {
				m.patch = map[string]any{}
			}
			roles := make([]string, 0, len(ug.Roles))
			for _, r := range ug.Roles {
				roles = append(roles, idStr(r))
			}
			m.patch["roles"] = roles
		}
	}
	s.mu.Unlock()
	o := s.oauth
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.users[u.ID]; !ok {
		o.order = append(o.order, u.ID)
	}
	o.users[u.ID] = u
}

// Users lists the users who can sign in, in the order they were added.
func (s *Server) Users() []User {
	o := s.oauth
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]User, 0, len(o.order))
	for _, id := range o.order {
		out = append(out, o.users[id])
	}
	return out
}

// AddRole adds a role to a guild (id 0: a new snowflake) and returns its id.
func (s *Server) AddRole(guildID, roleID uint64, name string, permissions uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.guilds[guildID]
	if !ok {
		return 0, ErrUnknownGuild
	}
	if roleID == 0 {
		roleID = s.ids.next()
	}
	if _, ok := g.role(roleID); !ok {
		g.roles = append(g.roles, Role{ID: roleID, Name: name, Permissions: strconv.FormatUint(permissions, 10)})
	}
	return roleID, nil
}

// Seeded users' ids (deterministic, like the seeded guilds).
const (
	SeedModeratorID = 1200000000000000001
	SeedMemberID    = 1200000000000000002
)

// SeedUsers adds two users over the first three guilds (by creation order):
// "alice" holds the Moderator role (Administrator) in the first, a
// "Helper" role without permissions in the second (a moderator there once
// /setup names Helper the moderator role) and is a plain member of the
// third; "bob" is a plain member of all three. It needs at least one guild.
func (s *Server) SeedUsers() []User {
	s.mu.Lock()
	var gs []*guild
	for _, id := range s.guildOrder {
		if len(gs) == 3 {
			break
		}
		gs = append(gs, s.guilds[id])
	}
	s.mu.Unlock()
	if len(gs) == 0 {
		return nil
	}
	alice := User{ID: SeedModeratorID, Name: "alice", About: "moderator"}
	bob := User{ID: SeedMemberID, Name: "bob", About: "plain member"}
	var about []string
	for i, g := range gs {
		ug := UserGuild{GuildID: g.id}
		switch i {
		case 0:
			for _, r := range g.roles {
				if r.Name == "Moderator" {
					ug.Roles = []uint64{r.ID}
				}
			}
			about = append(about, "Moderator (Administrator) in "+g.name)
		case 1:
			helper, _ := s.AddRole(g.id, g.id+4, "Helper", 0)
			ug.Roles = []uint64{helper}
			about = append(about, "Helper role in "+g.name+" (moderator once /setup names it)")
		default:
			about = append(about, "member of "+g.name)
		}
		alice.Guilds = append(alice.Guilds, ug)
		bob.Guilds = append(bob.Guilds, UserGuild{GuildID: g.id})
	}
	alice.About = strings.Join(about, "; ")
	bob.About = "plain member of the same guilds"
	s.AddUser(alice)
	s.AddUser(bob)
	return []User{alice, bob}
}

var consentPage = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Discord (fake) · authorize</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222;max-width:40rem}button{font:inherit;padding:.4rem 1rem;margin:.2rem 0}li{margin:.6rem 0}.k{color:#666}</style></head>
<body><h1>Authorize modbot</h1>
<p class="k">The fake Discord: pick who signs in. Scopes: {{.Scope}}</p>
<form method="post" action="/oauth2/authorize">
<input type="hidden" name="client_id" value="{{.ClientID}}"><input type="hidden" name="redirect_uri" value="{{.RedirectURI}}">
<input type="hidden" name="state" value="{{.State}}"><input type="hidden" name="scope" value="{{.Scope}}">
<ul>{{range .Users}}<li><button type="submit" name="user_id" value="{{.ID}}" id="user-{{.Name}}">Sign in as {{.Name}}</button> <span class="k">{{.About}}</span></li>{{else}}<li>no users (the fake's SeedUsers or AddUser adds them)</li>{{end}}</ul>
</form></body></html>`))

func (s *Server) oauthRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /oauth2/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if !s.checkAuthorizeParams(w, q.Get("client_id"), q.Get("redirect_uri")) {
			return
		}
		if q.Get("response_type") != "code" {
			http.Error(w, "response_type must be code", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = consentPage.Execute(w, map[string]any{"ClientID": q.Get("client_id"), "RedirectURI": q.Get("redirect_uri"),
			"State": q.Get("state"), "Scope": q.Get("scope"), "Users": s.Users()})
	})
	mux.HandleFunc("POST /oauth2/authorize", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		redirect := r.PostForm.Get("redirect_uri")
		if !s.checkAuthorizeParams(w, r.PostForm.Get("client_id"), redirect) {
			return
		}
		uid, _ := strconv.ParseUint(r.PostForm.Get("user_id"), 10, 64)
		o := s.oauth
		o.mu.Lock()
		_, ok := o.users[uid]
		code := randomToken()
		if ok {
			o.codes[code] = oauthCode{user: uid, redirectURI: redirect, scope: r.PostForm.Get("scope"), expires: time.Now().Add(10 * time.Minute)}
		}
		o.mu.Unlock()
		if !ok {
			http.Error(w, "unknown user", http.StatusBadRequest)
			return
		}
		u, _ := url.Parse(redirect)
		v := u.Query()
		v.Set("code", code)
		if st := r.PostForm.Get("state"); st != "" {
			v.Set("state", st)
		}
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	})
	mux.HandleFunc("POST /api/v9/oauth2/token", s.handleToken)
}

func (s *Server) checkAuthorizeParams(w http.ResponseWriter, clientID, redirect string) bool {
	if clientID != s.cfg.ApplicationID {
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return false
	}
	u, err := url.Parse(redirect)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		http.Error(w, "redirect_uri must be an absolute http(s) URL", http.StatusBadRequest)
		return false
	}
	return true
}

// handleToken is the code exchange (grant_type=authorization_code, client
// credentials in the form or as HTTP Basic auth). A code is single use.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != s.cfg.ApplicationID || secret != s.cfg.ClientSecret {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	if r.PostForm.Get("grant_type") != "authorization_code" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	o := s.oauth
	o.mu.Lock()
	c, ok := o.codes[r.PostForm.Get("code")]
	delete(o.codes, r.PostForm.Get("code"))
	valid := ok && time.Now().Before(c.expires) && c.redirectURI == r.PostForm.Get("redirect_uri")
	tok := randomToken()
	if valid {
		o.tokens[tok] = c.user
	}
	o.mu.Unlock()
	if !valid {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "Invalid \"code\" in request."})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 604800,
		"refresh_token": randomToken(), "scope": c.scope})
}

func (s *Server) oauthUserRoutes() http.Handler {
	mux := http.NewServeMux()
	user := func(w http.ResponseWriter, r *http.Request) (User, bool) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		o := s.oauth
		o.mu.Lock()
		defer o.mu.Unlock()
		u, ok := o.users[o.tokens[tok]]
		if !ok {
			discordError(w, http.StatusUnauthorized, 0, "401: Unauthorized")
		}
		return u, ok
	}
	mux.HandleFunc("GET /api/v9/users/@me", func(w http.ResponseWriter, r *http.Request) {
		if u, ok := user(w, r); ok {
			writeJSON(w, http.StatusOK, map[string]any{"id": idStr(u.ID), "username": u.Name, "global_name": u.Name,
				"discriminator": "0", "avatar": nil})
		}
	})
	mux.HandleFunc("GET /api/v9/users/@me/guilds", func(w http.ResponseWriter, r *http.Request) {
		u, ok := user(w, r)
		if !ok {
			return
		}
		out := []map[string]any{}
		s.mu.Lock()
		for _, ug := range u.Guilds {
			g, ok := s.guilds[ug.GuildID]
			if !ok || !g.isMember(u.ID) {
				continue
			}
			out = append(out, map[string]any{"id": idStr(g.id), "name": g.name, "icon": nil, "owner": g.ownerID == u.ID,
				"permissions": strconv.FormatUint(permissionsLocked(g, u.ID, ug.Roles), 10), "features": []string{}})
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/v9/users/@me/guilds/{gid}/member", func(w http.ResponseWriter, r *http.Request) {
		u, ok := user(w, r)
		if !ok {
			return
		}
		gid, _ := strconv.ParseUint(r.PathValue("gid"), 10, 64)
		s.mu.Lock()
		defer s.mu.Unlock()
		g, ok := s.guilds[gid]
		in := false
		for _, ug := range u.Guilds {
			in = in || ug.GuildID == gid
		}
		if !ok || !in || !g.isMember(u.ID) {
			discordError(w, http.StatusNotFound, 10004, "Unknown Guild")
			return
		}
		m := s.memberLocked(g, u.ID)
		m["user"] = map[string]any{"id": idStr(u.ID), "username": u.Name, "global_name": u.Name, "discriminator": "0", "avatar": nil}
		writeJSON(w, http.StatusOK, m)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		discordError(w, http.StatusNotFound, 0, "404: Not Found")
	})
	return mux
}

// permissionsLocked is the member's guild-level permissions: everything for
// the owner, else @everyone's and their roles' bits together.
func permissionsLocked(g *guild, userID uint64, roles []uint64) uint64 {
	if g.ownerID == userID {
		return 1<<41 - 1
	}
	var p uint64
	if r, ok := g.role(g.id); ok {
		p, _ = strconv.ParseUint(r.Permissions, 10, 64)
	}
	for _, id := range roles {
		if r, ok := g.role(id); ok {
			v, _ := strconv.ParseUint(r.Permissions, 10, 64)
			p |= v
		}
	}
	return p
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
