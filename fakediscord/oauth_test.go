package fakediscord

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// authorize runs the consent step for user and returns the code.
func (h *harness) authorize(user uint64, redirect string) string {
	h.t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.PostForm(h.base+"/oauth2/authorize", url.Values{"client_id": {h.srv.Config().ApplicationID},
		"redirect_uri": {redirect}, "state": {"s1"}, "scope": {"identify guilds"}, "user_id": {strconv.FormatUint(user, 10)}})
	if err != nil {
		h.t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "s1" || loc.Query().Get("code") == "" {
		h.t.Fatalf("consent: %d to %s", resp.StatusCode, loc)
	}
	return loc.Query().Get("code")
}

func (h *harness) token(code, redirect, secret string) (int, map[string]any) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.base+"/api/v10/oauth2/token", strings.NewReader(url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(h.srv.Config().ApplicationID, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestOAuthCodeFlowAndUserEndpoints(t *testing.T) {
	h := newHarness(t, Config{})
	gs := h.srv.Seed(4)
	h.srv.SeedUsers()
	const redirect = "http://127.0.0.1:1/callback"
	secret := h.srv.Config().ClientSecret
	if st, _ := h.token(h.authorize(SeedModeratorID, redirect), redirect, "wrong"); st != http.StatusUnauthorized {
		t.Fatalf("wrong client secret: %d, want 401", st)
	}
	if st, _ := h.token(h.authorize(SeedModeratorID, redirect), "http://127.0.0.1:2/callback", secret); st != http.StatusBadRequest {
		t.Fatalf("another redirect_uri: %d, want 400", st)
	}
	code := h.authorize(SeedModeratorID, redirect)
	st, tok := h.token(code, redirect, secret)
	if st != http.StatusOK || tok["token_type"] != "Bearer" {
		t.Fatalf("token: %d %v", st, tok)
	}
	if st, _ := h.token(code, redirect, secret); st != http.StatusBadRequest {
		t.Fatalf("a code used twice: %d, want 400", st)
	}
	get := func(auth, path string, v any) int {
		req, _ := http.NewRequest(http.MethodGet, h.base+"/api/v10"+path, nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if v != nil {
			_ = json.Unmarshal(b, v)
		}
		return resp.StatusCode
	}
	bearer := "Bearer " + tok["access_token"].(string)
	var me map[string]any
	if get(bearer, "/users/@me", &me) != 200 || me["username"] != "alice" {
		t.Fatalf("/users/@me with the user's token: %v", me)
	}
	if get("Bot fake-token", "/users/@me", &me) != 200 || me["username"] != "modbot" {
		t.Fatalf("/users/@me with the bot token: %v, want the bot", me)
	}
	if get("Bearer nope", "/users/@me", nil) != http.StatusUnauthorized {
		t.Fatal("an unknown access token was accepted")
	}
	var guilds []struct{ ID, Permissions string }
	get(bearer, "/users/@me/guilds", &guilds)
	if len(guilds) != 3 {
		t.Fatalf("alice is in %d guilds, want 3", len(guilds))
	}
	for i, g := range guilds {
		p, _ := strconv.ParseUint(g.Permissions, 10, 64)
		if admin := p&0x8 != 0; admin != (i == 0) || g.ID != strconv.FormatUint(gs[i].ID, 10) {
			t.Fatalf("guild %d: %s permissions %#x", i, g.ID, p)
		}
	}
	var mem struct{ Roles []string }
	if get(bearer, "/users/@me/guilds/"+strconv.FormatUint(gs[1].ID, 10)+"/member", &mem) != 200 ||
		len(mem.Roles) != 1 || mem.Roles[0] != strconv.FormatUint(gs[1].ID+4, 10) {
		t.Fatalf("alice's roles in guild 1: %v, want the Helper role", mem.Roles)
	}
	if get(bearer, "/users/@me/guilds/"+strconv.FormatUint(gs[3].ID, 10)+"/member", nil) != http.StatusNotFound {
		t.Fatal("a member object for a guild alice is not in")
	}
}
