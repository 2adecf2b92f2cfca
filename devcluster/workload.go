package devcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/fsm"
)

// startWorkload starts the fake Discord, the gateway pods and the proxy.
func startWorkload(ctx context.Context, o Options, sup *Supervisor, configURLs []string, env []string) ([]*Process, string, error) {
	if o.Gateways == 0 {
		return nil, "", nil
	}
	discordURL := "http://" + o.DiscordAddr
	keyFile := filepath.Join(o.Dir, "discord-public-key")
	fake := &Process{Name: "fakediscord", URL: discordURL, Env: env, Args: []string{"fakediscord",
		"--addr", o.DiscordAddr, "--shards", fmt.Sprint(o.Shards), "--guilds", fmt.Sprint(o.Guilds),
		"--public-key-file", keyFile}}
	if o.Proxy {
		// Interactions reach the bot the way they do with an interactions
		// endpoint URL configured: signed webhooks through the proxy.
		fake.Args = append(fake.Args, "--interactions-url", "http://"+o.ProxyAddr+"/webhooks/discord")
	}
	if err := sup.Start(ctx, fake); err != nil {
		return nil, "", err
	}
	if err := waitHTTP(ctx, discordURL+"/_fake/guilds", 30*time.Second); err != nil {
		return nil, "", fmt.Errorf("fake discord: %w", err)
	}
	procs := []*Process{fake}
	for i := 0; i < o.Gateways; i++ {
		// Each gateway has its replication sidecar (Litestream, its own
		// process) with a file replica; a gateway whose database is gone
		// restores it from there before it starts.
		id := fmt.Sprintf("gateway-%d", i)
		addr := fmt.Sprintf("%s:%d", o.Host, o.GatewayBasePort+i)
		db := filepath.Join(o.Dir, id, "modbot.db")
		metrics := fmt.Sprintf("%s:%d", o.Host, o.GatewayBasePort+100+i)
		side := &Process{Name: "replicate-" + id, URL: "http://" + metrics + "/metrics", Env: env, Args: []string{"replicate",
			"--db", db, "--replica", replicaURL(o.Dir, id), "--metrics-addr", metrics}}
		if err := sup.Start(ctx, side); err != nil {
			return nil, "", err
		}
		p := &Process{Name: id, URL: "http://" + addr, Env: env, Args: []string{"gateway", "--id", id,
			"--data-dir", filepath.Join(o.Dir, id), "--http-addr", addr,
			"--config", strings.Join(configURLs, ","), "--discord-url", discordURL, "--discord-token", "fake-token",
			"--restore-from", replicaURL(o.Dir, id), "--replication-status", "http://" + metrics + "/healthz"}}
		if err := sup.Start(ctx, p); err != nil {
			return nil, "", err
		}
		procs = append(procs, side, p)
	}
	if o.Proxy {
		sessionKey, err := EnsureSessionKey(o.Dir)
		if err != nil {
			return nil, "", err
		}
		key, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("read the fake's public key: %w", err)
		}
		p := &Process{Name: "proxy", URL: "http://" + o.ProxyAddr, Env: env, Args: []string{"proxy",
			"--http-addr", o.ProxyAddr, "--config", strings.Join(configURLs, ","),
			"--discord-public-key", strings.TrimSpace(string(key)),
			"--discord-client-id", fakeClientID, "--discord-client-secret", fakeClientSecret, "--discord-url", discordURL,
			"--session-key", sessionKey, "--public-url", "http://" + o.ProxyAddr,
			"--operators", fmt.Sprint(fakediscord.SeedModeratorID)}}
		if err := sup.Start(ctx, p); err != nil {
			return nil, "", err
		}
		procs = append(procs, p)
	}
	return procs, discordURL, nil
}

func waitHTTP(ctx context.Context, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering after %s: %v", url, d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitGateways waits until the pods are registered and every shard is held.
func waitGateways(ctx context.Context, c *assignments.Client, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st, err := c.Status(ctx)
		if err == nil {
			active := 0
			for _, p := range st.Pods {
				if p.State == fsm.PodActive && len(p.Shards) > 0 {
					active++
				}
			}
			if active >= n && st.Guilds > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("%d gateways not all active with shards after 60s", n)
}

func printTryCommands(ctx context.Context, o Options, c *assignments.Client, pgURL string) {
	g, err := c.Guilds(ctx, "")
	if err != nil || len(g.Guilds) == 0 {
		return
	}
	guild := g.Guilds[0]
	target := "1"
	if strings.HasSuffix(guild.Owner, "-1") {
		target = "0"
	}
	fmt.Fprintf(o.Out, "\ntry:\n  ./bin/modbotctl status\n  ./bin/modbotctl guilds\n  ./bin/modbotctl move-guild %d --to %s\n", guild.ID, target)
	base := "http://" + o.ProxyAddr
	if !o.Proxy {
		base = fmt.Sprintf("http://%s:%d", o.Host, o.GatewayBasePort)
	}
	// Dashboards are private: the admin token reads any of them (Discord
	// login for moderators is issue 16).
	fmt.Fprintf(o.Out, "  curl -H \"Authorization: Bearer $(cat %s)\" -H 'Accept: application/json' %s/guild/%d/dashboard\n",
		filepath.Join(o.Dir, "token"), base, guild.ID)
	if pgURL != "" {
		fmt.Fprintf(o.Out, "  psql '%s' -c 'SELECT owner, count(*) FROM guild_assignments GROUP BY owner'   # the Postgres mirror\n", pgURL)
	}
	if o.Traffic > 0 {
		fmt.Fprintf(o.Out, "\nsynthetic traffic: %.0f messages/s plus some reports and moderation events (--traffic 0 turns it off)\n", o.Traffic)
	}
}

// runTraffic sends synthetic chatter through the fake Discord's control API:
// messages, and now and then a ban, a member leaving or a /report.
func runTraffic(ctx context.Context, o Options, discordURL string) {
	var guilds []struct {
		ID string `json:"id"`
	}
	resp, err := http.Get(discordURL + "/_fake/guilds")
	if err != nil {
		o.Log.Warn("traffic: list guilds", "err", err)
		return
	}
	_ = json.NewDecoder(resp.Body).Decode(&guilds)
	resp.Body.Close()
	if len(guilds) == 0 {
		return
	}
	interval := time.Duration(float64(time.Second) / o.Traffic)
	t := time.NewTicker(interval)
	defer t.Stop()
	post := func(path string, body any) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, discordURL+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if r, err := http.DefaultClient.Do(req); err == nil {
			r.Body.Close()
		}
	}
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g := guilds[rand.IntN(len(guilds))].ID
		user := fmt.Sprint(100000 + rand.IntN(500))
		switch {
		case i%200 == 199:
			post("/_fake/guilds/"+g+"/bans", map[string]string{"user_id": user, "reason": "spam"})
		case i%150 == 149:
			post("/_fake/guilds/"+g+"/members/"+user+"/remove", nil)
		case i%100 == 99:
			post("/_fake/interactions", map[string]any{"guild_id": g, "name": "report", "options": map[string]string{"user": user, "reason": "being rude"}})
		default:
			post("/_fake/guilds/"+g+"/messages", map[string]string{"author_id": user, "content": "hello from the synthetic chatter"})
		}
	}
}
