package e2e

import (
	"context"
	"encoding/hex"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/systest"
)

// TestNoComponentLogsASecret runs config nodes, gateway pods and a proxy
// with TLS, logging at debug level, through what makes them log the most:
// start-up, placement, messages, a sign-in with Discord, refused tokens, a
// move. No line carries a token, the bot token, the OAuth client secret,
// the session key or the TLS private key.
func TestNoComponentLogsASecret(t *testing.T) {
	var logs systest.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sys, err := systest.StartSystem(context.Background(), t.TempDir(), systest.SystemOptions{Shards: 2, Gateways: 2, Proxy: true, TLS: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	s := &system{t: t, System: sys}
	gs := s.Discord.Seed(4)
	s.Discord.SeedUsers()
	s.waitSettled(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, g := range gs {
		if _, err := s.Discord.SendMessage(g.ID, 0, 0, "hello"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Login(ctx, s.Proxy.URL, "alice"); err != nil {
		t.Fatal(err)
	}
	// Refused tokens, on each component.
	for _, u := range []string{s.Cluster.URLs()[0] + "/v1/pods", s.URL(s.Gateways[0].Addr()) + "/status", s.Proxy.URL + "/status"} {
		for _, tok := range []string{"", systest.ReadToken + "x", systest.ReadToken} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader("{}"))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			if resp, err := s.HTTP.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}
	g := s.owner(gs[0].ID)
	to := "gateway-0"
	if g.Owner == to {
		to = "gateway-1"
	}
	if _, err := s.Client.Move(ctx, strconv.FormatUint(g.ID, 10), to); err != nil {
		t.Fatal(err)
	}
	s.waitActiveOn(g.ID, to, 30*time.Second)

	key, err := os.ReadFile(s.Dir + "/tls/tls.key")
	if err != nil {
		t.Fatal(err)
	}
	keyBody := strings.Split(strings.TrimSpace(string(key)), "\n")[1] // a line of the PEM's base64
	cfg := s.Discord.Config()
	secrets := map[string]string{
		"admin token":         systest.Token,
		"internal token":      systest.InternalToken,
		"read token":          systest.ReadToken,
		"bot token":           cfg.Token,
		"OAuth client secret": cfg.ClientSecret,
		"session key":         string(systest.SessionKey),
		"session key (hex)":   hex.EncodeToString(systest.SessionKey),
		"TLS private key":     keyBody,
	}
	out := logs.String()
	// The check below proves something only if every component logged.
	for _, line := range []string{"config node started", "gateway pod started", "assignment map synced; ready"} {
		if !strings.Contains(out, line) {
			t.Fatalf("no log line %q: a component's logs were not captured (%d lines)", line, strings.Count(out, "\n"))
		}
	}
	for what, secret := range secrets {
		if secret == "" {
			t.Fatalf("%s is empty", what)
		}
		if i := strings.Index(out, secret); i >= 0 {
			line := out[strings.LastIndex(out[:i], "\n")+1:]
			if j := strings.Index(line, "\n"); j >= 0 {
				line = line[:j]
			}
			t.Errorf("the %s is in the logs: %s", what, line)
		}
	}
	t.Logf("%d log lines, %d bytes, checked for %d secrets", strings.Count(out, "\n"), len(out), len(secrets))
}
