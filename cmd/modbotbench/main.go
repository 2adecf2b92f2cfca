// Command modbotbench runs the cluster benchmarks and prints their tables
// (make bench). Every load is bounded and stays on loopback.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/modbot/modbot/benchmarks"
	"github.com/modbot/modbot/internal/cli"
)

func main() {
	fs := flag.NewFlagSet("modbotbench", flag.ExitOnError)
	var cp benchmarks.ControlPlaneOptions
	fs.IntVar(&cp.SingleWrites, "single-writes", 500, "sequential single-guild placements")
	fs.IntVar(&cp.BatchedGuilds, "batched-guilds", 200000, "guilds placed in batches")
	fs.IntVar(&cp.BatchSize, "batch-size", 1000, "guilds per batch")
	fs.IntVar(&cp.BatchConcurrency, "batch-concurrency", 4, "concurrent batch writers")
	fs.IntVar(&cp.FailoverTrials, "failover-trials", 12, "leader kills")
	only := fs.String("only", "", "run one group: controlplane")
	_ = cli.Parse(fs, os.Args[1:])
	ctx, stop := cli.SignalContext()
	defer stop()
	if *only == "" || *only == "controlplane" {
		r, err := benchmarks.ControlPlane(ctx, cp)
		if err != nil {
			fmt.Fprintln(os.Stderr, "control plane benchmark:", err)
			os.Exit(1)
		}
		benchmarks.PrintControlPlane(os.Stdout, r)
		fmt.Println()
	}
}
