// Command modbotbench runs the cluster benchmarks and prints their tables
// (make bench). Every load is bounded and stays on loopback.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

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
	watchers := fs.String("watchers", "1,100,1000", "watcher counts for the watch latency benchmark")
	watchWrites := fs.Int("watch-writes", 100, "writes per watcher count")
	ingestMsgs := fs.Int("ingest-messages", 50000, "MESSAGE_CREATE events for the unpaced ingest run")
	ingestRate := fs.Float64("ingest-rate", 10000, "events/s for the paced (latency) ingest run")
	modbotBin := fs.String("modbot", "bin/modbot", "modbot binary (the proxy runs as its own process, like nginx)")
	replDur := fs.Duration("replication-duration", 10*time.Second, "length of each replication lag run")
	replMB := fs.String("replication-restore-mb", "100", "database sizes (MB) restored from file and S3, e.g. 100,1024")
	recoveryMsgs := fs.Int("recovery-messages", 1500000, "message rows in the crashed pod (1,500,000 ≈ 100 MB)")
	recoveryGrace := fs.Duration("recovery-grace", 10*time.Second, "failover grace of the pod-crash benchmark")
	only := fs.String("only", "", "run one group: controlplane, watch, ingest, proxy, migration, replication, recovery")
	_ = cli.Parse(fs, os.Args[1:])
	ctx, stop := cli.SignalContext()
	defer stop()
	run := func(name string) bool { return *only == "" || *only == name }
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "%s benchmark: %v\n", what, err)
		os.Exit(1)
	}
	if run("controlplane") {
		r, err := benchmarks.ControlPlane(ctx, cp)
		if err != nil {
			fail("control plane", err)
		}
		benchmarks.PrintControlPlane(os.Stdout, r)
		fmt.Println()
	}
	if run("watch") {
		var counts []int
		for _, s := range strings.Split(*watchers, ",") {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
				counts = append(counts, n)
			}
		}
		rs, err := benchmarks.WatchLatency(ctx, counts, *watchWrites)
		if err != nil {
			fail("watch", err)
		}
		benchmarks.PrintWatchTable(os.Stdout, rs)
		fmt.Println()
	}
	if run("ingest") {
		max, err := benchmarks.Ingest(ctx, benchmarks.IngestOptions{Messages: *ingestMsgs, Guilds: 50, Shards: 4, Producers: 4})
		if err != nil {
			fail("ingest", err)
		}
		paced, err := benchmarks.Ingest(ctx, benchmarks.IngestOptions{Messages: int(*ingestRate * 3), Guilds: 50, Shards: 4, Producers: 4, Rate: *ingestRate})
		if err != nil {
			fail("ingest", err)
		}
		benchmarks.PrintIngest(os.Stdout, max, paced, *ingestRate)
		fmt.Println()
	}
	if run("migration") {
		r, err := benchmarks.Migration(ctx, benchmarks.MigrationOptions{})
		if err != nil {
			fail("migration", err)
		}
		benchmarks.PrintMigration(os.Stdout, r)
		fmt.Println()
	}
	if run("replication") {
		var mbs []int
		for _, s := range strings.Split(*replMB, ",") {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
				mbs = append(mbs, n)
			}
		}
		r, err := benchmarks.Replication(ctx, benchmarks.ReplicationOptions{ModbotBinary: *modbotBin, Duration: *replDur, RestoreMB: mbs})
		if err != nil {
			fail("replication", err)
		}
		benchmarks.PrintReplication(os.Stdout, r)
		fmt.Println()
	}
	if run("recovery") {
		r, err := benchmarks.Recovery(ctx, benchmarks.RecoveryOptions{ModbotBinary: *modbotBin, Messages: *recoveryMsgs, Grace: *recoveryGrace})
		if err != nil {
			fail("recovery", err)
		}
		benchmarks.PrintRecovery(os.Stdout, r)
		fmt.Println()
	}
	if run("proxy") {
		r, err := benchmarks.ProxyComparison(ctx, benchmarks.ProxyBenchOptions{ModbotBinary: *modbotBin})
		if err != nil {
			fail("proxy", err)
		}
		benchmarks.PrintProxyComparison(os.Stdout, r)
		fmt.Println()
	}
}
