package main

import (
	"flag"

	"github.com/modbot/modbot/devcluster"
	"github.com/modbot/modbot/internal/cli"
)

func runDev(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	cli.Usage(fs, "modbot dev [--dir .modbot-dev] [--config-nodes 3] [--gateways 3] [--guilds 100] [--traffic MSGS_PER_S]")
	var o devcluster.Options
	fs.StringVar(&o.Dir, "dir", ".modbot-dev", "state directory (token, data, logs)")
	fs.IntVar(&o.ConfigNodes, "config-nodes", 3, "number of config nodes (voters)")
	fs.IntVar(&o.Shards, "shards", 6, "Discord shard count")
	fs.IntVar(&o.Gateways, "gateways", 3, "gateway pods")
	fs.IntVar(&o.Guilds, "guilds", 100, "guilds the fake Discord starts with")
	fs.Float64Var(&o.Traffic, "traffic", 20, "synthetic messages per second (0 turns the chatter off)")
	fs.BoolVar(&o.Proxy, "proxy", false, "start the HTTP proxy on 127.0.0.1:8080")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	o.Log = cli.Logger("dev")
	ctx, stop := cli.SignalContext()
	defer stop()
	return devcluster.Run(ctx, o)
}
