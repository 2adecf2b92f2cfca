package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/internal/cli"
)

func runGateway(args []string) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	cli.Usage(fs, "modbot gateway --id gateway-0 --data-dir DIR --http-addr HOST:PORT --config URL,… [--discord-token T] [--discord-url URL] [--token T [--internal-token T] [--read-token T]]")
	var c gatewaynode.Config
	var config string
	fs.StringVar(&c.ID, "id", "", "pod id with its ordinal, e.g. gateway-1 (the StatefulSet hostname)")
	fs.IntVar(&c.Ordinal, "ordinal", -1, "ordinal (default: the id's numeric suffix)")
	fs.StringVar(&c.DataDir, "data-dir", "", "directory for the pod's SQLite database")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:9000", "internal API address")
	fs.StringVar(&c.Advertise, "advertise-addr", "", "address peers and proxies dial (default: --http-addr)")
	fs.StringVar(&config, "config", "", "config node URLs, comma-separated")
	cli.TokenFlags(fs, &c.Token, &c.InternalToken, &c.ReadToken)
	fs.StringVar(&c.DiscordToken, "discord-token", "", "Discord bot token")
	fs.StringVar(&c.DiscordURL, "discord-url", "", "base URL of a fake Discord (default: real Discord)")
	fs.Float64Var(&c.DiscordGlobalLimit, "discord-global-limit", 50, "the bot token's global REST limit (requests/s), shared by every gateway pod in the map")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", 0, "heartbeat to the control plane (default 1s)")
	fs.StringVar(&c.ReplicationStatus, "replication-status", "", "the replication sidecar's /healthz URL: its lag is reported with heartbeats (the data-loss window of a failover)")
	fs.StringVar(&c.RestoreFrom, "restore-from", "", "this pod's replica (as for modbot replicate): a missing database is restored from it before start")
	fs.DurationVar(&c.CheckpointInterval, "checkpoint-interval", 0, "how often shard resume points are saved (default 1s)")
	leaveTimeout := fs.Duration("leave-timeout", 20*time.Second, "on SIGTERM, how long to wait for the other pods to take this pod's shards over before stopping (0: stop at once; they take over after --pod-timeout of silence)")
	tlsFlags := cli.TLSFlags(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	c.ConfigURLs = cli.SplitList(config)
	c.Logger = cli.Logger("gateway")
	var err error
	if c.TLS, err = tlsFlags.Load(c.Logger); err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	n, err := gatewaynode.Start(c)
	if err != nil {
		return err
	}
	<-ctx.Done()
	if *leaveTimeout > 0 {
		c.Logger.Info("signal received; handing the shards over before stopping", "timeout", *leaveTimeout)
		lctx, cancel := context.WithTimeout(context.Background(), *leaveTimeout)
		if err := n.Leave(lctx); err != nil {
			c.Logger.Warn("stopping before every shard was handed over; their new holders resume the sessions", "err", err)
		}
		cancel()
	} else {
		c.Logger.Info("signal received; stopping (shard sessions stay resumable)")
	}
	return n.Close()
}
