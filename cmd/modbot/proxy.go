package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/cli"
	"github.com/modbot/modbot/proxy"
)

func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	cli.Usage(fs, "modbot proxy --http-addr 127.0.0.1:8080 --config http://HOST:PORT[,…] --discord-public-key HEX [--token T] [--internal-token T] [--read-token T] [--webhook-max-skew 5m] [--discord-client-id ID --discord-client-secret S --session-key HEX --public-url URL [--secure-cookies] [--operators ID,…]]")
	var c proxy.Config
	addr := fs.String("http-addr", "127.0.0.1:8080", "listen address host:port (Discord webhooks, dashboards, health, metrics)")
	configURLs := fs.String("config", "", "comma-separated config node URLs to watch the guild → pod map from")
	keyHex := fs.String("discord-public-key", "", "the application's Ed25519 public key (hex, from the Discord developer portal)")
	cli.TokenFlags(fs, &c.Token, &c.InternalToken, &c.ReadToken)
	fs.DurationVar(&c.WebhookMaxSkew, "webhook-max-skew", 5*time.Minute, "refuse (401) a signed interaction whose X-Signature-Timestamp is further than this from this host's clock, either way")
	fs.IntVar(&c.ReplayCacheSize, "webhook-replay-cache-size", 100_000, "accepted interaction signatures remembered (per replica) to refuse replays within the window")
	fs.DurationVar(&c.InteractionBudget, "interaction-budget", 2500*time.Millisecond, "time to wait for the owner's interaction answer before answering Discord with a deferred response (Discord allows 3s)")
	fs.DurationVar(&c.InteractionHold, "interaction-hold", time.Second, "part of the budget an interaction for a migrating guild waits for the move to finish")
	fs.DurationVar(&c.HoldTimeout, "hold-timeout", 5*time.Second, "how long a dashboard request for a migrating guild is held before 503")
	fs.DurationVar(&c.ResponseHeaderTimeout, "response-header-timeout", 10*time.Second, "time for an owner pod to send response headers before 504")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", time.Second, "time to connect to an owner pod before 504")
	fs.DurationVar(&c.RetryAfter, "retry-after", time.Second, "Retry-After of 503 answers")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", 1<<20, "request body limit (413 beyond)")
	fs.StringVar(&c.OAuth.ClientID, "discord-client-id", "", "OAuth2 client id of the Discord application: turns on log in with Discord (/login, /callback, /logout)")
	fs.StringVar(&c.OAuth.ClientSecret, "discord-client-secret", "", "OAuth2 client secret of the application (from a Secret)")
	discordURL := fs.String("discord-url", "", "Discord's base URL for the OAuth2 consent page and API (a fake Discord's in development; default https://discord.com)")
	fs.StringVar(&c.OAuth.RedirectURL, "public-url", "", "this site's public base URL (https://modbot.example.com); /callback under it must be registered as the application's redirect (default: from each request's Host)")
	sessionKey := fs.String("session-key", "", "64 hex digits (32 bytes, from a Secret, the same on every replica) sealing the session cookies; required with --discord-client-id")
	fs.BoolVar(&c.SecureCookies, "secure-cookies", false, "mark the session cookies Secure (browsers reach the proxy over TLS)")
	fs.DurationVar(&c.SessionTTL, "session-ttl", 12*time.Hour, "how long a sign-in lasts")
	operators := fs.String("operators", "", "comma-separated Discord user ids allowed to read /status")
	name := fs.String("name", "", "this proxy's name in metrics labels (default the hostname)")
	// TLS here is the proxy's calls to the pods and config nodes; its
	// own listener is the public side, behind the Ingress.
	tlsFlags := cli.TLSFlags(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *keyHex == "" {
		return errors.New("--discord-public-key (or DISCORD_PUBLIC_KEY) is required: copy the application's public key from the Discord developer portal (modbot dev prints the fake Discord's)")
	}
	key, err := proxy.ParsePublicKey(*keyHex)
	if err != nil {
		return fmt.Errorf("--discord-public-key: %w", err)
	}
	c.PublicKey = key
	if c.WebhookMaxSkew <= 0 {
		return fmt.Errorf("--webhook-max-skew %s: must be positive (the default is 5m)", c.WebhookMaxSkew)
	}
	if c.ReplayCacheSize <= 0 {
		return fmt.Errorf("--webhook-replay-cache-size %d: must be positive (the default is 100000)", c.ReplayCacheSize)
	}
	if c.OAuth.ClientID != "" {
		if c.OAuth.ClientSecret == "" {
			return errors.New("--discord-client-secret (or DISCORD_CLIENT_SECRET) is required with --discord-client-id: copy it from the Discord developer portal's OAuth2 page")
		}
		if *sessionKey == "" {
			return errors.New("--session-key (or MODBOT_SESSION_KEY) is required with --discord-client-id: 64 hex digits from a Secret, the same on every replica (openssl rand -hex 32)")
		}
		if c.SessionKey, err = hex.DecodeString(*sessionKey); err != nil || len(c.SessionKey) != 32 {
			return errors.New("--session-key must be 64 hex digits (32 bytes): generate one with openssl rand -hex 32")
		}
	}
	if *discordURL != "" {
		base := strings.TrimRight(*discordURL, "/")
		c.OAuth.AuthorizeURL, c.OAuth.APIURL = base+"/oauth2/authorize", base+"/api/v10"
	}
	if c.OAuth.RedirectURL != "" {
		c.OAuth.RedirectURL = strings.TrimRight(c.OAuth.RedirectURL, "/") + "/callback"
	}
	for _, s := range cli.SplitList(*operators) {
		id, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("--operators: %q is not a Discord user id", s)
		}
		c.Operators = append(c.Operators, id)
	}
	internalToken := c.InternalToken
	if internalToken == "" {
		internalToken = c.Token
	}
	client, err := assignments.NewClient(cli.SplitList(*configURLs), internalToken)
	if err != nil {
		return err
	}
	if *name == "" {
		if *name, err = os.Hostname(); err != nil || *name == "" {
			*name = "proxy"
		}
	}
	c.Logger = cli.Logger("proxy")
	if c.TLS, err = tlsFlags.Load(c.Logger); err != nil {
		return err
	}
	client.UseTLS(c.TLS)
	c.Registry = prometheus.NewRegistry()
	c.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctx, stop := cli.SignalContext()
	defer stop()
	w := assignments.NewWatcher(client, assignments.WatcherOptions{Logger: c.Logger, Registerer: c.Registry, Name: *name})
	wctx, stopWatcher := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	go func() { watchDone <- w.Run(wctx) }()
	defer func() {
		stopWatcher()
		<-watchDone
	}()
	c.Map = w
	c.ConfigStatus, c.RebalanceStatus = client.Status, client.RebalanceStatus
	c.Name = *name
	p, err := proxy.New(c)
	if err != nil {
		return err
	}
	url, err := p.Start(*addr)
	if err != nil {
		_ = p.Close()
		return fmt.Errorf("%w (is another process on %s? choose another with --http-addr)", err, *addr)
	}
	c.Logger.Info("proxy listening; ready once the assignment map is loaded", "url", url, "config", client.URLs(),
		"webhook", url+"/webhooks/discord", "interaction_budget", c.InteractionBudget, "webhook_max_skew", c.WebhookMaxSkew,
		"separate_internal_token", c.InternalToken != "" && c.InternalToken != c.Token)
	<-ctx.Done()
	c.Logger.Info("signal received; draining in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Shutdown(sctx)
}
