// Command etcdwatch measures the watch fan-out of modbot's config nodes and
// of etcd side by side, in one run (make bench-etcd): 3 config nodes and 3
// embedded etcd members on loopback, the same watcher counts spread over
// the 3 nodes, the same sequential writes to the leader, latency from just
// before the write is sent to the event decoded by the watcher. It prints
// the p50/p99 of each and the ratio of p99s (modbot/etcd).
//
// It is a module of its own (benchmarks/etcdwatch/go.mod) so that the main
// module never carries etcd. Every load is bounded by its counts and stays
// on 127.0.0.1.
//
//	cd benchmarks/etcdwatch && go run . [-watchers 1,100,1000] [-writes 100] [-runs 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modbot/modbot/benchmarks"
)

func main() {
	fs := flag.NewFlagSet("etcdwatch", flag.ExitOnError)
	watchers := fs.String("watchers", "1,100,1000", "watcher counts, each spread over the 3 nodes")
	var o compareOptions
	fs.IntVar(&o.Writes, "writes", 100, "measured writes per watcher count")
	fs.IntVar(&o.Watch.Warmup, "warmup", 10, "unmeasured writes before them")
	fs.IntVar(&o.Runs, "runs", 3, "repetitions with fresh clusters (the table shows medians)")
	fs.DurationVar(&o.Watch.Gap, "gap", 10*time.Millisecond, "pause between writes once every watcher has the previous one")
	fs.DurationVar(&o.Watch.IdleFor, "idle", 2*time.Second, "how long to measure idle CPU with every watcher connected (0: not at all)")
	fs.BoolVar(&o.Shared, "shared", true, "also measure etcd with one client per member shared by its watches")
	figures := fs.String("figures", "", "merge the 1,000-watcher p99s into this JSON file (make bench's issue 18 table)")
	_ = fs.Parse(os.Args[1:])
	for _, s := range strings.Split(*watchers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "etcdwatch: -watchers wants positive counts separated by commas, got %q\n", *watchers)
			os.Exit(2)
		}
		o.Watchers = append(o.Watchers, n)
	}
	if o.Writes <= 0 || o.Runs <= 0 {
		fmt.Fprintln(os.Stderr, "etcdwatch: -writes and -runs must be positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	systems, err := compareWatch(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdwatch: %v\n", err)
		os.Exit(1)
	}
	printComparison(os.Stdout, o, systems)
	if *figures != "" {
		if err := benchmarks.MergeFigures(*figures, issue18Figures(o, systems)); err != nil {
			fmt.Fprintf(os.Stderr, "etcdwatch: %v\n", err)
			os.Exit(1)
		}
	}
}

// issue18Figures are the p99s at 1,000 watchers (or the largest count run).
func issue18Figures(o compareOptions, systems []*system) benchmarks.Figures {
	i := len(o.Watchers) - 1
	for j, n := range o.Watchers {
		if n == 1000 {
			i = j
		}
	}
	ms := func(s *system) float64 { return float64(s.median(i, p99).Microseconds()) / 1000 }
	f := benchmarks.Figures{benchmarks.FigWatchModbotP99Ms: ms(systems[0]), benchmarks.FigWatchEtcdP99Ms: ms(systems[1])}
	if len(systems) > 2 {
		f[benchmarks.FigWatchEtcdSharedMs] = ms(systems[2])
	}
	return f
}
