package systest

import (
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var consentField = regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`)

// Login signs user (a fake Discord user's name, see fakediscord.SeedUsers)
// in to the proxy at proxyURL through the fake's consent page, as a browser
// would, and returns a client holding the session cookie.
func (s *System) Login(ctx context.Context, proxyURL, user string) (*http.Client, error) {
	var uid uint64
	for _, u := range s.Discord.Users() {
		if u.Name == user {
			uid = u.ID
		}
	}
	if uid == 0 {
		return nil, fmt.Errorf("login: the fake Discord has no user %q (SeedUsers adds alice and bob)", user)
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, proxyURL+"/login", nil)
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	resp, err := c.Do(req) // → the fake's consent page
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("login: consent page answered %d: %s", resp.StatusCode, b)
	}
	form := url.Values{}
	for _, m := range consentField.FindAllStringSubmatch(string(b), -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	form.Set("user_id", strconv.FormatUint(uid, 10)) // the page's buttons match the pattern too
	req, err = http.NewRequestWithContext(ctx, http.MethodPost, s.DiscordURL+"/oauth2/authorize", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err = c.Do(req) // → /callback → /
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	resp.Body.Close()
	pu, _ := url.Parse(proxyURL)
	for _, ck := range jar.Cookies(pu) {
		if ck.Name == "modbot_session" {
			return c, nil
		}
	}
	return nil, fmt.Errorf("login: no session cookie after the callback (last answer %d from %s)", resp.StatusCode, resp.Request.URL)
}
