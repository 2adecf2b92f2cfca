package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/internal/podapi"
)

// TestDashboardAuthorizationIsDecidedByTheOwnerPod: through the real
// proxy and pod, a user with Administrator reads the dashboard; a plain
// member is refused by the pod (403); a member whose only claim is the
// Helper role is refused until /setup names Helper the moderator role,
// then allowed; and the pod refuses an assertion it did not get from a
// proxy holding the internal token.
func TestDashboardAuthorizationIsDecidedByTheOwnerPod(t *testing.T) {
	s := newSystem(t, 1)
	s.addGateway()
	gs := s.Discord.Seed(3)
	s.Discord.SeedUsers()
	s.waitSettled(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	px, err := s.StartProxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := s.Discord.SendMessage(gs[0].ID, 0, 0, fmt.Sprintf("hello %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	alice, err := s.Login(ctx, px.URL, "alice")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.Login(ctx, px.URL, "bob")
	if err != nil {
		t.Fatal(err)
	}
	get := func(c *http.Client, g fakediscord.Guild) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/guild/%d/dashboard", px.URL, g.ID), nil)
		req.Header.Set("Accept", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var last string
	defer func() { t.Logf("last dashboard answer: %s", last) }()
	waitFor(t, 20*time.Second, "alice's dashboard of guild 0 counts 5 messages", func() bool {
		st, body := get(alice, gs[0])
		var d struct {
			Messages int64 `json:"messages"`
		}
		last = fmt.Sprintf("%d %.300s", st, body)
		return st == 200 && json.Unmarshal([]byte(body), &d) == nil && d.Messages == 5
	})
	if st, body := get(bob, gs[0]); st != http.StatusForbidden || !strings.Contains(body, "moderator role") {
		t.Fatalf("bob (plain member) on guild 0: %d %s, want 403 from the pod", st, body)
	}
	if st, _ := get(alice, gs[1]); st != http.StatusForbidden {
		t.Fatalf("alice (Helper, no moderator role set) on guild 1: %d, want 403", st)
	}
	helper := gs[1].ID + 4
	rec, err := s.Discord.DeliverInteraction(ctx, fakediscord.InteractionSpec{GuildID: gs[1].ID, Name: "setup", UserID: 7, Permissions: "32",
		Options: json.RawMessage(fmt.Sprintf(`{"mod_role":"%d"}`, helper))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/setup mod_role:Helper → interaction %s", rec.ID)
	waitFor(t, 20*time.Second, "alice allowed on guild 1 once Helper is the moderator role", func() bool {
		st, _ := get(alice, gs[1])
		return st == http.StatusOK
	})
	if st, _ := get(bob, gs[1]); st != http.StatusForbidden {
		t.Fatalf("bob on guild 1 after /setup: %d, want 403", st)
	}
	// The page: counts, a server-rendered chart, names instead of ids.
	page := func(c *http.Client, g fakediscord.Guild) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/guild/%d/dashboard", px.URL, g.ID), nil)
		req.Header.Set("Accept", "text/html")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	st, html := page(alice, gs[0])
	for _, want := range []string{`id="messages">5<`, `<svg class="chart"`, `data-count="5"`, `#general`, `signed in as <b id="user">alice`, `<h1 id="guild-name">` + gs[0].Name + `</h1>`, `name="csrf" value="`} {
		if st != http.StatusOK || !strings.Contains(html, want) {
			t.Fatalf("alice's dashboard page (%d) lacks %q:\n%.3000s", st, want, html)
		}
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(html)[1]
	modlog := gs[0].Channels[1].ID
	post := func(c *http.Client, form url.Values) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/guild/%d/settings", px.URL, gs[0].ID), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "text/html")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	settings := func() uint64 {
		_, body := get(alice, gs[0])
		var d struct {
			Settings struct {
				Modlog uint64 `json:"modlog_channel_id,string"`
			} `json:"settings"`
		}
		_ = json.Unmarshal([]byte(body), &d)
		return d.Settings.Modlog
	}
	for name, form := range map[string]url.Values{
		"no CSRF token":      {"modlog_channel": {fmt.Sprint(modlog)}},
		"a wrong CSRF token": {"modlog_channel": {fmt.Sprint(modlog)}, "csrf": {csrf + "x"}},
	} {
		if st, body := post(alice, form); st != http.StatusForbidden || settings() == modlog {
			t.Fatalf("settings form with %s: %d %s, mod-log now %d; want 403 and no change", name, st, body, settings())
		}
	}
	if st, _ := post(bob, url.Values{"modlog_channel": {fmt.Sprint(modlog)}, "csrf": {csrf}}); st != http.StatusForbidden {
		t.Fatalf("bob posting alice's CSRF token: %d, want 403", st)
	}
	if st, body := post(alice, url.Values{"modlog_channel": {"12345"}, "csrf": {csrf}}); st != http.StatusBadRequest {
		t.Fatalf("a channel of no guild: %d %s, want 400", st, body)
	}
	if st, body := post(alice, url.Values{"modlog_channel": {fmt.Sprint(modlog)}, "csrf": {csrf}}); st != http.StatusOK || !strings.Contains(body, `id="saved"`) {
		t.Fatalf("settings form: %d %.500s, want the dashboard with 'saved' after the redirect", st, body)
	}
	if got := settings(); got != modlog {
		t.Fatalf("mod-log channel %d after the form, want %d", got, modlog)
	}
	// Straight to the pod: an assertion signed with another key, and one
	// for another guild, are refused.
	own := s.owner(gs[0].ID)
	pod, _ := px.Watcher.Pod(own.Owner)
	forged, _ := podapi.SignAssertion("not-the-internal-token", podapi.UserAssertion{UserID: 1, GuildID: gs[0].ID,
		Permissions: podapi.PermAdministrator, Expires: time.Now().Add(time.Minute).Unix()})
	other, _ := podapi.SignAssertion(token, podapi.UserAssertion{UserID: 1, GuildID: gs[2].ID,
		Permissions: podapi.PermAdministrator, Expires: time.Now().Add(time.Minute).Unix()})
	expired, _ := podapi.SignAssertion(token, podapi.UserAssertion{UserID: 1, GuildID: gs[0].ID,
		Permissions: podapi.PermAdministrator, Expires: time.Now().Add(-time.Minute).Unix()})
	for name, a := range map[string]string{"forged": forged, "another guild's": other, "expired": expired} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/guild/%d/dashboard", s.URL(pod.Addr), gs[0].ID), nil)
		req.Header.Set(podapi.HeaderUserAssertion, a)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s assertion straight to the pod: %d, want 401", name, resp.StatusCode)
		}
	}
}
