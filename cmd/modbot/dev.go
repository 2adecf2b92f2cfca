package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/modbot/modbot/devcluster"
	"github.com/modbot/modbot/internal/cli"
)

func runDev(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	cli.Usage(fs, "modbot dev [--dir .modbot-dev] [--config-nodes 3] [--gateways 3] [--guilds 100] [--traffic MSGS_PER_S] [--postgres=false]")
	var o devcluster.Options
	fs.StringVar(&o.Dir, "dir", ".modbot-dev", "state directory (token, data, logs)")
	fs.IntVar(&o.ConfigNodes, "config-nodes", 3, "number of config nodes (voters)")
	fs.IntVar(&o.Shards, "shards", 6, "Discord shard count")
	fs.IntVar(&o.Gateways, "gateways", 3, "gateway pods")
	fs.IntVar(&o.Guilds, "guilds", 100, "guilds the fake Discord starts with")
	fs.Float64Var(&o.Traffic, "traffic", 20, "synthetic messages per second (0 turns the chatter off)")
	fs.BoolVar(&o.Proxy, "proxy", true, "start the HTTP proxy on 127.0.0.1:8080")
	fs.DurationVar(&o.FailoverGrace, "failover-grace", 60*time.Second, "a gateway down this long has its guilds restored from its replica onto the others")
	postgres := fs.Bool("postgres", true, "start a throwaway PostgreSQL under --dir (when its server binaries are installed) and mirror the map into it")
	fs.IntVar(&o.PGPort, "pg-port", 5433, "port of the dev PostgreSQL on 127.0.0.1")
	offset := fs.Int("port-offset", 0, "add this to every port (to run a second cluster beside the first)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *offset != 0 {
		o.BaseRaftPort, o.BaseHTTPPort, o.GatewayBasePort = 7000+*offset, 8000+*offset, 9000+*offset
		o.DiscordAddr = fmt.Sprintf("127.0.0.1:%d", 7900+*offset)
		o.ProxyAddr = fmt.Sprintf("127.0.0.1:%d", 8080+*offset)
		o.PGPort += *offset
	}
	o.NoPostgres = !*postgres
	o.Log = cli.Logger("dev")
	ctx, stop := cli.SignalContext()
	defer stop()
	return devcluster.Run(ctx, o)
}
