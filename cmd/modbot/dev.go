package main

import (
	"flag"

	"github.com/modbot/modbot/devcluster"
	"github.com/modbot/modbot/internal/cli"
)

func runDev(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	cli.Usage(fs, "modbot dev [--dir .modbot-dev] [--config-nodes 3]")
	var o devcluster.Options
	fs.StringVar(&o.Dir, "dir", ".modbot-dev", "state directory (token, data, logs)")
	fs.IntVar(&o.ConfigNodes, "config-nodes", 3, "number of config nodes (voters)")
	fs.IntVar(&o.Shards, "shards", 4, "Discord shard count")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	o.Log = cli.Logger("dev")
	ctx, stop := cli.SignalContext()
	defer stop()
	return devcluster.Run(ctx, o)
}
