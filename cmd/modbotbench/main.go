// Command modbotbench runs the cluster benchmarks and prints their tables
// (make bench). Every load is bounded and stays on loopback.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
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
	verbose := fs.Bool("v", false, "log what the pod-crash benchmark's cluster does (to stderr)")
	var rest benchmarks.RESTOptions
	fs.IntVar(&rest.Pods, "rest-pods", 10, "gateway pods flooding Discord's global REST limit")
	fs.DurationVar(&rest.SteadyFor, "rest-steady", 30*time.Second, "length of the run at 80 % of the global REST limit")
	pgLagRates := fs.String("pgmirror-lag-rates", "100,1000", "changes/s of the Postgres mirror lag runs")
	pgOutage := fs.Duration("pgmirror-outage", 30*time.Second, "how long Postgres is stopped in the write-latency comparison")
	pgResync := fs.Int("pgmirror-resync-guilds", 1_000_000, "guilds in the mirror's resync run")
	dashSizes := fs.String("dashboard-messages", "1000,100000", "guild sizes (messages) of the dashboard latency runs")
	dashRequests := fs.Int("dashboard-requests", 200, "page loads (and JSON reads) per dashboard size")
	var scale benchmarks.ScaleOptions
	fs.IntVar(&scale.Guilds, "scale-guilds", 1_000_000, "guilds in the map of the scale benchmark (issue 18's figures are at 1,000,000; its 10M run: -scale-guilds 10000000)")
	fs.IntVar(&scale.Batch, "scale-batch", 10_000, "guilds per placement in the scale benchmark")
	fs.StringVar(&scale.CPUProfile, "scale-cpuprofile", "", "write 5 s of the leader's CPU profile from the start of the scale benchmark's placement to this file (go tool pprof FILE)")
	scaleProcs := fs.Bool("scale-processes", true, "run the process part of the scale benchmark (false: only the in-process FSM sizes)")
	scaleMaps := fs.String("scale-map-guilds", "1000000", "FSM sizes built in process for the live heap and snapshot figures, e.g. 1000000,10000000")
	only := fs.String("only", "", "run one group: controlplane, watch, ingest, proxy, migration, replication, recovery, rest, pgmirror, dashboard, scale")
	figures := fs.String("figures", "", "merge the figures of issue 18's table into this JSON file (make bench)")
	issue18 := fs.String("issue18", "", "print issue 18's table from this figures file, and nothing else")
	cpuProfile := fs.String("cpuprofile", "", "write this process's CPU profile over the whole run to this file (the in-process benchmarks: dashboard, ingest, …; go tool pprof FILE)")
	_ = cli.Parse(fs, os.Args[1:])
	if *issue18 != "" {
		f, err := benchmarks.ReadFigures(*issue18)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		benchmarks.PrintIssue18(os.Stdout, f)
		return
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cpu profile: %v\n", err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	run := func(name string) bool {
		if *only != "" && *only != name {
			return false
		}
		benchmarks.Settle() // each group starts without the last one's garbage
		return true
	}
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "%s benchmark: %v\n", what, err)
		os.Exit(1)
	}
	record := func(f benchmarks.Figures) {
		if *figures == "" {
			return
		}
		if err := benchmarks.MergeFigures(*figures, f); err != nil {
			fail("figures", err)
		}
	}
	if run("scale") {
		scale.ModbotBinary, scale.Verbose = *modbotBin, *verbose
		var r benchmarks.ScaleResult
		if *scaleProcs {
			var err error
			if r, err = benchmarks.Scale(ctx, scale); err != nil {
				benchmarks.PrintScale(os.Stdout, r, nil) // what was measured before it failed
				fail("scale", err)
			}
			record(benchmarks.ScaleFigures(r))
		}
		var maps []benchmarks.ScaleMapResult
		for _, s := range strings.Split(*scaleMaps, ",") {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
				m, err := benchmarks.ScaleMap(n, scale.Batch)
				if err != nil {
					fail("scale (map)", err)
				}
				maps = append(maps, m)
			}
		}
		benchmarks.PrintScale(os.Stdout, r, maps)
		fmt.Println()
	}
	if run("controlplane") {
		r, err := benchmarks.ControlPlane(ctx, cp)
		if err != nil {
			fail("control plane", err)
		}
		benchmarks.PrintControlPlane(os.Stdout, r)
		fmt.Println()
	}
	if run("dashboard") {
		var sizes []int
		for _, s := range strings.Split(*dashSizes, ",") {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
				sizes = append(sizes, n)
			}
		}
		rs, err := benchmarks.Dashboard(ctx, sizes, *dashRequests)
		if err != nil {
			fail("dashboard", err)
		}
		f := benchmarks.Figures{}
		for _, r := range rs {
			f[fmt.Sprintf("%s%d", benchmarks.FigDashboardPages, r.Messages)] = r.PagesPerSec
			f[fmt.Sprintf("%s%d", benchmarks.FigDashboardPodPages, r.Messages)] = r.PodPagesPerSec
		}
		record(f)
		benchmarks.PrintDashboard(os.Stdout, rs)
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
		record(benchmarks.Figures{
			benchmarks.FigMoveSourceP99Ms: float64(r.UnderLoad.Source.P99.Microseconds()) / 1000,
			benchmarks.FigMoveTargetP99Ms: float64(r.UnderLoad.Target.P99.Microseconds()) / 1000,
		})
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
	if run("rest") {
		r, err := benchmarks.REST(ctx, rest)
		if err != nil {
			fail("rest", err)
		}
		benchmarks.PrintREST(os.Stdout, r)
		fmt.Println()
	}
	if run("recovery") {
		r, err := benchmarks.Recovery(ctx, benchmarks.RecoveryOptions{ModbotBinary: *modbotBin, Messages: *recoveryMsgs, Grace: *recoveryGrace, Verbose: *verbose})
		if err != nil {
			fail("recovery", err)
		}
		benchmarks.PrintRecovery(os.Stdout, r)
		fmt.Println()
	}
	if run("pgmirror") {
		o := benchmarks.PgMirrorOptions{Outage: *pgOutage, ResyncGuilds: *pgResync}
		for _, s := range strings.Split(*pgLagRates, ",") {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
				o.LagRates = append(o.LagRates, n)
			}
		}
		r, err := benchmarks.PgMirror(ctx, o)
		if err != nil {
			fail("pgmirror", err)
		}
		benchmarks.PrintPgMirror(os.Stdout, r)
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
