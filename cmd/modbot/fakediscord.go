package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/internal/cli"
)

func runFakeDiscord(args []string) error {
	fs := flag.NewFlagSet("fakediscord", flag.ContinueOnError)
	cli.Usage(fs, "modbot fakediscord --addr 127.0.0.1:7900 [--guilds N] [--shards N]")
	var c fakediscord.Config
	addr := fs.String("addr", "127.0.0.1:7900", "listen address")
	guilds := fs.Int("guilds", 0, "guilds to create at start, spread over the shards")
	keyFile := fs.String("public-key-file", "", "write the interactions public key (hex) to this file")
	fs.StringVar(&c.Token, "discord-token", "fake-token", "bot token the fake accepts")
	fs.StringVar(&c.ClientSecret, "client-secret", "fake-client-secret", "OAuth2 client secret the fake's token endpoint accepts (client id: the application id)")
	fs.IntVar(&c.Shards, "shards", 1, "recommended shard count (GET /gateway/bot)")
	fs.IntVar(&c.MaxConcurrency, "max-concurrency", 16, "session_start_limit.max_concurrency")
	fs.DurationVar(&c.IdentifyInterval, "identify-interval", 5*time.Second, "identify spacing per bucket")
	fs.StringVar(&c.InteractionsURL, "interactions-url", "", "deliver interactions to this webhook URL, signed, instead of over the gateway")
	// Discord's REST rate limits are on by default (what modbot dev runs with).
	fs.BoolVar(&c.RateLimits.Disabled, "no-rate-limits", false, "turn the REST rate limits off (headers, 429s, the invalid-request block)")
	fs.IntVar(&c.RateLimits.Global.Requests, "global-rate-limit", 50, "REST requests per second per bot token (interaction endpoints excluded)")
	scale := fs.Int("rate-limit-scale", 1, "multiply every REST limit (routes, global, invalid requests) by this")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *scale > 1 {
		global := c.RateLimits.Global.Requests
		disabled := c.RateLimits.Disabled
		c.RateLimits = fakediscord.Scaled(*scale)
		c.RateLimits.Disabled = disabled
		c.RateLimits.Global.Requests = global * *scale
	}
	c.RateLimits.Global.Per = time.Second
	c.Logger = cli.Logger("fakediscord")
	srv, err := fakediscord.New(c)
	if err != nil {
		return err
	}
	url, err := srv.Start(*addr)
	if err != nil {
		return err
	}
	defer srv.Close()
	if *guilds > 0 {
		srv.Seed(*guilds)
		srv.SeedUsers()
	}
	if *keyFile != "" {
		if err := os.MkdirAll(filepath.Dir(*keyFile), 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(*keyFile, []byte(srv.PublicKeyHex()+"\n"), 0o644); err != nil {
			return fmt.Errorf("write public key: %w", err)
		}
	}
	c.Logger.Info("fake discord listening", "url", url, "guilds", *guilds, "shards", c.Shards, "public_key", srv.PublicKeyHex())
	ctx, stop := cli.SignalContext()
	defer stop()
	<-ctx.Done()
	return nil
}
